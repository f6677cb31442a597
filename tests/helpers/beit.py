"""BEiT references with random weights: timm's Beit and transformers' Beit / Data2VecVision, each in its own
layout, every parameter random (the project's fill_random_), then the parts BEiT adds made to matter: layer
scales around 1 (fill_random_'s 0.05 would leave every block nearly the identity) and relative position tables
of N(0, 1) entries (logit biases the size of the logits), so that a table read at the wrong offset shows."""

from __future__ import annotations

import torch

from helpers.published_layouts import fill_random_
from helpers.vit_weights import spread_heads

# Every Beit architecture timm registers (timm/models/beit.py), at this depth: a first block and a last one are
# what a deeper stack repeats.
DEPTH = 2
# hidden 32, 2 layers, 4 heads, 32x32 images in 8x8 patches (a 4x4 grid: 52 table rows).
HF_SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=32,
                patch_size=8, num_channels=3)
HF_CLASSES = ["cat", "dog", "rocket", "coffee", "astronaut"]


def timm_beit_names() -> list[str]:
    import timm

    return timm.list_models(module="beit")


def beit_numbers_(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """fill_random_, then layer scales (timm's gamma_N, transformers' lambda_N) 1 + 0.1 N and tables N(0, 1)."""
    fill_random_(model, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.rsplit(".", 1)[-1] in ("gamma_1", "gamma_2", "lambda_1", "lambda_2"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))
            elif name.endswith("relative_position_bias_table"):
                p.copy_(torch.randn(p.shape, generator=gen))
    return model


def timm_beit(name: str, seed: int = 0, **kwargs) -> torch.nn.Module:
    """timm's Beit `name` (kwargs to create_model; depth DEPTH unless given), random, eval mode."""
    import timm

    model = timm.create_model(name, pretrained=False, **{"depth": DEPTH, **kwargs})
    return spread_heads(beit_numbers_(model, seed), seed).eval()


def hf_beit(architecture: str, seed: int = 0, pooler: bool = True, **overrides) -> torch.nn.Module:
    """transformers' `architecture` (BeitModel, BeitForImageClassification, Data2VecVision..., ...) on HF_SMALL
    with `overrides`; the bare models with or without their pooler."""
    import transformers

    family = "Data2VecVision" if architecture.startswith("Data2VecVision") else "Beit"
    fields = dict(HF_SMALL) | ({"id2label": dict(enumerate(HF_CLASSES))} if "Classification" in architecture else {})
    config = getattr(transformers, f"{family}Config")(**(fields | overrides))
    cls = getattr(transformers, architecture)
    model = cls(config, add_pooling_layer=pooler) if architecture.endswith("Model") else cls(config)
    beit_numbers_(model, seed)
    if isinstance(getattr(model, "classifier", None), torch.nn.Linear):
        with torch.no_grad():
            gen = torch.Generator().manual_seed(seed + 7919)
            head = model.classifier
            head.weight.copy_(torch.randn(head.weight.shape, generator=gen) * 3 / head.in_features ** 0.5)
    return model.eval()
