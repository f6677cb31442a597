"""timm VisionTransformer state dicts (.pth, .bin, .safetensors) to our weights file.

Our tensor names are timm's, so the mapping table is the identity over the names our config
implies (but for hybrid ResNet kernels, stored standardized); what needs work is unwrapping
training checkpoints, inferring the config and reading pickles safely.

The config comes from the keys and shapes where they tell it. What they do not tell (the head count
of an unusual width, the activation, the norm eps, the pooling, ...) comes from timm's own definition
of the model when it is named (`model=`, built on the meta device and read back by `timm_config`, the
one reader of timm models: `verify` uses it too), or else from timm's defaults where those are
safe, and is otherwise an error naming the missing fact.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..core.config import GN_GROUPS, ViTConfig
from ..core.errors import VitConvertError, name_list
from ..core.param_shapes import param_shapes
from ..formats.paths import check_input, check_output
from ..formats.safetensors_file import read_header, read_tensors
from ..formats.weights_file import Preprocess, Source, WeightsRecord, label_set_for, write_weights
from .mapping import IDENTITY, Op, Rule, head_is_zero, plan_tensors, source_dims

# Training checkpoints keep the weights under one of these (DINO: the teacher is the one to use).
WRAPPERS = ("state_dict", "model", "model_ema", "module", "teacher", "student")
# Heads of the usual widths (Ti, S, B, L, H); for any other width the head count must be given.
HEADS_BY_WIDTH = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16}
# timm's ViT default when the checkpoint's own pretrained cfg is not named.
TIMM_DEFAULT_PREPROCESS = dict(resize="crop", crop_pct=0.9, interpolation="bicubic",
                               mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
# timm's hybrid ResNetV2: StdConv2dSame standardizes (w - mean) / sqrt(var + 1e-8); GroupNorm eps 1e-5.
TIMM_WS_EPS = 1e-8
TIMM_GN_EPS = 1e-5
# Config fields that no tensor shows: a named model supplies them, else timm's defaults (the config's).
NEVER_SEEN = ("act", "ln_eps", "pos_resize", "pool_include_prefix", "hybrid_gn_eps")


@dataclass(frozen=True)
class Checkpoint:
    """The tensors of a checkpoint, out of its wrappers."""

    tensors: dict[str, torch.Tensor]
    # Unwrapped from DINO's {'teacher'/'student': {'backbone.*', 'head.*'}}: a DINO backbone.
    dino: bool = False
    notes: tuple[str, ...] = ()


def read_state_dict(path: str | os.PathLike) -> Checkpoint:
    """Tensors of a .safetensors, or of a .pth/.bin read with weights_only (no code runs)."""
    path = check_input(path, "a checkpoint file")
    if path.suffix == ".safetensors":
        read_header(path)  # clear errors for truncated or foreign files
        return unwrap(read_tensors(path), str(path))
    try:
        # DINO's training checkpoints carry their command line as an argparse.Namespace: plain data.
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=False)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError, zip errors...
        text = str(e)
        if "weights_only" in text or "Unsupported global" in text or "WeightsUnpickler" in text:
            # torch's message is a page long; its one informative sentence names what was refused
            reason = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\. |\n|$)", text)
            raise VitConvertError(
                f"{path}: refused: the pickle asks to run code or build objects that are not plain "
                f"tensors ({reason[1].strip() if reason else 'weights_only load failed'}). vitconvert "
                "loads pickles only with weights_only=True; if you trust the file, re-save its state "
                "dict with safetensors") from None
        first = text.strip().splitlines()[0] if text.strip() else type(e).__name__
        raise VitConvertError(f"{path}: not a readable PyTorch checkpoint ({first})") from None
    return unwrap(obj, str(path))


def unwrap(obj: object, where: str) -> Checkpoint:
    """The tensor dict inside training-checkpoint wrappers, without 'module.' prefixes; DINO's
    'backbone.' prefix taken off and its projection head ('head.*', a training head that is no
    classifier) dropped."""
    while isinstance(obj, Mapping) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        inner = next((obj[k] for k in WRAPPERS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping) or not obj:
        raise VitConvertError(f"{where}: no state dict found (expected a dict of tensors, "
                              f"possibly under {', '.join(repr(w) for w in WRAPPERS)})")
    tensors = {}
    for k, v in obj.items():
        if isinstance(v, torch.Tensor):
            if not isinstance(k, str):
                raise VitConvertError(f"{where}: the state dict has a key that is not a string: {k!r}")
            tensors[k.removeprefix("module.")] = v
    if not tensors:
        raise VitConvertError(f"{where}: the checkpoint holds no tensors")
    dino, notes = "patch_embed.proj.weight" not in tensors and "backbone.patch_embed.proj.weight" in tensors, []
    if dino:
        head = [k for k in tensors if k.startswith("head.")]
        tensors = {k.removeprefix("backbone."): v for k, v in tensors.items() if not k.startswith("head.")}
        notes.append("DINO checkpoint: backbone.* converted" + (
            f"; its projection head ({len(head)} tensors, head.*) is a training head, not a classifier, and was "
            "left out" if head else ""))
    if "mask_token" in tensors and "patch_embed.proj.weight" in tensors:
        tensors, more = _dinov2_release(tensors)
        # DINOv2 resamples position embeddings by size=, as timm does, not by DINO's scale factor.
        dino, notes = False, notes + more
    return Checkpoint(tensors, dino=dino, notes=tuple(notes))


@dataclass(frozen=True)
class Inferred:
    """A checkpoint's architecture as far as its keys and shapes tell it."""

    # What the tensors do not show is at timm's VisionTransformer defaults here.
    config: ViTConfig
    # Config fields the tensors do not show: a named model's values stand for them.
    unseen: tuple[str, ...]
    # Facts without a safe default, in words: without a named model, each is an error.
    missing: tuple[str, ...] = ()
    # Defaults taken for what the tensors do not show, in words (for the record's notes).
    assumed: tuple[str, ...] = ()
    positions: tuple[int, ...] | None = None  # the shape of pos_embed

    def differences_from(self, named: ViTConfig, ignore: Iterable[str] = ()) -> list[Difference]:
        """Where a named model's architecture is not what the tensors show (but for `ignore`)."""
        skip = set(self.unseen) | set(ignore)
        if (named.pool == "map") != (self.config.pool == "map"):
            skip.discard("pool")  # attention pooling shows in the keys (attn_pool.*)
        if param_shapes(named).get("pos_embed") == self.positions:
            # The grid was read as a square: where the name's positions are these, its grid is theirs.
            skip |= {"img_size", "no_embed_class"}
        return architecture_differences(self.config, named, ignore=skip)


def _dinov2_release(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """facebookresearch/dinov2's own backbone files in timm's layout, as timm's `_convert_dinov2` reads them:
    the training-only mask_token left out, register tokens kept apart from the position embedding (whose
    first row, the class token's position, is folded into the class token), the giant's fused SwiGLU
    layers w12/w3 named fc1/fc2."""
    out, notes = {}, ["DINOv2 release: its mask_token (used in training only) was left out"]
    for k, v in tensors.items():
        if k != "mask_token":
            out[re.sub(r"^(blocks\.\d+\.mlp\.)w(12|3)\.", lambda m: m[1] + ("fc1." if m[2] == "12" else "fc2."), k)] = v
    if "register_tokens" in out and "pos_embed" in out and "cls_token" in out:
        pos = out["pos_embed"]
        out["reg_token"] = out.pop("register_tokens")
        out["cls_token"] = out["cls_token"] + pos[:, :1]
        out["pos_embed"] = pos[:, 1:]
        notes.append("DINOv2 release: register_tokens are reg_token, and the class token's position row is "
                     "added to the class token, as timm reads these files")
    return out, notes


def infer_config(shapes: Mapping[str, tuple[int, ...]], where: str, num_heads: int | None = None,
                 named: bool = False) -> Inferred:
    """The architecture the keys and shapes of a timm VisionTransformer state dict tell.

    named: a named model will supply what they do not tell (so an unknown head count is no error)."""
    if "patch_embed.proj.weight" not in shapes:
        keys = ", ".join(sorted(shapes)[:6])
        raise VitConvertError(f"{where}: not a timm ViT state dict (no patch_embed.proj.weight); "
                              f"its keys begin: {keys}")

    def has(key: str) -> bool:
        return key in shapes

    def dims(key: str, rank: int) -> tuple[int, ...]:
        return source_dims(shapes, key, rank, where)

    dim, in_chans, ph, pw = dims("patch_embed.proj.weight", 4)
    depth = len({m[1] for k in shapes if (m := re.match(r"blocks\.(\d+)\.", k))})
    b = "blocks.0."
    unseen, missing, assumed = list(NEVER_SEEN), [], []
    # Parallel blocks show their fused projection; residual post-norm blocks look as pre-norm ones do.
    block = "parallel" if has(b + "in_proj.weight") else "pre_norm"
    attn, first_norm = (b, b + "in_norm") if block == "parallel" else (b + "attn.", b + "norm1")
    if block == "parallel":
        mlp, mlp_dim = "mlp", dims(b + "in_proj.weight", 2)[0] - 3 * dim
    elif has(b + "mlp.fc1_g.weight"):
        mlp, mlp_dim = "swiglu", dims(b + "mlp.fc1_g.weight", 2)[0]
        missing.append("the activation of its SwiGLU MLP (AIMv2: silu)")
    elif has(b + "mlp.fc1.weight"):
        mlp, mlp_dim = "mlp", dims(b + "mlp.fc1.weight", 2)[0]
        if has(b + "mlp.fc2.weight") and 2 * dims(b + "mlp.fc2.weight", 2)[1] == mlp_dim:
            mlp = "swiglu_packed"  # fc1 packs a value and a gate half
            unseen.append("mlp")
            missing.append("which half of fc1 gates its GLU MLP (timm's GluMlp or SwiGLUPacked) and the activation")
    else:
        raise VitConvertError(f"{where}: missing blocks.0.mlp.fc1.weight (no transformer blocks?)")
    if block == "pre_norm":
        unseen.append("block")
        assumed.append("pre-norm blocks")

    hybrid_layers, hybrid_width, backbone_stride = None, ViTConfig.hybrid_width, 1
    stem = next((k for k in ("patch_embed.backbone.stem.conv.weight", "patch_embed.backbone.conv.weight") if has(k)),
                None)
    if stem is not None:
        hybrid_width, in_chans = dims(stem, 4)[:2]
        units: dict[int, set[int]] = {}
        for k in shapes:
            if m := re.match(r"patch_embed\.backbone\.stages\.(\d+)\.blocks\.(\d+)\.", k):
                units.setdefault(int(m[1]), set()).add(int(m[2]))
        hybrid_layers = tuple(len(units.get(i, ())) for i in range(max(units, default=-1) + 1))
        backbone_stride = 4 * 2 ** max(len(hybrid_layers) - 1, 0)

    class_token, distilled = has("cls_token"), has("dist_token")
    reg_tokens = dims("reg_token", 3)[1] if has("reg_token") else 0
    final_norm, fc_norm = has("norm.weight") or has("fc_norm.weight"), has("fc_norm.weight")
    if has("attn_pool.latent"):
        pool = "map"
        missing.append("the activation of its attention-pooling model (SigLIP: gelu or gelu_tanh)")
    elif class_token and fc_norm:
        pool = "gap"
        unseen.append("pool")
        missing.append("whether it pools the class token or the mean of the patches (a class token and fc_norm)")
    elif class_token:  # or the mean beside it, as timm allows: the keys look the same
        pool = "token"
        unseen.append("pool")
        assumed.append("pooling 'token' (the class token)")
    else:
        pool = "gap"
        unseen.append("pool")
        assumed.append("pooling 'gap' (the mean of the patch tokens)")

    prefix = class_token + reg_tokens + distilled
    stride = (backbone_stride * ph, backbone_stride * pw)
    no_embed_class, grid = False, (14, 14)  # a placeholder when no position embedding shows the grid
    if has("pos_embed"):
        n_pos = dims("pos_embed", 3)[1]
        # Positions for the patches only (no_embed_class) or for the prefix tokens too: the grid is square.
        readings = {False: n_pos - prefix} if prefix == 0 else {True: n_pos, False: n_pos - prefix}
        squares = [nec for nec, n in readings.items() if n > 0 and math.isqrt(n) ** 2 == n]
        if len(squares) == 1:
            side, no_embed_class = math.isqrt(readings[squares[0]]), squares[0]
            grid = (side, side)
        else:
            unseen += ["img_size", "no_embed_class"]
            missing.append(f"the input size: pos_embed holds {n_pos} positions, "
                           + ("a square grid both with and without" if squares else "no square grid with or without")
                           + f" its {prefix} prefix token(s)")
        if prefix == 0:
            unseen.append("no_embed_class")  # nothing to leave out: both readings are one model
    else:
        unseen += ["img_size", "no_embed_class"]
        missing.append("the input size (there is no pos_embed)")

    if has(attn + "q_norm.weight"):  # per-head norms show the head width
        head_dim = dims(attn + "q_norm.weight", 1)[0]
        num_heads = num_heads or (dim // head_dim if head_dim and dim % head_dim == 0 else None)
    if num_heads is None:
        if named:
            num_heads = 1  # divides any width; the name's count stands for it
        elif dim in HEADS_BY_WIDTH:
            num_heads = HEADS_BY_WIDTH[dim]
            assumed.append(f"{num_heads} heads (the standard for width {dim})")
        else:
            # The shapes do not say how the width splits into heads, and a guess makes a model that runs
            # and is wrong.
            raise VitConvertError(f"{where}: width {dim} has no standard head count (standard widths: "
                                  f"{', '.join(map(str, HEADS_BY_WIDTH))}); give it with --heads N "
                                  "(num_heads=N), or name the timm model with --model NAME")
        unseen.append("num_heads")
    norm = "rmsnorm" if has(first_norm + ".weight") and not has(first_norm + ".bias") else "layernorm"
    if norm == "rmsnorm":
        missing.append("the eps of its RMSNorm and its activation (AIMv2: 1e-5, silu)")
    if has("norm_pre.weight"):
        missing.append("the activation and norm eps of a CLIP-style model with norm_pre (quick_gelu in "
                       "OpenAI's; LayerNorm eps 1e-5)")
    assumed += ["activation gelu", "norm eps 1e-6"]
    pre = dims("pre_logits.fc.weight", 2) if has("pre_logits.fc.weight") else None
    try:
        cfg = ViTConfig(
            img_size=(grid[0] * stride[0], grid[1] * stride[1]), patch_size=(ph, pw), in_chans=in_chans,
            embed_dim=dim, depth=depth, num_heads=num_heads, mlp_dim=mlp_dim,
            num_classes=dims("head.weight", 2)[0] if has("head.weight") else 0, pool=pool, fc_norm=fc_norm,
            representation_size=pre[0] if pre else None, distilled=distilled,
            qkv_bias=has(b + ("in_proj.bias" if block == "parallel" else "attn.qkv.bias")),
            no_embed_class=no_embed_class, hybrid_layers=hybrid_layers, hybrid_width=hybrid_width,
            hybrid_gn_eps=ViTConfig.hybrid_gn_eps if stem is None else TIMM_GN_EPS, class_token=class_token,
            reg_tokens=reg_tokens, final_norm=final_norm,
            pre_norm=has("norm_pre.weight"), patch_bias=has("patch_embed.proj.bias"),
            patch_norm=has("patch_embed.norm.weight"), pos_embed="learn" if has("pos_embed") else "none",
            norm=norm, layer_scale=has(b + "ls1.gamma") or has(b + "ls.gamma"), qk_norm=has(attn + "q_norm.weight"),
            scale_attn_norm=has(b + "attn.norm.weight"), scale_mlp_norm=has(b + "mlp.norm.weight"),
            proj_bias=has(b + ("attn_out_proj.bias" if block == "parallel" else "attn.proj.bias")), mlp=mlp,
            block=block)
    except VitConvertError as e:  # shapes that make no model: say which file they came from
        raise VitConvertError(f"{where}: {e}") from None
    return Inferred(cfg, tuple(unseen), tuple(missing), tuple(assumed), shapes.get("pos_embed"))


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
    from timm.models.deit import VisionTransformerDistilled
    from timm.models.vision_transformer import VisionTransformer

    if not isinstance(model, VisionTransformer):
        raise VitConvertError(f"timm's {name} is a {type(model).__name__}, not a VisionTransformer: "
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
    theirs = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    ours = param_shapes(cfg)
    if theirs != ours:
        wrong = [f"{k} {theirs[k]} (ours {ours[k]})" for k in theirs if k in ours and theirs[k] != ours[k]]
        parts = [f"{what}: {text}" for what, text in (
            ("parameters our ViT lacks", name_list(set(theirs) - set(ours))),
            ("parameters it lacks", name_list(set(ours) - set(theirs))),
            ("parameters of other shapes", "; ".join(wrong[:4]))) if text]
        raise VitConvertError(f"timm's {name} is a ViT variant vitconvert cannot express: {'; '.join(parts)}")
    return cfg


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


def _timm_standardized_conv(w: np.ndarray) -> np.ndarray:
    """The kernel timm's StdConv2dSame convolves with: (w - mean) / sqrt(var + 1e-8) over (Cin, H, W), by
    the same float32 batch_norm call, so that it is timm's kernel to the bit (float64 would differ by
    rounding, which 16 ResNet units amplify to ~2e-5 in the logits)."""
    t = torch.from_numpy(w)
    return F.batch_norm(t.reshape(1, t.shape[0], -1), None, None, training=True, momentum=0.0,
                        eps=TIMM_WS_EPS).reshape_as(t).numpy()


TIMM_STD_CONV = Op("timm weight-standardized conv kernel", _timm_standardized_conv, lambda s: s)


def _rule(name: str) -> Rule:
    """Identity, but for the hybrid ResNet's kernels: our model runs them as plain convolutions."""
    if name.startswith("patch_embed.backbone.") and re.search(r"conv\d?\.weight$", name):
        return Rule(name, (name,), TIMM_STD_CONV)
    return Rule(name, (name,), IDENTITY)


class TensorReader:
    """A state dict's tensors as the mapping engine reads them (float32 numpy arrays, one at a time)."""

    def __init__(self, tensors: Mapping[str, torch.Tensor]) -> None:
        self.tensors = tensors
        self.shapes = {k: tuple(v.shape) for k, v in tensors.items()}

    def check_weights(self, keys: Iterable[str], where: str) -> None:
        """Real-valued dense tensors only: an int or bool 'weight' would convert silently to nonsense."""
        for k in keys:
            t = self.tensors[k]
            if not t.is_floating_point() or t.layout != torch.strided or t.device.type != "cpu" or t.is_quantized:
                kind = f"{t.dtype}" + ("" if t.layout == torch.strided else f", {t.layout}") + \
                    ("" if t.device.type == "cpu" else f", on {t.device.type}")
                raise VitConvertError(f"{where}: tensor {k} is {kind}; expected dense floating point weights")

    def read(self, key: str) -> np.ndarray:
        return self.tensors[key].detach().to(torch.float32).numpy()


def convert_timm(src: str | os.PathLike, dst: str | os.PathLike, *, model: str | None = None,
                 num_heads: int | None = None, force: bool = False, dtype: str = "float32",
                 labels: str | Sequence[str] | None = None, allow_nonfinite: bool = False,
                 pos_resize: str | None = None, progress: Callable[[int, int], None] | None = None,
                 timm_kwargs: Mapping[str, Any] | None = None) -> WeightsRecord:
    """Convert a timm ViT state dict at `src` into our weights file at `dst`.

    model: a timm name, with or without tag (e.g. 'vit_base_patch16_224.augreg_in21k_ft_in1k'); it
    supplies what the tensors do not show (heads, activation, norm eps, pooling, ...) and the
    checkpoint's own preprocessing, and must have the checkpoint's architecture (timm_kwargs: given to
    timm.create_model with it). Without it, what the tensors do not show is timm's VisionTransformer
    default (heads by the standard widths, else `num_heads`) where that is safe, else an error naming
    the missing fact; preprocessing is timm's ViT default (bicubic, crop 0.9, mean = std = 0.5).
    labels: 'imagenet-1k', 'imagenet-21k' or the class names in class order; default the ImageNet
    label set the class count implies.
    pos_resize: how the model resizes its position embeddings for other input sizes, recorded in the
    file: 'bicubic' (timm's own), 'dino' (facebookresearch/dino's); None: 'dino' for a DINO checkpoint,
    else 'bicubic'.
    """
    src, dst = Path(src), check_output(dst, force)  # before reading anything large
    named = timm_pretrained(model, timm_kwargs) if model else None
    checkpoint = read_state_dict(src)
    reader = TensorReader(checkpoint.tensors)
    inferred = infer_config(reader.shapes, str(src), num_heads, named=named is not None)
    notes = list(checkpoint.notes)
    if named is None:
        if inferred.missing:
            raise VitConvertError(
                f"{src}: the tensors do not show {'; nor '.join(inferred.missing)}: name the timm model with "
                "--model NAME (model=NAME), e.g. the name it was published under")
        cfg = inferred.config
        preprocess = Preprocess(size=cfg.img_size, **TIMM_DEFAULT_PREPROCESS)
        notes.append(f"timm's defaults assumed for what the tensors do not show ({', '.join(inferred.assumed)}) "
                     "and timm's ViT preprocessing; convert with --model NAME.TAG for the checkpoint's own")
    else:
        cfg, preprocess = named
        # A named model stands for what the tensors do not show; everything they show must be its.
        differences = inferred.differences_from(cfg)
        if differences:
            raise VitConvertError(f"{src}: timm's {model} has another architecture than this checkpoint: "
                                  f"{'; '.join(d.describe('checkpoint') for d in differences)}")
    if checkpoint.dino:  # DINO resamples its position embeddings its own way (README: --pos-resize)
        cfg = cfg.replace(pos_resize="dino")
    expected = param_shapes(cfg)
    specs = plan_tensors([_rule(name) for name in expected], reader, {}, where=str(src))
    reader.check_weights(expected, str(src))
    if cfg.hybrid_layers is not None:
        notes.append("hybrid ResNet kernels stored standardized as timm's StdConv2dSame computes them, "
                     f"(w - mean) / sqrt(var + {TIMM_WS_EPS})")
    record = WeightsRecord(
        config=cfg if pos_resize is None else cfg.replace(pos_resize=pos_resize), preprocess=preprocess,
        source=Source(format="timm" + (f"/{model}" if model else ""), file=src.name),
        labels=labels if labels is not None else label_set_for(cfg.num_classes),
        head_is_zero=head_is_zero(specs),
        notes=tuple(notes))
    return write_weights(dst, specs, record, source_path=src, dtype=dtype, force=force,
                         allow_nonfinite=allow_nonfinite, progress=progress)
