"""The optimisation: Google's ViT fine-tuning recipe by default, AdamW on request.

vit_jax fine-tunes (vit_jax/train.py, configs/common.py) with
`optax.chain(clip_by_global_norm(1.0), sgd(lr_fn, momentum=0.9))`: no weight decay, base learning rate
0.03 at batch 512, and `utils.create_learning_rate_schedule`'s linear warm-up then cosine decay to 0,
evaluated at optax's update count (0 for the first update: with a warm-up, the first step moves nothing).
torch's SGD with momentum is optax's (trace = g + 0.9 trace; p -= lr trace), and `LambdaLR` counts its
steps from 0 as optax does.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, get_args

import torch

from ..core.errors import VitConvertError
from ..core.json_types import is_int, is_real

Optimizer = Literal["sgd", "adamw"]
OPTIMIZERS = get_args(Optimizer)
MOMENTUM = 0.9  # vit_jax: optax.sgd(momentum=0.9)
CLIP_NORM = 1.0  # vit_jax: config.grad_norm_clip, over all gradients at once
BASE_LR = 0.03  # vit_jax: config.base_lr
# vit_jax warms up for 500 of its 10,000 (CIFAR) or 20,000 (ImageNet) steps; without --warmup-steps a
# run warms up for the same share of its own length as on CIFAR.
WARMUP_FRACTION = 0.05
# Not decayed, as in timm's optimizer factory: biases and norm scales (1-D) and the learned tokens.
NO_DECAY = ("pos_embed", "cls_token", "reg_token", "dist_token")


@dataclass(frozen=True)
class Recipe:
    optimizer: Optimizer = "sgd"
    lr: float = BASE_LR
    weight_decay: float = 0.0
    warmup_steps: int | None = None  # None: WARMUP_FRACTION of the run
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise VitConvertError(f"optimizer must be {' or '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if not (is_real(self.lr) and self.lr > 0):
            raise VitConvertError(f"the learning rate must be a positive number, got {self.lr!r}")
        if not (is_real(self.weight_decay) and self.weight_decay >= 0):
            raise VitConvertError(f"weight decay must be a number >= 0, got {self.weight_decay!r}")
        if self.warmup_steps is not None and not (is_int(self.warmup_steps) and self.warmup_steps >= 0):
            raise VitConvertError(f"warm-up steps must be an integer >= 0, got {self.warmup_steps!r}")
        if not (is_real(self.label_smoothing) and 0 <= self.label_smoothing < 1):
            raise VitConvertError(f"label smoothing must be in [0, 1), got {self.label_smoothing!r}")

    def warmup(self, total_steps: int) -> int:
        if self.warmup_steps is None:
            return round(WARMUP_FRACTION * total_steps)
        if self.warmup_steps >= total_steps:
            raise VitConvertError(f"{self.warmup_steps} warm-up steps leave none of the {total_steps} steps of "
                                  "the run to train at the full learning rate; give fewer --warmup-steps")
        return self.warmup_steps

    def optimizer_for(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        groups = _param_groups(model.named_parameters(), self.weight_decay)
        if self.optimizer == "sgd":
            return torch.optim.SGD(groups, lr=self.lr, momentum=MOMENTUM)
        return torch.optim.AdamW(groups, lr=self.lr)

    def loss(self) -> torch.nn.Module:
        return torch.nn.CrossEntropyLoss(label_smoothing=self.label_smoothing)


def _param_groups(named: Iterable[tuple[str, torch.nn.Parameter]], weight_decay: float) -> list[dict]:
    decay, rest = [], []
    for name, p in named:
        if p.requires_grad:
            (rest if p.ndim <= 1 or name in NO_DECAY else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def lr_factor(step: int, total_steps: int, warmup_steps: int) -> float:
    """The learning rate of update `step` (0, 1, ...) over the base rate: vit_jax's warm-up and cosine."""
    progress = min(max((step - warmup_steps) / (total_steps - warmup_steps), 0.0), 1.0)
    factor = 0.5 * (1.0 + math.cos(math.pi * progress))
    return factor * min(1.0, step / warmup_steps) if warmup_steps else factor


def scheduler(optimizer: torch.optim.Optimizer, total_steps: int,
              warmup_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total_steps, warmup_steps))
