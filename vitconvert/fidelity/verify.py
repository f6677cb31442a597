"""Our model against timm's on the same weights: logit differences, top-5 agreement, and the first
stage where the two part ways (intermediates on our side, forward hooks on timm's; the module names
are the same on both).

timm's model is the one its name defines, never one shaped by our file: a file whose architecture
is not the name's fails with the differences listed, so a wrong config cannot pass.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..conversion.timm_models import (
    Difference,
    architecture_differences,
    create_timm_model,
    is_beit,
    timm_config,
    to_timm_state,
)
from ..core.config import ACTIVATIONS, ViTConfig
from ..core.errors import VitConvertError
from ..model.loading import at_size, build_with_weights, load_state_dict

# Numerics that --timm-act match gives timm's model from our file, so no difference of architectures: the
# activation (our names are timm's act_layer names) and a hybrid ResNet's GroupNorm eps. How a file resamples
# position embeddings and relative position tables at another size is no part of the architecture timm builds
# either.
MATCHED = ("act", "hybrid_gn_eps")
NOT_ARCHITECTURE = ("pos_resize", "rel_pos_resize")


@dataclass(frozen=True)
class StageDiff:
    stage: str
    max_abs: float


@dataclass(frozen=True)
class VerifyReport:
    timm_model: str
    timm_kwargs: dict[str, Any]  # given to timm.create_model with the name (Python API only)
    ours_activation: str
    timm_activation: str
    atol: float
    # Where the file's architecture is not timm's; then nothing is run and the numbers are None.
    architecture_differences: list[Difference] = field(default_factory=list)
    timm_weights: str | None = None  # where timm's weights came from
    input: str | None = None
    max_abs_diff: float | None = None
    mean_abs_diff: float | None = None
    top1_agreement: float | None = None
    top5_agreement: float | None = None
    stages: list[StageDiff] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.architecture_differences and self.max_abs_diff is not None and self.max_abs_diff <= self.atol

    @property
    def first_divergence(self) -> str | None:
        return next((s.stage for s in self.stages if s.max_abs > self.atol), None)

    def to_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok, "first_divergence": self.first_divergence}


def _file_resnet_numerics(model: torch.nn.Module, gn_eps: float, standardize: str) -> None:
    """timm's hybrid with the ResNet numerics of our file: its GroupNorm eps (1e-6 for the JAX models,
    timm's own 1e-5 for timm's), and convolutions that standardize as the original does ('timm': leave
    timm's StdConv2dSame; 'jax': (w - mean) / (std + 1e-5)) or, for the kernels our file stores
    standardized ('none'), do not standardize again."""
    from timm.layers import StdConv2dSame

    for m in model.modules():
        if isinstance(m, torch.nn.GroupNorm):
            m.eps = gn_eps
        elif isinstance(m, StdConv2dSame) and standardize != "timm":
            m.forward = partial(_plain_or_jax_conv, m, jax_standardize=standardize == "jax")


def _plain_or_jax_conv(conv: torch.nn.Conv2d, x: torch.Tensor, jax_standardize: bool) -> torch.Tensor:
    from timm.layers.padding import pad_same

    w = conv.weight
    if jax_standardize:
        w = (w - w.mean(dim=(1, 2, 3), keepdim=True)) / (w.std(dim=(1, 2, 3), keepdim=True, unbiased=False) + 1e-5)
    if conv.same_pad:
        x = pad_same(x, conv.kernel_size, conv.stride, conv.dilation)
    return F.conv2d(x, w, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)


def load_timm_weights(model: torch.nn.Module, name: str, native: ViTConfig, source: Path | None,
                      ours_state: dict[str, torch.Tensor]) -> str:
    """timm's own loader for the original file when given; else our tensors through timm's filter.

    native: the architecture of timm's `name`, which the original must have: timm's loaders copy
    whatever fits (the npz loader) or resample (the filter), so it is checked first."""
    from timm.models.vision_transformer import _load_weights

    if type(model).__name__ == "Eva":
        return _load_eva_weights(model, name, source, ours_state)
    if source is None:
        _load_checked(model, to_timm_state(model, ours_state), "our file", name)
        return "our file, through timm's checkpoint_filter_fn"
    if source.suffix == ".npz":
        from ..conversion import jax_layouts
        from ..conversion.jax import config_from_shapes as npz_config
        from ..formats.npz import NpzReader

        with NpzReader(source) as reader:
            layout = jax_layouts.detect(reader.shapes, str(source))
            _check_architecture(npz_config(reader, layout, native.act), native, source, name)
        # timm finds '', opt/target/, params/ and params/img/ itself, but a LiT tower's img/ only when told.
        _load_weights(model, str(source), prefix=layout.prefix)
        return f"{source.name}, through timm's npz loader"
    from ..conversion.timm import config_from_shapes, release_layout
    from ..formats.state_dict import read_state_dict

    state = release_layout(read_state_dict(source).tensors)[0]
    inferred = config_from_shapes({k: tuple(v.shape) for k, v in state.items()}, str(source), named=True)
    _refuse_differences(inferred.differences_from(native, ignore=MATCHED + NOT_ARCHITECTURE), source, name)
    try:
        state = to_timm_state(model, state)
    except (RuntimeError, ValueError, KeyError, IndexError) as e:
        raise VitConvertError(f"{source}: timm's checkpoint filter cannot fit it to {name} ({e})") from None
    _load_checked(model, state, str(source), name)
    return f"{source.name}, through timm's checkpoint_filter_fn"


def _load_eva_weights(model: torch.nn.Module, name: str, source: Path | None,
                      ours_state: dict[str, torch.Tensor]) -> str:
    """An Eva's weights: our tensors under its names (conversion/timm_eva.py's renames undone), or the original
    state dict, each through timm's Eva checkpoint_filter_fn."""
    from timm.models.eva import checkpoint_filter_fn

    from ..conversion.timm_eva import to_eva_names

    if source is None:
        state = to_eva_names(ours_state, list(model.state_dict()), lambda t, a, b: t[a:b])
        _load_checked(model, checkpoint_filter_fn(state, model), "our file", name)
        return "our file, under Eva's names, through timm's Eva checkpoint_filter_fn"
    from ..formats.state_dict import read_state_dict

    _load_checked(model, checkpoint_filter_fn(read_state_dict(source).tensors, model), str(source), name)
    return f"{source.name}, through timm's Eva checkpoint_filter_fn"


def _load_checked(model: torch.nn.Module, state: Mapping[str, torch.Tensor], where: str, name: str) -> None:
    """A strict load, whose failure names the tensors (torch's own message is a page of text)."""
    from ..conversion.mapping import name_list

    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    given = {k: tuple(v.shape) for k, v in state.items()}
    wrong = [f"{k} {given[k]} (timm {expected[k]})" for k in given if k in expected and given[k] != expected[k]]
    parts = [f"{what}: {text}" for what, text in (
        ("tensors timm's model lacks", name_list(set(given) - set(expected))),
        ("tensors it lacks", name_list(set(expected) - set(given))),
        ("tensors of other shapes", "; ".join(wrong[:4]) + (f" and {len(wrong) - 4} more" if len(wrong) > 4 else "")),
    ) if text]
    if parts:
        raise VitConvertError(f"{where} does not fit timm's {name}: {'; '.join(parts)}")
    model.load_state_dict(state, strict=True)


def _check_architecture(cfg: ViTConfig, native: ViTConfig, source: Path, name: str) -> None:
    # An npz's arrays do not record the norm eps.
    _refuse_differences(architecture_differences(cfg, native, ignore=("ln_eps",) + MATCHED + NOT_ARCHITECTURE),
                        source, name)


def _refuse_differences(differences: list[Difference], source: Path, name: str) -> None:
    if differences:
        raise VitConvertError(f"{source}: its architecture is not timm's {name}: "
                              f"{'; '.join(d.describe('source') for d in differences)}")


def verify(path: str | os.PathLike, timm_model: str, *, source: str | os.PathLike | None = None,
           img_size: tuple[int, int] | None = None, image: str | os.PathLike | None = None,
           atol: float = 1e-4, timm_act: str = "match", batch: int = 4, seed: int = 0,
           timm_kwargs: Mapping[str, Any] | None = None) -> VerifyReport:
    """Run our model from `path` and timm's `timm_model` on the same input and compare.

    timm's model is `timm.create_model(timm_model, **timm_kwargs)`; where its architecture is not
    the file's, the report lists the differences, runs nothing and fails.
    timm_act: 'match' runs timm with the activation our file records and, for hybrids, the file's
    ResNet numerics (a pure conversion check); an activation name ('gelu', 'gelu_tanh', ...) forces it
    and leaves timm's own numerics (e.g. 'gelu' shows what stock timm gives a JAX model).
    img_size: compare at this size: both models' position embeddings are resampled to it.
    """
    record, state = load_state_dict(path)
    act = record.config.act if timm_act == "match" else timm_act
    if act not in ACTIVATIONS:
        raise VitConvertError(f"timm activation must be 'match' or one of {', '.join(map(repr, ACTIVATIONS))}, "
                              f"got {timm_act!r}")
    kwargs = dict(timm_kwargs or {})
    meta = create_timm_model(timm_model, meta=True, **kwargs)
    native = timm_config(meta, timm_model)
    # Eva and Beit take no act_layer: their MLPs' activations are fixed (GELU, or SiLU in Eva's SwiGLU).
    eva, beit = type(meta).__name__ == "Eva", is_beit(meta)
    if eva and timm_act != "match":
        raise VitConvertError(f"timm's {timm_model} is an Eva, which takes no activation: --timm-act applies to "
                              "VisionTransformer models")
    described = dict(timm_model=timm_model, timm_kwargs=kwargs, ours_activation=record.config.act,
                     timm_activation=act, atol=atol)
    # The activation is not compared: --timm-act chooses the one timm runs.
    differences = architecture_differences(record.config, native, ignore=MATCHED + NOT_ARCHITECTURE)
    if differences:
        return VerifyReport(**described, architecture_differences=differences)

    cfg, state = at_size(record.config, state, img_size or record.config.img_size)
    ours = build_with_weights(cfg, state)
    # At another size timm's position embeddings are resampled to it too: the input size, not the architecture.
    at = {} if cfg.img_size == native.img_size else {"img_size": cfg.img_size}
    if beit and act != native.act:
        raise VitConvertError(f"timm's {timm_model} is a Beit, whose activation ({native.act}) timm does not let "
                              f"a caller change: it cannot run {act}")
    theirs = create_timm_model(timm_model, **{**kwargs, **at, **({} if eva or beit else {"act_layer": act})})
    origin = load_timm_weights(theirs, timm_model, native, Path(source) if source else None, state)
    if cfg.hybrid_layers is not None and timm_act == "match":
        original = "none" if source is None else "jax" if Path(source).suffix == ".npz" else "timm"
        _file_resnet_numerics(theirs, cfg.hybrid_gn_eps, standardize=original)

    if image is not None:
        from ..inference.images import load_rgb
        from ..inference.transform import to_tensor

        x = to_tensor(load_rgb(image), record.preprocess.at_size(cfg.img_size)).unsqueeze(0)
        what = f"{Path(image).name} through the file's preprocessing"
    else:
        x = torch.randn(batch, cfg.in_chans, *cfg.img_size, generator=torch.Generator().manual_seed(seed))
        what = f"fixed random batch {tuple(x.shape)}, seed {seed}"

    captured: dict[str, torch.Tensor] = {}
    hooks = [theirs.get_submodule(name).register_forward_hook(
        lambda _m, _i, out, name=name: captured.__setitem__(name, out))
        for name in ["blocks." + str(i) for i in range(cfg.depth)] + ["norm"]]
    with torch.inference_mode():
        mine = ours.forward_intermediates(x)
        ref = theirs(x)
    for h in hooks:
        h.remove()

    diff = (mine.logits - ref).abs()
    top5 = (mine.logits.topk(5).indices == ref.topk(5).indices).all(dim=1).float().mean().item()
    top1 = (mine.logits.argmax(1) == ref.argmax(1)).float().mean().item()
    stages = [StageDiff(name, (mine.stages[name] - captured[name]).abs().max().item())
              for name in captured]
    return VerifyReport(**described, timm_weights=origin, input=what, max_abs_diff=diff.max().item(),
                        mean_abs_diff=diff.mean().item(), top1_agreement=top1, top5_agreement=top5, stages=stages)
