"""DINOv3's own ViT release files (facebookresearch/dinov3's `.pth`, DinoVisionTransformer's state dict) to our
weights file: the dinov3 source format.

The architecture comes from the tensors: width, depth, MLP kind and width, the query/key/value bias and the
storage tokens from their shapes; the head count from the RoPE periods (head_dim / 4 of them), whose values
must be DINOv3's periods base ** (2i / (head_dim / 2)) for one base, which becomes the model's RoPE
temperature (every release's is the hub's 100). What no tensor shows is the hub's (dinov3_layouts.HUB):
LayerNorm eps 1e-5, 'separate' coordinates. The model is timm's Eva layout in our names (rope='dinov3',
rotate_half; q_bias and v_bias where DINOv3 masks the key bias), pooled by its class token as DINOv3's
forward is, with no head.

The state dict is read by `formats.state_dict` (weights_only); a zip-format .pth is memory-mapped there, so
the tensors stream through the writer one at a time, as the JAX path's do.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..core.config import ViTConfig
from ..core.errors import VitConvertError
from ..formats.memory import check_memory
from ..formats.weights_file import Preprocess
from . import dinov3_layouts as layouts
from .mapping import Shape, block_bindings, source_dims
from .source import Detection, Plan, Probe, Request, SourceFormat

# DINOv3's README transform: resize to 256x256 (no crop), antialiased, ImageNet's mean and std; 256 is also
# timm's input size for these models. DINOv3 runs at any size its patches tile (vitpredict --res).
PREPROCESS = dict(resize="squash", interpolation="bilinear", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
MARKS = ("rope_embed.periods", "cls_token")
_BLOCK = re.compile(r"^blocks\.(\d+)\.")
# Relative difference allowed between a file's periods and those recomputed from the base it implies: the
# float32 rounding of base ** x, measured <= 1.2e-7.
PERIODS_RTOL = 1e-6


class DinoV3Reader:
    """A release file's tensors (the probe's state dict), as the mapping engine reads them."""

    def __init__(self, probe: Probe) -> None:
        from ..formats.state_dict import TensorReader, read_state_dict

        checkpoint = probe.state_dict or read_state_dict(probe.path)
        self.tensors = TensorReader(checkpoint.tensors, probe.path, checkpoint.mapped)
        self.path, self.shapes = probe.path, self.tensors.shapes

    def read(self, key: str) -> np.ndarray:
        return self.tensors.read(key)

    def check_weights(self, keys: list[str], where: str) -> None:
        self.tensors.check_weights(keys, where)


def rope_base(periods: np.ndarray, head_dim: int, where: str) -> float:
    """The base DINOv3's periods base ** (2i / (head_dim / 2)) were made from; an error if they are not such."""
    n = len(periods)
    if n < 2 or not np.all(np.isfinite(periods)) or periods[0] != 1 or periods[-1] <= 1:
        raise VitConvertError(f"{where}: rope_embed.periods {_show(periods)} are not DINOv3's periods from a base "
                              "(the first is 1, then they grow)")
    base = float(f"{float(periods[-1]) ** ((head_dim // 2) / (2 * (n - 1))):.6g}")
    expected = base ** (2 * np.arange(n, dtype=np.float32) / np.float32(head_dim // 2))
    if not np.allclose(periods, expected, rtol=PERIODS_RTOL, atol=0):
        raise VitConvertError(f"{where}: rope_embed.periods {_show(periods)} disagree with the periods of base "
                              f"{base:g} for heads of {head_dim} ({_show(expected)}): not periods our model computes "
                              "(DINOv3's min/max-period RoPE is not converted)")
    return base


def _show(a: np.ndarray) -> str:
    return "[" + ", ".join(f"{v:.6g}" for v in np.asarray(a, dtype=np.float64)[:6]) + (", ...]" if len(a) > 6 else "]")


def _plan(reader: DinoV3Reader, request: Request) -> Plan:
    shapes, where = reader.shapes, str(reader.path)
    if "storage_tokens" not in shapes:
        raise VitConvertError(f"{where}: no storage_tokens: every DINOv3 release holds its 4 storage (register) "
                              "tokens; this file is cut or not a DINOv3 release")
    if "cls_norm.weight" in shapes:
        raise VitConvertError(f"{where}: cls_norm: a DINOv3 model with separate norms for the class and patch "
                              "tokens (untie_cls_and_patch_norms), which our model does not build")
    dim = source_dims(shapes, "cls_token", 3, where)[-1]
    depth = 1 + max((int(m[1]) for k in shapes if (m := _BLOCK.match(k))), default=-1)
    (bands,) = source_dims(shapes, "rope_embed.periods", 1, where)
    head_dim = 4 * bands
    if not depth or not head_dim or dim % head_dim:
        raise VitConvertError(f"{where}: {bands} RoPE periods make heads of {head_dim}, which do not divide the "
                              f"width {dim}" if depth else f"{where}: no blocks.N tensors")
    heads = dim // head_dim
    ffn = "swiglu" if "blocks.0.mlp.w1.weight" in shapes else "mlp"
    hidden = source_dims(shapes, "blocks.0.mlp.w1.weight" if ffn == "swiglu" else "blocks.0.mlp.fc1.weight", 2,
                         where)[0]
    qkv_bias, masked = "blocks.0.attn.qkv.bias" in shapes, "blocks.0.attn.qkv.bias_mask" in shapes
    out, in_chans, *patch = source_dims(shapes, "patch_embed.proj.weight", 4, where)
    arch = layouts.architecture(dim, depth, heads, ffn, qkv_bias)
    same_but_heads = layouts.architecture(dim, depth, next((a.num_heads for a in layouts.ARCHITECTURES
                                                            if a.embed_dim == dim and a.depth == depth), heads),
                                          ffn, qkv_bias)
    if arch is None and same_but_heads is not None:
        raise VitConvertError(f"{where}: rope_embed.periods ({bands}) make {heads} heads, but DINOv3's "
                              f"{same_but_heads.name} has {same_but_heads.num_heads} (periods of "
                              f"{dim // same_but_heads.num_heads // 4})")
    largest = max(int(np.prod(s, dtype=np.int64)) for s in shapes.values())
    name = f"DINOv3's {arch.name}" if arch else "this DINOv3 model"
    # The writer holds a tensor as read (float32) and as written; everything else stays in the mapped file.
    check_memory(2 * 4 * largest, f"converting {where} ({name})")
    base = rope_base(reader.read("rope_embed.periods"), head_dim, where)
    if masked:
        _check_key_masks(reader, depth, dim, where)
    cfg = _config(dim, depth, heads, hidden, ffn, qkv_bias, masked, (in_chans, *patch), shapes, base, where)
    notes = [f"{name}: {depth} blocks of width {dim}, {heads} heads, {'SwiGLU' if ffn == 'swiglu' else 'GELU'} MLP "
             f"of {hidden}, {cfg.reg_tokens} storage tokens, RoPE base {base:g}",
             "storage_tokens kept as reg_token; pooled by the class token, as DINOv3's forward is, with no head",
             f"LayerNorm eps {layouts.HUB['ln_eps']:g} (DINOv3's 'layernormbf16', every release's): no tensor shows it",
             "preprocessing: DINOv3's README transform (resize, ImageNet mean and std); the SAT-493M weights "
             "normalize with (0.430, 0.411, 0.296) / (0.213, 0.156, 0.143), which vitconvert.convert(..., "
             "preprocess=...) records"]
    if base != layouts.HUB["rope_base"]:
        notes.append(f"RoPE base {base:g}, not the hub's {layouts.HUB['rope_base']:g}: the periods say so")
    left_out = {"mask_token": layouts.MASK_TOKEN, "rope_embed.periods": layouts.PERIODS}
    left_out |= {k: layouts.BIAS_MASK for k in shapes if k.endswith("attn.qkv.bias_mask")}
    left_out |= {k: layouts.LOCAL_CLS_NORM for k in shapes if k.startswith("local_cls_norm.")}
    return Plan(config=cfg, rules=layouts.rules(ffn, qkv_bias, masked), bindings=block_bindings(depth),
                source_format=f"dinov3/{arch.hub if arch else 'DinoVisionTransformer'}",
                preprocess=Preprocess(size=cfg.img_size, **PREPROCESS), labels=None, notes=notes,
                left_out={k: v for k, v in left_out.items() if k in shapes})


def _check_key_masks(reader: DinoV3Reader, depth: int, dim: int, where: str) -> None:
    """Each block's bias_mask is DINOv3's (query and value 1, key 0): anything else we would not compute."""
    expected = layouts.key_mask(dim)
    for i in range(depth):
        key = f"blocks.{i}.attn.qkv.bias_mask"
        if key not in reader.shapes or not np.array_equal(reader.read(key), expected):
            found = "missing" if key not in reader.shapes else "not 1 on the query and value rows and 0 on the keys'"
            raise VitConvertError(f"{where}: {key} {found}: DINOv3's masked key bias is the only one converted")


def _config(dim: int, depth: int, heads: int, hidden: int, ffn: str, qkv_bias: bool, masked: bool,
            patch: tuple[int, ...], shapes: Mapping[str, Shape], base: float, where: str) -> ViTConfig:
    in_chans, *patch_hw = patch
    try:
        return ViTConfig(img_size=(256, 256), patch_size=tuple(patch_hw), in_chans=in_chans, embed_dim=dim,
                         depth=depth, num_heads=heads, mlp_dim=hidden, mlp="swiglu" if ffn == "swiglu" else "mlp",
                         act="silu" if ffn == "swiglu" else "gelu", ln_eps=layouts.HUB["ln_eps"], qkv_bias=qkv_bias,
                         k_bias=not masked, layer_scale="blocks.0.ls1.gamma" in shapes,
                         reg_tokens=source_dims(shapes, "storage_tokens", 3, where)[1], pos_embed="none",
                         rope="dinov3", rope_temperature=base, rope_rotate_half=True,
                         rope_normalize_coords="separate", pool="token", num_classes=0)
    except VitConvertError as e:
        raise VitConvertError(f"{where}: {e}") from None


def _detect(probe: Probe) -> Detection | None:
    if probe.kind.kind not in ("pickle", "torch-zip", "safetensors") or not all(k in probe.keys for k in MARKS):
        return None
    return Detection(1.0, "a state dict with rope_embed.periods and cls_token (DinoVisionTransformer's)")


def is_release(keys: frozenset[str] | set[str] | Any) -> bool:
    """Whether these keys are a DINOv3 release file's (which the timm format leaves to this one)."""
    return all(k in keys for k in MARKS)


DINOV3 = SourceFormat(
    name="dinov3", summary="DINOv3's own ViT release files (.pth: ViT-S, S+, B, L, L+, H+, 7B)",
    detect=_detect, open=DinoV3Reader, plan=_plan,
    example="vitconvert convert dinov3_vitb16_pretrain_lvd1689m-73cec8be.pth dinov3-vitb16.safetensors",
    looks_for="a state dict with rope_embed.periods and cls_token (facebookresearch/dinov3's DinoVisionTransformer)")
