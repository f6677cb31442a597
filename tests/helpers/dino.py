"""facebookresearch/dino's position-embedding interpolation, the reference for our 'dino' method."""

from __future__ import annotations

import math

import torch


def dino_interpolate_pos_encoding(pos_embed: torch.Tensor, patch_size: int, image_shape: tuple) -> torch.Tensor:
    """facebookresearch/dino vision_transformer.py, VisionTransformer.interpolate_pos_encoding, written out
    with the same operations in the same order on the same names (one class token, square stored grid).
    Its caller unpacks the image as `B, nc, w, h = x.shape`: its 'w' is the height. Run on today's torch,
    whose default recompute_scale_factor (None) uses a given scale factor as torch 1.7.1 (DINO's) did."""
    _, _, w, h = image_shape
    npatch = (w // patch_size) * (h // patch_size)
    N = pos_embed.shape[1] - 1
    if npatch == N and w == h:
        return pos_embed
    class_pos_embed, patch_pos_embed = pos_embed[:, 0], pos_embed[:, 1:]
    dim = pos_embed.shape[-1]
    w0, h0 = w // patch_size + 0.1, h // patch_size + 0.1
    side = int(math.sqrt(N))
    patch_pos_embed = torch.nn.functional.interpolate(
        patch_pos_embed.reshape(1, side, side, dim).permute(0, 3, 1, 2),
        scale_factor=(w0 / math.sqrt(N), h0 / math.sqrt(N)), mode="bicubic")
    assert (int(w0), int(h0)) == patch_pos_embed.shape[-2:]
    patch_pos_embed = patch_pos_embed.permute(0, 2, 3, 1).view(1, -1, dim)
    return torch.cat((class_pos_embed.unsqueeze(0), patch_pos_embed), dim=1)


def dinov2_interpolate_pos_encoding(pos_embed: torch.Tensor, patch_size: int, image_shape: tuple,
                                    interpolate_offset: float, interpolate_antialias: bool) -> torch.Tensor:
    """facebookresearch/dinov2 dinov2/models/vision_transformer.py (since its Feb 2024 fix),
    DinoVisionTransformer.interpolate_pos_encoding, the same operations (no register tokens). Its hub
    builds the models without registers with offset 0.1 and no antialias, those with registers with
    offset 0 and antialias."""
    _, _, w, h = image_shape
    npatch = (w // patch_size) * (h // patch_size)
    N = pos_embed.shape[1] - 1
    if npatch == N and w == h:
        return pos_embed
    pos_embed = pos_embed.float()
    class_pos_embed, patch_pos_embed = pos_embed[:, 0], pos_embed[:, 1:]
    dim = pos_embed.shape[-1]
    w0, h0 = w // patch_size, h // patch_size
    M = int(math.sqrt(N))
    if interpolate_offset:
        target = {"scale_factor": (float(w0 + interpolate_offset) / M, float(h0 + interpolate_offset) / M)}
    else:
        target = {"size": (w0, h0)}
    patch_pos_embed = torch.nn.functional.interpolate(
        patch_pos_embed.reshape(1, M, M, dim).permute(0, 3, 1, 2), mode="bicubic",
        antialias=interpolate_antialias, **target)
    assert (w0, h0) == patch_pos_embed.shape[-2:]
    patch_pos_embed = patch_pos_embed.permute(0, 2, 3, 1).view(1, -1, dim)
    return torch.cat((class_pos_embed.unsqueeze(0), patch_pos_embed), dim=1)
