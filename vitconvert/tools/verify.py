"""Our model against timm's on the same weights: logit differences, top-5 agreement, and the first
stage where the two part ways (intermediates on our side, forward hooks on timm's; the module names
are the same on both)."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

from ..core.errors import VitConvertError
from ..model.loading import build_with_weights, load_state_dict, at_size
from ..formats.weights_file import WeightsRecord

ACTIVATIONS = ("gelu", "gelu_tanh")  # our names are timm's act_layer names


@dataclass(frozen=True)
class StageDiff:
    stage: str
    max_abs: float


@dataclass(frozen=True)
class VerifyReport:
    timm_model: str
    timm_weights: str  # where timm's weights came from
    input: str
    ours_activation: str
    timm_activation: str
    max_abs_diff: float
    mean_abs_diff: float
    top1_agreement: float
    top5_agreement: float
    atol: float
    stages: list[StageDiff] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.atol

    @property
    def first_divergence(self) -> str | None:
        return next((s.stage for s in self.stages if s.max_abs > self.atol), None)

    def to_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok, "first_divergence": self.first_divergence}


def timm_model_for(name: str, record: WeightsRecord, img_size: tuple[int, int], act: str) -> torch.nn.Module:
    """timm's model `name`, shaped by our config (so a reduced-depth or re-headed file still compares)."""
    import timm

    cfg = record.config
    if cfg.representation_size:
        raise VitConvertError("timm's VisionTransformer has no representation (pre_logits) layer, so it cannot "
                              "run this file; compare its features instead")
    kwargs = dict(pretrained=False, num_classes=cfg.num_classes, img_size=img_size, act_layer=act,
                  embed_dim=cfg.embed_dim, depth=cfg.depth, num_heads=cfg.num_heads,
                  mlp_ratio=cfg.mlp_dim / cfg.embed_dim, qkv_bias=cfg.qkv_bias)
    if cfg.hybrid_layers is None:
        kwargs.update(patch_size=cfg.patch_size)
    if cfg.pool == "gap":
        kwargs.update(class_token=False, global_pool="avg", fc_norm=cfg.fc_norm)
    if cfg.no_embed_class:
        kwargs.update(no_embed_class=True)
    try:
        model = timm.create_model(name, **kwargs)
    except (RuntimeError, TypeError) as e:
        raise VitConvertError(f"cannot build timm model {name!r} for this file: {e}") from None
    return model.eval()


def _jax_resnet_numerics(model: torch.nn.Module, kernels_standardized: bool) -> None:
    """timm's hybrid with the JAX ResNet numerics: GroupNorm eps 1e-6, and convolutions that either
    standardize as JAX does, (w - mean) / (std + 1e-5), or, for kernels we already standardized at
    conversion, do not standardize again."""
    from timm.layers import StdConv2dSame

    for m in model.modules():
        if isinstance(m, torch.nn.GroupNorm):
            m.eps = 1e-6
        elif isinstance(m, StdConv2dSame):
            m.forward = partial(_jax_conv, m, standardize=not kernels_standardized)


def _jax_conv(conv: torch.nn.Conv2d, x: torch.Tensor, standardize: bool) -> torch.Tensor:
    from timm.layers.padding import pad_same

    w = conv.weight
    if standardize:
        w = (w - w.mean(dim=(1, 2, 3), keepdim=True)) / (w.std(dim=(1, 2, 3), keepdim=True, unbiased=False) + 1e-5)
    if conv.same_pad:
        x = pad_same(x, conv.kernel_size, conv.stride, conv.dilation)
    return F.conv2d(x, w, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)


def load_timm_weights(model: torch.nn.Module, source: Path | None, ours_state: dict[str, torch.Tensor]) -> str:
    """timm's own loader for the original file when given; else our tensors through timm's filter."""
    from timm.models.vision_transformer import _load_weights, checkpoint_filter_fn

    if source is None:
        model.load_state_dict(checkpoint_filter_fn(ours_state, model), strict=True)
        return "our file, through timm's checkpoint_filter_fn"
    if source.suffix == ".npz":
        _load_weights(model, str(source))
        return f"{source.name}, through timm's npz loader"
    from ..convert.timm import read_state_dict

    model.load_state_dict(checkpoint_filter_fn(read_state_dict(source), model), strict=True)
    return f"{source.name}, through timm's checkpoint_filter_fn"


def verify(path: str | os.PathLike, timm_model: str, *, source: str | os.PathLike | None = None,
           img_size: tuple[int, int] | None = None, image: str | os.PathLike | None = None,
           atol: float = 1e-4, timm_act: str = "match", batch: int = 4, seed: int = 0) -> VerifyReport:
    """Run our model from `path` and timm's `timm_model` on the same input and compare.

    timm_act: 'match' runs timm with the activation our file records and, for hybrids, the JAX
    ResNet numerics (a pure conversion check); 'gelu' or 'gelu_tanh' forces an activation and leaves
    timm's own numerics (e.g. 'gelu' shows what stock timm gives).
    """
    record, state = load_state_dict(path)
    cfg, state = at_size(record.config, state, img_size or record.config.img_size)
    ours = build_with_weights(cfg, state)
    act = cfg.act if timm_act == "match" else timm_act
    if act not in ACTIVATIONS:
        raise VitConvertError(f"timm activation must be 'match', 'gelu' or 'gelu_tanh', got {timm_act!r}")
    theirs = timm_model_for(timm_model, record, cfg.img_size, act)
    origin = load_timm_weights(theirs, Path(source) if source else None, state)
    if cfg.hybrid_layers is not None and timm_act == "match":
        _jax_resnet_numerics(theirs, kernels_standardized=source is None)

    if image is not None:
        from ..inference.images import load_rgb
        from ..inference.transform import to_tensor

        x = to_tensor(load_rgb(image), record.preprocess.at_size(cfg.img_size)).unsqueeze(0)
        described = f"{Path(image).name} through the file's preprocessing"
    else:
        x = torch.randn(batch, cfg.in_chans, *cfg.img_size, generator=torch.Generator().manual_seed(seed))
        described = f"fixed random batch {tuple(x.shape)}, seed {seed}"

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
    return VerifyReport(timm_model=timm_model, timm_weights=origin, input=described, ours_activation=cfg.act,
                        timm_activation=act, max_abs_diff=diff.max().item(), mean_abs_diff=diff.mean().item(),
                        top1_agreement=top1, top5_agreement=top5, atol=atol, stages=stages)
