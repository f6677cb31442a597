"""Test support: write random timm ViTs as Google JAX ``.npz`` checkpoints in the published layouts.

This is the *reference side* of the converter tests. It is an independent inverse of timm's
``timm.models.vision_transformer._load_weights`` and must never import vitconvert.

Typical use::

    model = random_timm_vit('tiny_hybrid_stages', seed=0)
    values = write_npz(model, tmp_path / 'w.npz', 'vit_jax')        # float32 values as stored
    expected = reference_logits(tmp_path / 'w.npz', model, x)        # JAX numerics by default

Layouts (``LAYOUTS``):

* ``vit_jax``: google-research/vision_transformer keys, no prefix, block sub-modules
  ``LayerNorm_0``, ``MultiHeadDotProductAttention_1``, ``LayerNorm_2``, ``MlpBlock_3``;
  position embedding ``Transformer/posembed_input/pos_embedding`` including the class-token row.
* ``opt_target``: the same under ``opt/target/``.
* ``linen``: ``vit_jax`` with the newer Flax numbering inside blocks (``LayerNorm_0``,
  ``MultiHeadDotProductAttention_0``, ``LayerNorm_1``, ``MlpBlock_0``), no prefix.
* ``big_vision``: prefix ``params/``, Linen numbering, top-level ``pos_embedding`` without a
  class-token row (the timm model must use ``no_embed_class=True`` when it has a class token).
* ``big_vision_scanned``: as ``big_vision`` with ``Transformer/encoderblock/...`` holding all
  layers stacked on a leading axis of length depth.

Hybrid models (ResNetV2 stem / stages before the patch embedding) add ``conv_root``, ``gn_root``,
``block{s}/unit{u}/{conv,gn}{1,2,3}``, ``conv_proj``/``gn_proj`` under the same prefix.
"""
from __future__ import annotations

import copy
import tempfile
from collections import OrderedDict
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
import torch.nn.functional as F
from timm.layers import GroupNormAct, HybridEmbed, StdConv2dSame
from timm.layers.padding import pad_same
from timm.models.resnetv2 import ResNetV2, create_resnetv2_stem
from timm.models.vision_transformer import VisionTransformer, _load_weights
from torch import nn

__all__ = [
    'JAX_GN_EPS',
    'JAX_WS_EPS',
    'LAYOUTS',
    'PRESETS',
    'JaxStdConv2dSame',
    'PreLogitsHead',
    'bfloat16_bits_to_float32',
    'bfloat16_values',
    'example_input',
    'fill_random_',
    'float32_to_bfloat16_bits',
    'gelu_tanh',
    'jax_numerics',
    'load_npz_float32',
    'meta_timm_vit',
    'npz_arrays',
    'random_pre_logits',
    'random_timm_vit',
    'reference_logits',
    'set_gelu',
    'timm_numerics',
    'timm_reference',
    'write_npz',
]

LAYOUTS = ('vit_jax', 'opt_target', 'linen', 'big_vision', 'big_vision_scanned')
_PREFIX = {
    'vit_jax': '', 'opt_target': 'opt/target/', 'linen': '',
    'big_vision': 'params/', 'big_vision_scanned': 'params/',
}
# (attention, second LayerNorm, MLP) sub-module names inside an encoder block
_OLD_NAMES = ('MultiHeadDotProductAttention_1', 'LayerNorm_2', 'MlpBlock_3')
_LINEN_NAMES = ('MultiHeadDotProductAttention_0', 'LayerNorm_1', 'MlpBlock_0')

JAX_WS_EPS = 1e-5   # vit_jax StdConv: (w - mean) / (std + 1e-5)
JAX_GN_EPS = 1e-6   # flax GroupNorm default epsilon

# --------------------------------------------------------------------------------------------
# random timm models
# --------------------------------------------------------------------------------------------
_TINY = {'img_size': 32, 'patch_size': 8, 'embed_dim': 32, 'depth': 2, 'num_heads': 2, 'mlp_ratio': 2.0,
         'num_classes': 10}
_GAP = {'class_token': False, 'global_pool': 'avg', 'fc_norm': False}
_SHRINK = {'embed_dim': 32, 'depth': 2, 'num_heads': 2, 'num_classes': 10}

#: name -> VisionTransformer kwargs (``backbone`` = ResNetV2 spec for hybrids; layers=() is stem only)
#: or (timm model name, create_model kwargs).
PRESETS: dict = {
    'tiny': dict(_TINY),
    'tiny_gap': dict(_TINY, **_GAP),
    # big_vision: position embedding without class-token row; its default classifier is 'gap'
    'tiny_big_vision': dict(_TINY, no_embed_class=True, **_GAP),
    'tiny_big_vision_token': dict(_TINY, no_embed_class=True),
    # R+Ti/16-like: stem only (7x7/2 conv, GN, SAME max-pool /2), 32 ch, patch 2 on the /4 map
    'tiny_hybrid_stem': dict(_TINY, patch_size=2, backbone={'layers': (), 'stem_chs': 32}),
    # R50-like with two stages (2 units, 1 unit), widths 4F = 128, 256; patch 1 on the /8 map
    'tiny_hybrid_stages': dict(
        _TINY, patch_size=1, backbone={'layers': (2, 1), 'channels': (128, 256), 'stem_chs': 32}),
    'tiny_hybrid_stages_gap': dict(
        _TINY, patch_size=1, backbone={'layers': (2, 1), 'channels': (128, 256), 'stem_chs': 32}, **_GAP),
    # timm's own hybrid definitions, transformer part shrunk (backbones are timm's, unchanged)
    'timm_r_ti16': ('vit_tiny_r_s16_p8_224', dict(_SHRINK, img_size=64)),
    'timm_r26_s32': ('vit_small_r26_s32_224', dict(_SHRINK, depth=1, img_size=64)),
}


def _build_backbone(spec: Mapping, in_chans: int) -> nn.Module:
    spec = dict(spec)
    layers = tuple(spec.pop('layers', ()))
    stem_chs = spec.pop('stem_chs', 64)
    conv_layer = partial(StdConv2dSame, eps=1e-8)   # as timm's _resnetv2
    if not layers:
        assert not spec, f'unknown stem options {spec}'
        return create_resnetv2_stem(
            in_chans, stem_chs, stem_type='same', preact=False, conv_layer=conv_layer,
            norm_layer=partial(GroupNormAct, num_groups=32))
    return ResNetV2(
        layers=layers, channels=tuple(spec.pop('channels', (256, 512, 1024, 2048))),
        stem_chs=stem_chs, num_classes=0, global_pool='', in_chans=in_chans, preact=False,
        stem_type='same', conv_layer=conv_layer, **spec)


def _build(arch: str | Mapping, overrides: Mapping) -> VisionTransformer:
    if isinstance(arch, str) and arch in PRESETS:
        arch = PRESETS[arch]
    if isinstance(arch, tuple):
        name, kwargs = arch
        return timm.create_model(name, pretrained=False, **dict(kwargs, **overrides))
    if isinstance(arch, str):
        return timm.create_model(arch, pretrained=False, **overrides)
    kwargs = dict(arch, **overrides)
    backbone = kwargs.pop('backbone', None)
    if backbone is None:
        return VisionTransformer(**kwargs)
    backbone = _build_backbone(backbone, kwargs.get('in_chans', 3))
    kwargs.setdefault('patch_size', 1)
    return VisionTransformer(embed_layer=partial(HybridEmbed, backbone=backbone), **kwargs)


@torch.no_grad()
def fill_random_(model: nn.Module, seed: int) -> nn.Module:
    """Overwrite EVERY parameter with seeded random non-zero values of realistic scale.

    weights: normal, std = clip(1/sqrt(fan_in), 0.02, 0.1); LayerNorm/GroupNorm scales 1 + 0.1 N;
    biases (norm and linear/conv) 0.03 N; class token / position embedding 0.05 N.
    """
    g = torch.Generator().manual_seed(int(seed))
    done = set()

    def normal_(p, std, mean=0.0):
        p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float32) * std + mean)
        done.add(id(p))

    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if id(p) in done:
                continue
            if isinstance(module, (nn.LayerNorm, nn.GroupNorm)):
                normal_(p, 0.1, 1.0) if name == 'weight' else normal_(p, 0.03)
            elif name == 'bias':
                normal_(p, 0.03)
            elif p.ndim >= 2 and name == 'weight':
                fan_in = p[0].numel()
                normal_(p, float(np.clip(fan_in ** -0.5, 0.02, 0.1)))
            else:   # cls_token, pos_embed, reg tokens, ...
                normal_(p, 0.05)
    missed = [n for n, p in model.named_parameters() if id(p) not in done]
    assert not missed, missed
    return model


def random_timm_vit(
        arch: str | Mapping | tuple[str, Mapping] = 'tiny',
        *,
        seed: int = 0,
        gelu: str | None = None,
        jax: bool = False,
        **overrides: Any,
) -> VisionTransformer:
    """A small timm VisionTransformer (or hybrid) in eval mode with every parameter random.

    ``arch``: a ``PRESETS`` name, a timm model name (built with ``pretrained=False``), a mapping of
    VisionTransformer kwargs (optional ``backbone=dict(layers=..., channels=..., stem_chs=...)``
    makes a hybrid; ``layers=()`` is stem only) or a ``(timm name, kwargs)`` tuple.
    ``overrides`` are merged into the kwargs. ``gelu``: None (timm's erf GELU), 'tanh' or 'erf'.
    ``jax=True`` applies :func:`jax_numerics` (hybrid weight standardization / GroupNorm eps).
    """
    model = _build(arch, overrides)
    fill_random_(model, seed)
    if gelu is not None:
        set_gelu(model, gelu)
    if jax:
        jax_numerics(model)
    return model.eval()


def meta_timm_vit(arch: str | Mapping | tuple, **overrides: Any) -> VisionTransformer:
    """``arch`` as :func:`random_timm_vit` takes it, built on the meta device: no memory, no values;
    :func:`npz_arrays` then gives a full-size published file's keys and shapes."""
    with torch.device('meta'):
        return _build(arch, overrides)


def random_pre_logits(model: VisionTransformer, size: int | None = None, *, seed: int = 0):
    """Random representation layer ``(kernel (D, R), bias (R,))`` for :func:`write_npz`.

    With ``size`` (R) different from the embedding dim also returns a matching head
    ``(kernel (R, K), bias (K,))``, else ``None`` for the head (the model's head is used).
    """
    rng = np.random.default_rng(seed)
    d = model.embed_dim
    r = d if size is None else int(size)
    pre = ((rng.standard_normal((d, r)) * d ** -0.5).astype(np.float32),
           (rng.standard_normal(r) * 0.03).astype(np.float32))
    head = None
    if r != d:
        k = model.head.out_features
        head = ((rng.standard_normal((r, k)) * 0.1).astype(np.float32),
                (rng.standard_normal(k) * 0.03).astype(np.float32))
    return pre, head


def example_input(model: nn.Module, batch: int = 2, seed: int = 0) -> torch.Tensor:
    """A seeded float32 image batch of the model's input size."""
    h, w = model.patch_embed.img_size
    g = torch.Generator().manual_seed(seed)
    return torch.randn((batch, model.in_chans, h, w), generator=g)


# --------------------------------------------------------------------------------------------
# numerics
# --------------------------------------------------------------------------------------------
class JaxStdConv2dSame(StdConv2dSame):
    """StdConv2dSame with the vit_jax standardization ``(w - mean) / (std + 1e-5)``
    (mean, biased std over H, W, Cin); timm uses ``(w - mean) / sqrt(var + eps)``."""

    def forward(self, x):
        if self.same_pad:
            x = pad_same(x, self.kernel_size, self.stride, self.dilation)
        w = self.weight
        w = w - w.mean(dim=(1, 2, 3), keepdim=True)
        w = w / (w.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt() + JAX_WS_EPS)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


def jax_numerics(model: nn.Module) -> nn.Module:
    """In place: StdConv2dSame -> JAX weight standardization, GroupNorm eps -> 1e-6. Returns model."""
    for m in model.modules():
        if type(m) is StdConv2dSame:
            m.__class__ = JaxStdConv2dSame
        elif isinstance(m, nn.GroupNorm):
            m.eps = JAX_GN_EPS
    return model


def timm_numerics(model: nn.Module) -> nn.Module:
    """Undo :func:`jax_numerics` (timm's formula, GroupNorm eps 1e-5). Returns model."""
    for m in model.modules():
        if type(m) is JaxStdConv2dSame:
            m.__class__ = StdConv2dSame
        elif isinstance(m, nn.GroupNorm):
            m.eps = 1e-5
    return model


def set_gelu(model: nn.Module, kind: str) -> nn.Module:
    """In place: replace every nn.GELU by ``nn.GELU(approximate='tanh' if kind == 'tanh' else 'none')``."""
    if kind not in ('tanh', 'erf'):
        raise ValueError(f"gelu must be 'tanh' or 'erf', got {kind!r}")
    approximate = 'tanh' if kind == 'tanh' else 'none'
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.GELU):
                setattr(parent, name, nn.GELU(approximate=approximate))
    return model


def gelu_tanh(model: nn.Module) -> nn.Module:
    """In place: the MLP activations become ``nn.GELU(approximate='tanh')`` (flax default)."""
    return set_gelu(model, 'tanh')


# --------------------------------------------------------------------------------------------
# bfloat16 as stored in the npz files (2-byte void dtype)
# --------------------------------------------------------------------------------------------
def float32_to_bfloat16_bits(a) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (round to nearest, ties to even), dtype ``|V2``."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    bits = a.view(np.uint32).astype(np.uint64)
    out = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(a)
    if nan.any():   # keep sign and payload top bits, force quiet
        out[nan] = ((bits[nan] >> 16) | 0x0040).astype(np.uint16)
    return out.astype('<u2').view('|V2')


def bfloat16_bits_to_float32(a) -> np.ndarray:
    """bfloat16 bit patterns (``|V2`` or uint16) -> the float32 values they represent (exact)."""
    a = np.asarray(a)
    if a.dtype.kind == 'V' and a.dtype.itemsize == 2:
        u = np.ascontiguousarray(a).view('<u2')
    elif a.dtype == np.uint16:
        u = a
    else:
        raise TypeError(f'not bfloat16 bits: {a.dtype}')
    return (u.astype(np.uint32) << 16).view(np.float32)


def bfloat16_values(a) -> np.ndarray:
    """The float32 values that :func:`float32_to_bfloat16_bits` of ``a`` stores."""
    return bfloat16_bits_to_float32(float32_to_bfloat16_bits(a))


def load_npz_float32(path) -> OrderedDict[str, np.ndarray]:
    """All arrays of an npz, ``|V2`` bfloat16 members decoded to float32, others as float32."""
    out = OrderedDict()
    with np.load(path, allow_pickle=False) as f:
        for k in f.files:
            v = f[k]
            out[k] = bfloat16_bits_to_float32(v) if v.dtype.kind == 'V' else v.astype(np.float32)
    return out


# --------------------------------------------------------------------------------------------
# timm model -> npz arrays
# --------------------------------------------------------------------------------------------
def _np(t: torch.Tensor) -> np.ndarray:
    if t.is_meta:  # a model built on the meta device: a zero-stride placeholder of the shape, no memory
        return np.broadcast_to(np.float32(0), tuple(t.shape))
    return t.detach().cpu().to(torch.float32).numpy().copy()


def _hwio(w: torch.Tensor) -> np.ndarray:
    return _np(w).transpose(2, 3, 1, 0)


def _is_identity(m) -> bool:
    return m is None or isinstance(m, nn.Identity)


def _check_jax_vit(model: nn.Module, layout: str) -> None:
    def need(cond, msg):
        if not cond:
            raise ValueError(f'model cannot be written faithfully as {layout!r}: {msg}')

    need(isinstance(model, VisionTransformer), 'not a timm VisionTransformer')
    need(layout in LAYOUTS, f'unknown layout, expected one of {LAYOUTS}')
    need(model.pos_embed is not None, 'no learned position embedding')
    need(model.reg_token is None and model.attn_pool is None, 'register tokens / attention pooling')
    need(_is_identity(model.norm_pre), 'pre-norm')
    need(_is_identity(model.fc_norm), "fc_norm (build gap models with fc_norm=False)")
    need(isinstance(model.norm, nn.LayerNorm), 'no final norm')
    need(isinstance(model.head, nn.Linear), 'no linear head')
    has_cls = model.cls_token is not None
    need(has_cls == (model.global_pool == 'token'),
         "classifier must be 'token' with a class token or 'avg' without one")
    if has_cls:
        if layout.startswith('big_vision'):
            need(model.no_embed_class,
                 'big_vision pos_embedding has no class-token row (no_embed_class=True)')
        else:
            need(not model.no_embed_class,
                 'vit_jax pos_embedding has a class-token row (no_embed_class=False)')
    pe = model.patch_embed
    need(isinstance(pe.proj, nn.Conv2d) and pe.proj.bias is not None, 'patch projection')
    for blk in model.blocks:
        need(all(_is_identity(getattr(blk, n, None)) for n in ('ls1', 'ls2')), 'layer scale')
        a = blk.attn
        need(all(_is_identity(getattr(a, n, None)) for n in ('q_norm', 'k_norm', 'norm')), 'attention norms')
        need(isinstance(a.qkv, nn.Linear) and a.qkv.bias is not None, 'fused qkv with bias')
        need(_is_identity(getattr(blk.mlp, 'norm', None)) and hasattr(blk.mlp, 'fc1'), 'plain MLP')


def _hybrid_arrays(backbone: nn.Module, gn_4d: str) -> OrderedDict[str, np.ndarray]:
    if gn_4d not in ('none', 'mixed', 'all'):
        raise ValueError(f"gn_4d must be 'none', 'mixed' or 'all', got {gn_4d!r}")
    out = OrderedDict()
    stem_only = not hasattr(backbone, 'stem')
    stem = backbone if stem_only else backbone.stem

    def gn(key, norm, four_d):
        for jax_name, p in (('scale', norm.weight), ('bias', norm.bias)):
            v = _np(p)
            out[f'{key}/{jax_name}'] = v.reshape(1, 1, 1, -1) if four_d else v

    for n in ('conv', 'norm'):
        if not hasattr(stem, n):
            raise ValueError('hybrid stem must be the 7x7 conv + GroupNorm stem')
    out['conv_root/kernel'] = _hwio(stem.conv.weight)
    gn('gn_root', stem.norm, gn_4d in ('mixed', 'all'))
    if not stem_only:
        for s, stage in enumerate(backbone.stages, 1):
            for u, block in enumerate(stage.blocks, 1):
                p = f'block{s}/unit{u}'
                four_d = gn_4d == 'all' or (gn_4d == 'mixed' and u == 1)
                for r in (1, 2, 3):
                    out[f'{p}/conv{r}/kernel'] = _hwio(getattr(block, f'conv{r}').weight)
                    gn(f'{p}/gn{r}', getattr(block, f'norm{r}'), four_d)
                if block.downsample is not None:
                    out[f'{p}/conv_proj/kernel'] = _hwio(block.downsample.conv.weight)
                    gn(f'{p}/gn_proj', block.downsample.norm, four_d)
    return out


def _block_arrays(blk: nn.Module, names) -> OrderedDict[str, np.ndarray]:
    mha, ln2, mlp = names
    a = blk.attn
    d = blk.norm1.weight.shape[0]
    h = a.num_heads
    qkv_w, qkv_b = _np(a.qkv.weight), _np(a.qkv.bias)
    inner = qkv_w.shape[0] // 3
    dh = inner // h
    out = OrderedDict()
    out['LayerNorm_0/scale'] = _np(blk.norm1.weight)
    out['LayerNorm_0/bias'] = _np(blk.norm1.bias)
    for j, n in enumerate(('query', 'key', 'value')):
        out[f'{mha}/{n}/kernel'] = qkv_w[j * inner:(j + 1) * inner].T.reshape(d, h, dh)
        out[f'{mha}/{n}/bias'] = qkv_b[j * inner:(j + 1) * inner].reshape(h, dh)
    out[f'{mha}/out/kernel'] = _np(a.proj.weight).T.reshape(h, dh, -1)
    out[f'{mha}/out/bias'] = _np(a.proj.bias)
    out[f'{ln2}/scale'] = _np(blk.norm2.weight)
    out[f'{ln2}/bias'] = _np(blk.norm2.bias)
    for r, fc in enumerate((blk.mlp.fc1, blk.mlp.fc2)):
        out[f'{mlp}/Dense_{r}/kernel'] = _np(fc.weight).T
        out[f'{mlp}/Dense_{r}/bias'] = _np(fc.bias)
    return out


def npz_arrays(
        model: VisionTransformer,
        layout: str = 'vit_jax',
        *,
        pre_logits: tuple[np.ndarray, np.ndarray] | None = None,
        head: tuple[np.ndarray, np.ndarray] | None = None,
        zero_head: bool = False,
        gn_4d: str = 'mixed',
) -> OrderedDict[str, np.ndarray]:
    """The float32 arrays (full keys, C-contiguous) that :func:`write_npz` stores, before any bf16.

    A model on the meta device gives each key's shape alone, as zero-stride placeholders that hold no
    memory (the layout of a full-size published file, without its weights)."""
    meta = next(model.parameters()).is_meta
    _check_jax_vit(model, layout)
    prefix = _PREFIX[layout]
    big_vision = layout.startswith('big_vision')
    names = _OLD_NAMES if layout in ('vit_jax', 'opt_target') else _LINEN_NAMES
    out = OrderedDict()
    out['embedding/kernel'] = _hwio(model.patch_embed.proj.weight)
    out['embedding/bias'] = _np(model.patch_embed.proj.bias)
    if hasattr(model.patch_embed, 'backbone'):
        out.update(_hybrid_arrays(model.patch_embed.backbone, gn_4d))
    if model.cls_token is not None:
        out['cls'] = _np(model.cls_token)
    pos_key = 'pos_embedding' if big_vision else 'Transformer/posembed_input/pos_embedding'
    out[pos_key] = _np(model.pos_embed)

    blocks = [_block_arrays(b, names) for b in model.blocks]
    if layout == 'big_vision_scanned':
        for k in blocks[0]:
            out[f'Transformer/encoderblock/{k}'] = np.stack([b[k] for b in blocks])
    else:
        for i, b in enumerate(blocks):
            for k, v in b.items():
                out[f'Transformer/encoderblock_{i}/{k}'] = v
    out['Transformer/encoder_norm/scale'] = _np(model.norm.weight)
    out['Transformer/encoder_norm/bias'] = _np(model.norm.bias)

    d = model.embed_dim
    head_kernel, head_bias = _np(model.head.weight).T, _np(model.head.bias)
    if head is not None:
        head_kernel, head_bias = (np.asarray(x, dtype=np.float32) for x in head)
    if pre_logits is not None:
        pk, pb = (np.asarray(x, dtype=np.float32) for x in pre_logits)
        if pk.ndim != 2 or pk.shape[0] != d or pb.shape != (pk.shape[1],):
            raise ValueError(f'pre_logits must be (kernel ({d}, R), bias (R,)), got {pk.shape}, {pb.shape}')
        out['pre_logits/kernel'], out['pre_logits/bias'] = pk, pb
    rep = out['pre_logits/kernel'].shape[1] if pre_logits is not None else d
    if head_kernel.shape[0] != rep or head_bias.shape != (head_kernel.shape[1],):
        raise ValueError(f'head kernel must be ({rep}, K) with bias (K,), got {head_kernel.shape}, '
                         f'{head_bias.shape} (pass head=... when the representation size differs from D)')
    if zero_head:
        head_kernel, head_bias = np.zeros_like(head_kernel), np.zeros_like(head_bias)
    out['head/kernel'], out['head/bias'] = head_kernel, head_bias
    return OrderedDict((prefix + k, v if meta else np.ascontiguousarray(v, dtype=np.float32)) for k, v in out.items())


def write_npz(
        model: VisionTransformer,
        path,
        layout: str = 'vit_jax',
        *,
        pre_logits: tuple[np.ndarray, np.ndarray] | None = None,
        head: tuple[np.ndarray, np.ndarray] | None = None,
        bfloat16: bool = False,
        zero_head: bool = False,
        gn_4d: str = 'mixed',
) -> OrderedDict[str, np.ndarray]:
    """Write ``model`` as an uncompressed ``.npz`` (``np.savez``) in a published layout.

    ``pre_logits``: representation layer ``(kernel (D, R), bias (R,))`` (timm has none); the head
    kernel is then (R, K): from the model when R == D, else pass ``head=(kernel (R, K), bias (K,))``.
    ``bfloat16``: every array stored as bfloat16 bits (``|V2``, round to nearest even).
    ``zero_head``: head kernel and bias all zeros (the 2020 ImageNet-21k files).
    ``gn_4d`` (hybrids): which GroupNorm scale/bias are stored (1, 1, 1, C): 'none', 'all' or
    'mixed' (gn_root and every unit1; the other units (C,)).
    Returns the float32 values stored per key (bf16-rounded when ``bfloat16``).
    """
    arrays = npz_arrays(model, layout, pre_logits=pre_logits, head=head, zero_head=zero_head, gn_4d=gn_4d)
    if bfloat16:
        stored = OrderedDict((k, float32_to_bfloat16_bits(v)) for k, v in arrays.items())
        arrays = OrderedDict((k, bfloat16_bits_to_float32(v)) for k, v in stored.items())
    else:
        stored = arrays
    with open(path, 'wb') as f:   # a file object: np.savez then adds no '.npz' suffix
        np.savez(f, **stored)
    return arrays


# --------------------------------------------------------------------------------------------
# reference: what timm's own npz loader makes of a file
# --------------------------------------------------------------------------------------------
class PreLogitsHead(nn.Module):
    """head(tanh(pre_logits(x))): the 2020 representation layer + head, as a timm ``model.head``."""

    def __init__(self, pre_logits: nn.Linear, fc: nn.Linear):
        super().__init__()
        self.pre_logits = pre_logits
        self.fc = fc

    def forward(self, x):
        return self.fc(torch.tanh(self.pre_logits(x)))


_PREFIXES = ('', 'opt/target/', 'params/', 'params/img/')


def _fresh(like: nn.Module | Callable[[], nn.Module]) -> nn.Module:
    model = copy.deepcopy(like) if isinstance(like, nn.Module) else like()
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float('nan'))   # anything the loader does not set shows up as NaN
    return model


@torch.no_grad()
def timm_reference(
        path,
        like: nn.Module | Callable[[], nn.Module],
        *,
        gelu: str | None = 'tanh',
        jax: bool | None = True,
) -> VisionTransformer:
    """The model timm builds and loads with its own ``_load_weights`` from ``path``.

    ``like``: a timm model of the file's architecture (deep-copied, untouched) or a factory. Its
    parameters are NaN-filled before loading, and an error is raised if any stays NaN.
    bfloat16 (``|V2``) files are decoded to float32 first (timm needs jax for them). A file's
    ``pre_logits`` (dropped by timm's loader) is added from the file as ``PreLogitsHead``.
    Numerics: ``gelu`` 'tanh' (JAX, default), 'erf', or None = as in ``like``; ``jax`` True
    (default: JAX hybrid weight standardization / GroupNorm eps), False (timm's), None = as ``like``.
    """
    model = _fresh(like)
    arrays = load_npz_float32(path)
    prefix = next((p for p in _PREFIXES if f'{p}embedding/kernel' in arrays), None)
    if prefix is None:
        raise ValueError(f'{path}: no embedding/kernel under any known prefix')
    pre = None
    if f'{prefix}pre_logits/kernel' in arrays:
        pk, pb = arrays[f'{prefix}pre_logits/kernel'], arrays[f'{prefix}pre_logits/bias']
        pre = nn.Linear(*pk.shape)
        pre.weight.copy_(torch.from_numpy(pk.T.copy()))
        pre.bias.copy_(torch.from_numpy(pb))
        model.head = nn.Linear(pk.shape[1], arrays[f'{prefix}head/bias'].shape[-1])
        model.head.weight.fill_(float('nan'))
        model.head.bias.fill_(float('nan'))
    with tempfile.TemporaryDirectory() as tmp:
        load_path = str(path)
        with np.load(path, allow_pickle=False) as f:
            has_bf16 = any(f[k].dtype.kind == 'V' for k in f.files)
        if has_bf16:
            load_path = str(Path(tmp) / 'float32.npz')
            with open(load_path, 'wb') as fh:
                np.savez(fh, **arrays)
        _load_weights(model, load_path)
    unloaded = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
    if unloaded:
        raise AssertionError(f"timm's loader left parameters unset: {unloaded}")
    if pre is not None:
        model.head = PreLogitsHead(pre, model.head)
    if gelu is not None:
        set_gelu(model, gelu)
    if jax is True:
        jax_numerics(model)
    elif jax is False:
        timm_numerics(model)
    return model.eval()


@torch.no_grad()
def reference_logits(
        path,
        like: nn.Module | Callable[[], nn.Module],
        x: torch.Tensor,
        *,
        gelu: str | None = 'tanh',
        jax: bool | None = True,
) -> torch.Tensor:
    """float32 logits of :func:`timm_reference` on ``x`` (JAX numerics unless told otherwise)."""
    return timm_reference(path, like, gelu=gelu, jax=jax)(x.float()).float()
