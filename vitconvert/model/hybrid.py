"""The ResNetV2 stem of the hybrid ViTs (R50+ViT-B/16, R26+S/32, R+Ti/16, R50+L/32).

Post-activation bottlenecks with GroupNorm and TensorFlow 'SAME' padding, as in the JAX reference.
The convolutions are weight-standardized in the JAX models and in timm's (each with its own
formula); the converters fold that standardization into the stored kernels (the weights are frozen),
so here they are plain convolutions. The GroupNorm eps is the config's (flax 1e-6, timm 1e-5).
Module names follow timm's ResNetV2, so state dicts load into timm's hybrids.

jeonsworld/ViT-pytorch's port of the R50 (config `hybrid_variant='jeonsworld'`) has the same layers and
shapes but other numerics: PyTorch's symmetric padding (kernel // 2) instead of TF 'SAME', a 3x3/2
max-pool without padding, and on each projection shortcut `nn.GroupNorm(cout, cout)`: one group per
channel, torch's default eps.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..core.config import GN_GROUPS  # ViTConfig checks hybrid widths against the same group count

# jeonsworld's projection-shortcut GroupNorm: nn.GroupNorm(cout, cout), eps left at torch's default.
JEONSWORLD_PROJ_GN_EPS = 1e-5


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF 'SAME': output ceil(size / stride), the odd pixel of padding goes after."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class Conv2dSame(nn.Conv2d):
    def __init__(self, in_chs: int, out_chs: int, kernel: int, stride: int = 1) -> None:
        super().__init__(in_chs, out_chs, kernel, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, s = self.kernel_size[0], self.stride[0]
        top, bottom = same_padding(x.shape[-2], k, s)
        left, right = same_padding(x.shape[-1], k, s)
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom))
        return F.conv2d(x, self.weight, None, self.stride)


class MaxPool2dSame(nn.Module):
    def __init__(self, kernel: int = 3, stride: int = 2) -> None:
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom = same_padding(x.shape[-2], self.kernel, self.stride)
        left, right = same_padding(x.shape[-1], self.kernel, self.stride)
        x = F.pad(x, (left, right, top, bottom), value=float("-inf"))
        return F.max_pool2d(x, self.kernel, self.stride)


def conv(in_chs: int, out_chs: int, kernel: int, stride: int, same: bool) -> nn.Conv2d:
    """TF 'SAME' padding, or PyTorch's symmetric kernel // 2 (jeonsworld's)."""
    if same:
        return Conv2dSame(in_chs, out_chs, kernel, stride)
    return nn.Conv2d(in_chs, out_chs, kernel, stride, padding=kernel // 2, bias=False)


class GroupNormAct(nn.GroupNorm):
    def __init__(self, channels: int, eps: float, act: bool = True, groups: int = GN_GROUPS) -> None:
        super().__init__(groups, channels, eps=eps)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
        return F.relu(x) if self.act else x


class Stem(nn.Sequential):
    """7x7/2 conv, GroupNorm + ReLU, 3x3/2 max-pool: stride 4 (jeonsworld's unpadded pool: 4k - 1 of 16k)."""

    def __init__(self, in_chans: int, width: int, eps: float, same: bool = True) -> None:
        super().__init__()
        self.conv = conv(in_chans, width, 7, 2, same)
        self.norm = GroupNormAct(width, eps)
        self.pool = MaxPool2dSame(3, 2) if same else nn.MaxPool2d(3, 2)


class Downsample(nn.Module):
    def __init__(self, in_chs: int, out_chs: int, stride: int, eps: float, same: bool = True) -> None:
        super().__init__()
        self.conv = conv(in_chs, out_chs, 1, stride, same)
        self.norm = GroupNormAct(out_chs, eps, act=False) if same else \
            GroupNormAct(out_chs, JEONSWORLD_PROJ_GN_EPS, act=False, groups=out_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))


class Bottleneck(nn.Module):
    def __init__(self, in_chs: int, out_chs: int, stride: int, eps: float, same: bool = True) -> None:
        super().__init__()
        mid = out_chs // 4
        needs_projection = stride != 1 or in_chs != out_chs
        self.downsample = Downsample(in_chs, out_chs, stride, eps, same) if needs_projection else None
        self.conv1, self.norm1 = conv(in_chs, mid, 1, 1, same), GroupNormAct(mid, eps)
        self.conv2, self.norm2 = conv(mid, mid, 3, stride, same), GroupNormAct(mid, eps)
        self.conv3, self.norm3 = conv(mid, out_chs, 1, 1, same), GroupNormAct(out_chs, eps, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.norm1(self.conv1(x))
        x = self.norm2(self.conv2(x))
        x = self.norm3(self.conv3(x))
        return F.relu(x + shortcut)


class Stage(nn.Module):
    def __init__(self, in_chs: int, out_chs: int, depth: int, stride: int, eps: float, same: bool = True) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*(
            Bottleneck(in_chs if i == 0 else out_chs, out_chs, stride if i == 0 else 1, eps, same)
            for i in range(depth)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


class ResNetV2(nn.Module):
    """Stem plus bottleneck stages; stage s has 4 * width * 2**s output channels, all but the first stride 2."""

    def __init__(self, layers: tuple[int, ...], in_chans: int, width: int, eps: float, same: bool = True) -> None:
        super().__init__()
        self.stem = Stem(in_chans, width, eps, same)
        chs, stages = width, []
        for s, depth in enumerate(layers):
            out_chs = backbone_channels(layers[: s + 1], width)
            stages.append(Stage(chs, out_chs, depth, 1 if s == 0 else 2, eps, same))
            chs = out_chs
        self.stages = nn.Sequential(*stages)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))


def build_backbone(layers: tuple[int, ...], in_chans: int, width: int, gn_eps: float,
                   variant: str = "bit") -> nn.Module:
    """timm names a stem-only backbone by its stem's modules directly (`backbone.conv`). variant: the
    config's `hybrid_variant`."""
    same = variant == "bit"
    return ResNetV2(layers, in_chans, width, gn_eps, same) if layers else Stem(in_chans, width, gn_eps, same)


def backbone_channels(layers: tuple[int, ...], width: int) -> int:
    """Output channels of a ResNet with these stages (the stem's width if there are none)."""
    return 4 * width * 2 ** (len(layers) - 1) if layers else width
