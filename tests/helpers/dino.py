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


def dinov2_get_intermediate_layers(model, x: torch.Tensor, n=1, reshape: bool = False,
                                   return_class_token: bool = False, norm: bool = True,
                                   num_register_tokens: int = 0, patch_size: int = 16):
    """facebookresearch/dinov2 dinov2/models/vision_transformer.py, DinoVisionTransformer's
    get_intermediate_layers and _get_intermediate_layers_not_chunked, the same operations in the same
    order, run on a timm VisionTransformer's token preparation, blocks and norm (timm's DINOv2 models
    are that class). DINOv2 unpacks the image as `B, _, w, h`: its 'w' is the height."""
    x_in = x
    x = model.norm_pre(model._pos_embed(model.patch_embed(x)))  # prepare_tokens_with_masks
    output, total_block_len = [], len(model.blocks)
    blocks_to_take = range(total_block_len - n, total_block_len) if isinstance(n, int) else n
    for i, blk in enumerate(model.blocks):
        x = blk(x)
        if i in blocks_to_take:
            output.append(x)
    assert len(output) == len(blocks_to_take), f"only {len(output)} / {len(blocks_to_take)} blocks found"
    outputs = output
    if norm:
        outputs = [model.norm(out) for out in outputs]
    class_tokens = [out[:, 0] for out in outputs]
    outputs = [out[:, 1 + num_register_tokens:] for out in outputs]
    if reshape:
        B, _, w, h = x_in.shape
        outputs = [out.reshape(B, w // patch_size, h // patch_size, -1).permute(0, 3, 1, 2).contiguous()
                   for out in outputs]
    if return_class_token:
        return tuple(zip(outputs, class_tokens, strict=True))
    return tuple(outputs)


def dinov3_get_intermediate_layers(model, x: torch.Tensor, *, n=1, reshape: bool = False,
                                   return_class_token: bool = False, return_extra_tokens: bool = False,
                                   norm: bool = True, n_storage_tokens: int = 0, patch_size: int = 16):
    """facebookresearch/dinov3 dinov3/models/vision_transformer.py, DinoVisionTransformer's
    get_intermediate_layers (tied norms, no RoPE: the block call is the model's own) and
    _get_intermediate_layers_not_chunked, the same operations in the same order, on a timm
    VisionTransformer's token preparation, blocks and norm."""
    x_in = x
    x = model.norm_pre(model._pos_embed(model.patch_embed(x)))
    output, total_block_len = [], len(model.blocks)
    blocks_to_take = range(total_block_len - n, total_block_len) if isinstance(n, int) else n
    for i, blk in enumerate(model.blocks):
        x = blk(x)
        if i in blocks_to_take:
            output.append(x)
    assert len(output) == len(blocks_to_take), f"only {len(output)} / {len(blocks_to_take)} blocks found"
    outputs = output
    if norm:
        outputs = [model.norm(out) for out in outputs]
    class_tokens = [out[:, 0] for out in outputs]
    extra_tokens = [out[:, 1: n_storage_tokens + 1] for out in outputs]
    outputs = [out[:, n_storage_tokens + 1:] for out in outputs]
    if reshape:
        B, _, h, w = x_in.shape
        outputs = [out.reshape(B, h // patch_size, w // patch_size, -1).permute(0, 3, 1, 2).contiguous()
                   for out in outputs]
    if not return_class_token and not return_extra_tokens:
        return tuple(outputs)
    if return_class_token and not return_extra_tokens:
        return tuple(zip(outputs, class_tokens, strict=True))
    if not return_class_token and return_extra_tokens:
        return tuple(zip(outputs, extra_tokens, strict=True))
    return tuple(zip(outputs, class_tokens, extra_tokens, strict=True))
