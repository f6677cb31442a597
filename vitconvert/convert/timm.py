"""timm VisionTransformer state dicts (.pth, .bin, .safetensors) to our weights file.

Our tensor names are timm's, so the mapping table is the identity over the names our config
implies; what needs work is unwrapping training checkpoints, inferring the config and reading
pickles safely.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.config import GN_GROUPS, ViTConfig
from ..core.errors import VitConvertError
from ..core.param_shapes import param_shapes
from ..formats.paths import check_input, check_output
from ..formats.safetensors_file import read_header, read_tensors
from ..formats.weights_file import Preprocess, Source, WeightsRecord, label_set_for, write_weights
from .mapping import IDENTITY, Rule, plan_tensors, source_dims

WRAPPERS = ("state_dict", "model", "model_ema", "module")
# Heads of the usual widths (Ti, S, B, L, H); for any other width the head count must be given.
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
    if num_heads is None:
        if dim not in HEADS_BY_WIDTH:
            # The shapes do not say how the width splits into heads, and a guess makes a model that runs
            # and is wrong.
            raise VitConvertError(f"{where}: width {dim} has no standard head count (standard widths: "
                                  f"{', '.join(map(str, HEADS_BY_WIDTH))}); give it with --heads N "
                                  "(num_heads=N), or name the timm model with --model NAME")
        num_heads = HEADS_BY_WIDTH[dim]
    pre = source_dims(shapes, "pre_logits.fc.weight", 2, where) if "pre_logits.fc.weight" in shapes else None
    mlp_dim = source_dims(shapes, "blocks.0.mlp.fc1.weight", 2, where)[0]
    num_classes = source_dims(shapes, "head.weight", 2, where)[0]
    try:
        return ViTConfig(
            img_size=(side * ph, side * ph), patch_size=ph, in_chans=in_chans, embed_dim=dim, depth=depth,
            num_heads=num_heads,
            mlp_dim=mlp_dim, num_classes=num_classes, pool=pool,
            fc_norm="fc_norm.weight" in shapes, representation_size=pre[0] if pre else None,
            distilled=distilled, qkv_bias="blocks.0.attn.qkv.bias" in shapes, ln_eps=1e-6, act="gelu",
            no_embed_class=no_embed_class)
    except VitConvertError as e:  # shapes that make no model: say which file they came from
        raise VitConvertError(f"{where}: {e}") from None


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
    block, embed = model.blocks[0], model.patch_embed
    backbone = getattr(embed, "backbone", None)
    if backbone is None:
        hybrid_layers, hybrid_width = None, ViTConfig.hybrid_width
    elif hasattr(backbone, "stages"):
        hybrid_layers = tuple(len(stage.blocks) for stage in backbone.stages)
        hybrid_width = backbone.stem.conv.out_channels
    else:  # a ResNet stem alone (R+Ti/16)
        hybrid_layers, hybrid_width = (), backbone.conv.out_channels
    try:
        cfg = ViTConfig(
            img_size=tuple(embed.img_size), patch_size=embed.patch_size[0], in_chans=model.in_chans,
            embed_dim=model.embed_dim, depth=len(model.blocks), num_heads=block.attn.num_heads,
            mlp_dim=block.mlp.fc1.out_features, num_classes=model.num_classes,
            pool="token" if model.global_pool == "token" else "gap",
            fc_norm=not isinstance(model.fc_norm, torch.nn.Identity),
            distilled=isinstance(model, VisionTransformerDistilled), qkv_bias=block.attn.qkv.bias is not None,
            ln_eps=block.norm1.eps, act=_activation(block.mlp.act), no_embed_class=model.no_embed_class,
            hybrid_layers=hybrid_layers, hybrid_width=hybrid_width)
    except VitConvertError as e:
        raise VitConvertError(f"timm's {name}: {e}") from None
    # The parameters show what the checks above do not look for: layer scale, registers, q/k norms, ...
    theirs = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    ours = param_shapes(cfg)
    if theirs != ours:
        from .mapping import name_list

        wrong = [f"{k} {theirs[k]} (ours {ours[k]})" for k in theirs if k in ours and theirs[k] != ours[k]]
        parts = [f"{what}: {text}" for what, text in (
            ("parameters our ViT lacks", name_list(set(theirs) - set(ours))),
            ("parameters it lacks", name_list(set(ours) - set(theirs))),
            ("parameters of other shapes", "; ".join(wrong[:4]))) if text]
        raise VitConvertError(f"timm's {name} is a ViT variant vitconvert cannot express: {'; '.join(parts)}")
    return cfg


def _activation(act: torch.nn.Module) -> str | None:
    """Our name for timm's MLP activation module (timm builds torch's GELU or its own classes)."""
    from timm.layers.activations import GELU, GELUTanh

    if type(act) is torch.nn.GELU:
        return {"none": "gelu", "tanh": "gelu_tanh"}[act.approximate]
    return {GELU: "gelu", GELUTanh: "gelu_tanh"}.get(type(act))


def _unsupported(model: torch.nn.Module) -> list[str]:
    """What in timm's ViT `model` our ViT does not do and no parameter shape would show."""
    from timm.layers import GroupNormAct, HybridEmbed, Mlp, PatchEmbed, StdConv2dSame
    from timm.models.vision_transformer import Attention, Block

    problems = []
    if (model.global_pool, model.has_class_token) not in (("token", True), ("avg", False)):
        problems.append(f"pooling {model.global_pool or 'none'!r} "
                        f"{'with' if model.has_class_token else 'without'} a class token")
    if model.num_classes == 0:
        problems.append("no classifier head (num_classes=0)")
    kinds = set()
    for b in model.blocks:
        if type(b) is not Block:
            kinds.add(f"blocks of type {type(b).__name__}")
        elif type(b.attn) is not Attention:
            kinds.add(f"attention {type(b.attn).__name__}")
        elif type(b.mlp) is not Mlp or not isinstance(b.mlp.fc1, torch.nn.Linear):
            kinds.add(f"MLP {type(b.mlp).__name__}")
        elif _activation(b.mlp.act) is None:
            kinds.add(f"activation {type(b.mlp.act).__name__}")
        elif not isinstance(b.norm1, torch.nn.LayerNorm) or not isinstance(b.norm2, torch.nn.LayerNorm):
            kinds.add(f"normalization {type(b.norm1).__name__}")
    problems += sorted(kinds)
    if not kinds:
        heads = {b.attn.num_heads for b in model.blocks}
        eps = {m.eps for m in model.modules() if isinstance(m, torch.nn.LayerNorm)}
        if len(heads) > 1:
            problems.append(f"blocks with different head counts ({', '.join(map(str, sorted(heads)))})")
        if len(eps) > 1:
            problems.append(f"LayerNorms with different eps ({', '.join(map(str, sorted(eps)))})")
    embed = model.patch_embed
    if type(embed) not in (PatchEmbed, HybridEmbed):
        problems.append(f"patch embedding {type(embed).__name__}")
    elif embed.patch_size[0] != embed.patch_size[1]:
        problems.append(f"non-square patches {embed.patch_size[0]}x{embed.patch_size[1]}")
    if isinstance(embed, HybridEmbed):
        # Ours is the JAX ResNetV2: TF 'SAME' padding, GroupNorm of 32 groups (its layout is in the shapes).
        modules = list(embed.backbone.modules())
        convs = {type(m).__name__ for m in modules if isinstance(m, torch.nn.Conv2d)}
        norms = {f"{type(m).__name__}({m.num_groups})" if isinstance(m, torch.nn.GroupNorm) else type(m).__name__
                 for m in modules if isinstance(m, (torch.nn.GroupNorm, torch.nn.BatchNorm2d))}
        if convs != {StdConv2dSame.__name__} or norms != {f"{GroupNormAct.__name__}({GN_GROUPS})"}:
            problems.append(f"a {type(embed.backbone).__name__} backbone with convolutions "
                            f"{', '.join(sorted(convs))} and norms {', '.join(sorted(norms))}, not the JAX "
                            f"ResNetV2 ({StdConv2dSame.__name__}, {GroupNormAct.__name__}({GN_GROUPS}))")
    return problems


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
    mine, theirs = ours.to_dict(), timm.to_dict()
    return [Difference(k, getattr(ours, k), getattr(timm, k)) for k in mine if k not in skip and mine[k] != theirs[k]]


def timm_pretrained(model_name: str) -> tuple[ViTConfig, Preprocess]:
    """Architecture and preprocessing of timm's model with tag, from its registry (imports timm)."""
    model = create_timm_model(model_name, meta=True)
    cfg = timm_config(model, model_name)
    pretrained = model.pretrained_cfg
    _, h, w = pretrained["input_size"]
    crop_pct = float(pretrained.get("crop_pct") or 1.0)
    preprocess = Preprocess(size=(h, w), resize="crop", crop_pct=crop_pct,
                            interpolation=pretrained.get("interpolation", "bicubic"),
                            mean=tuple(pretrained["mean"]), std=tuple(pretrained["std"]))
    return cfg, preprocess


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
                 labels: str | Sequence[str] | None = None, allow_nonfinite: bool = False,
                 pos_resize: str | None = None,
                 progress: Callable[[int, int], None] | None = None) -> WeightsRecord:
    """Convert a timm ViT state dict at `src` into our weights file at `dst`.

    model: a timm name with tag (e.g. 'vit_base_patch16_224.augreg_in21k_ft_in1k'); it supplies the
    number of heads, the activation, the LayerNorm eps and the checkpoint's own preprocessing, and
    must have the checkpoint's architecture. Without it, heads follow the standard widths (other
    widths need `num_heads`) and preprocessing is timm's ViT default (bicubic, crop 0.9, mean = std = 0.5).
    labels: 'imagenet-1k', 'imagenet-21k' or the class names in class order; default the ImageNet
    label set the class count implies.
    pos_resize: how the model resizes its position embeddings for other input sizes, recorded in the
    file: 'bicubic' (timm's own; None: the default) or 'dino' (facebookresearch/dino's).
    """
    src, dst = Path(src), check_output(dst, force)  # before reading anything large
    named = timm_pretrained(model) if model else None
    tensors = read_state_dict(src)
    reader = _TensorReader(tensors)
    if named is None:
        cfg = infer_config(reader.shapes, str(src), num_heads)
        preprocess = Preprocess(size=cfg.img_size, **TIMM_DEFAULT_PREPROCESS)
        notes = ("preprocessing assumed to be timm's ViT default; convert with --model NAME.TAG "
                 "for the checkpoint's own",)
    else:
        cfg, preprocess = named
        notes = ()
        # The shapes do not show the heads (unless given), the activation or the LayerNorm eps: the name
        # says them. One head divides any width, so a width of another model is named as such.
        inferred = infer_config(reader.shapes, str(src), num_heads or 1)
        unseen = ("act", "ln_eps") + (() if num_heads else ("num_heads",))
        differences = architecture_differences(inferred, cfg, ignore=unseen)
        if differences:
            raise VitConvertError(f"{src}: timm's {model} has another architecture than this checkpoint: "
                                  f"{'; '.join(d.describe('checkpoint') for d in differences)}")
    expected = param_shapes(cfg)
    specs = plan_tensors([Rule(name, (name,), IDENTITY) for name in expected], reader, {}, where=str(src))
    reader.check_weights(expected, str(src))
    record = WeightsRecord(
        config=cfg.replace(pos_resize="bicubic" if pos_resize is None else pos_resize), preprocess=preprocess,
        source=Source(format="timm" + (f"/{model}" if model else ""), file=src.name),
        labels=labels if labels is not None else label_set_for(cfg.num_classes),
        head_is_zero=not bool(tensors["head.weight"].any() or tensors["head.bias"].any()),
        notes=notes)
    return write_weights(dst, specs, record, source_path=src, dtype=dtype, force=force,
                         allow_nonfinite=allow_nonfinite, progress=progress)
