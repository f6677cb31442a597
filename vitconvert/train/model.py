"""The model to fine-tune: the file's transformer with a new, zero-initialised head sized to the classes.

Google's fine-tuning recipe (vit_jax) replaces the head with zeros and drops the 2020 ImageNet-21k
models' representation layer (`pre_logits`); the new architecture is the file's config with those two
fields changed, so the model is built, as every model is, from a config.
"""

from __future__ import annotations

import torch

from ..core.config import ViTConfig
from ..core.errors import VitConvertError
from ..formats.weights_file import WeightsRecord
from ..model.loading import at_size, build_with_weights
from ..model.vit import VisionTransformer

HEADS = ("head.", "head_dist.")  # what a new head replaces; DeiT's distillation head is a head too
DROPPED = ("pre_logits.",)


def finetuning_config(cfg: ViTConfig, classes: int) -> ViTConfig:
    if cfg.pool == "none":
        raise VitConvertError("this model's pooling is 'none' (a class per token, not per image); fine-tuning "
                              "trains one class per image, so it needs a pooled model")
    # A zero-shot classifier's projection and unit-length features go with its head: the new head reads the
    # pooled features, as every fine-tuned model's does.
    return cfg.replace(num_classes=classes, representation_size=None, pre_logits_act="tanh", head_norm="none")


def finetuning_model(record: WeightsRecord, state: dict[str, torch.Tensor], classes: int,
                     img_size: tuple[int, int] | None = None, freeze_backbone: bool = False) -> VisionTransformer:
    """The file's model (at `img_size`: position embeddings resampled as `load_model` does) with a
    zero head of `classes` outputs, in training mode; `freeze_backbone` leaves only the head trainable."""
    cfg = record.config
    if img_size is not None:
        cfg, state = at_size(cfg, state, img_size)
    new = finetuning_config(cfg, classes)
    state = {k: v for k, v in state.items() if not k.startswith(HEADS + DROPPED)}
    heads = ("head", "head_dist") if new.distilled else ("head",)
    for head in heads:
        state[f"{head}.weight"] = torch.zeros(classes, new.embed_dim)
        state[f"{head}.bias"] = torch.zeros(classes)
    model = build_with_weights(new, state).train()
    if freeze_backbone:
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith(HEADS))
    return model
