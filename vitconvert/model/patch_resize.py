"""The patch-embedding kernel at another patch size: FlexiViT's "PI-resize" (big_vision's
models/proj/flexi/vit.py `resample_patchemb`, which timm's `resample_patch_embed` follows).

Resizing a p x p patch to q x q is a linear map B (q*q x p*p): FlexiViT resizes with `tf.image.resize`
bilinear, half-pixel centres, no antialias (its preprocessing's resize). The new kernel is
pinv(B^T) w: the one whose token on the resized patch is closest, over all patches, to the old kernel's
token on the patch itself. Enlarging (q >= p) B^T has full row rank, B^T pinv(B^T) = I, and the token
of an enlarged patch is the old one exactly; shrinking it is the least-squares best.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bilinear_resize_matrix(old: tuple[int, int], new: tuple[int, int]) -> torch.Tensor:
    """(new_h*new_w, old_h*old_w) float64: row-major flattened patches, resized as `tf.image.resize`
    bilinear does (torch's bilinear with align_corners off and no antialias computes the same weights)."""
    n = old[0] * old[1]
    basis = torch.eye(n, dtype=torch.float64).reshape(n, 1, *old)
    resized = F.interpolate(basis, size=new, mode="bilinear", align_corners=False, antialias=False)
    return resized.reshape(n, -1).T


def resample_patch_kernel(weight: torch.Tensor, new: tuple[int, int]) -> torch.Tensor:
    """(D, C, p_h, p_w) -> (D, C, *new), PI-resized in float64, returned in `weight`'s dtype."""
    old = tuple(weight.shape[-2:])
    if old == tuple(new):
        return weight
    pinv = torch.linalg.pinv(bilinear_resize_matrix(old, new).T)  # (new_n, old_n)
    out = weight.double().flatten(2) @ pinv.T
    return out.reshape(*weight.shape[:2], *new).to(weight.dtype)
