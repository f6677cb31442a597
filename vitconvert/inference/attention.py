"""Attention rollout (Abnar & Zuidema, 2020) and its heat-map overlay on the image.

Rollout: per block, average the heads, add the identity for the residual connection and
renormalize the rows; multiply the blocks together from first to last. The class token's row,
over the patch tokens, is how much each patch reached the class token through all layers.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

# A perceptually ordered dark-blue -> red ramp (anchors of matplotlib's 'turbo', a colour map
# that stays readable on top of a photo), interpolated linearly between anchors.
_RAMP = np.array([
    (48, 18, 59), (70, 107, 227), (40, 188, 235), (50, 241, 153),
    (164, 252, 60), (237, 208, 58), (251, 128, 34), (208, 47, 5), (122, 4, 3),
], dtype=np.float64)


def rollout(maps: list[torch.Tensor], num_prefix_tokens: int, grid: tuple[int, int]) -> torch.Tensor:
    """(B, grid_h, grid_w): the class token's rolled-out attention to each patch, summing to <= 1."""
    first = maps[0]
    eye = torch.eye(first.shape[-1], dtype=torch.float32, device=first.device)
    result = eye.expand(first.shape[0], -1, -1)
    for attn in maps:
        a = attn.float().mean(dim=1) + eye
        a = a / a.sum(dim=-1, keepdim=True)
        result = a @ result
    # Row 0 is the class token (a distilled model's distillation token is row 1, also skipped).
    return result[:, 0, num_prefix_tokens:].reshape(-1, *grid)


def colorize(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1], any shape -> uint8 RGB on the ramp."""
    position = np.clip(values, 0, 1) * (len(_RAMP) - 1)
    low = np.floor(position).astype(int).clip(0, len(_RAMP) - 2)
    frac = (position - low)[..., None]
    return np.rint(_RAMP[low] * (1 - frac) + _RAMP[low + 1] * frac).astype(np.uint8)


def overlay(image: Image.Image, heat: np.ndarray, box: tuple[float, float, float, float],
            alpha: float = 0.5) -> Image.Image:
    """`image` with `heat` (grid_h, grid_w) stretched over `box` (left, top, right, bottom).

    The box is the part of the image the model saw (a center crop, or all of it); outside it the
    image is dimmed, since the model had no attention to give there.
    """
    heat = np.asarray(heat, dtype=np.float32)
    span = float(heat.max() - heat.min())
    heat = (heat - heat.min()) / span if span > 0 else np.zeros_like(heat)
    left, top, right, bottom = (round(v) for v in box)
    left, top = max(left, 0), max(top, 0)
    right, bottom = min(max(right, left + 1), image.width), min(max(bottom, top + 1), image.height)
    # Bilinear up-sampling of the grid, as a float ('F') image so Pillow does not round it.
    stretched = np.asarray(Image.fromarray(heat).resize((right - left, bottom - top),
                                                                  Image.Resampling.BILINEAR))
    base = np.asarray(image.convert("RGB"), dtype=np.float32)
    out = base * 0.5  # dimmed outside the box
    out[top:bottom, left:right] = (base[top:bottom, left:right] * (1 - alpha)
                                   + colorize(stretched).astype(np.float32) * alpha)
    return Image.fromarray(np.rint(out).clip(0, 255).astype(np.uint8))
