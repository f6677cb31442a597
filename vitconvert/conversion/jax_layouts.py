"""The published JAX layouts as data: how each key becomes one of our tensors.

Layouts differ in a prefix ('', 'opt/target/', 'params/', and the image tower of a two-tower model:
'params/img/' in big_vision's SigLIP files, 'img/' in vit_jax's LiT files), in the Flax sub-module
numbering inside a block (the published files use MultiHeadDotProductAttention_1, LayerNorm_2,
MlpBlock_3; newer Flax code numbers them 0, 1, 0), in where the position embedding lives
(big_vision: top level, without a class-token row; none at all for big_vision's computed 'sincos2d'),
in the pooling (big_vision's attention pooling `MAPHead_0`), and in whether blocks are stacked on a
leading axis ('scanned'). `detect` reads which from the keys; `rules` builds the table.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from ..core.errors import VitConvertError
from .mapping import IDENTITY, Op, Rule, Shape, block_bindings

PREFIXES = ("", "opt/target/", "params/", "params/img/", "img/")
TOWER = "img/"  # a prefix ending so is the image tower of a two-tower (image-text) model
WS_EPS = 1e-5  # weight standardization in the JAX ResNet: (w - mean) / (std + 1e-5)


# --- array transforms (with their shape twins) ----------------------------------------------------

def transpose(w: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """A contiguous w.T, copied 16 rows at a time: numpy's strided copy of a large transpose misses
    the cache on every element, and blocks of rows stay in it; the transposes are most of a conversion's time
    (the timings: benchmarks/RESULTS.md, "One-off timings")."""
    out = np.empty(w.shape[::-1], w.dtype) if out is None else out
    for i in range(0, w.shape[0], 16):
        out[:, i:i + 16] = w[i:i + 16].T
    return out


def _qkv_kernel(*kernels: np.ndarray) -> np.ndarray:  # n x (D, H, Dh) -> (n*H*Dh, D)
    d = kernels[0].shape[0]
    flat = [k.reshape(d, -1) for k in kernels]
    out = np.empty((sum(f.shape[1] for f in flat), d), np.float32)
    row = 0
    for f in flat:
        transpose(f, out[row:row + f.shape[1]])
        row += f.shape[1]
    return out


def _standardized_conv(w: np.ndarray) -> np.ndarray:
    """JAX StdConv: standardize over (H, W, Cin) in float64, then HWIO -> OIHW."""
    w64 = w.astype(np.float64)
    mean = w64.mean(axis=(0, 1, 2), keepdims=True)
    std = w64.std(axis=(0, 1, 2), keepdims=True)
    return ((w64 - mean) / (std + WS_EPS)).astype(np.float32).transpose(3, 2, 0, 1)


def _check_rank(shape: Shape, rank: int) -> Shape:
    if len(shape) != rank:
        raise ValueError(f"expected {rank} dimensions")
    return shape


def _qkv_shape(*shapes: Shape) -> Shape:
    for s in shapes:
        _check_rank(s, 3)
    if len(set(shapes)) != 1:
        raise ValueError("query, key and value shapes differ")
    d, h, dh = shapes[0]
    return (len(shapes) * h * dh, d)


def _flat_shape(s: Shape) -> Shape:
    if any(n != 1 for n in s[:-1]):
        raise ValueError("expected a vector, possibly stored as (1, 1, 1, C)")
    return (s[-1],)


VECTOR = Op("vector", lambda x: x.reshape(-1), _flat_shape)
DENSE = Op("dense kernel (in, out) -> (out, in)", transpose,
           lambda s: _check_rank(s, 2)[::-1])
CONV = Op("conv kernel HWIO -> OIHW", lambda w: w.transpose(3, 2, 0, 1),
          lambda s: tuple(_check_rank(s, 4)[i] for i in (3, 2, 0, 1)))
STD_CONV = Op("weight-standardized conv kernel", _standardized_conv,
              lambda s: tuple(_check_rank(s, 4)[i] for i in (3, 2, 0, 1)))
# Also the attention pooling's query alone and its keys and values fused (timm's attn_pool.q, .kv).
QKV_KERNEL = Op("query/key/value kernels -> fused rows", _qkv_kernel, _qkv_shape)
QKV_BIAS = Op("query/key/value biases -> fused rows",
              lambda *bs: np.concatenate([b.reshape(-1) for b in bs]),
              lambda *ss: (sum(int(np.prod(_check_rank(s, 2))) for s in ss),))
OUT_KERNEL = Op("attention out kernel (H, Dh, D) -> (D, H*Dh)",
                lambda w: transpose(w.reshape(-1, w.shape[-1])),
                lambda s: (_check_rank(s, 3)[2], s[0] * s[1]))


# --- layout detection -----------------------------------------------------------------------------

@dataclass(frozen=True)
class JaxLayout:
    name: str  # 'vit_jax' or 'big_vision'
    prefix: str
    scanned: bool
    linen_numbering: bool  # MultiHeadDotProductAttention_0 / MlpBlock_0 / LayerNorm_0,1
    hybrid: bool
    posemb: str = "learn"  # or 'sincos2d': big_vision's computed table, no key
    map_head: bool = False  # big_vision's attention pooling, MAPHead_0

    @property
    def two_tower(self) -> bool:
        return self.prefix.endswith(TOWER)

    @property
    def outer(self) -> str:
        """The prefix of the whole two-tower model, whose text tower and scalars sit beside the image tower."""
        return self.prefix[:-len(TOWER)]

    def other_tower(self, keys: Iterable[str]) -> list[str]:
        """The keys of a two-tower file that are not the image tower's: the text tower `txt/...` and
        the loss's temperature `t` and bias `b`. Anything else stays a key nothing maps."""
        if not self.two_tower:
            return []
        o = self.outer
        return [k for k in keys if k.startswith(f"{o}txt/") or k in (f"{o}t", f"{o}b")]

    @property
    def block(self) -> str:
        return f"{self.prefix}Transformer/encoderblock" + ("" if self.scanned else "_{i}")

    def block_key(self, sub: str) -> str:
        """Template for one block's parameter; scanned layouts index row {i} of a stacked array."""
        return f"{self.block}/{sub}" + ("[{i}]" if self.scanned else "")

    @property
    def mha(self) -> str:
        return "MultiHeadDotProductAttention_0" if self.linen_numbering else "MultiHeadDotProductAttention_1"

    @property
    def mlp(self) -> str:
        return "MlpBlock_0" if self.linen_numbering else "MlpBlock_3"

    @property
    def ln2(self) -> str:
        return "LayerNorm_1" if self.linen_numbering else "LayerNorm_2"

    @property
    def pos_embed(self) -> str:
        return f"{self.prefix}pos_embedding" if self.name == "big_vision" else \
            f"{self.prefix}Transformer/posembed_input/pos_embedding"


def detect(shapes: Mapping[str, Shape], where: str) -> JaxLayout:
    prefix = next((p for p in PREFIXES if f"{p}embedding/kernel" in shapes), None)
    if prefix is None:
        sample = ", ".join(sorted(shapes)[:6])
        raise VitConvertError(
            f"{where}: not a JAX ViT checkpoint (no 'embedding/kernel' under any known prefix "
            f"{', '.join(repr(p) for p in PREFIXES)}); its keys begin: {sample}")
    scanned = f"{prefix}Transformer/encoderblock/LayerNorm_0/scale" in shapes
    first_block = f"{prefix}Transformer/encoderblock" + ("" if scanned else "_0")
    linen = f"{first_block}/MultiHeadDotProductAttention_0/query/kernel" in shapes
    vit_jax_pos = f"{prefix}Transformer/posembed_input/pos_embedding" in shapes
    # Only big_vision computes a position table ('sincos2d', no key), and it numbers blocks the Linen way:
    # a vit_jax file without its table stays vit_jax, and its missing key an error.
    sincos = linen and not vit_jax_pos and f"{prefix}pos_embedding" not in shapes
    big_vision = prefix.startswith("params/") or f"{prefix}pos_embedding" in shapes or sincos
    return JaxLayout("big_vision" if big_vision else "vit_jax", prefix, scanned, linen,
                  hybrid=f"{prefix}conv_root/kernel" in shapes, posemb="sincos2d" if sincos else "learn",
                  map_head=any(k.startswith(f"{prefix}MAPHead_0/") for k in shapes))


def count_blocks(layout: JaxLayout, shapes: Mapping[str, Shape], where: str = "checkpoint") -> int:
    if layout.scanned:
        key = f"{layout.prefix}Transformer/encoderblock/LayerNorm_0/scale"
        if len(shapes[key]) != 2:
            raise VitConvertError(f"{where}: {key} has shape {shapes[key]}, expected (layers, width)")
        return shapes[key][0]
    pattern = re.compile(re.escape(f"{layout.prefix}Transformer/encoderblock_") + r"(\d+)/")
    return len({m[1] for k in shapes if (m := pattern.match(k))})


def hybrid_units(layout: JaxLayout, shapes: Mapping[str, Shape], where: str = "checkpoint") -> tuple[int, ...]:
    """Units per ResNet stage, from keys 'block{s}/unit{u}/...' (1-based)."""
    return stage_units(shapes, re.compile(re.escape(layout.prefix) + r"block(\d+)/unit(\d+)/"), where)


def stage_units(shapes: Mapping[str, Shape], pattern: re.Pattern[str], where: str) -> tuple[int, ...]:
    """Units per ResNet stage, from the keys `pattern` matches with the 1-based stage and unit as its groups."""
    units: dict[int, set[int]] = {}
    for k in shapes:
        if m := pattern.match(k):
            units.setdefault(int(m[1]), set()).add(int(m[2]))
    if sorted(units) != list(range(1, len(units) + 1)):
        raise VitConvertError(f"{where}: ResNet stages are not numbered 1..n: found stages {sorted(units)}")
    # Numbered 1..n, so the count is bounded by the keys (a key 'unit99999999' must not make a plan that big).
    for stage, found in units.items():
        if sorted(found) != list(range(1, len(found) + 1)):
            raise VitConvertError(f"{where}: the units of ResNet stage {stage} are not numbered 1..n: "
                                  f"found {sorted(found)}")
    return tuple(len(units[s]) for s in sorted(units))


# --- the table ------------------------------------------------------------------------------------

def rules(layout: JaxLayout) -> list[Rule]:
    p, blk = layout.prefix, layout.block_key
    mha, mlp, ln2 = layout.mha, layout.mlp, layout.ln2
    table = [
        Rule("patch_embed.proj.weight", (f"{p}embedding/kernel",), CONV),
        Rule("patch_embed.proj.bias", (f"{p}embedding/bias",), IDENTITY),
        Rule("cls_token", (f"{p}cls",), IDENTITY, optional=True),
        *([Rule("pos_embed", (layout.pos_embed,), IDENTITY)] if layout.posemb == "learn" else []),
        *block_rules(blk, mha, mlp, ln2),
        Rule("norm.weight", (f"{p}Transformer/encoder_norm/scale",), IDENTITY),
        Rule("norm.bias", (f"{p}Transformer/encoder_norm/bias",), IDENTITY),
        *(map_head_rules(p) if layout.map_head else []),
        Rule("pre_logits.fc.weight", (f"{p}pre_logits/kernel",), DENSE, optional=True),
        Rule("pre_logits.fc.bias", (f"{p}pre_logits/bias",), IDENTITY, optional=True),
        # No head: an image tower (SigLIP's) or a backbone, whose output is the pooled features.
        Rule("head.weight", (f"{p}head/kernel",), DENSE, optional=True),
        Rule("head.bias", (f"{p}head/bias",), IDENTITY, optional=True),
    ]
    if layout.hybrid:
        table += hybrid_rules(p)
    return table


def block_rules(blk: Callable[[str], str], mha: str, mlp: str, ln2: str, target: str = "",
                over: str = "block") -> list[Rule]:
    """One pre-norm Flax encoder block (`blk(sub)`: the key of its parameter `sub`) as our (timm's) Block
    under `{target}blocks.{i}.`: the image tower's, and big_vision's text tower's."""
    t = f"{target}blocks.{{i}}"
    return [
        Rule(f"{t}.norm1.weight", (blk("LayerNorm_0/scale"),), IDENTITY, over=over),
        Rule(f"{t}.norm1.bias", (blk("LayerNorm_0/bias"),), IDENTITY, over=over),
        Rule(f"{t}.attn.qkv.weight", tuple(blk(f"{mha}/{n}/kernel") for n in ("query", "key", "value")),
             QKV_KERNEL, over=over),
        Rule(f"{t}.attn.qkv.bias", tuple(blk(f"{mha}/{n}/bias") for n in ("query", "key", "value")),
             QKV_BIAS, over=over),
        Rule(f"{t}.attn.proj.weight", (blk(f"{mha}/out/kernel"),), OUT_KERNEL, over=over),
        Rule(f"{t}.attn.proj.bias", (blk(f"{mha}/out/bias"),), IDENTITY, over=over),
        Rule(f"{t}.norm2.weight", (blk(f"{ln2}/scale"),), IDENTITY, over=over),
        Rule(f"{t}.norm2.bias", (blk(f"{ln2}/bias"),), IDENTITY, over=over),
        Rule(f"{t}.mlp.fc1.weight", (blk(f"{mlp}/Dense_0/kernel"),), DENSE, over=over),
        Rule(f"{t}.mlp.fc1.bias", (blk(f"{mlp}/Dense_0/bias"),), IDENTITY, over=over),
        Rule(f"{t}.mlp.fc2.weight", (blk(f"{mlp}/Dense_1/kernel"),), DENSE, over=over),
        Rule(f"{t}.mlp.fc2.bias", (blk(f"{mlp}/Dense_1/bias"),), IDENTITY, over=over),
    ]


def map_head_rules(p: str, target: str = "") -> list[Rule]:
    """big_vision's MAPHead (a learned probe attending over the tokens, LayerNorm, residual MLP) as timm's
    AttentionPoolLatent: probe -> latent, query -> q, key and value fused -> kv, out -> proj (under
    `{target}attn_pool.`)."""
    head, mha = f"{p}MAPHead_0", f"{p}MAPHead_0/MultiHeadDotProductAttention_0"
    rules = [
        Rule("attn_pool.latent", (f"{head}/probe",), IDENTITY),
        Rule("attn_pool.q.weight", (f"{mha}/query/kernel",), QKV_KERNEL),
        Rule("attn_pool.q.bias", (f"{mha}/query/bias",), QKV_BIAS),
        Rule("attn_pool.kv.weight", (f"{mha}/key/kernel", f"{mha}/value/kernel"), QKV_KERNEL),
        Rule("attn_pool.kv.bias", (f"{mha}/key/bias", f"{mha}/value/bias"), QKV_BIAS),
        Rule("attn_pool.proj.weight", (f"{mha}/out/kernel",), OUT_KERNEL),
        Rule("attn_pool.proj.bias", (f"{mha}/out/bias",), IDENTITY),
        Rule("attn_pool.norm.weight", (f"{head}/LayerNorm_0/scale",), IDENTITY),
        Rule("attn_pool.norm.bias", (f"{head}/LayerNorm_0/bias",), IDENTITY),
        Rule("attn_pool.mlp.fc1.weight", (f"{head}/MlpBlock_0/Dense_0/kernel",), DENSE),
        Rule("attn_pool.mlp.fc1.bias", (f"{head}/MlpBlock_0/Dense_0/bias",), IDENTITY),
        Rule("attn_pool.mlp.fc2.weight", (f"{head}/MlpBlock_0/Dense_1/kernel",), DENSE),
        Rule("attn_pool.mlp.fc2.bias", (f"{head}/MlpBlock_0/Dense_1/bias",), IDENTITY),
    ]
    return [Rule(target + r.target, r.sources, r.op, r.over, r.optional) for r in rules]


def hybrid_rules(p: str) -> list[Rule]:
    """The ResNetV2 stem; timm names a stem-only backbone's modules directly under `backbone.`.

    Bindings: 'stem' gives {'root'} (the module path of the stem); 'unit' gives the 1-based JAX
    stage and unit {s}, {u} with the 0-based timm ones {si}, {ui}; 'projection' the same for the
    first unit of each stage.
    """
    unit = "patch_embed.backbone.stages.{si}.blocks.{ui}"
    src = p + "block{s}/unit{u}"
    table = [
        Rule("{root}.conv.weight", (f"{p}conv_root/kernel",), STD_CONV, over="stem"),
        Rule("{root}.norm.weight", (f"{p}gn_root/scale",), VECTOR, over="stem"),
        Rule("{root}.norm.bias", (f"{p}gn_root/bias",), VECTOR, over="stem"),
        Rule(f"{unit}.downsample.conv.weight", (f"{src}/conv_proj/kernel",), STD_CONV, over="projection"),
        Rule(f"{unit}.downsample.norm.weight", (f"{src}/gn_proj/scale",), VECTOR, over="projection"),
        Rule(f"{unit}.downsample.norm.bias", (f"{src}/gn_proj/bias",), VECTOR, over="projection"),
    ]
    for r in (1, 2, 3):
        table += [
            Rule(f"{unit}.conv{r}.weight", (f"{src}/conv{r}/kernel",), STD_CONV, over="unit"),
            Rule(f"{unit}.norm{r}.weight", (f"{src}/gn{r}/scale",), VECTOR, over="unit"),
            Rule(f"{unit}.norm{r}.bias", (f"{src}/gn{r}/bias",), VECTOR, over="unit"),
        ]
    return table


def bindings(depth: int, stage_units: tuple[int, ...] | None) -> dict[str, list[dict[str, object]]]:
    units = [{"s": s + 1, "u": u + 1, "si": s, "ui": u}
             for s, n in enumerate(stage_units or ()) for u in range(n)]
    root = "patch_embed.backbone.stem" if stage_units else "patch_embed.backbone"
    return {
        **block_bindings(depth),
        "stem": [{"root": root}] if stage_units is not None else [],
        "unit": units,
        "projection": [b for b in units if b["u"] == 1],
    }
