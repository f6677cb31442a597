"""Inputs on which a normalization's epsilon shows, for the tests that pin each epsilon down.

An epsilon changes a norm's output only where the variance it is added to is of its own size; with
the usual activations (variance ~1) 1e-6 and 1e-5 give the same logits to ~1e-6, so the parity
tests alone cannot tell them apart.
"""

from __future__ import annotations

import torch


@torch.no_grad()
def shrink_embeddings_(model: torch.nn.Module, factor: float = 1e-3) -> torch.nn.Module:
    """In place, on a timm ViT: patch embedding, position embedding and prefix tokens times `factor`,
    so the first LayerNorm sees tokens of variance ~factor**2."""
    for p in (model.patch_embed.proj.weight, model.patch_embed.proj.bias, model.pos_embed,
              getattr(model, "cls_token", None), getattr(model, "dist_token", None)):
        if p is not None:
            p.mul_(factor)
    return model


@torch.inference_mode()
def logits_with_eps(model: torch.nn.Module, kind: type, eps: float, x: torch.Tensor) -> torch.Tensor:
    """`model`'s logits with every `kind` norm's epsilon set to `eps` (the model keeps it)."""
    for m in model.modules():
        if isinstance(m, kind):
            m.eps = eps
    return model(x)
