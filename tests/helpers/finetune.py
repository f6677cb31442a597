"""Fine-tuning test support: a tiny "published" checkpoint converted with jax2torch, timm's model of the
same shape, and small class-per-folder trees cut from the Fashion-MNIST subset in tests/data."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

FASHION = Path(__file__).resolve().parents[1] / "data" / "fashion-mnist"
CLASSES = sorted(p.name for p in (FASHION / "train").iterdir())  # the folder names, as finetune sorts them
# published_layouts' 'tiny' preset: a ViT at 32x32, patch 8 (16 patches + the class token), 32 wide,
# 2 blocks of 2 heads, MLP 64. Converted from the vit_jax layout, so its activation is JAX's tanh GELU.
TINY_TIMM = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2, "mlp_ratio": 2.0,
             "act_layer": "gelu_tanh"}


def converted_tiny(path: Path, seed: int = 0) -> Path:
    """A tiny ViT written as the 2020 ImageNet-21k files are (a pre_logits representation layer, an
    all-zero head) in the vit_jax layout, converted by `convert_jax`: what a user fine-tunes."""
    from helpers.published_layouts import random_pre_logits, random_timm_vit, write_npz
    from vitconvert import convert_jax

    model = random_timm_vit("tiny", seed=seed)
    pre_logits, _ = random_pre_logits(model, seed=seed)
    write_npz(model, path.with_suffix(".npz"), "vit_jax", pre_logits=pre_logits, zero_head=True)
    convert_jax(path.with_suffix(".npz"), path, force=True)
    return path


def timm_tiny(num_classes: int) -> torch.nn.Module:
    """timm's VisionTransformer with the tiny model's architecture (and no representation layer)."""
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(num_classes=num_classes, **TINY_TIMM).eval()


def small_tree(root: Path, counts: dict[str, int], split: str = "train") -> Path:
    """root/CLASS/ with the first `counts[CLASS]` images of that class in the subset's `split`."""
    for name, n in counts.items():
        (root / name).mkdir(parents=True)
        for image in sorted((FASHION / split / name).iterdir())[:n]:
            shutil.copy(image, root / name / image.name)
    return root
