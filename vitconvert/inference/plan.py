"""What a prediction run will do, decided from the weights file's record alone: no torch, no tensors read.

`plan_prediction` reads the record once and refuses everything that can be refused from it (a size the
patches cannot tile, a model without classes asked for classes, attention maps of a model that pools,
class names that do not fit); `Predictor` takes the plan and only loads. So `vitpredict` answers a mistake
before it imports torch, and reads the file's header once.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..catalog.resolve import resolve_weights
from ..core.config import ViTConfig, parse_size
from ..core.errors import VitConvertError
from ..formats.weights_file import WeightsRecord, read_record
from .labels import check_top_k, resolve_labels


@dataclass(frozen=True)
class PredictionPlan:
    path: Path  # the weights file
    record: WeightsRecord  # its record, read once
    img_size: tuple[int, int]  # the input size to run at
    patch_size: tuple[int, int]  # the patch size to run at
    labels: list[str] | None  # the class names, or None to show class indices

    def check_classes(self) -> None:
        """Refuse a model whose classes mean nothing to rank (none, an all-zero head, an embedding head)."""
        check_top_k(self.record.config.num_classes, self.record.head_is_zero, str(self.path),
                    self.record.head_is_embedding)


def plan_prediction(weights: str | os.PathLike | None = None, *, model: str | None = None,
                    img_size: int | str | tuple[int, int] | None = None,
                    patch_size: int | str | tuple[int, int] | None = None,
                    labels: str | os.PathLike | Sequence[str] | None = None, classify: bool = False,
                    attention: bool = False) -> PredictionPlan:
    """The run on `weights` (or cached `model`, or $VITCONVERT_WEIGHTS) at `img_size` and `patch_size`
    (default: the file's), with `labels` (see `resolve_labels`), checked: `classify` refuses a model
    without classes to rank, `attention` one whose attention maps mean nothing."""
    path = resolve_weights(weights, model)
    record = read_record(path)
    size = record.config.img_size if img_size is None else parse_size(img_size)
    patch = record.config.patch_hw if patch_size is None else parse_size(patch_size)
    record.config.replace(patch_size=patch).input_grid(size)  # a size it cannot run: refused here, before torch
    plan = PredictionPlan(path, record, size, patch, resolve_labels(labels, record.config.num_classes, record.labels))
    if classify:
        plan.check_classes()
    if attention:
        check_attention(record.config)
    return plan


def check_attention(cfg: ViTConfig) -> None:
    """Refuse attention maps of a model that reads no class token."""
    if cfg.pool != "token":
        raise VitConvertError(
            f"attention maps need a class token that the model reads, but this model pools its tokens "
            f"(pool={cfg.pool!r}); no single token's attention says which patches decided the class")
