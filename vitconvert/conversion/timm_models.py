"""timm's own models, read back as our config: building one by name (on the meta device, so no weights), the
architecture it has (`timm_config`), what in it our ViT cannot express, its pretrained cfg's preprocessing,
and where two configs differ. Used by the timm source format (a named --model supplies what the tensors do
not show) and by `verify` (our model against timm's).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ..core.config import GN_GROUPS, ViTConfig
from ..core.errors import VitConvertError, name_list
from ..core.param_shapes import param_shapes
from ..formats.weights_file import Preprocess
from .timm import TIMM_WS_EPS


def create_timm_model(name: str, *, meta: bool = False, **kwargs: Any) -> torch.nn.Module:
    """timm's model `name` in eval mode, random weights; on the meta device (shapes only) when `meta`."""
    import timm

    try:
        with torch.device("meta") if meta else contextlib.nullcontext():
            return timm.create_model(name, pretrained=False, **kwargs).eval()
    except (RuntimeError, TypeError, ValueError, AssertionError) as e:  # an unknown name, kwargs it refuses
        args = "".join(f", {k}={v!r}" for k, v in kwargs.items())
        raise VitConvertError(f"timm cannot build the model {name!r}{args} ({e})") from None


def timm_config(model: torch.nn.Module, name: str) -> ViTConfig:
    """The architecture of timm's `model` (built as `name`) as our config; an error naming what in it
    our ViT cannot express. Reads no weights: works on the meta device."""
    from timm.models.beit import Beit
    from timm.models.deit import VisionTransformerDistilled
    from timm.models.eva import Eva
    from timm.models.vision_transformer import VisionTransformer

    if isinstance(model, Beit):
        return _beit_config(model, name)
    if isinstance(model, Eva):
        from .timm_eva_models import eva_config

        return eva_config(model, name)
    if not isinstance(model, VisionTransformer):
        raise VitConvertError(f"timm's {name} is a {type(model).__name__}, not a VisionTransformer, a Beit or an Eva: "
                              "vitconvert converts and runs ViTs only")
    problems = _unsupported(model)
    if problems:
        raise VitConvertError(f"timm's {name} is a ViT variant vitconvert cannot express: {'; '.join(problems)}")
    embed = model.patch_embed
    backbone = getattr(embed, "backbone", None)
    hybrid_layers, hybrid_width, gn_eps = None, ViTConfig.hybrid_width, ViTConfig.hybrid_gn_eps
    if backbone is not None:
        gn_eps = next(m.eps for m in backbone.modules() if isinstance(m, torch.nn.GroupNorm))
        if hasattr(backbone, "stages"):
            hybrid_layers = tuple(len(stage.blocks) for stage in backbone.stages)
            hybrid_width = backbone.stem.conv.out_channels
        else:  # a ResNet stem alone (R+Ti/16)
            hybrid_layers, hybrid_width = (), backbone.conv.out_channels
    pools = {"token": "token", "avg": "gap", "avgmax": "avgmax", "max": "max", "map": "map", "": "none"}
    try:
        cfg = ViTConfig(
            img_size=tuple(embed.img_size), patch_size=tuple(embed.patch_size), in_chans=model.in_chans,
            embed_dim=model.embed_dim, depth=len(model.blocks), num_classes=model.num_classes,
            pool=pools[model.global_pool], fc_norm=not _absent(model.fc_norm),
            distilled=isinstance(model, VisionTransformerDistilled), no_embed_class=model.no_embed_class,
            hybrid_layers=hybrid_layers, hybrid_width=hybrid_width, hybrid_gn_eps=gn_eps,
            class_token=model.has_class_token, reg_tokens=model.num_reg_tokens,
            pool_include_prefix=model.pool_include_prefix,
            final_norm=not (_absent(model.norm) and _absent(model.fc_norm)),
            pre_norm=not _absent(model.norm_pre), patch_bias=embed.proj.bias is not None,
            patch_norm=not _absent(getattr(embed, "norm", None)),
            pos_embed="none" if model.pos_embed is None else "learn", **_block_fields(model.blocks[0]))
    except VitConvertError as e:
        raise VitConvertError(f"timm's {name}: {e}") from None
    # The parameters show what the checks above do not look for.
    check_same_parameters(name, "a ViT", {k: tuple(v.shape) for k, v in model.state_dict().items()}, cfg)
    return cfg


def check_same_parameters(name: str, family: str, theirs: Mapping[str, tuple[int, ...]], cfg: ViTConfig) -> None:
    """timm's model `name` (of `family`) has the parameters, by our names and shapes, that `cfg` builds; else
    the error names what differs."""
    ours = param_shapes(cfg)
    if theirs != ours:
        wrong = [f"{k} {theirs[k]} (ours {ours[k]})" for k in theirs if k in ours and theirs[k] != ours[k]]
        parts = [f"{what}: {text}" for what, text in (
            ("parameters our ViT lacks", name_list(set(theirs) - set(ours))),
            ("parameters it lacks", name_list(set(ours) - set(theirs))),
            ("parameters of other shapes", "; ".join(wrong[:4]))) if text]
        raise VitConvertError(f"timm's {name} is {family} variant vitconvert cannot express: {'; '.join(parts)}")



def _beit_config(model: torch.nn.Module, name: str) -> ViTConfig:
    """The architecture of timm's Beit `model` (timm/models/beit.py) as our config: pre-norm blocks with q and v
    biases, layer scale, relative position tables per block or shared, the class token, mean pooling with its
    fc_norm or the class token after the final norm."""
    from timm.layers import Mlp, SwiGLU
    from timm.models.beit import Attention, Block

    from .timm_beit import beit_layout

    block = model.blocks[0]
    attn, mlp = block.attn, block.mlp
    kinds = {f"{type(b).__name__}/{type(b.attn).__name__}/{type(b.mlp).__name__}" for b in model.blocks}
    if kinds - {f"{Block.__name__}/{Attention.__name__}/{t.__name__}" for t in (Mlp, SwiGLU)} or len(kinds) > 1:
        raise VitConvertError(f"timm's {name} is a Beit of other blocks than timm's Beit builds: {', '.join(kinds)}")
    if type(model.patch_embed).__name__ != "PatchEmbed" or getattr(model.patch_embed, "dynamic_img_pad", False):
        raise VitConvertError(f"timm's {name} has a patch embedding vitconvert does not run")
    act = _activation(mlp.act)
    if act is None:
        raise VitConvertError(f"timm's {name} is a Beit with activation {type(mlp.act).__name__}")
    pools = {"avg": "gap", "token": "token", "": "none"}
    try:
        cfg = ViTConfig(
            img_size=tuple(model.patch_embed.img_size), patch_size=tuple(model.patch_embed.patch_size),
            in_chans=model.in_chans, embed_dim=model.embed_dim, depth=len(model.blocks), num_heads=attn.num_heads,
            mlp_dim=(mlp.fc1_g if hasattr(mlp, "fc1_g") else mlp.fc1).out_features, num_classes=model.num_classes,
            pool=pools[model.global_pool], fc_norm=not _absent(model.fc_norm), class_token=True,
            qkv_bias=attn.q_bias is not None, k_bias=attn.q_bias is None, ln_eps=block.norm1.eps, act=act,
            pos_embed="none" if model.pos_embed is None else "learn", layer_scale=block.gamma_1 is not None,
            scale_mlp_norm=not _absent(mlp.norm), mlp=_mlp_kind(mlp), rel_pos_bias=attn.window_size is not None,
            shared_rel_pos_bias=model.rel_pos_bias is not None, rel_pos_resize="timm")
    except VitConvertError as e:
        raise VitConvertError(f"timm's {name}: {e}") from None
    # Every norm of ours is of one eps: timm's Beit builds them all from one norm_layer, but a caller's may differ.
    eps = {m.eps for m in model.modules() if isinstance(m, torch.nn.LayerNorm)}
    if len(eps) > 1:
        raise VitConvertError(f"timm's {name} has norm layers of different eps ({', '.join(map(str, sorted(eps)))})")
    ours = beit_layout(model.state_dict())[0]  # in our names
    check_same_parameters(name, "a Beit", {k: tuple(v.shape) for k, v in ours.items()}, cfg)
    return cfg


def builds_eva(name: str) -> bool:
    """Whether timm's model `name` (with or without tag) is one of its `Eva` family (timm/models/eva.py)."""
    from timm.models import is_model, model_entrypoint

    arch = name.partition(".")[0]
    return is_model(arch) and model_entrypoint(arch).__module__ == "timm.models.eva"


def _block_fields(block: torch.nn.Module) -> dict[str, Any]:
    """The config fields a timm block (all of a model's are alike: `_unsupported` checks) says."""
    from timm.models.vision_transformer import ParallelScalingBlock, ResPostBlock

    if type(block) is ParallelScalingBlock:
        return dict(block="parallel", num_heads=block.num_heads, mlp_dim=block.in_split[0],
                    qkv_bias=block.in_proj.bias is not None, ln_eps=block.in_norm.eps, act=_activation(block.mlp_act),
                    norm=_norm_kind(block.in_norm), layer_scale=not _absent(block.ls),
                    qk_norm=not _absent(block.q_norm), proj_bias=block.attn_out_proj.bias is not None)
    attn, mlp = block.attn, block.mlp
    return dict(block="res_post" if type(block) is ResPostBlock else "pre_norm", num_heads=attn.num_heads,
                mlp_dim=(mlp.fc1_g if hasattr(mlp, "fc1_g") else mlp.fc1).out_features,
                qkv_bias=attn.qkv.bias is not None, ln_eps=block.norm1.eps, act=_activation(mlp.act),
                norm=_norm_kind(block.norm1), layer_scale=not _absent(getattr(block, "ls1", None)),
                qk_norm=not _absent(attn.q_norm), scale_attn_norm=not _absent(attn.norm),
                scale_mlp_norm=not _absent(mlp.norm), proj_bias=attn.proj.bias is not None, mlp=_mlp_kind(mlp))


def _absent(module: torch.nn.Module | None) -> bool:
    return module is None or isinstance(module, torch.nn.Identity)


def _activation(act: torch.nn.Module) -> str | None:
    """Our name for timm's MLP activation module (timm builds torch's modules or its own classes)."""
    from timm.layers.activations import GELU, GELUTanh, QuickGELU

    if type(act) is torch.nn.GELU:
        return {"none": "gelu", "tanh": "gelu_tanh"}[act.approximate]
    return {GELU: "gelu", GELUTanh: "gelu_tanh", QuickGELU: "quick_gelu", torch.nn.SiLU: "silu",
            torch.nn.ReLU: "relu"}.get(type(act))


def _norm_kind(norm: torch.nn.Module) -> str | None:
    from timm.layers import RmsNorm

    if type(norm) is RmsNorm and norm.elementwise_affine:
        return "rmsnorm"
    if isinstance(norm, torch.nn.LayerNorm) and norm.elementwise_affine and norm.bias is not None:
        return "layernorm"
    return None


def _mlp_kind(mlp: torch.nn.Module) -> str | None:
    from timm.layers import GluMlp, Mlp, SwiGLU

    if type(mlp) is GluMlp:
        return "glu" if mlp.gate_last else "swiglu_packed"
    return {Mlp: "mlp", SwiGLU: "swiglu"}.get(type(mlp))


def _unsupported(model: torch.nn.Module) -> list[str]:
    """What in timm's ViT `model` our ViT does not do and no parameter shape would show."""
    from timm.layers import AttentionPoolLatent, HybridEmbed, PatchEmbed
    from timm.models.vision_transformer import Attention, Block, ParallelScalingBlock, ResPostBlock

    problems = []
    if model.global_pool not in ("token", "avg", "avgmax", "max", "map", ""):
        problems.append(f"pooling {model.global_pool!r}")
    kinds = set()
    for b in model.blocks:
        if type(b) is ParallelScalingBlock:
            if b.out_proj is not None:
                kinds.add("parallel blocks with one output projection for both branches")
            elif _activation(b.mlp_act) is None:
                kinds.add(f"activation {type(b.mlp_act).__name__}")
        elif type(b) not in (Block, ResPostBlock):
            kinds.add(f"blocks of type {type(b).__name__}")
        elif type(b.attn) is not Attention or getattr(b.attn, "gate", None) is not None \
                or b.attn.head_dim * b.attn.num_heads != model.embed_dim:
            kinds.add(f"attention {type(b.attn).__name__}" + (" with a gate" if getattr(b.attn, "gate", None) else ""))
        elif _mlp_kind(b.mlp) is None or (isinstance(getattr(b.mlp, "fc1", None), torch.nn.Conv2d)):
            kinds.add(f"MLP {type(b.mlp).__name__}")
        elif _activation(b.mlp.act) is None:
            kinds.add(f"activation {type(b.mlp.act).__name__}")
    problems += sorted(kinds)
    pool = model.attn_pool
    if pool is not None:
        if type(pool) is not AttentionPoolLatent:
            problems.append(f"attention pooling {type(pool).__name__}")
        elif (pool.latent_len, pool.pool, pool.pos_embed is None, _absent(pool.q_norm), pool.mlp is not None) \
                != (1, "token", True, True, True) or pool.q.in_features != model.embed_dim:
            problems.append("attention pooling with other options than timm's VisionTransformer sets")
        elif _activation(pool.mlp.act) != _block_fields(model.blocks[0])["act"]:
            problems.append("attention pooling with another activation than the blocks'")
    if not kinds:
        norms = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm) or "RmsNorm" in type(m).__name__]
        norm_kinds = {_norm_kind(m) or type(m).__name__ for m in norms}
        heads = {getattr(b, "attn", b).num_heads for b in model.blocks}
        eps = {m.eps for m in norms}
        if len(norm_kinds) > 1 or not norm_kinds <= {"layernorm", "rmsnorm"}:
            problems.append(f"norm layers {', '.join(sorted(norm_kinds))}")
        if len(heads) > 1:
            problems.append(f"blocks with different head counts ({', '.join(map(str, sorted(heads)))})")
        if len(eps) > 1:
            problems.append(f"norm layers with different eps ({', '.join(map(str, sorted(eps)))})")
    embed = model.patch_embed
    if type(embed) not in (PatchEmbed, HybridEmbed):
        problems.append(f"patch embedding {type(embed).__name__}")
    elif getattr(embed, "dynamic_img_pad", False):
        problems.append("patch embedding with dynamic padding")
    if isinstance(embed, HybridEmbed):
        problems += _unsupported_backbone(embed)
    return problems


def _unsupported_backbone(embed: torch.nn.Module) -> list[str]:
    """Ours is the ResNetV2 of the JAX hybrids, as timm builds it too: TF 'SAME' padding, weight-standardized
    convolutions, GroupNorm of 32 groups (its layout is in the shapes)."""
    from timm.layers import GroupNormAct, StdConv2dSame

    if _absent(embed.proj):
        return [f"a {type(embed.backbone).__name__} backbone that is the patch embedding (no projection)"]
    modules = list(embed.backbone.modules())
    convs = {type(m).__name__ for m in modules if isinstance(m, torch.nn.Conv2d)}
    norms = {f"{type(m).__name__}({m.num_groups})" if isinstance(m, torch.nn.GroupNorm) else type(m).__name__
             for m in modules if isinstance(m, (torch.nn.GroupNorm, torch.nn.BatchNorm2d, torch.nn.LayerNorm))}
    if convs != {StdConv2dSame.__name__} or norms != {f"{GroupNormAct.__name__}({GN_GROUPS})"}:
        return [f"a {type(embed.backbone).__name__} backbone with convolutions {', '.join(sorted(convs))} and "
                f"norms {', '.join(sorted(norms))}, not the ResNetV2 of the hybrids ({StdConv2dSame.__name__}, "
                f"{GroupNormAct.__name__}({GN_GROUPS}))"]
    ws_eps = {m.eps for m in modules if isinstance(m, StdConv2dSame)}
    gn_eps = {m.eps for m in modules if isinstance(m, torch.nn.GroupNorm)}
    if ws_eps != {TIMM_WS_EPS} or len(gn_eps) > 1:
        return [f"a ResNetV2 with weight standardization eps {sorted(ws_eps)} and GroupNorm eps {sorted(gn_eps)} "
                f"(ours: {TIMM_WS_EPS}, one GroupNorm eps)"]
    return []


@dataclass(frozen=True)
class Difference:
    """A config field on which a file or checkpoint and timm's model disagree."""

    field: str
    ours: Any
    timm: Any

    def describe(self, ours_are: str) -> str:
        """'num_heads 12 (file) vs 6 (timm)', with `ours_are` naming our side."""
        return f"{self.field} {_show(self.ours)} ({ours_are}) vs {_show(self.timm)} (timm)"


def _show(value: Any) -> str:
    if value is None:
        return "none"
    return str(list(value)) if isinstance(value, tuple) else str(value)


def architecture_differences(ours: ViTConfig, timm: ViTConfig, ignore: Iterable[str] = ()) -> list[Difference]:
    """The config fields, but those in `ignore`, on which `ours` and `timm` disagree, in field order."""
    skip = set(ignore)
    mine, theirs = _comparable(ours), _comparable(timm)
    return [Difference(k, mine[k], theirs[k]) for k in mine if k not in skip and mine[k] != theirs[k]]


def _comparable(cfg: ViTConfig) -> dict[str, Any]:
    """The fields as values: the class token present or not, whatever the pooling."""
    d = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
    d["class_token"] = cfg.has_class_token
    return d


def is_beit(model: torch.nn.Module) -> bool:
    """timm's Beit (timm/models/beit.py), whose blocks take no act_layer and whose state dict names differ."""
    from timm.models.beit import Beit

    return isinstance(model, Beit)


def to_timm_state(model: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Tensors in our names as timm's `model` loads them: in its family's names, through its own checkpoint
    filter (which resamples what the model's input size needs)."""
    from timm.models import beit, vision_transformer

    from .timm_beit import to_timm_names

    if is_beit(model):
        return beit.checkpoint_filter_fn(to_timm_names(state), model)
    return vision_transformer.checkpoint_filter_fn(dict(state), model)


def is_dino_tag(model_name: str) -> bool:
    """A timm name whose tag is a DINO (v1) checkpoint's, e.g. 'vit_small_patch16_224.dino'."""
    tag = model_name.partition(".")[2].lower()
    return "dino" in tag and "dinov2" not in tag


def timm_pretrained(model_name: str, timm_kwargs: Mapping[str, Any] | None = None) -> tuple[ViTConfig, Preprocess]:
    """Architecture and preprocessing of timm's model with tag, from its registry (imports timm).

    timm_kwargs: given to timm.create_model with the name (Python API only, e.g. a reduced depth)."""
    model = create_timm_model(model_name, meta=True, **dict(timm_kwargs or {}))
    cfg = timm_config(model, model_name)
    if is_dino_tag(model_name):  # DINO's features at other sizes come from its own resampling
        cfg = cfg.replace(pos_resize="dino")
    pretrained = model.pretrained_cfg
    _, h, w = pretrained["input_size"]
    crop_pct = float(pretrained.get("crop_pct") or 1.0)
    preprocess = Preprocess(size=(h, w), resize="crop", crop_pct=crop_pct,
                            interpolation=pretrained.get("interpolation", "bicubic"),
                            mean=tuple(pretrained["mean"]), std=tuple(pretrained["std"]))
    return cfg, preprocess

