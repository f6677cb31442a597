"""`finetune`: one of our weights files trained on a folder (or CSV) of labelled images, written as a new
weights file that carries its class names, its preprocessing and a summary of its training.

Every input is checked before the first step (OUT, the weights file, the images' headers, the batch
against the data, the checkpoint folder), and OUT is written only at the end, atomically: an error,
an interruption or a full disk leaves no half-written file, and the last checkpoint intact.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import torch

from ..core.config import parse_size
from ..core.errors import VitConvertError, VitConvertWarning
from ..core.json_types import is_int
from ..formats.source_hash import FileHash
from ..formats.weights_file import Source, read_record
from ..model.loading import float32_tensors, save_weights
from . import checkpoint
from .data import Images, Labelled, Schedule, Steps, loader, read_labelled, split
from .distributed import Processes, start, stop
from .model import finetuning_config, finetuning_model
from .plot import plot_curves
from .preflight import check_paths
from .recipe import BASE_LR, CLIP_NORM, Optimizer, Recipe, lr_factor, scheduler

Augment = Literal["default", "none"]
MixedPrecision = Literal["no", "bf16", "fp16"]
AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}
DEFAULT_EPOCHS = 10
DEFAULT_BATCH = 128  # per step, over all processes (vit_jax: 512, accumulated over 8 micro-batches)
SOURCE_FORMAT = "vitconvert-finetune"


@dataclass(frozen=True)
class EpochLog:
    """One epoch of training, as `finetune` returns it and `--json` prints it."""

    epoch: int  # 1, 2, ...
    step: int  # optimiser steps done by the epoch's end
    train_loss: float  # mean over the epoch's training images (with label smoothing, if any)
    val_loss: float | None  # cross-entropy on the validation images; None without validation data
    val_top1: float | None  # fraction of them whose top class is right
    lr: float  # the learning rate of the epoch's last step
    images_per_s: float  # training images per second over the epoch, all processes together
    seconds: float  # the epoch's training and evaluation

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class StepLog:
    """Progress within an epoch, for a progress bar (rank 0 only)."""

    epoch: int
    epochs: int
    step: int  # within the epoch, 1-based
    steps: int  # the epoch's steps
    loss: float  # this step's training loss
    images_per_s: float  # over the epoch so far


def finetune(weights: str | os.PathLike, data: str | os.PathLike, out: str | os.PathLike, *,
             val: str | os.PathLike | None = None, val_split: float | None = None,
             freeze_backbone: bool = False, optimizer: Optimizer = "sgd", lr: float | None = None,
             weight_decay: float = 0.0, warmup_steps: int | None = None, epochs: int | None = None,
             steps: int | None = None, batch_size: int = DEFAULT_BATCH, accumulate: int = 1,
             res: int | str | tuple[int, int] | None = None, label_smoothing: float = 0.0,
             augment: Augment = "default", mixed_precision: MixedPrecision = "no",
             device: str | torch.device | None = None, workers: int = 0, seed: int = 0, strict: bool = False,
             force: bool = False, checkpoint_dir: str | os.PathLike | None = None, resume: bool = False,
             plot: str | os.PathLike | None = None, on_step: Callable[[StepLog], None] | None = None,
             on_epoch: Callable[[EpochLog], None] | None = None) -> list[EpochLog]:
    """Fine-tune WEIGHTS (our file) on DATA and write OUT; returns the per-epoch history.

    DATA: a folder with one sub-folder of images per class (class names: the folder names, sorted), or a
    CSV file of `path,label` rows. Validation: `val` (the same kind, classes among DATA's) or `val_split`
    (that fraction of each class, chosen by the seed). The head is replaced by a zero one sized to the
    classes and the 2020 representation layer dropped; `freeze_backbone` trains the head alone.
    `batch_size` is the global batch (over all torchrun processes and `accumulate` micro-batches); run
    length `epochs` (default 10) or `steps`. Defaults are Google's ViT fine-tuning recipe (SGD momentum 0.9,
    lr 0.03, no weight decay, warm-up then cosine, gradient norm clipped at 1; `recipe.py`). `augment`
    'default' trains on random crops and flips, 'none' on the file's evaluation preprocessing. `res`
    trains at another input size. `checkpoint_dir` keeps a checkpoint of each epoch's end; `resume`
    continues from it. `on_step` and `on_epoch` are called in the process of rank 0 only.
    """
    recipe = Recipe(optimizer, BASE_LR if lr is None else lr, weight_decay, warmup_steps, label_smoothing)
    _check_options(epochs, steps, batch_size, accumulate, augment, mixed_precision, workers, seed, val, val_split)
    size = parse_size(res) if res is not None else None
    out, plot = check_paths(data, out, force, plot)
    record = read_record(weights)
    if size is not None:
        record.config.at_input_size(size)  # a size the patches do not tile is refused here, before the data
    finetuning_config(record.config, 2)  # a model that cannot be fine-tuned is refused here too
    ckpt = checkpoint.prepare(checkpoint_dir, resume, force) if checkpoint_dir is not None else None
    processes = start(device)
    try:
        with warnings.catch_warnings():
            if not processes.is_main:  # every process reads the data; one says what it skipped
                warnings.simplefilter("ignore", VitConvertWarning)
            train, held = _data(data, val, val_split, seed, strict)
        run = _Run(weights, record, train, held, recipe, processes, size=size, freeze_backbone=freeze_backbone,
                   epochs=epochs, steps=steps, batch_size=batch_size, accumulate=accumulate, augment=augment,
                   mixed_precision=mixed_precision, workers=workers, seed=seed)
        if ckpt is not None and resume:
            run.restore(checkpoint.load(ckpt, run.fingerprint))
        history = run.train(ckpt, on_step, on_epoch)
        if processes.is_main:
            run.save(out, force)
            if plot is not None:
                plot_curves(history, plot, force=True)  # checked before training; a file since then is ours to replace
        processes.barrier()
        return history
    finally:
        stop(processes)


def _check_options(epochs, steps, batch_size, accumulate, augment, mixed_precision, workers, seed, val,
                   val_split) -> None:
    if epochs is not None and steps is not None:
        raise VitConvertError("give the run's length as epochs or as steps, not both")
    for name, value, least in (("epochs", epochs, 1), ("steps", steps, 1), ("batch size", batch_size, 1),
                               ("accumulate", accumulate, 1), ("workers", workers, 0), ("seed", seed, 0)):
        if value is not None and not (is_int(value) and value >= least):
            raise VitConvertError(f"{name} must be an integer >= {least}, got {value!r}")
    if augment not in get_args(Augment):
        raise VitConvertError(f"augment must be 'default' or 'none', got {augment!r}")
    if mixed_precision not in ("no", *AUTOCAST):
        raise VitConvertError(f"mixed precision must be 'no', 'bf16' or 'fp16', got {mixed_precision!r}")
    if val is not None and val_split is not None:
        raise VitConvertError("give validation data (--val) or a validation split (--val-split), not both")


def _data(data, val, val_split, seed: int, strict: bool) -> tuple[Labelled, Labelled | None]:
    train = read_labelled(data, strict=strict)
    if val is not None:
        return train, read_labelled(val, classes=train.classes, strict=strict)
    if val_split is not None:
        return split(train, val_split, seed)
    return train, None


class _Run:
    """One run's model, optimiser, schedule and data order, and the loop over its steps."""

    def __init__(self, weights, record, train: Labelled, held: Labelled | None, recipe: Recipe,
                 processes: Processes, *, size, freeze_backbone, epochs, steps, batch_size, accumulate, augment,
                 mixed_precision, workers, seed) -> None:
        self.weights, self.record, self.train_data, self.val_data = Path(weights), record, train, held
        self.recipe, self.processes = recipe, processes
        self.schedule = Schedule(len(train), batch_size, seed, processes.world, processes.rank, accumulate)
        self.total = steps if steps is not None else (epochs or DEFAULT_EPOCHS) * self.schedule.steps_per_epoch
        self.warmup = recipe.warmup(self.total)
        self.parent_sha = FileHash(weights)  # on a thread, while the tensors load
        self.model = finetuning_model(record, float32_tensors(weights), len(train.classes), size,
                                      freeze_backbone).to(processes.device)
        self.preprocess = record.preprocess.at_size(self.model.config.img_size) if size else record.preprocess
        self.optimizer = recipe.optimizer_for(self.model)
        self.lr_schedule = scheduler(self.optimizer, self.total, self.warmup)
        self.autocast = AUTOCAST.get(mixed_precision)
        self.scaler = torch.amp.GradScaler(processes.device.type, enabled=mixed_precision == "fp16")
        self.augment, self.workers = augment, workers
        self.step, self.history = 0, []
        self.settings = {"optimizer": recipe.optimizer, "lr": recipe.lr, "weight_decay": recipe.weight_decay,
                         "warmup_steps": self.warmup, "steps": self.total, "batch_size": batch_size,
                         "img_size": list(self.model.config.img_size), "label_smoothing": recipe.label_smoothing,
                         "augment": augment, "mixed_precision": mixed_precision,
                         "freeze_backbone": freeze_backbone, "seed": seed}

    @functools.cached_property
    def fingerprint(self) -> dict[str, Any]:
        """What decides the result: a checkpoint of another run is not resumed. The number of processes,
        the accumulation, the device and the workers change only the float rounding, and may differ.
        Fixed for the run, so the image listing is hashed once, not at every epoch's checkpoint."""
        listing = "\n".join(f"{p}\t{y}" for p, y in zip(self.train_data.paths, self.train_data.labels, strict=True))
        images = hashlib.sha256(listing.encode()).hexdigest()
        return {"weights_sha256": self.parent_sha.hexdigest(), "classes": list(self.train_data.classes),
                "train_images_sha256": images, **self.settings}

    def restore(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_schedule.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        checkpoint.restore_rng(state["rng"])
        self.step = state["step"]
        self.history = [EpochLog(**log) for log in state["history"]]

    def _state(self) -> dict[str, Any]:
        return {"fingerprint": self.fingerprint, "step": self.step, "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.lr_schedule.state_dict(),
                "scaler": self.scaler.state_dict(), "rng": checkpoint.rng_states(),
                "history": [log.to_dict() for log in self.history]}

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(self.processes.device.type, dtype=self.autocast)

    def train(self, ckpt: Path | None, on_step: Callable[[StepLog], None] | None,
              on_epoch: Callable[[EpochLog], None] | None) -> list[EpochLog]:
        per_epoch = self.schedule.steps_per_epoch
        epochs = -(-self.total // per_epoch)
        net = self.processes.wrap(self.model)
        criterion = self.recipe.loss()
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        images = Images(self.train_data, self.preprocess, self.augment == "default", self.schedule.seed)
        pin = self.processes.device.type == "cuda"
        batches = loader(images, Steps(self.schedule, self.step, self.total), self.workers, pin)
        while self.step < self.total:
            epoch = self.step // per_epoch
            last = min((epoch + 1) * per_epoch, self.total)
            first, started = self.step, time.perf_counter()
            loss_sum = torch.zeros((), dtype=torch.float64, device=self.processes.device)
            self.model.train()
            while self.step < last:
                step_loss = self._step(net, batches, criterion, trainable)
                loss_sum += step_loss
                self.step += 1
                if on_step is not None and self.processes.is_main:
                    seen = (self.step - first) * self.schedule.batch_size
                    on_step(StepLog(epoch + 1, epochs, self.step - first, last - first,
                                    float(step_loss) / (self.schedule.batch_size // self.processes.world),
                                    seen / (time.perf_counter() - started)))
            trained = time.perf_counter() - started
            loss_total, = self.processes.sum([float(loss_sum)])
            val_loss, val_top1 = self._evaluate() if self.val_data is not None else (None, None)
            log = EpochLog(epoch + 1, self.step, loss_total / ((self.step - first) * self.schedule.batch_size),
                           val_loss, val_top1, self._last_lr(),
                           (self.step - first) * self.schedule.batch_size / trained, time.perf_counter() - started)
            self.history.append(log)
            if ckpt is not None:
                if self.processes.is_main:
                    checkpoint.save(ckpt, self._state())
                self.processes.barrier()
            if on_epoch is not None and self.processes.is_main:
                on_epoch(log)
        return self.history

    def _step(self, net: torch.nn.Module, batches: Iterator, criterion: torch.nn.Module,
              trainable: list[torch.nn.Parameter]) -> torch.Tensor:
        """One optimiser step over `accumulate` micro-batches; returns the sum of this process's losses."""
        total = torch.zeros((), dtype=torch.float64, device=self.processes.device)
        accumulate = self.schedule.accumulate
        for m in range(accumulate):
            x, y = next(batches)
            x, y = x.to(self.processes.device, non_blocking=True), y.to(self.processes.device, non_blocking=True)
            # DDP averages the gradients on the last micro-batch's backward only.
            sync = m == accumulate - 1 or self.processes.world == 1
            with (contextlib.nullcontext() if sync else net.no_sync()), self._autocast():
                loss = criterion(net(x), y)
            self.scaler.scale(loss / accumulate).backward()
            total += loss.detach().double() * len(y)
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(trainable, CLIP_NORM)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.lr_schedule.step()
        return total

    def _last_lr(self) -> float:
        """The rate the epoch's last step used (the scheduler has moved on to the next one's)."""
        return self.recipe.lr * lr_factor(self.step - 1, self.total, self.warmup)

    @torch.no_grad()
    def _evaluate(self) -> tuple[float, float]:
        """Cross-entropy and top-1 on the validation images, each process taking every world-th one."""
        self.model.eval()
        data, rank, world = self.val_data, self.processes.rank, self.processes.world
        mine = list(range(rank, len(data), world))
        size = self.schedule.micro_batch
        keys = [[(i, 0) for i in mine[s:s + size]] for s in range(0, len(mine), size)]
        # Summed on the device, read back once: a float() per batch would wait for each batch on a GPU.
        loss = torch.zeros((), dtype=torch.float64, device=self.processes.device)
        correct = torch.zeros((), dtype=torch.int64, device=self.processes.device)
        for x, y in loader(Images(data, self.preprocess, False, self.schedule.seed), keys, self.workers):
            x, y = x.to(self.processes.device), y.to(self.processes.device)
            with self._autocast():
                logits = self.model(x)
            loss += torch.nn.functional.cross_entropy(logits.float(), y, reduction="sum").double()
            correct += (logits.argmax(1) == y).sum()
        loss, correct = self.processes.sum([float(loss), float(correct)])
        return loss / len(data), correct / len(data)

    def save(self, out: Path, force: bool) -> None:
        last = self.history[-1]  # a run has at least one step, so at least one epoch
        summary = {"train_images": len(self.train_data),
                   "val_images": len(self.val_data) if self.val_data is not None else 0,
                   "classes": len(self.train_data.classes), "epochs": len(self.history),
                   "final_train_loss": last.train_loss, "final_val_loss": last.val_loss,
                   "final_val_top1": last.val_top1, **self.settings}
        source = Source(format=SOURCE_FORMAT, file=self.weights.name, sha256=self.parent_sha.hexdigest(),
                        training=summary)
        notes = [f"fine-tuned from {self.weights.name} ({self.record.source.format}) on "
                 f"{len(self.train_data)} images of {len(self.train_data.classes)} classes"]
        save_weights(self.model, out, preprocess=self.preprocess, labels=list(self.train_data.classes),
                     source=source, notes=notes, force=force)
