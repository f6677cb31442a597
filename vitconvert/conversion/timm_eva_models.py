"""timm's `Eva` models (timm/models/eva.py: EVA, EVA-02, PE, RoPE-ViT, DINOv3, LingBot, Sapiens2) read back as our
config, as timm_models.timm_config reads its VisionTransformer: from the modules of a model built on the meta
device, so from timm's own definition of the name. What our ViT cannot express is an error naming it.
"""

from __future__ import annotations

from typing import Any

import torch

from ..core.config import ViTConfig
from ..core.errors import VitConvertError
from .timm_eva import to_our_names
from .timm_models import _absent, _activation, _mlp_kind, _norm_kind, check_same_parameters

POOLS = {"token": "token", "avg": "gap", "avgmax": "avgmax", "max": "max", "map": "map", "": "none"}


def eva_config(model: torch.nn.Module, name: str) -> ViTConfig:
    """The architecture of timm's Eva `model` (built as `name`) as our config."""
    if problems := _unsupported(model):
        raise VitConvertError(f"timm's {name} is an Eva variant vitconvert cannot express: {'; '.join(problems)}")
    embed, block = model.patch_embed, model.blocks[0]
    attn, mlp = block.attn, block.mlp
    separate = attn.qkv is None
    qkv_bias = (attn.q_proj.bias if separate else attn.q_bias if hasattr(attn, "q_bias") else attn.qkv.bias) \
        is not None
    # EvaAttention has no key bias (a zero buffer, or a k_proj without one); timm's AttentionRope has all three.
    k_bias = not qkv_bias or (attn.k_proj.bias is not None if separate else not hasattr(attn, "q_bias"))
    pool = model.attn_pool
    try:
        cfg = ViTConfig(
            img_size=tuple(embed.img_size), patch_size=tuple(embed.patch_size), in_chans=model.in_chans,
            embed_dim=model.embed_dim, depth=len(model.blocks), num_heads=attn.num_heads,
            mlp_dim=(mlp.fc1_g if hasattr(mlp, "fc1_g") else mlp.fc1).out_features,
            num_classes=model.num_classes, pool=POOLS[model.global_pool], fc_norm=not _absent(model.fc_norm),
            qkv_bias=qkv_bias, k_bias=k_bias, ln_eps=block.norm1.eps, act=_activation(mlp.act),
            no_embed_class=model.no_embed_class, class_token=model.cls_token is not None,
            reg_tokens=0 if model.reg_token is None else model.reg_token.shape[1],
            # Eva's attention pooling reads every token; its mean pooling the patches only.
            pool_include_prefix=pool is not None,
            final_norm=not (_absent(model.norm) and _absent(model.fc_norm)),
            pre_norm=not _absent(model.norm_pre), patch_bias=embed.proj.bias is not None,
            patch_norm=not _absent(getattr(embed, "norm", None)),
            pos_embed="none" if model.pos_embed is None else "learn", norm=_norm_kind(block.norm1),
            layer_scale=getattr(block, "gamma_1", None) is not None,
            mlp_layer_scale=getattr(block, "gamma_2", None) is not None or getattr(block, "gamma_1", None) is None,
            qk_norm=not _absent(attn.q_norm), scale_attn_norm=not _absent(attn.norm),
            scale_mlp_norm=not _absent(mlp.norm), proj_bias=attn.proj.bias is not None, mlp=_mlp_kind(mlp),
            block="res_post" if type(block).__name__ == "EvaBlockPostNorm" else "pre_norm",
            attn_head_dim=attn.head_dim,
            kv_heads=tuple(getattr(b.attn, "num_kv_heads", b.attn.num_heads) for b in model.blocks),
            pool_heads=None if pool is None else pool.num_heads,
            pool_mlp_dim=None if pool is None else pool.mlp.fc1.out_features, **_rope_fields(model))
    except VitConvertError as e:
        raise VitConvertError(f"timm's {name}: {e}") from None
    # The parameters show what the checks above do not look for.
    theirs = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    check_same_parameters(name, "an Eva", to_our_names(theirs, lambda parts: (sum(p[0] for p in parts),
                                                                            *parts[0][1:])), cfg)
    return cfg


def _rope_fields(model: torch.nn.Module) -> dict[str, Any]:
    from timm.layers.pos_embed_sincos import RotaryEmbeddingCat, RotaryEmbeddingDinoV3, RotaryEmbeddingMixed

    rope = model.rope
    if rope is None:
        return {}
    half = bool(getattr(model.blocks[0].attn, "rotate_half", False))
    if type(rope) is RotaryEmbeddingCat:
        return dict(rope="cat", rope_temperature=float(rope.temperature), rope_grid_offset=float(rope.grid_offset),
                    rope_ref_grid=None if rope.ref_feat_shape is None else tuple(rope.ref_feat_shape),
                    rope_grid_indexing=rope.grid_indexing, rope_rotate_half=half)
    if type(rope) is RotaryEmbeddingMixed:
        return dict(rope="mixed", rope_temperature=float(rope.temperature), rope_grid_indexing=rope.grid_indexing)
    return dict(rope="dinov3", rope_temperature=float(rope.temperature), rope_grid_offset=float(rope.grid_offset),
                rope_grid_indexing=rope.grid_indexing, rope_rotate_half=half,
                rope_normalize_coords=rope.normalize_coords) if type(rope) is RotaryEmbeddingDinoV3 else {}


def _unsupported(model: torch.nn.Module) -> list[str]:
    """What in timm's Eva `model` our ViT does not do and no parameter shape would show."""
    from timm.layers import AttentionPoolLatent, AttentionRope, PatchEmbed
    from timm.layers.pos_embed_sincos import RotaryEmbeddingCat, RotaryEmbeddingDinoV3, RotaryEmbeddingMixed
    from timm.models.eva import EvaAttention, EvaBlock, EvaBlockPostNorm

    problems = []
    if model.global_pool not in POOLS:
        problems.append(f"pooling {model.global_pool!r}")
    if not _absent(model.norm) and not _absent(model.fc_norm):
        problems.append("both a final norm on every token and one after the pooling")
    rope = model.rope
    if rope is not None:
        if type(rope) not in (RotaryEmbeddingCat, RotaryEmbeddingMixed, RotaryEmbeddingDinoV3):
            problems.append(f"rotary embedding {type(rope).__name__}")
        elif type(rope) is RotaryEmbeddingCat and (rope.in_pixels or rope.grid_type != "index"):
            problems.append("rotary embedding on pixel coordinates")
        elif type(rope) is RotaryEmbeddingDinoV3 and rope.min_period is not None:
            problems.append("DINOv3 rotary periods from min/max periods")
        if any(rope.rotate_half != getattr(b.attn, "rotate_half", False) for b in model.blocks
               if hasattr(rope, "rotate_half")):
            problems.append("a rotary layout other than its blocks'")
    kinds, norms = set(), set()
    for b in model.blocks:
        if type(b) not in (EvaBlock, EvaBlockPostNorm):
            kinds.add(f"blocks of type {type(b).__name__}")
        elif type(b.attn) not in (EvaAttention, AttentionRope):
            kinds.add(f"attention {type(b.attn).__name__}")
        elif getattr(b.attn, "gate", None) is not None:
            kinds.add("gated attention")
        elif getattr(b.attn, "qkv_bias_separate", False):
            kinds.add("a qkv bias added apart from the projection")
        elif _mlp_kind(b.mlp) is None or _activation(b.mlp.act) is None:
            kinds.add(f"MLP {type(b.mlp).__name__} with {type(b.mlp.act).__name__}")
    for m in model.modules():
        if isinstance(m, torch.nn.LayerNorm) or "RmsNorm" in type(m).__name__:
            norms.add((_norm_kind(m) or type(m).__name__, m.eps))
    if len(norms) > 1:
        problems.append(f"norm layers of several kinds or eps ({', '.join(f'{k} {e}' for k, e in sorted(norms))})")
    pool = model.attn_pool
    if pool is not None and (type(pool) is not AttentionPoolLatent or pool.latent_len != 1 or pool.pool != "token"
                             or pool.pos_embed is not None or not _absent(pool.q_norm) or pool.mlp is None
                             or _activation(pool.mlp.act) != _activation(model.blocks[0].mlp.act)):
        problems.append("attention pooling with other options than timm's VisionTransformer sets")
    if type(model.patch_embed) is not PatchEmbed or getattr(model.patch_embed, "dynamic_img_pad", False):
        problems.append(f"patch embedding {type(model.patch_embed).__name__} (or with dynamic padding)")
    return problems + sorted(kinds)
