"""Test support: big_vision checkpoints written from random arrays, and big_vision's forward pass written
out from its formulas. The *reference side* of the big_vision tests: it must never import vitconvert.

Sources, google-research/big_vision at 0127fb6:

* ``big_vision/models/vit.py``: ``_Model`` (conv stem ``embedding``, position embedding added to the
  patches *before* the class token ``cls`` is prepended, ``Encoder`` ending in ``encoder_norm``, pooling
  ``tok`` / ``gap`` (mean of the normed tokens) / ``map`` (``MAPHead``), optional ``pre_logits`` Dense +
  tanh, ``head``), ``posemb_sincos_2d``, ``Encoder1DBlock`` (pre-norm, Linen numbering), ``MlpBlock``
  (``nn.gelu``: the tanh form), ``MAPHead`` (a probe attending over the tokens, then LayerNorm and a
  residual MLP; no residual around the attention), flax's LayerNorm eps 1e-6 and
  ``MultiHeadDotProductAttention`` (queries scaled by head_dim ** -0.5);
* ``big_vision/models/proj/image_text/two_towers.py``: the towers ``img`` and ``txt`` and the scalars
  ``t`` and ``b`` side by side; ``zimg`` is the image tower's output, L2-normalised afterwards;
* ``big_vision/models/proj/flexi/vit.py``: ``resample_patchemb`` (PI-resize with ``tf.image.resize``
  bilinear) and the position embedding stored on ``posemb_size`` and resized at every forward with
  ``jax.image.resize(..., 'linear')`` (antialias defaults to True).

Arrays are float32 as stored; the forward runs in float64 torch ops (no torch.nn modules).
"""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    'BigVision',
    'forward',
    'jax_linear_resize_matrix',
    'jax_resize_linear',
    'pi_resize_kernel',
    'posemb_sincos_2d',
    'random_params',
    'scan',
    'tf_bilinear_resize_matrix',
    'BigVisionText',
    'average_embeddings',
    'canonicalize_text',
    'normalize',
    'random_text_params',
    'scan_text',
    'siglip_npz',
    'text_forward',
    'two_tower',
    'with_prefix',
    'write_npz',
]

LN_EPS = 1e-6  # flax nn.LayerNorm


@dataclass(frozen=True)
class BigVision:
    """A big_vision ViT: `vit.Model(num_classes, patch_size, width, depth, mlp_dim, num_heads, posemb,
    rep_size, pool_type)` with its position grid (the stored one for FlexiViT's `posemb_size`)."""

    width: int = 32
    depth: int = 2
    heads: int = 2
    mlp: int = 64
    patch: int = 8
    grid: tuple[int, int] = (4, 4)
    pool: str = 'gap'  # 'tok', 'gap', 'map'
    posemb: str = 'learn'  # or 'sincos2d'
    rep_size: int | None = None
    num_classes: int = 10  # 0: no head (an image tower)
    channels: int = 3


def random_params(m: BigVision, seed: int = 0, *, shapes_only: bool = False) -> OrderedDict[str, np.ndarray]:
    """Every parameter of `m` under its big_vision name (no prefix, one `encoderblock_N` per layer),
    random float32: weights N(0, clip(fan_in ** -0.5, 0.02, 0.1)), norm scales 1 + 0.1 N, biases 0.03 N,
    position embedding, class token and probe 0.5 N (large enough that a resize shows), the head 0.5 N
    (logits of order 1, where a wrong constant shows).

    shapes_only: zero-stride placeholders of each shape instead, which hold no memory (the layout of a
    full-size published file, without its weights)."""
    rng = np.random.default_rng(seed)
    d, h, p = m.width, m.heads, m.patch

    def normal(shape, scale=1.0, offset=0.0):
        if shapes_only:
            return np.broadcast_to(np.float32(0), shape)
        return offset + scale * rng.standard_normal(shape)

    def w(*shape, fan_in):
        return normal(shape, float(np.clip(fan_in ** -0.5, 0.02, 0.1)))

    def bias(*shape):
        return normal(shape, 0.03)

    def norm(name):
        return {f'{name}/scale': normal((d,), 0.1, 1.0), f'{name}/bias': bias(d)}

    def attention(name):
        out = {}
        for q in ('query', 'key', 'value'):
            out[f'{name}/{q}/kernel'] = w(d, h, d // h, fan_in=d)
            out[f'{name}/{q}/bias'] = bias(h, d // h)
        out[f'{name}/out/kernel'] = w(h, d // h, d, fan_in=d)
        out[f'{name}/out/bias'] = bias(d)
        return out

    def mlp(name):
        return {f'{name}/Dense_0/kernel': w(d, m.mlp, fan_in=d), f'{name}/Dense_0/bias': bias(m.mlp),
                f'{name}/Dense_1/kernel': w(m.mlp, d, fan_in=m.mlp), f'{name}/Dense_1/bias': bias(d)}

    out = {'embedding/kernel': w(p, p, m.channels, d, fan_in=p * p * m.channels), 'embedding/bias': bias(d)}
    if m.posemb == 'learn':
        out['pos_embedding'] = normal((1, m.grid[0] * m.grid[1], d), 0.5)
    if m.pool == 'tok':
        out['cls'] = normal((1, 1, d), 0.5)
    for i in range(m.depth):
        b = f'Transformer/encoderblock_{i}'
        out.update(norm(f'{b}/LayerNorm_0'))
        out.update(attention(f'{b}/MultiHeadDotProductAttention_0'))
        out.update(norm(f'{b}/LayerNorm_1'))
        out.update(mlp(f'{b}/MlpBlock_0'))
    out.update(norm('Transformer/encoder_norm'))
    if m.pool == 'map':
        out['MAPHead_0/probe'] = normal((1, 1, d), 0.5)
        out.update(attention('MAPHead_0/MultiHeadDotProductAttention_0'))
        out.update(norm('MAPHead_0/LayerNorm_0'))
        out.update(mlp('MAPHead_0/MlpBlock_0'))
    width = d
    if m.rep_size:
        out['pre_logits/kernel'] = w(d, m.rep_size, fan_in=d)
        out['pre_logits/bias'] = bias(m.rep_size)
        width = m.rep_size
    if m.num_classes:
        out['head/kernel'] = normal((width, m.num_classes), 0.5)
        out['head/bias'] = bias(m.num_classes)
    return OrderedDict((k, v if shapes_only else np.ascontiguousarray(v, dtype=np.float32)) for k, v in out.items())


def _stack(arrays: list[np.ndarray]) -> np.ndarray:
    """np.stack; placeholders (zero strides, see `random_params`) stay placeholders."""
    if arrays[0].ndim and not any(arrays[0].strides):
        return np.broadcast_to(np.float32(0), (len(arrays), *arrays[0].shape))
    return np.stack(arrays)


def scan(params: dict[str, np.ndarray]) -> OrderedDict[str, np.ndarray]:
    """big_vision's `pyloop_to_scan`: every `encoderblock_N/...` stacked into `encoderblock/...` (SigLIP 2)."""
    stem = 'Transformer/encoderblock_'
    blocks = sorted({int(k.split('/')[1].rsplit('_', 1)[1]) for k in params if k.startswith(stem)})
    out = OrderedDict((k, v) for k, v in params.items() if not k.startswith('Transformer/encoderblock_'))
    for sub in [k.split('/', 2)[2] for k in params if k.startswith('Transformer/encoderblock_0/')]:
        out[f'Transformer/encoderblock/{sub}'] = _stack(
            [params[f'Transformer/encoderblock_{i}/{sub}'] for i in blocks])
    return out


def with_prefix(params: dict[str, np.ndarray], prefix: str) -> OrderedDict[str, np.ndarray]:
    return OrderedDict((prefix + k, v) for k, v in params.items())


def two_tower(image: dict[str, np.ndarray], outer: str = 'params/', seed: int = 1) -> OrderedDict[str, np.ndarray]:
    """A two-tower file: the image tower under `{outer}img/`, a (small, random) text tower under
    `{outer}txt/`, and the sigmoid loss's temperature `t` and bias `b` (SigLIP; LiT has `t` alone, which
    is fine here: both are written)."""
    rng = np.random.default_rng(seed)
    txt = {'Embed_0/embedding': (100, 16), 'pos_embedding': (1, 8, 16), 'Encoder_0/encoder_norm/scale': (16,),
           'Encoder_0/encoder_norm/bias': (16,), 'head/kernel': (16, 24), 'head/bias': (24,)}
    out = with_prefix(image, f'{outer}img/')
    out.update((f'{outer}txt/{k}', rng.standard_normal(s).astype(np.float32)) for k, s in txt.items())
    out[f'{outer}t'] = np.array([2.3], np.float32)
    out[f'{outer}b'] = np.array([-10.0], np.float32)
    return out


def write_npz(path, arrays: dict[str, np.ndarray]) -> None:
    """An uncompressed `np.savez` of the '/'-joined keys, as big_vision's `save_checkpoint` flattened them."""
    with open(path, 'wb') as f:  # a file object: no '.npz' appended
        np.savez(f, **arrays)


# --------------------------------------------------------------------------------------------
# big_vision's formulas
# --------------------------------------------------------------------------------------------
def posemb_sincos_2d(h: int, w: int, width: int, temperature: float = 10_000.) -> np.ndarray:
    """vit.py `posemb_sincos_2d`, line for line in numpy (float64)."""
    y, x = np.mgrid[:h, :w]
    assert width % 4 == 0, 'Width must be mult of 4 for sincos posemb'
    omega = np.arange(width // 4) / (width // 4 - 1)
    omega = 1. / (temperature ** omega)
    y = np.einsum('m,d->md', y.flatten(), omega)
    x = np.einsum('m,d->md', x.flatten(), omega)
    pe = np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=1)
    return pe[None, :, :]


def jax_linear_resize_matrix(in_size: int, out_size: int, antialias: bool = True) -> np.ndarray:
    """(in_size, out_size) weights of `jax.image.resize(..., 'linear')` on one axis: jax/_src/image/scale.py
    `compute_weight_mat` with the triangle kernel and translation 0, in float64."""
    inv_scale = in_size / out_size
    kernel_scale = max(inv_scale, 1.) if antialias else 1.
    sample_f = (np.arange(out_size) + 0.5) * inv_scale - 0.5
    x = np.abs(sample_f[np.newaxis, :] - np.arange(in_size)[:, np.newaxis]) / kernel_scale
    weights = np.maximum(0, 1 - np.abs(x))
    total = np.sum(weights, axis=0, keepdims=True)
    weights = np.where(np.abs(total) > 1000. * float(np.finfo(np.float32).eps),
                       weights / np.where(total != 0, total, 1), 0)
    inside = np.logical_and(sample_f >= -0.5, sample_f <= in_size - 0.5)
    return np.where(inside[np.newaxis, :], weights, 0)


def jax_resize_linear(grid: np.ndarray, new: tuple[int, int]) -> np.ndarray:
    """`jax.image.resize(grid, (*new, C), 'linear')` of a (h, w, C) grid: each spatial axis whose size
    changes contracted with its weight matrix (jax skips the others)."""
    out = np.asarray(grid, np.float64)
    if out.shape[0] != new[0]:
        out = np.einsum('hwc,hH->Hwc', out, jax_linear_resize_matrix(out.shape[0], new[0]))
    if out.shape[1] != new[1]:
        out = np.einsum('hwc,wW->hWc', out, jax_linear_resize_matrix(out.shape[1], new[1]))
    return out


def _tf_bilinear_axis(old: int, new: int) -> np.ndarray:
    """(new, old): tensorflow's resize_bilinear with half-pixel centres and no antialias (the default of
    `tf.image.resize(..., 'bilinear')`): in = (i + 0.5) * old / new - 0.5, lower = max(floor(in), 0),
    upper = min(ceil(in), old - 1), value = lower * (1 - (in - floor(in))) + upper * (in - floor(in))."""
    a = np.zeros((new, old))
    for i in range(new):
        src = (i + 0.5) * old / new - 0.5
        lerp = src - math.floor(src)
        a[i, max(math.floor(src), 0)] += 1 - lerp
        a[i, min(math.ceil(src), old - 1)] += lerp
    return a


def tf_bilinear_resize_matrix(old: tuple[int, int], new: tuple[int, int]) -> np.ndarray:
    """flexi/vit.py `get_resize_mat`: (new_h*new_w, old_h*old_w), column i the resized i-th basis patch."""
    return np.kron(_tf_bilinear_axis(old[0], new[0]), _tf_bilinear_axis(old[1], new[1]))


def pi_resize_kernel(kernel: np.ndarray, new: tuple[int, int]) -> np.ndarray:
    """flexi/vit.py `resample_patchemb`: an HWIO kernel to `new` (h, w), each (in, out) filter
    `pinv(resize_mat.T) @ filter.reshape(-1)`, in float64."""
    old = kernel.shape[:2]
    if tuple(old) == tuple(new):
        return np.asarray(kernel, np.float64)
    pinv = np.linalg.pinv(tf_bilinear_resize_matrix(old, new).T)
    flat = np.asarray(kernel, np.float64).reshape(old[0] * old[1], -1)
    return (pinv @ flat).reshape(*new, *kernel.shape[2:])


def _t(a) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a, np.float64))


def _layer_norm(x, p, name):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + LN_EPS) * _t(p[f'{name}/scale']) + _t(p[f'{name}/bias'])


def _gelu_tanh(x):  # flax nn.gelu, approximate=True
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def _attention(q_in, kv_in, p, name):
    """flax MultiHeadDotProductAttention: per-head projections (D, H, Dh), softmax(q k / sqrt(Dh)) v, out."""
    def proj(x, which):
        return torch.einsum('nld,dhk->nlhk', x, _t(p[f'{name}/{which}/kernel'])) + _t(p[f'{name}/{which}/bias'])

    q, k, v = proj(q_in, 'query'), proj(kv_in, 'key'), proj(kv_in, 'value')
    q = q / math.sqrt(q.shape[-1])
    weights = torch.softmax(torch.einsum('nqhd,nkhd->nhqk', q, k), dim=-1)
    out = torch.einsum('nhqk,nkhd->nqhd', weights, v)
    return torch.einsum('nqhd,hdD->nqD', out, _t(p[f'{name}/out/kernel'])) + _t(p[f'{name}/out/bias'])


def _mlp(x, p, name):
    x = x @ _t(p[f'{name}/Dense_0/kernel']) + _t(p[f'{name}/Dense_0/bias'])
    return _gelu_tanh(x) @ _t(p[f'{name}/Dense_1/kernel']) + _t(p[f'{name}/Dense_1/bias'])


@torch.no_grad()
def forward(params: dict[str, np.ndarray], images: torch.Tensor, m: BigVision,
            patch: int | None = None) -> dict[str, torch.Tensor]:
    """big_vision's `_Model.__call__` (FlexiViT's with `patch`) on (N, C, H, W) images, float64; returns
    {'pre_logits': the pooled, representation-layered vector, 'out': the model's output (the logits, or
    pre_logits without a head: an image tower's zimg before its L2 norm)}.

    `params` are one model's (no prefix, per-layer blocks). With `patch` (FlexiViT) the stored kernel is
    PI-resized to it and a learned position grid of `m.grid` resized with jax's antialiased linear resize
    to the patch grid of the images.
    """
    kernel = np.asarray(params['embedding/kernel'], np.float64)
    if patch is not None:
        kernel = pi_resize_kernel(kernel, (patch, patch))
    ph, pw = kernel.shape[:2]
    n, c, height, width = images.shape
    gh, gw = height // ph, width // pw  # padding 'VALID': pixels past the last whole patch are dropped
    pixels = images.double()[:, :, :gh * ph, :gw * pw].reshape(n, c, gh, ph, gw, pw)
    x = torch.einsum('ncyaxb,abcd->nyxd', pixels, _t(kernel)) + _t(params['embedding/bias'])
    x = x.reshape(n, gh * gw, -1)
    d = x.shape[-1]
    if m.posemb == 'sincos2d':
        x = x + _t(posemb_sincos_2d(gh, gw, d))
    else:
        pos = np.asarray(params['pos_embedding'], np.float64)
        if (gh, gw) != m.grid:  # FlexiViT; plain big_vision would resample at load time instead
            pos = jax_resize_linear(pos.reshape(*m.grid, d), (gh, gw)).reshape(1, gh * gw, d)
        x = x + _t(pos)
    if m.pool == 'tok':
        x = torch.cat([_t(params['cls']).expand(n, -1, -1), x], dim=1)
    for i in range(m.depth):
        b = f'Transformer/encoderblock_{i}'
        y = _layer_norm(x, params, f'{b}/LayerNorm_0')
        x = x + _attention(y, y, params, f'{b}/MultiHeadDotProductAttention_0')
        y = _layer_norm(x, params, f'{b}/LayerNorm_1')
        x = x + _mlp(y, params, f'{b}/MlpBlock_0')
    x = _layer_norm(x, params, 'Transformer/encoder_norm')
    if m.pool == 'map':
        probe = _t(params['MAPHead_0/probe']).expand(n, -1, -1)
        x = _attention(probe, x, params, 'MAPHead_0/MultiHeadDotProductAttention_0')
        x = (x + _mlp(_layer_norm(x, params, 'MAPHead_0/LayerNorm_0'), params, 'MAPHead_0/MlpBlock_0'))[:, 0]
    elif m.pool == 'gap':
        x = x.mean(dim=1)
    else:  # 'tok'
        x = x[:, 0]
    if m.rep_size:
        x = torch.tanh(x @ _t(params['pre_logits/kernel']) + _t(params['pre_logits/bias']))
    out = x @ _t(params['head/kernel']) + _t(params['head/bias']) if m.num_classes else x
    return {'pre_logits': x, 'out': out}


# --------------------------------------------------------------------------------------------
# big_vision's text tower (models/proj/image_text/text_transformer.py)
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BigVisionText:
    """`text_transformer.Model(num_classes, width, depth, mlp_dim, num_heads, vocab_size, pool_type)` with its
    sequence length (the stored `pos_embedding`'s)."""

    vocab: int = 96
    length: int = 16
    width: int = 32
    depth: int = 2
    heads: int = 2
    mlp: int = 64
    out: int = 24  # num_classes: the head's outputs, the embedding width
    pool: str = 'last'  # or 'map'
    vit_jax: bool = False  # vit_jax's LiT TextTransformer: blocks numbered LayerNorm_0, ..._1, LayerNorm_2, MlpBlock_3


def random_text_params(m: BigVisionText, seed: int = 1) -> OrderedDict[str, np.ndarray]:
    """Every parameter of the text tower under its big_vision name (no prefix, one `encoderblock_N` per layer):
    `Embed_0/embedding`, `pos_embedding`, `Encoder_0/...`, `head`, with `random_params`' scales."""
    image_like = BigVision(width=m.width, depth=m.depth, heads=m.heads, mlp=m.mlp,
                           pool='map' if m.pool == 'map' else 'gap', num_classes=0)
    rng = np.random.default_rng(seed)
    blocks = random_params(image_like, seed=seed + 1)
    out = OrderedDict()
    out['Embed_0/embedding'] = rng.standard_normal((m.vocab, m.width)).astype(np.float32)
    out['pos_embedding'] = (0.5 * rng.standard_normal((1, m.length, m.width))).astype(np.float32)
    for k, v in blocks.items():  # the ViT's encoder blocks, renamed as vit.Encoder is named inside the text model
        if k.startswith('Transformer/'):
            if m.vit_jax:
                k = k.replace('MultiHeadDotProductAttention_0', 'MultiHeadDotProductAttention_1').replace(
                    'LayerNorm_1', 'LayerNorm_2').replace('MlpBlock_0', 'MlpBlock_3')
            out['Encoder_0/' + k.removeprefix('Transformer/')] = v
        elif k.startswith('MAPHead_0/'):
            out[k] = v
    out['head/kernel'] = (rng.standard_normal((m.width, m.out)) / math.sqrt(m.width)).astype(np.float32)
    out['head/bias'] = (0.03 * rng.standard_normal(m.out)).astype(np.float32)
    return out


def scan_text(params: dict[str, np.ndarray]) -> OrderedDict[str, np.ndarray]:
    """`scan` for the text tower's `Encoder_0/encoderblock_N` (SigLIP 2's scanned text blocks)."""
    renamed = OrderedDict((k.replace('Encoder_0/', 'Transformer/', 1) if k.startswith('Encoder_0/') else k, v)
                          for k, v in params.items())
    return OrderedDict((k.replace('Transformer/', 'Encoder_0/', 1) if k.startswith('Transformer/') else k, v)
                       for k, v in scan(renamed).items())


def siglip_npz(image: dict[str, np.ndarray], text: dict[str, np.ndarray], t: float, b: float | None,
               outer: str = 'params/') -> OrderedDict[str, np.ndarray]:
    """A whole two-tower file: `{outer}img/...`, `{outer}txt/...`, `{outer}t` and (SigLIP) `{outer}b`."""
    out = with_prefix(image, f'{outer}img/')
    out.update(with_prefix(text, f'{outer}txt/'))
    out[f'{outer}t'] = np.array([t], np.float32)
    if b is not None:
        out[f'{outer}b'] = np.array([b], np.float32)
    return out


@torch.no_grad()
def text_forward(params: dict[str, np.ndarray], ids: np.ndarray, m: BigVisionText) -> torch.Tensor:
    """text_transformer `_Model.__call__` on (N, L) ids, float64: ztxt, before two_towers' L2 normalisation."""
    x = _t(params['Embed_0/embedding'])[torch.as_tensor(ids, dtype=torch.long)] + _t(params['pos_embedding'])
    mha, ln2, mlp = (('MultiHeadDotProductAttention_1', 'LayerNorm_2', 'MlpBlock_3') if m.vit_jax else
                     ('MultiHeadDotProductAttention_0', 'LayerNorm_1', 'MlpBlock_0'))
    for i in range(m.depth):  # vit.Encoder: no mask
        b = f'Encoder_0/encoderblock_{i}'
        y = _layer_norm(x, params, f'{b}/LayerNorm_0')
        x = x + _attention(y, y, params, f'{b}/{mha}')
        y = _layer_norm(x, params, f'{b}/{ln2}')
        x = x + _mlp(y, params, f'{b}/{mlp}')
    x = _layer_norm(x, params, 'Encoder_0/encoder_norm')
    if m.pool == 'last':
        x = x[:, -1]
    elif m.pool == 'map':
        probe = _t(params['MAPHead_0/probe']).expand(x.shape[0], -1, -1)
        x = _attention(probe, x, params, 'MAPHead_0/MultiHeadDotProductAttention_0')
        x = (x + _mlp(_layer_norm(x, params, 'MAPHead_0/LayerNorm_0'), params, 'MAPHead_0/MlpBlock_0'))[:, 0]
    return x @ _t(params['head/kernel']) + _t(params['head/bias'])


def normalize(x: torch.Tensor) -> torch.Tensor:
    """two_towers.py's normalisation: x / (norm + 1e-8)."""
    return x / (torch.linalg.norm(x, dim=1, keepdim=True) + 1e-8)


def average_embeddings(embeddings: torch.Tensor, per_class: int) -> torch.Tensor:
    """discriminative_classifier.py `_average_embeddings` (normalize=True) for prompts in class-major order."""
    mean = embeddings.reshape(-1, per_class, embeddings.shape[-1]).mean(dim=1)
    return mean / (1e-8 + torch.linalg.norm(mean, dim=1, keepdim=True))


def canonicalize_text(text: str, *, keep_punctuation_exact_string: str | None = None) -> str:
    """prompt_engineering.py `canonicalize_text`."""
    import re
    import string
    text = text.replace('_', ' ')
    if keep_punctuation_exact_string:
        text = keep_punctuation_exact_string.join(
            part.translate(str.maketrans('', '', string.punctuation))
            for part in text.split(keep_punctuation_exact_string))
    else:
        text = text.translate(str.maketrans('', '', string.punctuation))
    text = text.lower()
    text = re.sub(r'\s+', ' ', text)
    return text.strip()
