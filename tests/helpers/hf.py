"""transformers' ViT, DeiT and Dinov2 with random weights, the reference side of the hf2torch and
export --to hf tests; and how transformers runs a model directory."""

from __future__ import annotations

from pathlib import Path

import torch

# hidden 32, 2 layers, 4 heads, 32x32 images in 8x8 patches: each layer is renamed the same way, so two
# show what twelve would.
SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8,
             num_channels=3)
CLASSES = ["cat", "dog", "rocket", "coffee", "astronaut"]


def random_hf(architecture: str, seed: int = 0, pooler: bool = True, **overrides) -> torch.nn.Module:
    """transformers' `architecture` on a small config (`overrides` on top), every parameter random: the
    project's fill_random_, then Dinov2's layer scales around 1 (0.05 would make every block nearly the
    identity) and the classifiers spread (logits of std ~3, for a clear top-5)."""
    import transformers

    from helpers.published_layouts import fill_random_
    from helpers.vit_weights import spread_heads

    family = architecture.removesuffix("Model").split("For")[0]
    config_class = getattr(transformers, f"{family}Config")
    fields = {**SMALL, "intermediate_size": 64} if family != "Dinov2" else dict(SMALL)
    fields |= {"id2label": dict(enumerate(CLASSES))} if "For" in architecture else {}
    config = config_class(**(fields | overrides))
    cls = getattr(transformers, architecture)
    model = cls(config, add_pooling_layer=pooler) if architecture in ("ViTModel", "DeiTModel") else cls(config)
    fill_random_(model, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lambda1"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))
        for head in ("classifier", "cls_classifier", "distillation_classifier"):
            if isinstance(getattr(model, head, None), torch.nn.Linear):
                spread_heads(_Head(getattr(model, head)), seed)
    return model.eval()


class _Head(torch.nn.Module):
    """A classifier where spread_heads looks for one."""

    def __init__(self, head: torch.nn.Linear) -> None:
        super().__init__()
        self.head = head


@torch.inference_mode()
def outputs(model: torch.nn.Module, x: torch.Tensor, **kwargs) -> dict[str, torch.Tensor]:
    """What a transformers model returns for `x`: logits, or last_hidden_state and pooler_output."""
    out = model(pixel_values=x, **kwargs)
    return {k: getattr(out, k) for k in ("logits", "last_hidden_state", "pooler_output")
            if getattr(out, k, None) is not None}


def load_hf(folder: Path) -> torch.nn.Module:
    """The directory as transformers' Auto classes load it: a classifier if config.json names one."""
    import json

    import transformers

    architecture = json.loads((folder / "config.json").read_text())["architectures"][0]
    auto = transformers.AutoModel if architecture.endswith("Model") else transformers.AutoModelForImageClassification
    return auto.from_pretrained(folder).eval()


@torch.inference_mode()
def largest_difference(ours: torch.nn.Module, theirs: dict[str, torch.Tensor], x: torch.Tensor) -> float:
    """Our logits against transformers'; for a model without a head, our tokens against last_hidden_state
    and our output against pooler_output (the pooler's, or Dinov2's class token), or without one against
    the class token. The shapes must agree."""
    if "logits" in theirs:
        pairs = [(ours(x), theirs["logits"])]
    else:
        tokens = theirs["last_hidden_state"]
        pairs = [(ours.forward_features(x), tokens), (ours(x), theirs.get("pooler_output", tokens[:, 0]))]
    assert all(a.shape == b.shape for a, b in pairs)
    return max((a - b).abs().max().item() for a, b in pairs)
