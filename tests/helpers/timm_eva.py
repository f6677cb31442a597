"""timm's Eva family (timm/models/eva.py) as the installed timm defines it, small models of each member, and
random weights of realistic scale in timm's own classes."""

from __future__ import annotations

import timm
import torch
from timm.models import model_entrypoint

from helpers.published_layouts import fill_random_


def eva_family() -> list[str]:
    """Every architecture timm registers in timm/models/eva.py (each builds the Eva class: the tests check)."""
    return [n for n in timm.list_models() if model_entrypoint(n).__module__ == "timm.models.eva"]


def reduced_eva(name: str) -> dict:
    """timm.create_model kwargs for a small model of `name` that keeps every option that sets it apart: 2 blocks,
    64 wide, 2 heads (head width 32: RoPE's 8 bands an axis), a 4x4 grid (Sapiens2 keeps its 4:3 one); its
    ref_feat_shape, temperatures, pooling, norms and MLP kinds as defined. Sapiens2 keeps its grouped-query
    attention: 4 heads (of width 16), a block of 2 key/value heads (its middle ones) and one of 4 (its outer
    ones)."""
    with torch.device("meta"):
        full = timm.create_model(name, pretrained=False)
    patch = full.patch_embed.patch_size[0]
    kwargs = dict(depth=2, embed_dim=64, num_heads=2, img_size=4 * patch)
    if "sapiens2" in name:
        kwargs.update(num_heads=4, num_kv_heads=(2, 4), img_size=(4 * patch, 3 * patch))
    return kwargs


def timm_eva(name: str, seed: int = 0, **kwargs) -> torch.nn.Module:
    """timm's Eva `name` with every parameter random: fill_random_'s, with RMSNorm scales near 1 as LayerNorm's
    and RoPE-Mixed's learned frequencies of the scale timm initialises them at (about 1), so that every
    position turns its queries by angles up to radians."""
    model = fill_random_(timm.create_model(name, pretrained=False, **kwargs), seed).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for module in model.modules():
            if "RmsNorm" in type(module).__name__:
                module.weight.copy_(1 + 0.1 * torch.randn(module.weight.shape, generator=g))
        if getattr(model, "rope", None) is not None and hasattr(model.rope, "freqs"):
            model.rope.freqs.copy_(torch.randn(model.rope.freqs.shape, generator=g))
    return model
