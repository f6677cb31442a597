"""The ViTs people build from tutorials (lucidrains' vit-pytorch, jeonsworld's ViT-pytorch, ViTs on
torch.nn.TransformerEncoder) to our weights file.

The tables are `tutorial_layouts`'; here the files are read (as timm2torch reads them: `torch.load` with
weights_only, or safetensors) and the config is inferred from the shapes, with `model_args` for what they
cannot tell (the head count, the pooling, the activation, ...), each named after the source's own
constructor argument.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..core.config import ViTConfig, timm_incompatibilities
from ..core.errors import VitConvertError
from ..core.json_types import is_int, is_real
from ..formats.weights_file import Preprocess, WeightsRecord, label_set_for
from . import tutorial_layouts as layouts
from .jax_layouts import bindings as resnet_bindings
from .mapping import Op, Rule, Shape, block_bindings, source_dims
from .source import Detection, Option, Plan, Probe, Request, SourceFormat
from .timm import HEADS_BY_WIDTH

SOURCES = ("lucidrains", "jeonsworld", "torch-encoder")
# What --model-args may say, per source: its own constructor's argument names.
MODEL_ARGS = {
    "lucidrains": ("heads", "dim_head", "pool", "image_size", "patch_size", "channels"),
    "jeonsworld": ("num_heads",),
    "torch-encoder": ("nhead", "norm_first", "activation", "layer_norm_eps", "pool", "image_size"),
}
# vit-pytorch builds nn.LayerNorm(dim) (torch's eps) and nn.GELU() (exact), and defaults dim_head to 64.
LUCIDRAINS_LN_EPS = 1e-5
LUCIDRAINS_DIM_HEAD = 64
# jeonsworld: LayerNorm(eps=1e-6) as flax; F.gelu (exact, where the JAX models ran tanh); its StdConv2d
# standardizes (w - mean) / sqrt(var + 1e-5); GroupNorm eps 1e-6 (but on the shortcut: model/hybrid.py).
JEONSWORLD_LN_EPS = 1e-6
JEONSWORLD_WS_EPS = 1e-5
JEONSWORLD_GN_EPS = 1e-6
# nn.TransformerEncoderLayer's defaults: layer_norm_eps 1e-5, activation relu, norm_first False.
TORCH_LN_EPS = 1e-5


@dataclass(frozen=True)
class Planned:
    """What a tutorial ViT's state dict converts into, as its planner reads it."""

    config: ViTConfig
    rules: list[Rule]
    bindings: dict[str, list[dict[str, object]]]
    format: str  # the record's source format
    notes: list[str] = field(default_factory=list)
    left_out: dict[str, str] = field(default_factory=dict)  # keys that hold nothing (vit-pytorch's empty cls_token)
    preprocess_known: bool = False  # the source's own evaluation transform is Preprocess' default


def _size(value: object, name: str) -> tuple[int, int]:
    if is_int(value) and value > 0:
        return value, value
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(is_int(v) and v > 0 for v in value):
        return tuple(value)
    raise VitConvertError(f"model args: {name} must be a positive integer or [height, width], got {value!r}")


def _choice(args: Mapping[str, Any], name: str, choices: tuple[Any, ...], default: Any) -> Any:
    value = args.get(name, default)
    if value not in choices or isinstance(value, bool) != isinstance(choices[0], bool):
        raise VitConvertError(f"model args: {name} must be {' or '.join(map(repr, choices))}, got {value!r}")
    return value


def _positive_int(args: Mapping[str, Any], name: str) -> int | None:
    value = args.get(name)
    if value is not None and not (is_int(value) and value > 0):
        raise VitConvertError(f"model args: {name} must be a positive integer, got {value!r}")
    return value


def _grid(n_patches: int, patch: tuple[int, int], size: tuple[int, int] | None, where: str,
          what: str) -> tuple[int, int]:
    """The input size: `size` when given (its grid must hold n_patches), else a square grid of n_patches."""
    if size is not None:
        if (size[0] // patch[0]) * (size[1] // patch[1]) != n_patches:
            raise VitConvertError(f"{where}: image_size {size[0]}x{size[1]} has a grid of "
                                  f"{size[0] // patch[0]}x{size[1] // patch[1]} patches, but {what} holds {n_patches}")
        return size
    side = math.isqrt(max(n_patches, 0))
    if side == 0 or side * side != n_patches:
        raise VitConvertError(f"{where}: {what} holds {n_patches} patches, not a square grid: give the input size "
                              "with --model-args '{\"image_size\": [H, W]}'")
    return side * patch[0], side * patch[1]


def _dims(shapes: Mapping[str, Shape], key: str, rank: int, where: str) -> Shape:
    """The shape of `key`, which a config is read from: a missing key or another rank is an error naming it."""
    if key not in shapes:
        raise VitConvertError(f"{where}: missing key {key}")
    return source_dims(shapes, key, rank, where)


def _tokens(shape: Shape) -> int:
    """How many tokens a class-token parameter holds: (1, 1, D), (1, D) or (D,) is one; vit-pytorch 1.16's
    (1, 0, D) or (0, D) with mean pooling none."""
    return int(np.prod(shape[:-1])) if shape else 0


EMPTY_CLS = "vit-pytorch's empty cls_token (pool 'mean' since 1.16): it holds no token"


def _lucidrains(shapes: Mapping[str, Shape], where: str, args: Mapping[str, Any], names: object) -> Planned:
    layout = layouts.lucidrains_layout(shapes, where)
    simple = layout.simple

    def dims(key: str, rank: int) -> Shape:
        return _dims(shapes, key, rank, where)

    release = layouts.LUCIDRAINS_RELEASES[layout.release]
    notes = [f"vit-pytorch {'SimpleViT' if simple else 'ViT'} in the layout of its releases {release}"]
    dim, patch_dim = dims(f"{layout.patch}.weight", 2)
    chans = _positive_int(args, "channels") or 3
    if "patch_size" in args:
        ph, pw = _size(args["patch_size"], "patch_size")
    else:
        side = math.isqrt(patch_dim // chans)
        ph = pw = side
    if ph * pw * chans != patch_dim:
        raise VitConvertError(f"{where}: the patch projection reads {patch_dim} values, not {chans} channels x "
                              f"{ph}x{pw} pixels: give patch_size and channels in --model-args")
    depth = layouts.count_blocks(shapes, "transformer.layers.")
    qkv = dims(f"{layout.attn.format(i=0)}.to_qkv.weight", 2)[0]
    if qkv % 3:
        raise VitConvertError(f"{where}: to_qkv has {qkv} outputs, not 3 x heads x dim_head")
    inner, heads, dim_head = qkv // 3, _positive_int(args, "heads"), _positive_int(args, "dim_head")
    if layout.proj is None:  # vit-pytorch leaves to_out out exactly for one head as wide as the model
        if inner != dim:
            raise VitConvertError(f"{where}: no to_out projection, yet the attention is {inner} wide, not {dim}")
        heads, dim_head = heads or 1, dim_head or dim
        notes.append("no to_out (one head as wide as the model): the attention projection is stored as the identity")
    elif heads is None and dim_head is None:
        if inner % LUCIDRAINS_DIM_HEAD:
            raise VitConvertError(f"{where}: the attention is {inner} wide; give its heads with --model-args "
                                  "'{\"heads\": N}' (or dim_head)")
        dim_head, heads = LUCIDRAINS_DIM_HEAD, inner // LUCIDRAINS_DIM_HEAD
        notes.append(f"dim_head {LUCIDRAINS_DIM_HEAD} assumed (vit-pytorch's default), so {heads} heads: give heads "
                     "in --model-args if the model was built with others")
    heads = heads or inner // dim_head
    dim_head = dim_head or inner // heads
    if heads * dim_head != inner:
        raise VitConvertError(f"{where}: to_qkv has 3 x {inner} outputs, not 3 x heads {heads} x dim_head {dim_head}")
    if layout.proj and f"{layout.proj.format(i=0)}.bias" not in shapes:
        notes.append("the attention projection has no bias (SimpleViT): stored as zeros")

    n_cls = 0 if simple else _tokens(shapes["cls_token"]) if "cls_token" in shapes else 0
    if n_cls > 1:
        raise VitConvertError(f"{where}: cls_token holds {n_cls} tokens, expected 1 (or none)")
    pool = _choice(args, "pool", ("cls", "mean"), "cls" if n_cls else "mean")
    if pool == "cls" and not n_cls:
        raise VitConvertError(f"{where}: pool 'cls' needs a class token; this model has none (vit-pytorch "
                              f"{'SimpleViT' if simple else '1.16 and later with pool mean'} pools the mean)")
    size = _size(args["image_size"], "image_size") if "image_size" in args else None
    if simple:
        if size is None:
            raise VitConvertError(f"{where}: a SimpleViT stores no position table, so the input size is not in the "
                                  "weights: give it with --model-args '{\"image_size\": N}' (its image_size)")
        img_size = size
    else:
        positions = shapes.get("pos_embedding") or _dims(shapes, "pos_embedding", 2, where)
        img_size = _grid((positions[-2] if len(positions) > 1 else 0) - n_cls, (ph, pw), size, where, "pos_embedding")
    if layout.head is None:
        notes.append("no mlp_head (num_classes=0): the model returns every token after transformer.norm, as "
                     "vit-pytorch's does")
    try:
        cfg = ViTConfig(
            img_size=img_size, patch_size=(ph, pw), in_chans=chans, embed_dim=dim, depth=depth, num_heads=heads,
            attn_head_dim=dim_head, mlp_dim=dims(f"{layout.fc1.format(i=0)}.weight", 2)[0],
            num_classes=dims(f"{layout.head}.weight", 2)[0] if layout.head else 0,
            pool="none" if layout.head is None else "token" if pool == "cls" else "gap",
            pool_include_prefix=pool == "mean" and bool(n_cls), class_token=bool(n_cls),
            fc_norm=layout.head_norm is not None, final_norm=bool(layout.final_norm or layout.head_norm),
            qkv_bias=False, ln_eps=LUCIDRAINS_LN_EPS, act="gelu", patch_norm=layout.patch_norm is not None,
            patch_pre_norm=layout.patch_pre_norm is not None, pos_embed="sincos2d" if simple else "learn")
    except VitConvertError as e:
        raise VitConvertError(f"{where}: {e}") from None
    rules = layouts.lucidrains_rules(layout, shapes, (ph, pw, chans), dim, bool(n_cls))
    empty = {"cls_token": EMPTY_CLS} if "cls_token" in shapes and not n_cls else {}
    return Planned(cfg, rules, block_bindings(depth), f"torch/vit-pytorch-{layout.release}", notes, empty)


def _jeonsworld_standardized(w: np.ndarray) -> np.ndarray:
    """The kernel jeonsworld's StdConv2d convolves with, by its own float32 torch calls (so to the bit)."""
    import torch

    t = torch.from_numpy(w)
    var, mean = torch.var_mean(t, dim=[1, 2, 3], keepdim=True, unbiased=False)
    return ((t - mean) / torch.sqrt(var + JEONSWORLD_WS_EPS)).numpy()


JEONSWORLD_STD_CONV = Op("jeonsworld weight-standardized conv kernel", _jeonsworld_standardized, lambda s: s)


def _jeonsworld(shapes: Mapping[str, Shape], where: str, args: Mapping[str, Any], names: object) -> Planned:
    def dims(key: str, rank: int) -> Shape:
        if key not in shapes:
            raise VitConvertError(f"{where}: not a jeonsworld ViT-pytorch state dict (no {key}); its keys begin: "
                                  + ", ".join(sorted(shapes)[:6]))
        return _dims(shapes, key, rank, where)

    dim, in_chans, ph, pw = dims(f"{layouts.EMBEDDINGS}.patch_embeddings.weight", 4)
    depth = layouts.count_blocks(shapes, "transformer.encoder.layer.")
    units, notes = layouts.jeonsworld_units(shapes, where), []
    width, stride = ViTConfig.hybrid_width, 1
    if units is not None:
        width, in_chans = dims(f"{layouts.RESNET}.root.conv.weight", 4)[:2]
        stride = 4 * 2 ** max(len(units) - 1, 0)
        notes.append(f"its ResNet's kernels stored standardized as its StdConv2d computes them, (w - mean) / "
                     f"sqrt(var + {JEONSWORLD_WS_EPS})")
    heads = _positive_int(args, "num_heads")
    if heads is None:
        if dim not in HEADS_BY_WIDTH:
            raise VitConvertError(f"{where}: width {dim} has no standard head count: give it with --model-args "
                                  "'{\"num_heads\": N}' (its config's transformer.num_heads)")
        heads = HEADS_BY_WIDTH[dim]
        notes.append(f"{heads} heads assumed (its configs' for width {dim}): give num_heads in --model-args if not")
    n_patches = dims(f"{layouts.EMBEDDINGS}.position_embeddings", 3)[1] - 1
    try:
        cfg = ViTConfig(
            img_size=_grid(n_patches, (ph * stride, pw * stride), None, where, "position_embeddings"),
            patch_size=(ph, pw), in_chans=in_chans, embed_dim=dim, depth=depth, num_heads=heads,
            mlp_dim=dims("transformer.encoder.layer.0.ffn.fc1.weight", 2)[0], num_classes=dims("head.weight", 2)[0],
            ln_eps=JEONSWORLD_LN_EPS, act="gelu", hybrid_layers=units, hybrid_width=width,
            hybrid_gn_eps=JEONSWORLD_GN_EPS, hybrid_variant="bit" if units is None else "jeonsworld")
    except VitConvertError as e:
        raise VitConvertError(f"{where}: {e}") from None
    notes.append("preprocessing: jeonsworld's test transform (Resize to the input size, bilinear; Normalize mean = "
                 "std = 0.5)")
    return Planned(cfg, layouts.jeonsworld_rules(units is not None, JEONSWORLD_STD_CONV), resnet_bindings(depth, units),
                "torch/jeonsworld-vit-pytorch", notes, preprocess_known=True)


def _encoder(shapes: Mapping[str, Shape], where: str, args: Mapping[str, Any],
             given: Mapping[str, str] | None) -> Planned:
    names = layouts.EncoderNames.parse(given)
    prefix = layouts.encoder_prefix(shapes, where)
    depth = layouts.count_blocks(shapes, f"{prefix}layers.")
    patch = f"{names.patch_embed}.weight"
    if patch not in shapes:
        raise VitConvertError(f"{where}: no patch embedding {patch} (a Conv2d): name it with --map patch_embed=NAME")
    if len(shapes[patch]) != 4:
        raise VitConvertError(f"{where}: {patch} has shape {shapes[patch]}: only a Conv2d patch embedding is read "
                              "(the order a Linear's patches were flattened in is not in the weights)")
    dim, in_chans, ph, pw = shapes[patch]
    heads = _positive_int(args, "nhead")
    if heads is None:
        raise VitConvertError(f"{where}: the head count is not in the weights: give nn.TransformerEncoderLayer's "
                              "nhead with --model-args '{\"nhead\": N}'")
    n_cls = _tokens(shapes[names.cls_token]) if names.cls_token in shapes else 0
    if n_cls > 1:
        raise VitConvertError(f"{where}: {names.cls_token} holds {n_cls} tokens, expected 1")
    size = _size(args["image_size"], "image_size") if "image_size" in args else None
    no_embed_class = False
    if names.pos_embed in shapes:
        n_pos = shapes[names.pos_embed][-2] if len(shapes[names.pos_embed]) >= 2 else 0
        # A table for the patches and the class token, or for the patches alone (the class token unplaced).
        def fits(n: int) -> bool:
            return (size[0] // ph) * (size[1] // pw) == n if size else n > 0 and math.isqrt(n) ** 2 == n

        readings = [(alone, n) for alone, n in ((False, n_pos - n_cls), (True, n_pos))[: 1 + bool(n_cls)] if fits(n)]
        if len(readings) != 1:
            raise VitConvertError(f"{where}: {names.pos_embed} holds {n_pos} positions: give the input size with "
                                  "--model-args '{\"image_size\": [H, W]}'")
        no_embed_class, n_patches = readings[0]
        img_size = _grid(n_patches, (ph, pw), size, where, names.pos_embed)
    elif size is None:
        raise VitConvertError(f"{where}: no position embedding ({names.pos_embed}; --map pos_embed=NAME) shows the "
                              "input size: give it with --model-args '{\"image_size\": [H, W]}'")
    else:
        img_size = size
    pool = _choice(args, "pool", ("cls", "mean"), "cls" if n_cls else "mean")
    if pool == "cls" and not n_cls:
        raise VitConvertError(f"{where}: pool 'cls' needs a class token, and there is no {names.cls_token} "
                              "(--map cls_token=NAME)")
    norm_first = _choice(args, "norm_first", (False, True), False)
    eps = args.get("layer_norm_eps", TORCH_LN_EPS)
    if not (is_real(eps) and eps > 0):
        raise VitConvertError(f"model args: layer_norm_eps must be a positive number, got {eps!r}")
    layer = f"{prefix}layers.0"
    norm = names.norm or f"{prefix}norm"
    head = f"{names.head}.weight"
    try:
        cfg = ViTConfig(
            img_size=img_size, patch_size=(ph, pw), in_chans=in_chans, embed_dim=dim, depth=depth, num_heads=heads,
            mlp_dim=_dims(shapes, f"{layer}.linear1.weight", 2, where)[0],
            num_classes=_dims(shapes, head, 2, where)[0] if head in shapes else 0,
            pool="token" if pool == "cls" else "gap", pool_include_prefix=pool == "mean" and bool(n_cls),
            class_token=bool(n_cls), no_embed_class=no_embed_class,
            qkv_bias=f"{layer}.self_attn.in_proj_bias" in shapes,
            proj_bias=f"{layer}.self_attn.out_proj.bias" in shapes, patch_bias=f"{names.patch_embed}.bias" in shapes,
            final_norm=f"{norm}.weight" in shapes, ln_eps=float(eps),
            act=_choice(args, "activation", ("relu", "gelu"), "relu"), block="pre_norm" if norm_first else "post_norm",
            pos_embed="learn" if names.pos_embed in shapes else "none")
    except VitConvertError as e:
        raise VitConvertError(f"{where}: {e}") from None
    notes = [f"nn.TransformerEncoder at '{prefix or '(top level)'}', norm_first={norm_first}, activation {cfg.act}"]
    if f"{layer}.norm1.weight" in shapes and f"{layer}.norm1.bias" not in shapes:
        notes.append("its LayerNorms have no bias (bias=False): stored as zeros")
    rules = layouts.encoder_rules(prefix, names, shapes)
    return Planned(cfg, rules, block_bindings(depth), "torch/nn.TransformerEncoder", notes)


PLANNERS: dict[str, Callable[[Mapping[str, Shape], str, Mapping[str, Any], Any], Planned]] = {
    "lucidrains": _lucidrains, "jeonsworld": _jeonsworld, "torch-encoder": _encoder}


def _open(probe: Probe) -> Any:
    """A PyTorch state dict's tensors (a `formats.state_dict.TensorReader`: weights_only), torch imported for it."""
    from ..formats.state_dict import TensorReader, read_state_dict

    return TensorReader((probe.state_dict or read_state_dict(probe.path)).tensors, probe.path)


def _plan(source: str, reader: Any, request: Request) -> Plan:
    args = dict(request.options.get("model_args") or {})
    if unknown := sorted(set(args) - set(MODEL_ARGS[source])):
        raise VitConvertError(f"model args {', '.join(map(repr, unknown))} mean nothing for {source}; it takes: "
                              f"{', '.join(MODEL_ARGS[source])}")
    planned = PLANNERS[source](reader.shapes, str(reader.path), args, request.options.get("names"))
    cfg, notes = planned.config, list(planned.notes)
    if request.preprocess is None and not planned.preprocess_known:
        notes.append("the checkpoint does not say how its images were prepared: recorded squash to the input size, "
                     "bilinear, mean = std = 0.5 (Python: convert_torch(..., preprocess=Preprocess(...)))")
    if cannot := timm_incompatibilities(cfg):
        notes.append(f"timm cannot load this file: {'; '.join(cannot)}")
    return Plan(config=cfg, rules=planned.rules, bindings=planned.bindings, source_format=planned.format,
                preprocess=Preprocess(size=cfg.img_size), labels=label_set_for(cfg.num_classes), notes=notes,
                left_out=dict(planned.left_out))


def _state_dict(probe: Probe) -> bool:
    return probe.kind.kind in ("pickle", "torch-zip", "safetensors")


def _detect_lucidrains(probe: Probe) -> Detection | None:
    mark = next((k for k in probe.keys if k.startswith(("to_patch_embedding.", "patch_to_embedding."))), None)
    if not _state_dict(probe) or mark is None or not any(k.startswith("transformer.layers.") for k in probe.keys):
        return None
    return Detection(1.0, f"a state dict with {mark} and transformer.layers.N.*")


def _detect_jeonsworld(probe: Probe) -> Detection | None:
    mark = f"{layouts.EMBEDDINGS}.patch_embeddings.weight"
    if not _state_dict(probe) or mark not in probe.keys:
        return None
    return Detection(1.0, f"a state dict with {mark}")


def _detect_encoder(probe: Probe) -> Detection | None:
    layers = {m["prefix"] for k in probe.keys if (m := layouts.ENCODER_LAYER.match(k))}
    if not _state_dict(probe) or not layers:
        return None
    return Detection(1.0, f"a state dict with {min(layers)}layers.N.self_attn.in_proj_weight (nn.TransformerEncoder)")


MODEL_ARGS_OPTION = Option("model_args", "--model-args", "what the weights do not show, by the source's constructor "
                                                           "argument names")
LUCIDRAINS = SourceFormat(
    name="lucidrains", summary="lucidrains' vit-pytorch ViT and SimpleViT (any release from 0.7.0)",
    detect=_detect_lucidrains, open=_open, plan=lambda r, q: _plan("lucidrains", r, q),
    options=(MODEL_ARGS_OPTION,),
    example="vitconvert convert vit.pt vit.safetensors --model-args '{\"heads\": 8}'",
    looks_for="to_patch_embedding.* and transformer.layers.N.*")
JEONSWORLD = SourceFormat(
    name="jeonsworld", summary="jeonsworld's ViT-pytorch (its R50 hybrid too)",
    detect=_detect_jeonsworld, open=_open, plan=lambda r, q: _plan("jeonsworld", r, q),
    options=(MODEL_ARGS_OPTION,),
    example="vitconvert convert cifar10_checkpoint.bin vit-b16-cifar10.safetensors",
    looks_for=f"{layouts.EMBEDDINGS}.patch_embeddings.weight")
TORCH_ENCODER = SourceFormat(
    name="torch-encoder", summary="a ViT built on torch.nn.TransformerEncoder",
    detect=_detect_encoder, open=_open, plan=lambda r, q: _plan("torch-encoder", r, q),
    options=(MODEL_ARGS_OPTION,
             Option("names", "--map", "the state-dict names of the parts around the encoder (PART=NAME,...)")),
    example="vitconvert convert model.pth model.safetensors --model-args '{\"nhead\": 4}'",
    looks_for="*layers.N.self_attn.in_proj_weight (nn.TransformerEncoder)")


def convert_torch(src: str | os.PathLike, dst: str | os.PathLike, *, source: str,
                  model_args: Mapping[str, Any] | None = None, names: Mapping[str, str] | None = None,
                  force: bool = False, dtype: str = "float32", labels: str | Sequence[str] | None = None,
                  preprocess: Preprocess | None = None, allow_nonfinite: bool = False, pos_resize: str | None = None,
                  progress: Callable[[int, int], None] | None = None) -> WeightsRecord:
    """Convert the state dict of a PyTorch ViT at `src` (.pth, .pt, .bin or .safetensors) into our weights file:
    `vitconvert.convert(..., source=source)`.

    source: 'lucidrains' (vit-pytorch's ViT or SimpleViT, any release from 0.7.0), 'jeonsworld'
    (jeonsworld/ViT-pytorch, its hybrid too) or 'torch-encoder' (a ViT built on nn.TransformerEncoder).
    model_args: what the weights do not show, by the source's constructor names: lucidrains heads, dim_head,
    pool ('cls' or 'mean'), image_size, patch_size, channels; jeonsworld num_heads; torch-encoder nhead
    (required), norm_first, activation ('relu' or 'gelu'), layer_norm_eps, pool, image_size.
    names (torch-encoder): the state-dict names of the parts around the encoder, {'patch_embed': ...,
    'cls_token': ..., 'pos_embed': ..., 'head': ..., 'norm': ...}; unnamed parts go by those names.
    preprocess: how the model's images were prepared (the checkpoint does not say; jeonsworld's is its own
    test transform); default: squash to the input size, bilinear, mean = std = 0.5.
    labels, dtype, pos_resize, allow_nonfinite, force, progress: as `convert_timm`.
    """
    from .pipeline import convert

    if source not in SOURCES:
        raise VitConvertError(f"source must be one of {', '.join(map(repr, SOURCES))}, got {source!r}")
    if names and source != "torch-encoder":
        raise VitConvertError(f"--map names the parts around an nn.TransformerEncoder; {source}'s names are known")
    options = {"model_args": model_args, **({"names": names} if source == "torch-encoder" else {})}
    return convert(src, dst, source=source, force=force, dtype=dtype, labels=labels, preprocess=preprocess,
                   pos_resize=pos_resize, allow_nonfinite=allow_nonfinite, progress=progress, **options)
