"""A `Preprocess` record applied to an RGB image: resize, center crop, to tensor, normalize.

Pillow, numpy and torch only, yet pixel-for-pixel each record's reference pipeline:

- 'bicubic' and 'bilinear' are timm's eval transform (`timm.data.create_transform(
  **resolve_data_config(...))`, which is torchvision's Resize, CenterCrop, ToTensor and Normalize
  on PIL images): the sizes below are computed with the same integer rules, Pillow does the
  resampling in both, and the float steps are the same operations.
- 'bilinear_tf' is vit_jax's evaluation, `tf.image.resize` then (x - 127.5) / 127.5: bilinear on
  float pixels with half-pixel centres and no antialiasing, which is what torch's
  `F.interpolate(mode='bilinear', align_corners=False, antialias=False)` computes. Pillow's
  bilinear antialiases when it shrinks, so it is not the same resize.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..formats.weights_file import Preprocess

RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


@dataclass(frozen=True)
class Geometry:
    """Where the model's input comes from: the image resized to `resized`, then the crop at (top, left)."""

    resized: tuple[int, int]  # (height, width)
    top: int
    left: int
    size: tuple[int, int]  # the crop, (height, width)

    def box_in(self, image_size: tuple[int, int]) -> tuple[float, float, float, float]:
        """The crop as (left, top, right, bottom) in the coordinates of the original (height, width) image."""
        sy, sx = image_size[0] / self.resized[0], image_size[1] / self.resized[1]
        return (self.left * sx, self.top * sy, (self.left + self.size[1]) * sx, (self.top + self.size[0]) * sy)


def crop_geometry(image_size: tuple[int, int], pre: Preprocess) -> Geometry:
    """Resize and crop for an image of (height, width), by timm's rules for its eval transform."""
    h, w = image_size
    th, tw = pre.size
    # timm resizes to size / crop_pct, floored, and crops `size` from the middle.
    sh, sw = math.floor(th / pre.crop_pct), math.floor(tw / pre.crop_pct)
    if pre.resize == "squash":  # timm crop_mode='squash': both sides, aspect ratio not kept
        resized = (sh, sw)
    elif sh == sw:  # torchvision Resize(int): the short side to sh, the long side truncated
        short, long = min(h, w), max(h, w)
        new_long = int(sh * long / short)
        resized = (sh, new_long) if h <= w else (new_long, sh)
    else:  # timm ResizeKeepRatio for non-square targets: the tighter ratio, each side rounded
        ratio = min(h / sh, w / sw)
        resized = (round(h / ratio), round(w / ratio))
    # torchvision CenterCrop: offsets rounded half to even (Python's round).
    top = round((resized[0] - th) / 2.0)
    left = round((resized[1] - tw) / 2.0)
    return Geometry(resized, top, left, (th, tw))


def to_tensor(image: Image.Image, pre: Preprocess) -> torch.Tensor:
    """An RGB image as the normalized (3, height, width) float32 input `pre` describes."""
    g = crop_geometry((image.height, image.width), pre)
    mean = torch.tensor(pre.mean, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(pre.std, dtype=torch.float32).view(3, 1, 1)
    if pre.interpolation == "bilinear_tf":
        x = _pixels(image).float()
        if g.resized != (image.height, image.width):
            x = F.interpolate(x[None], size=g.resized, mode="bilinear", align_corners=False,
                              antialias=False)[0]
        x = x[:, g.top:g.top + g.size[0], g.left:g.left + g.size[1]]
        # On the 0-255 scale, as vit_jax does: 255 * 0.5 = 127.5 exactly, so with mean = std = 0.5
        # this is Google's (x - 127.5) / 127.5 operation for operation.
        return x.sub(mean * 255).div(std * 255)
    if g.resized != (image.height, image.width):
        image = image.resize((g.resized[1], g.resized[0]), RESAMPLE[pre.interpolation])
    image = image.crop((g.left, g.top, g.left + g.size[1], g.top + g.size[0]))
    # ToTensor then Normalize, in float32 as torchvision does them, so the results are bit-identical.
    return _pixels(image).float().div(255).sub(mean).div(std)


def _pixels(image: Image.Image) -> torch.Tensor:
    """(3, height, width) uint8."""
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)
