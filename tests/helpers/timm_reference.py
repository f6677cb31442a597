"""timm's models as references: random, non-zero weights in timm's own classes, and our model's shapes."""

from __future__ import annotations

import torch

from helpers.published_layouts import fill_random_


def timm_vit(name: str, seed: int = 0, **kwargs) -> torch.nn.Module:
    import timm

    return fill_random_(timm.create_model(name, pretrained=False, **kwargs), seed).eval()


def model_shapes(cfg) -> dict[str, tuple[int, ...]]:
    """Parameter names and shapes of our model for `cfg`, in state-dict order (built on the meta device)."""
    from vitconvert.model.vit import VisionTransformer

    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in VisionTransformer(cfg).state_dict().items()}
