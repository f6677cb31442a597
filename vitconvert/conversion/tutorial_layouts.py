"""The PyTorch ViTs people build from tutorials, as data: how each source key becomes one of our tensors.

- lucidrains' vit-pytorch, `ViT` and `SimpleViT`. Its releases name the same layers differently (a
  `Residual(PreNorm(...))` wrapper, then `PreNorm(...)`, then the norms inside the layers; the patch
  projection alone or between two LayerNorms; the head's LayerNorm or a final `transformer.norm`):
  `lucidrains_layout` reads from the keys which names a state dict has, and `LUCIDRAINS_RELEASES` says
  which releases wrote them.
- jeonsworld's ViT-pytorch: vit_jax's model in PyTorch modules, and its R50 hybrid.
- ViTs built on `torch.nn.TransformerEncoder`: the encoder under torch's names wherever it sits in the
  model, the parts around it under names the user gives (`EncoderNames`).

Numpy only; `convert/tutorial_vits.py` reads the files and infers the configs.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ..core.errors import VitConvertError
from .jax_layouts import stage_units
from .mapping import IDENTITY, Op, Rule, Shape

# --- array transforms (with their shape twins) ----------------------------------------------------


def _rank(shape: Shape, *ranks: int) -> Shape:
    if len(shape) not in ranks:
        raise ValueError(f"expected {' or '.join(map(str, ranks))} dimensions")
    return shape


def _token_shape(s: Shape) -> Shape:
    if len(s) > 3 or any(n != 1 for n in s[:-1]):
        raise ValueError("expected one token: (D,), (1, D) or (1, 1, D)")
    return (1, 1, s[-1])


TOKEN = Op("class token -> (1, 1, D)", lambda x: x.reshape(1, 1, -1), _token_shape)
POSITIONS = Op("position table -> (1, N, D)", lambda x: x.reshape(1, *x.shape[-2:]),
               lambda s: (1, *_rank(s, 2, 3)[-2:]) if len(s) == 2 or s[0] == 1 else _rank(s, 2))


def _rows_shape(*shapes: Shape) -> Shape:
    if len(set(shapes)) != 1:
        raise ValueError("query, key and value shapes differ")
    return (len(shapes) * shapes[0][0], *shapes[0][1:])


QKV_ROWS = Op("query, key, value -> fused qkv rows", lambda *xs: np.concatenate(xs, axis=0), _rows_shape)


def patch_linear(ph: int, pw: int, chans: int) -> Op:
    """lucidrains' patch projection, a Linear over each patch flattened as (p1 p2 c), as the (D, c, p1, p2)
    kernel of the convolution it equals."""
    def shape(s: Shape) -> Shape:
        if _rank(s, 2)[1] != ph * pw * chans:
            raise ValueError(f"expected {ph * pw * chans} inputs ({ph}x{pw} pixels x {chans} channels)")
        return (s[0], chans, ph, pw)

    return Op(f"Linear over (p1 p2 c) -> conv kernel ({ph}x{pw}, {chans} channels)",
              lambda w: np.ascontiguousarray(w.reshape(-1, ph, pw, chans).transpose(0, 3, 1, 2)), shape)


def patch_vector(ph: int, pw: int, chans: int) -> Op:
    """A norm's parameters over a raw patch, (p1 p2 c) order, in the kernel's (c p1 p2) order."""
    n = ph * pw * chans

    def shape(s: Shape) -> Shape:
        if s != (n,):
            raise ValueError(f"expected ({n},)")
        return s

    return Op("patch vector (p1 p2 c) -> (c p1 p2)",
              lambda v: np.ascontiguousarray(v.reshape(ph, pw, chans).transpose(2, 0, 1).reshape(-1)), shape)


def zeros(n: int) -> Op:
    """A bias the source leaves out: zero, which adds nothing (so the model keeps timm's layers)."""
    return Op(f"zeros ({n},)", lambda: np.zeros(n, np.float32), lambda: (n,))


def identity(n: int) -> Op:
    """A projection the source leaves out (lucidrains: one head as wide as the model): the identity, exact in
    float32 (each output is one input times 1 plus zeros)."""
    return Op(f"identity ({n}, {n})", lambda: np.eye(n, dtype=np.float32), lambda: (n, n))


def _params(target: str, source: str, op: Op = IDENTITY) -> list[Rule]:
    """target.weight and target.bias from source's (a Linear, a Conv2d or a norm)."""
    return [Rule(f"{target}.weight", (f"{source}.weight",), op), Rule(f"{target}.bias", (f"{source}.bias",), op)]


def _bias_or_zeros(target: str, source: str, shapes: Mapping[str, Shape]) -> list[Rule]:
    """As `_params`; where the source has no bias (for a block template, block 0 tells) the bias is zeros."""
    sample = source.format(i=0)
    weight = shapes.get(f"{sample}.weight")
    if f"{sample}.bias" in shapes or weight is None:  # a missing weight: the plan names it
        return _params(target, source)
    return [Rule(f"{target}.weight", (f"{source}.weight",), IDENTITY), Rule(f"{target}.bias", (), zeros(weight[0]))]


def _per_block(rules: list[Rule]) -> list[Rule]:
    return [Rule(r.target, r.sources, r.op, over="block") for r in rules]


def count_blocks(shapes: Mapping[str, Shape], prefix: str) -> int:
    """Blocks numbered 0..n-1 under `prefix` (e.g. 'transformer.layers.'), checked to have no gaps."""
    found = {int(m[1]) for k in shapes if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    if found != set(range(len(found))):
        raise VitConvertError(f"the blocks under {prefix}N are not numbered 0..n-1: found {sorted(found)}")
    return len(found)


# --- lucidrains' vit-pytorch ----------------------------------------------------------------------

# The layouts, as the releases that wrote them (read from lucidrains/vit-pytorch's history; README).
LUCIDRAINS_RELEASES = {
    "residual": "0.7.0 to 0.10.0 (Residual(PreNorm(...)) blocks, the projection alone)",
    "prenorm": "0.10.1 to 0.40.x (PreNorm(...) blocks, the projection alone)",
    "prenorm-patchnorm": "1.0.0 to 1.3.x (PreNorm(...) blocks, LayerNorms around the patch projection)",
    "inline": "1.4.0 to 1.16.0 (the norms inside the layers, transformer.norm)",
    "inline-2d": "1.16.1 and later (cls_token and pos_embedding without a batch axis)",
    "simple-0.35": "0.35.2 to 0.40.x (SimpleViT: the projection alone, the head's LayerNorm)",
    "simple-1.0": "1.0.0 to 1.3.x (SimpleViT: LayerNorms around the patch projection, the head's LayerNorm)",
    "simple-1.4.1": "1.4.1 and later (SimpleViT: transformer.norm, a Linear head)",
}


@dataclass(frozen=True)
class LucidrainsLayout:
    """Where a release keeps each layer; block templates hold {i}."""

    release: str  # a key of LUCIDRAINS_RELEASES
    simple: bool  # SimpleViT: no class token, a computed sin-cos position embedding, mean pooling
    patch: str  # the patch projection (a Linear over (p1 p2 c))
    patch_pre_norm: str | None  # LayerNorm(patch_dim) before it
    patch_norm: str | None  # LayerNorm(dim) after it
    attn_norm: str
    attn: str  # the module holding to_qkv and to_out
    proj: str | None  # to_out's Linear; None: no projection (one head as wide as the model)
    ff_norm: str
    fc1: str
    fc2: str
    final_norm: str | None  # transformer.norm on every token
    head_norm: str | None  # the head's LayerNorm, on the pooled token
    head: str | None  # None: no head (1.16.1 and later, num_classes=0: every token comes out)


def lucidrains_layout(shapes: Mapping[str, Shape], where: str) -> LucidrainsLayout:
    def has(module: str) -> bool:
        return f"{module}.weight" in shapes

    if has("patch_to_embedding"):
        raise VitConvertError(
            f"{where}: a vit-pytorch ViT from before 0.7.0 (patch_to_embedding): releases before 0.6.7 scale the "
            "attention by 1/sqrt(dim) instead of 1/sqrt(dim_head), and their keys cannot be told apart from "
            "0.6.7's and 0.6.8's, so none of them is converted")
    if has("to_patch_embedding.2"):
        patch, pre, post = "to_patch_embedding.2", "to_patch_embedding.1", "to_patch_embedding.3"
    elif has("to_patch_embedding.1"):
        patch, pre, post = "to_patch_embedding.1", None, None
    else:
        raise VitConvertError(f"{where}: not a vit-pytorch ViT or SimpleViT (no to_patch_embedding); its keys begin: "
                              + ", ".join(sorted(shapes)[:6]))
    layer = "transformer.layers.{i}"
    if has("transformer.layers.0.0.fn.fn.to_qkv"):
        kind, attn, ff = "residual", f"{layer}.0.fn.fn", f"{layer}.1.fn.fn.net"
        attn_norm, ff_norm, fc1, fc2 = f"{layer}.0.fn.norm", f"{layer}.1.fn.norm", f"{ff}.0", f"{ff}.3"
    elif has("transformer.layers.0.0.fn.to_qkv"):
        kind, attn, ff = "prenorm", f"{layer}.0.fn", f"{layer}.1.fn.net"
        attn_norm, ff_norm, fc1, fc2 = f"{layer}.0.norm", f"{layer}.1.norm", f"{ff}.0", f"{ff}.3"
    elif has("transformer.layers.0.0.to_qkv"):
        # FeedForward: LayerNorm, Linear, GELU, (Dropout,) Linear: ViT's second Linear is net.4, SimpleViT's net.3
        kind, attn, ff = "inline", f"{layer}.0", f"{layer}.1.net"
        attn_norm, ff_norm, fc1 = f"{layer}.0.norm", f"{ff}.0", f"{ff}.1"
        fc2 = f"{ff}.4" if has("transformer.layers.0.1.net.4") else f"{ff}.3"
    else:
        raise VitConvertError(f"{where}: no transformer blocks found (transformer.layers.0.0.to_qkv or the "
                              "PreNorm names of older releases)")
    sample = attn.format(i=0)
    proj = next((f"{attn}.{name}" for name in ("to_out.0", "to_out") if has(f"{sample}.{name}")), None)
    head_norm = head = None
    for name in ("mlp_head", "linear_head"):
        if has(f"{name}.1"):
            head_norm, head = f"{name}.0", f"{name}.1"
        elif has(name) and len(shapes[f"{name}.weight"]) == 1:
            raise VitConvertError(f"{where}: {name} is a LayerNorm, not a classifier (vit-pytorch 1.4.0's SimpleViT; "
                                  "1.4.1 made it a Linear): its outputs are normed features, which our model "
                                  "does not express after transformer.norm")
        elif has(name):
            head = name
    simple = "cls_token" not in shapes and "pos_embedding" not in shapes
    if patch == "to_patch_embedding.1" and kind == "inline":  # SimpleViT before its patch norms
        release = "simple-0.35"
    elif simple:
        release = "simple-1.4.1" if has("transformer.norm") else "simple-1.0"
    elif kind == "inline":
        release = "inline-2d" if len(shapes.get("cls_token", ())) == 2 else "inline"
    else:
        release = "prenorm-patchnorm" if pre else kind
    return LucidrainsLayout(release, simple, patch, pre, post, attn_norm, attn, proj, ff_norm, fc1, fc2,
                            "transformer.norm" if has("transformer.norm") else None, head_norm, head)


def lucidrains_rules(layout: LucidrainsLayout, shapes: Mapping[str, Shape], patch: tuple[int, int, int],
                     dim: int, class_token: bool) -> list[Rule]:
    """patch: (rows, columns, channels) of a patch."""
    table = [Rule("patch_embed.proj.weight", (f"{layout.patch}.weight",), patch_linear(*patch)),
             Rule("patch_embed.proj.bias", (f"{layout.patch}.bias",), IDENTITY)]
    if layout.patch_pre_norm:
        table += _params("patch_embed.pre_norm", layout.patch_pre_norm, patch_vector(*patch))
    if layout.patch_norm:
        table += _params("patch_embed.norm", layout.patch_norm)
    if class_token:
        table.append(Rule("cls_token", ("cls_token",), TOKEN))
    if not layout.simple:
        table.append(Rule("pos_embed", ("pos_embedding",), POSITIONS))
    block = _params("blocks.{i}.norm1", layout.attn_norm) + [
        Rule("blocks.{i}.attn.qkv.weight", (f"{layout.attn}.to_qkv.weight",), IDENTITY)]
    if layout.proj:  # SimpleViT's has no bias
        block += _bias_or_zeros("blocks.{i}.attn.proj", layout.proj, shapes)
    else:
        block += [Rule("blocks.{i}.attn.proj.weight", (), identity(dim)),
                  Rule("blocks.{i}.attn.proj.bias", (), zeros(dim))]
    block += [*_params("blocks.{i}.norm2", layout.ff_norm), *_params("blocks.{i}.mlp.fc1", layout.fc1),
              *_params("blocks.{i}.mlp.fc2", layout.fc2)]
    table += _per_block(block)
    if layout.final_norm:
        table += _params("norm", layout.final_norm)
    if layout.head_norm:
        table += _params("fc_norm", layout.head_norm)
    if layout.head:
        table += _params("head", layout.head)
    return table


# --- jeonsworld's ViT-pytorch ---------------------------------------------------------------------

EMBEDDINGS = "transformer.embeddings"
RESNET = f"{EMBEDDINGS}.hybrid_model"


def jeonsworld_units(shapes: Mapping[str, Shape], where: str) -> tuple[int, ...] | None:
    """Units per stage of its ResNet, None without one."""
    if f"{RESNET}.root.conv.weight" not in shapes:
        return None
    return stage_units(shapes, re.compile(re.escape(RESNET) + r"\.body\.block(\d+)\.unit(\d+)\."), where)


def jeonsworld_rules(hybrid: bool, std_conv: Op) -> list[Rule]:
    """std_conv: its StdConv2d's weight standardization, folded into the stored kernels."""
    layer = "transformer.encoder.layer.{i}"
    table = [
        *_params("patch_embed.proj", f"{EMBEDDINGS}.patch_embeddings"),
        Rule("cls_token", (f"{EMBEDDINGS}.cls_token",), IDENTITY),
        Rule("pos_embed", (f"{EMBEDDINGS}.position_embeddings",), IDENTITY),
        *_per_block([
            *_params("blocks.{i}.norm1", f"{layer}.attention_norm"),
            *(Rule(f"blocks.{{i}}.attn.qkv.{p}", tuple(f"{layer}.attn.{n}.{p}" for n in ("query", "key", "value")),
                   QKV_ROWS) for p in ("weight", "bias")),
            *_params("blocks.{i}.attn.proj", f"{layer}.attn.out"),
            *_params("blocks.{i}.norm2", f"{layer}.ffn_norm"),
            *_params("blocks.{i}.mlp.fc1", f"{layer}.ffn.fc1"),
            *_params("blocks.{i}.mlp.fc2", f"{layer}.ffn.fc2"),
        ]),
        *_params("norm", "transformer.encoder.encoder_norm"),
        *_params("head", "head"),
    ]
    if hybrid:  # bindings as jax_layouts.bindings gives them: {root}; {s}, {u} 1-based, {si}, {ui} 0-based
        unit, src = "patch_embed.backbone.stages.{si}.blocks.{ui}", RESNET + ".body.block{s}.unit{u}"
        table += [
            Rule("{root}.conv.weight", (f"{RESNET}.root.conv.weight",), std_conv, over="stem"),
            *(Rule(f"{{root}}.norm.{p}", (f"{RESNET}.root.gn.{p}",), IDENTITY, over="stem")
              for p in ("weight", "bias")),
            Rule(f"{unit}.downsample.conv.weight", (f"{src}.downsample.weight",), std_conv, over="projection"),
            *(Rule(f"{unit}.downsample.norm.{p}", (f"{src}.gn_proj.{p}",), IDENTITY, over="projection")
              for p in ("weight", "bias")),
        ]
        for r in (1, 2, 3):
            table += [Rule(f"{unit}.conv{r}.weight", (f"{src}.conv{r}.weight",), std_conv, over="unit"),
                      *(Rule(f"{unit}.norm{r}.{p}", (f"{src}.gn{r}.{p}",), IDENTITY, over="unit")
                        for p in ("weight", "bias"))]
    return table


# --- torch.nn.TransformerEncoder ------------------------------------------------------------------

@dataclass(frozen=True)
class EncoderNames:
    """The user's names of the parts around the encoder (the `--map` option): a parameter (class token,
    position embedding) or a module (patch embedding: a Conv2d; final norm; head: a Linear). A part the state
    dict lacks is a model without it (but the patch embedding)."""

    patch_embed: str = "patch_embed"
    cls_token: str = "cls_token"
    pos_embed: str = "pos_embed"
    head: str = "head"
    norm: str | None = None  # None: the encoder's own (nn.TransformerEncoder(norm=...)), if it has one

    @classmethod
    def parse(cls, given: Mapping[str, str] | None) -> EncoderNames:
        given = dict(given or {})
        known = set(cls.__dataclass_fields__)
        if unknown := sorted(set(given) - known):
            raise VitConvertError(f"--map names unknown parts: {', '.join(unknown)} "
                                  f"(the parts: {', '.join(sorted(known))})")
        if bad := [f"{k}={v!r}" for k, v in given.items() if not isinstance(v, str) or not v or set(v) & set("{}")]:
            raise VitConvertError(f"--map needs a state-dict name for each part: {', '.join(bad)}")
        return cls(**{k: v.removesuffix(".weight") for k, v in given.items()})


ENCODER_LAYER = re.compile(r"^(?P<prefix>.*?)layers\.(?P<i>\d+)\.self_attn\.in_proj_weight$")


def encoder_prefix(shapes: Mapping[str, Shape], where: str) -> str:
    """Where the nn.TransformerEncoder sits in the state dict ('encoder.', 'transformer.encoder.', '')."""
    prefixes = {m["prefix"] for k in shapes if (m := ENCODER_LAYER.match(k))}
    if len(prefixes) != 1:
        found = "none" if not prefixes else ", ".join(sorted(repr(p) for p in prefixes))
        raise VitConvertError(f"{where}: expected one nn.TransformerEncoder (keys *layers.N.self_attn.in_proj_weight); "
                              f"found {found}")
    return prefixes.pop()


def encoder_rules(prefix: str, names: EncoderNames, shapes: Mapping[str, Shape]) -> list[Rule]:
    """torch's names inside the encoder: self_attn (in_proj, out_proj), linear1, linear2, norm1, norm2. A layer
    built with bias=False has no biases: no qkv bias (qkv_bias), none in the projections (proj_bias), zeros
    for its LayerNorms'."""
    layer = f"{prefix}layers.{{i}}"
    block = [
        *_bias_or_zeros("blocks.{i}.norm1", f"{layer}.norm1", shapes),
        Rule("blocks.{i}.attn.qkv.weight", (f"{layer}.self_attn.in_proj_weight",), IDENTITY),
        *_bias_or_zeros("blocks.{i}.norm2", f"{layer}.norm2", shapes),
    ]
    linears = (("attn.proj", "self_attn.out_proj"), ("mlp.fc1", "linear1"), ("mlp.fc2", "linear2"))
    for ours, theirs in linears:
        has_bias = f"{prefix}layers.0.{theirs}.bias" in shapes
        block += _params(f"blocks.{{i}}.{ours}", f"{layer}.{theirs}")[:1 + has_bias]
    if f"{prefix}layers.0.self_attn.in_proj_bias" in shapes:
        block.append(Rule("blocks.{i}.attn.qkv.bias", (f"{layer}.self_attn.in_proj_bias",), IDENTITY))
    table = [Rule("patch_embed.proj.weight", (f"{names.patch_embed}.weight",), IDENTITY)]
    if f"{names.patch_embed}.bias" in shapes:
        table.append(Rule("patch_embed.proj.bias", (f"{names.patch_embed}.bias",), IDENTITY))
    if names.cls_token in shapes:
        table.append(Rule("cls_token", (names.cls_token,), TOKEN))
    if names.pos_embed in shapes:
        table.append(Rule("pos_embed", (names.pos_embed,), POSITIONS))
    table += _per_block(block)
    norm = names.norm or f"{prefix}norm"
    if f"{norm}.weight" in shapes:
        table += _bias_or_zeros("norm", norm, shapes)
    if f"{names.head}.weight" in shapes:
        table += _params("head", names.head)
    return table
