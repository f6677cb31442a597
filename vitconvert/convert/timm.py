"""timm VisionTransformer state dicts (.pth, .bin, .safetensors) to our weights file.

Our tensor names are timm's, so the mapping table is the identity over the names our config
implies; what needs work is unwrapping training checkpoints, inferring the config and reading
pickles safely.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import numpy as np
import torch

from ..core.config import ViTConfig
from ..core.errors import VitConvertError
from ..formats.paths import check_input, check_output
from ..formats.safetensors_file import read_header, read_tensors
from .mapping import IDENTITY, Rule, plan_tensors, source_dims
from ..core.param_shapes import param_shapes
from ..formats.weights_file import Preprocess, Source, WeightsRecord, label_set_for, write_weights

WRAPPERS = ("state_dict", "model", "model_ema", "module")
# Heads of the usual widths (Ti, S, B, L, H); other widths assume 64-wide heads.
HEADS_BY_WIDTH = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16}
# timm's ViT default when the checkpoint's own pretrained cfg is not named.
TIMM_DEFAULT_PREPROCESS = dict(resize="crop", crop_pct=0.9, interpolation="bicubic",
                               mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors, or of a .pth/.bin read with weights_only (no code runs)."""
    path = check_input(path, "a checkpoint file")
    if path.suffix == ".safetensors":
        read_header(path)  # clear errors for truncated or foreign files
        return read_tensors(path)
    try:
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


def unwrap(obj: object, where: str) -> dict[str, torch.Tensor]:
    """The tensor dict inside training-checkpoint wrappers, without 'module.' prefixes."""
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
    return tensors


def infer_config(shapes: Mapping[str, tuple[int, ...]], where: str,
                 num_heads: int | None = None) -> ViTConfig:
    if "patch_embed.proj.weight" not in shapes:
        keys = ", ".join(sorted(shapes)[:6])
        raise VitConvertError(f"{where}: not a timm ViT state dict (no patch_embed.proj.weight); "
                              f"its keys begin: {keys}")
    dim, in_chans, ph, pw = source_dims(shapes, "patch_embed.proj.weight", 4, where)
    if ph != pw:
        raise VitConvertError(f"{where}: non-square patches ({ph}x{pw}) are not supported")
    depth = len({m[1] for k in shapes if (m := re.match(r"blocks\.(\d+)\.", k))})
    if "blocks.0.mlp.fc1.weight" not in shapes or "head.weight" not in shapes:
        raise VitConvertError(f"{where}: missing blocks.0.mlp.fc1.weight or head.weight")
    distilled = "dist_token" in shapes
    pool = "token" if "cls_token" in shapes else "gap"
    prefix = (pool == "token") + distilled
    n_pos = source_dims(shapes, "pos_embed", 3, where)[1] if "pos_embed" in shapes else 0
    no_embed_class = prefix > 0 and math.isqrt(n_pos) ** 2 == n_pos
    side = math.isqrt(n_pos - (0 if no_embed_class else prefix))
    if side * side != n_pos - (0 if no_embed_class else prefix) or side == 0:
        raise VitConvertError(f"{where}: pos_embed with {n_pos} positions is not a square grid "
                              f"plus {prefix} prefix token(s)")
    pre = source_dims(shapes, "pre_logits.fc.weight", 2, where) if "pre_logits.fc.weight" in shapes else None
    mlp_dim = source_dims(shapes, "blocks.0.mlp.fc1.weight", 2, where)[0]
    num_classes = source_dims(shapes, "head.weight", 2, where)[0]
    try:
        return ViTConfig(
            img_size=(side * ph, side * ph), patch_size=ph, in_chans=in_chans, embed_dim=dim, depth=depth,
            num_heads=num_heads or HEADS_BY_WIDTH.get(dim, max(dim // 64, 1)),
            mlp_dim=mlp_dim, num_classes=num_classes, pool=pool,
            fc_norm="fc_norm.weight" in shapes, representation_size=pre[0] if pre else None,
            distilled=distilled, qkv_bias="blocks.0.attn.qkv.bias" in shapes, ln_eps=1e-6, act="gelu",
            no_embed_class=no_embed_class)
    except VitConvertError as e:  # shapes that make no model: say which file they came from
        raise VitConvertError(f"{where}: {e}") from None


def timm_pretrained(model_name: str) -> tuple[int, Preprocess, str | None]:
    """Heads, preprocessing and label count from timm's registry for a name with tag (imports timm)."""
    import timm

    try:
        with torch.device("meta"):
            model = timm.create_model(model_name, pretrained=False)
    except RuntimeError as e:
        raise VitConvertError(f"timm does not know the model {model_name!r} ({e})") from None
    cfg = model.pretrained_cfg
    _, h, w = cfg["input_size"]
    crop_pct = float(cfg.get("crop_pct") or 1.0)
    preprocess = Preprocess(size=(h, w), resize="crop", crop_pct=crop_pct,
                            interpolation=cfg.get("interpolation", "bicubic"),
                            mean=tuple(cfg["mean"]), std=tuple(cfg["std"]))
    return model.blocks[0].attn.num_heads, preprocess, label_set_for(cfg.get("num_classes", 0))


class _TensorReader:
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
                 allow_nonfinite: bool = False,
                 progress: Callable[[int, int], None] | None = None) -> WeightsRecord:
    """Convert a timm ViT state dict at `src` into our weights file at `dst`.

    model: a timm name with tag (e.g. 'vit_base_patch16_224.augreg_in21k_ft_in1k'); it supplies the
    number of heads and the checkpoint's own preprocessing. Without it, heads follow the standard
    widths and preprocessing is timm's ViT default (bicubic, crop 0.9, mean = std = 0.5).
    """
    src, dst = Path(src), check_output(dst, force)  # before reading anything large
    tensors = read_state_dict(src)
    reader = _TensorReader(tensors)
    preprocess, labels, notes = None, None, ()
    if model:
        num_heads, preprocess, labels = timm_pretrained(model)
    cfg = infer_config(reader.shapes, str(src), num_heads)
    if preprocess is None:
        preprocess = Preprocess(size=cfg.img_size, **TIMM_DEFAULT_PREPROCESS)
        notes = ("preprocessing assumed to be timm's ViT default; convert with --model NAME.TAG "
                 "for the checkpoint's own",)
    expected = param_shapes(cfg)
    specs = plan_tensors([Rule(name, (name,), IDENTITY) for name in expected], reader, {}, where=str(src))
    reader.check_weights(expected, str(src))
    record = WeightsRecord(
        config=cfg, preprocess=preprocess,
        source=Source(format="timm" + (f"/{model}" if model else ""), file=src.name),
        labels=labels or label_set_for(cfg.num_classes),
        head_is_zero=not bool(tensors["head.weight"].any() or tensors["head.bias"].any()),
        notes=notes)
    return write_weights(dst, specs, record, source_path=src, dtype=dtype, force=force,
                         allow_nonfinite=allow_nonfinite, progress=progress)
