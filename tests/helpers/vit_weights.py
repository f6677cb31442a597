"""Test weights files, made without any converter: a timm model (or ours) with random non-zero
weights, written with our safetensors writer and a record describing it.

The JAX converter is written elsewhere; these files depend only on timm's state-dict names,
which are ours.
"""

from __future__ import annotations

from pathlib import Path

import torch

from vitconvert.config import ViTConfig
from vitconvert.model import VisionTransformer
from vitconvert.safetensors_io import TensorSpec, write_safetensors
from vitconvert.weights_file import Preprocess, Source, WeightsRecord

# timm's pretrained cfg for vit_base_patch16_224.augreg_in21k_ft_in1k and its 384 sibling.
AUGREG_224 = Preprocess(size=(224, 224), resize="crop", crop_pct=0.9, interpolation="bicubic",
                        mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
AUGREG_384 = Preprocess(size=(384, 384), resize="crop", crop_pct=1.0, interpolation="bicubic",
                        mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))

TINY = ViTConfig(embed_dim=64, depth=2, num_heads=4, mlp_dim=256)  # patch 16, 224, 1000 classes
TINY_TIMM_KWARGS = dict(embed_dim=64, depth=2, num_heads=4)


def write_weights(path: Path, state: dict[str, torch.Tensor], config: ViTConfig,
                  preprocess: Preprocess = AUGREG_224, labels: str | None = "imagenet-1k",
                  head_is_zero: bool = False) -> Path:
    record = WeightsRecord(config=config, preprocess=preprocess, source=Source(format="timm", file="test"),
                           labels=labels, head_is_zero=head_is_zero)
    specs = [TensorSpec(name, tuple(t.shape), lambda t=t: t.detach().float().numpy())
             for name, t in state.items()]
    write_safetensors(path, specs, "float32", record.metadata(), force=True)
    return path


def spread_head(model: torch.nn.Module, seed: int = 0) -> None:
    """Random inits give near-uniform logits; a wider head (logits with a standard deviation of
    about 3) gives a clear but not one-hot top-5."""
    gen = torch.Generator().manual_seed(seed)
    std = 3 / model.head.weight.shape[1] ** 0.5
    with torch.no_grad():
        model.head.weight.copy_(torch.randn(model.head.weight.shape, generator=gen) * std)
        model.head.bias.copy_(torch.randn(model.head.bias.shape, generator=gen) * 0.1)


def timm_vit(name: str, seed: int = 0, **kwargs) -> torch.nn.Module:
    """A timm ViT with random weights: non-zero class token and head."""
    import timm

    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, **kwargs).eval()
    with torch.no_grad():
        model.cls_token.normal_(0, 0.02)
    spread_head(model, seed)
    return model


def our_vit(config: ViTConfig, seed: int = 0) -> VisionTransformer:
    """Our model with random weights everywhere (the prefix tokens and position embeddings too)."""
    torch.manual_seed(seed)
    model = VisionTransformer(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in ("cls_token", "dist_token", "pos_embed"):
                p.normal_(0, 0.02)
    spread_head(model, seed)
    if config.distilled:
        with torch.no_grad():
            model.head_dist.weight.normal_(0, 3 / config.embed_dim ** 0.5)
    return model
