"""timm's VisionTransformer family as the installed timm defines it, and small models of each member."""

from __future__ import annotations

import sys

import timm
import torch
from timm.models import model_entrypoint
from timm.models.vision_transformer import VisionTransformer


def vit_family() -> list[str]:
    """Architectures with pretrained weights from the timm modules that build VisionTransformer (a module
    cannot build the class without naming it); the tests check that each model is one."""
    def builds_vit(module) -> bool:
        return any(isinstance(v, type) and issubclass(v, VisionTransformer) for v in vars(module).values())

    names = sorted({tag.split(".")[0] for tag in timm.list_pretrained()})
    return [n for n in names if builds_vit(sys.modules[model_entrypoint(n).__module__])]


def reduced(name: str) -> dict:
    """timm.create_model kwargs for a small model of this architecture: 2 blocks, 2 heads, 4x4 patches (2x2
    for a stride of 32: the hybrids' ResNets cost the time), and 64 wide unless its GLU MLP (hidden width
    16/3 of it, split in halves) needs 96."""
    for width in (64, 96):
        kwargs = dict(depth=2, embed_dim=width, num_heads=2)
        try:
            with torch.device("meta"):
                model = timm.create_model(name, pretrained=False, **kwargs)
        except AssertionError:  # GluMlp: "hidden_features % 2 == 0"
            continue
        stride = model.patch_embed.feat_ratio()
        stride = stride if isinstance(stride, int) else stride[0]
        return dict(kwargs, img_size=(4 if stride < 32 else 2) * stride)
    raise AssertionError(f"no reduced width builds {name}")
