"""A `Preprocess` record applied to an RGB image: resize, center crop, to tensor, normalize.

Pillow, numpy and torch only, yet pixel-for-pixel each record's reference pipeline:

- 'bicubic' and 'bilinear' are timm's eval transform (`timm.data.create_transform(
  **resolve_data_config(...))`, which is torchvision's Resize, CenterCrop, ToTensor and Normalize
  on PIL images): the sizes below are computed with the same integer rules, Pillow does the
  resampling in both, and the float steps are the same operations.
- 'bilinear_tf' is vit_jax's evaluation, `tf.image.resize` then (x - 127.5) / 127.5: bilinear on
  float pixels with half-pixel centres and no antialiasing, TensorFlow's CPU kernel operation for
  operation (`tf_resize_bilinear`). Pillow's bilinear antialiases when it shrinks, so it is not the
  same resize; torch's `F.interpolate` is, up to how it rounds the source coordinate, which changed
  between torch releases (2.14 computes it with one rounding, TensorFlow with two: up to 7e-4 of a
  pixel apart on the cat photo), so it is not used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
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
        pixels = np.asarray(image, dtype=np.uint8)
        x = torch.from_numpy(tf_resize_bilinear(pixels, g.resized)).permute(2, 0, 1)
        x = x[:, g.top:g.top + g.size[0], g.left:g.left + g.size[1]]
        # On the 0-255 scale, as vit_jax does: 255 * 0.5 = 127.5 exactly, so with mean = std = 0.5
        # this is Google's (x - 127.5) / 127.5 operation for operation.
        return x.sub(mean * 255).div(std * 255)
    if g.resized != (image.height, image.width):
        image = image.resize((g.resized[1], g.resized[0]), RESAMPLE[pre.interpolation])
    image = image.crop((g.left, g.top, g.left + g.size[1], g.top + g.size[0]))
    # ToTensor then Normalize, in float32 as torchvision does them, so the results are bit-identical.
    return _pixels(image).float().div(255).sub(mean).div(std)


def tf_resize_bilinear(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`tf.image.resize(pixels, size)` (bilinear, no antialiasing) of an (H, W, C) uint8 array, as float32
    (H', W', C): TensorFlow's CPU kernel (resize_bilinear_op.cc, half-pixel centres) step by step, each
    float32 operation rounded on its own as its SSE code does, so the results are the same floats.
    Only the source rows and columns the output reads are made float, so a large photo costs about what a
    small one does (the timings: benchmarks/RESULTS.md, "One-off timings")."""
    if tuple(size) == pixels.shape[:2]:
        return pixels.astype(np.float32)  # TensorFlow's no-op resize: a cast
    (y_low, y_high, y_lerp), (x_low, x_high, x_lerp) = (
        _tf_source_pixels(n_in, n_out) for n_in, n_out in zip(pixels.shape[:2], size, strict=False))
    channels = pixels.shape[2]
    rows = pixels.reshape(pixels.shape[0], -1)  # (H, W * C): a pixel's channels side by side
    left, right = ((x[:, None] * channels + np.arange(channels)).ravel() for x in (x_low, x_high))
    x_lerp = np.repeat(x_lerp, channels)

    def along_x(picked: np.ndarray) -> np.ndarray:  # left + (right - left) * x_lerp, in place
        low = picked.take(left, axis=1).astype(np.float32)
        out = picked.take(right, axis=1).astype(np.float32)
        out -= low
        out *= x_lerp
        out += low
        return out

    top, bottom = along_x(rows[y_low]), along_x(rows[y_high])
    bottom -= top  # top + (bottom - top) * y_lerp
    bottom *= y_lerp[:, None]
    bottom += top
    return bottom.reshape(size[0], size[1], channels)


def _tf_source_pixels(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each output index along one axis: the lower and upper source index and the weight of the upper,
    as TensorFlow's compute_interpolation_weights with its HalfPixelScaler, in float32."""
    scale = np.float32(n_in) / np.float32(n_out)
    source = (np.arange(n_out, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    floor = np.floor(source)
    low = np.maximum(floor, 0).astype(np.intp)
    high = np.minimum(np.ceil(source), n_in - 1).astype(np.intp)
    return low, high, source - floor


def _pixels(image: Image.Image) -> torch.Tensor:
    """(3, height, width) uint8."""
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)
