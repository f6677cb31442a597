"""Test weights files, made without any converter: a timm model (or ours) with random non-zero
weights, written with `save_weights` and a record describing it.

The JAX converter is written elsewhere; these files depend only on timm's state-dict names,
which are ours.
"""

from __future__ import annotations

from pathlib import Path

import torch

from vitconvert.core.config import ViTConfig
from vitconvert.formats.weights_file import Preprocess, Source
from vitconvert.model.loading import save_weights
from vitconvert.model.vit import VisionTransformer

# timm's pretrained cfg for vit_base_patch16_224.augreg_in21k_ft_in1k and its 384 sibling.
AUGREG_224 = Preprocess(size=(224, 224), resize="crop", crop_pct=0.9, interpolation="bicubic",
                        mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
AUGREG_384 = Preprocess(size=(384, 384), resize="crop", crop_pct=1.0, interpolation="bicubic",
                        mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))

TINY = ViTConfig(embed_dim=64, depth=2, num_heads=4, mlp_dim=256)  # patch 16, 224, 1000 classes
TINY_TIMM_KWARGS = {"embed_dim": 64, "depth": 2, "num_heads": 4}


def write_test_weights(path: Path, state: dict[str, torch.Tensor], config: ViTConfig,
                       preprocess: Preprocess = AUGREG_224, labels: str | list[str] | None = None) -> Path:
    """`state` in our weights-file format, with a record as a converter would write it (labels: by
    default the ImageNet label set of the class count, if there is one)."""
    save_weights(state, path, config=config, preprocess=preprocess, labels=labels,
                 source=Source(format="timm", file="test"), force=True)
    return path


def spread_heads(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights give near-uniform class probabilities; heads whose logits have a standard
    deviation of about 3 give a clear, not one-hot, top-5 for the parity tests to compare."""
    # Not `seed` itself: fill_random_() drew the class token from that stream first, and a head row
    # equal to it would make one class win every image.
    gen = torch.Generator().manual_seed(seed + 7919)
    for head in (getattr(model, "head", None), getattr(model, "head_dist", None)):
        if isinstance(head, torch.nn.Linear):
            with torch.no_grad():
                head.weight.copy_(torch.randn(head.weight.shape, generator=gen) * 3 / head.in_features ** 0.5)
    return model


def timm_classifier(name: str, seed: int = 0, **kwargs) -> torch.nn.Module:
    """A timm ViT with random non-zero weights (the project's `timm_vit`) and a spread head."""
    from helpers.timm_reference import timm_vit

    return spread_heads(timm_vit(name, seed, **kwargs), seed)


def our_vit(config: ViTConfig, seed: int = 0) -> VisionTransformer:
    """Our model for `config`, randomized the same way."""
    from helpers.published_layouts import fill_random_

    return spread_heads(fill_random_(VisionTransformer(config), seed).eval(), seed)
