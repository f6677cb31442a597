"""`load_model`: our weights file to an eval-mode model, at the trained size or any other."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import torch

from ..core.config import ViTConfig, parse_size
from ..core.errors import VitConvertError
from ..formats.safetensors_file import TensorSpec, read_tensors
from ..formats.weights_file import (
    TEXT_PREFIX,
    Preprocess,
    Source,
    WeightsRecord,
    label_set_for,
    read_record,
    write_weights,
)
from .optimize import compile_model, quantize_int8
from .patch_resize import resample_patch_kernel
from .posembed import pos_embed_on_grid
from .relpos import resize_table
from .vit import VisionTransformer


def load_state_dict(path: str | os.PathLike) -> tuple[WeightsRecord, dict[str, torch.Tensor]]:
    """The checked record and the tensors of one of our weights files, in float32."""
    record = read_record(path)
    return record, float32_tensors(path)


def float32_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The image model's tensors in float32: a bfloat16 or float16 file stores them smaller, and computes in
    float32 unless asked otherwise (the widening is exact). A two-tower file's text tower (`text.*`) is
    `vitconvert.load_text_model`'s."""
    return {k: v.float() for k, v in read_tensors(path).items() if not k.startswith(TEXT_PREFIX)}


def at_size(cfg: ViTConfig, state: dict[str, torch.Tensor], img_size: tuple[int, int],
            patch_size: int | tuple[int, int] | None = None) -> tuple[ViTConfig, dict[str, torch.Tensor]]:
    """Config and weights for another input size, another patch size or both: the patch kernel PI-resized
    (patch_resize.py, FlexiViT's), the position embeddings and relative position tables resampled by the
    config's methods from the stored grid to the new one (the grid changes with either)."""
    patch = cfg.patch_hw if patch_size is None else parse_size(patch_size)
    if tuple(img_size) == cfg.img_size and patch == cfg.patch_hw:
        return cfg, state
    # Raises for a size the new patches do not tile (a file's own size need not, as timm's need not).
    new = cfg.replace(patch_size=patch, img_size=tuple(img_size)).at_input_size(img_size)
    changed = {}
    if patch != cfg.patch_hw:
        changed["patch_embed.proj.weight"] = resample_patch_kernel(state["patch_embed.proj.weight"], patch)
    # Nothing else depends on the position (sincos2d and RoPE are computed per grid).
    if cfg.pos_embed == "learn" and new.grid_size != cfg.grid_size:
        changed["pos_embed"] = pos_embed_on_grid(state["pos_embed"], cfg, new.grid_size)
    if new.grid_size != cfg.grid_size:  # BEiT's relative position tables, by the file's rule
        changed |= {k: resize_table(v, cfg.grid_size, new.grid_size, cfg.rel_pos_resize) for k, v in state.items()
                    if k.endswith(".relative_position_bias_table")}
    return new, {**state, **changed} if changed else state


def build_with_weights(cfg: ViTConfig, state: dict[str, torch.Tensor]) -> VisionTransformer:
    """A model holding `state` without first paying for a random initialisation."""
    with torch.device("meta"):
        model = VisionTransformer(cfg)
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()


def load_model(path: str | os.PathLike, img_size: int | str | tuple[int, int] | None = None,
               device: str | torch.device | None = None,
               dtype: torch.dtype | None = None, compile: bool = False,
               patch_size: int | str | tuple[int, int] | None = None) -> VisionTransformer:
    """An eval-mode model from our weights file, fixed at `img_size` (default: the trained size).

    The model runs at any other size its patches tile as well, resampling its position table to the
    input's grid at forward (once per grid outside autograd) with the same result as loading it at that
    size; `img_size` fixes the size where the graph should hold no resampling (export, compile).

    `patch_size` (P, 'P', 'HxW' or (H, W)) runs it at another patch size, as FlexiViT runs its own: the
    patch kernel PI-resized, the position embeddings resampled to the new grid by the file's method.

    The model is float32 whatever dtype the file stores, unless `dtype` asks for another;
    `torch.qint8` keeps float32 activations and runs the linear layers in int8 (CPU only).
    `compile=True` prepares the fastest float32 path (`optimize.compile_model`: oneDNN's prepacked linears
    on the CPU, inductor elsewhere), for inference only. The model's `.config` describes it, `.record`
    carries the file's metadata.
    """
    return model_from(read_record(path), path, img_size, device, dtype, compile, patch_size)


def model_from(record: WeightsRecord, path: str | os.PathLike,
               img_size: int | str | tuple[int, int] | None = None, device: str | torch.device | None = None,
               dtype: torch.dtype | None = None, compile: bool = False,
               patch_size: int | str | tuple[int, int] | None = None) -> VisionTransformer:
    """`load_model` for a caller that has already read and checked the file's record."""
    state = float32_tensors(path)
    cfg = record.config
    if img_size is not None or patch_size is not None:
        cfg, state = at_size(cfg, state, cfg.img_size if img_size is None else parse_size(img_size), patch_size)
    model = build_with_weights(cfg, state)
    model.record = record
    int8 = dtype is torch.qint8
    if device is not None or (dtype is not None and not int8):
        model = model.to(device=device, dtype=None if int8 else dtype)
    if int8:
        model = quantize_int8(model)
    return compile_model(model) if compile else model


def save_weights(model: VisionTransformer | Mapping[str, torch.Tensor], dst: str | os.PathLike, *,
                 config: ViTConfig | None = None, preprocess: Preprocess | None = None,
                 labels: str | Sequence[str] | None = None, source: Source | None = None, notes: Sequence[str] = (),
                 dtype: str = "float32", force: bool = False) -> WeightsRecord:
    """Our weights file from a model (or a state dict and its `config`), atomically; returns the record.

    preprocess: default Google's evaluation pipeline at the model's size; labels: 'imagenet-1k',
    'imagenet-21k' or the class names in class order, default the ImageNet label set its class count
    implies; source: default 'torch', an in-memory model.
    """
    if isinstance(model, VisionTransformer):
        config = config or model.config
        state = model.state_dict()
    elif config is None:
        raise VitConvertError("save_weights: give the config of a state dict (config=ViTConfig(...))")
    else:
        state = dict(model)
    head = [t for k, t in state.items() if k in ("head.weight", "head.bias")]
    record = WeightsRecord(
        config=config, preprocess=preprocess or Preprocess.google(config.img_size),
        source=source or Source(format="torch", file="in-memory model"),
        labels=labels if labels is not None else label_set_for(config.num_classes),
        head_is_zero=bool(head) and not any(t.any() for t in head), notes=tuple(notes))
    specs = [TensorSpec(name, tuple(t.shape), lambda t=t: t.detach().to("cpu", torch.float32).numpy())
             for name, t in state.items()]
    return write_weights(dst, specs, record, source_path=None, dtype=dtype, force=force)
