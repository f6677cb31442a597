"""`vitconvert finetune`: `vitconvert.finetune` on the command line, also under torchrun."""

from __future__ import annotations

import json
import sys

import click

from ..core.errors import VitConvertError
from .errors import EXIT_ERROR, debug_option
from .export import _size
from .progress import Progress, progress_bar


@click.command("finetune")
@click.argument("paths", nargs=-1, required=True, metavar="[WEIGHTS] DATA OUT.safetensors")
@click.option("--model", "model_name", metavar="NAME",
              help="A converted model from the cache (`vitconvert download NAME`) instead of WEIGHTS.")
@click.option("--val", metavar="DIR|CSV", help="Validation images, organised as DATA is (classes among DATA's).")
@click.option("--val-split", type=click.FloatRange(0, 1, min_open=True, max_open=True), metavar="FRACTION",
              help="Hold out this fraction of each class of DATA for validation (chosen by --seed).")
@click.option("--freeze-backbone", is_flag=True, help="Train the new head alone (a linear probe).")
@click.option("--optimizer", type=click.Choice(["sgd", "adamw"]), default="sgd", show_default=True,
              help="sgd: momentum 0.9, Google's recipe; adamw: torch's AdamW.")
@click.option("--lr", type=click.FloatRange(0, min_open=True),
              help="Peak learning rate. Default 0.03, Google's at batch 512 (not scaled with the batch).")
@click.option("--weight-decay", type=click.FloatRange(0), default=0.0, show_default=True,
              help="Decoupled for adamw, L2 for sgd; never on biases, norms and learned tokens.")
@click.option("--warmup-steps", type=click.IntRange(0), metavar="N",
              help="Linear warm-up steps before the cosine decay. Default: 5% of the run.")
@click.option("--epochs", type=click.IntRange(1), metavar="N", help="Length of the run in epochs (default 10).")
@click.option("--steps", type=click.IntRange(1), metavar="N", help="Length of the run in optimiser steps instead.")
@click.option("--batch-size", type=click.IntRange(1),
              help="Images per optimiser step over all processes (the same number, the same optimisation "
                   "whatever --nproc_per_node). Default 128.")
@click.option("--accumulate", type=click.IntRange(1), default=1, show_default=True, metavar="N",
              help="Split each process's share of a step into N micro-batches (less memory, same result).")
@click.option("--res", callback=_size, metavar="R|HxW",
              help="Train at this input size; position embeddings are resampled as vitpredict --res does.")
@click.option("--label-smoothing", type=click.FloatRange(0, 1, max_open=True), default=0.0, show_default=True,
              help="Label smoothing of the training loss.")
@click.option("--augment", type=click.Choice(["default", "none"]), default="default", show_default=True,
              help="default: a random crop of 5-100% of the image and a random flip; none: the file's own "
                   "preprocessing, as for evaluation.")
@click.option("--mixed-precision", type=click.Choice(["no", "bf16", "fp16"]), default="no", show_default=True,
              help="autocast to bfloat16 or float16 (with a gradient scaler); the weights stay float32.")
@click.option("--device", metavar="D", help="torch device (default: cuda if there is a GPU, else cpu); under "
              "torchrun each process takes its LOCAL_RANK GPU.")
@click.option("--workers", type=click.IntRange(0), default=0, show_default=True, metavar="N",
              help="Processes decoding and augmenting images ahead of the model, per training process.")
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True,
              help="Decides the data order, the augmentation and --val-split.")
@click.option("--strict", is_flag=True, help="Fail on an unreadable image instead of skipping it.")
@click.option("--checkpoint-dir", metavar="DIR",
              help="Keep a checkpoint of each epoch's end in DIR/last.pt (written atomically).")
@click.option("--resume", is_flag=True, help="Continue the run whose checkpoint is in --checkpoint-dir.")
@click.option("--plot", metavar="CURVES.png", help="Draw the loss and accuracy curves (needs matplotlib).")
@click.option("--force", is_flag=True,
              help="Replace OUT and --plot if they exist; start over in a --checkpoint-dir that holds a checkpoint.")
@click.option("--json", "as_json", is_flag=True, help="Print the per-epoch log as JSON lines, and nothing else.")
@debug_option
def finetune_cmd(paths: tuple[str, ...], model_name: str | None, val: str | None, val_split: float | None,
                 freeze_backbone: bool, optimizer: str, lr: float | None, weight_decay: float,
                 warmup_steps: int | None, epochs: int | None, steps: int | None, batch_size: int | None,
                 accumulate: int,
                 res: tuple[int, int] | None, label_smoothing: float, augment: str, mixed_precision: str,
                 device: str | None, workers: int, seed: int, strict: bool, checkpoint_dir: str | None,
                 resume: bool, plot: str | None, force: bool, as_json: bool) -> None:
    """Fine-tune WEIGHTS (one of our weights files) on the images of DATA, and write OUT.safetensors.

    DATA is a folder with one sub-folder of images per class (the folder names are the class names),
    or a CSV file of path,label rows. The head is replaced by a zero-initialised one sized to the
    classes (the 2020 models' pre_logits layer is dropped), as Google's fine-tuning does, and the
    defaults are Google's recipe: SGD with momentum 0.9, no weight decay, linear warm-up then cosine
    decay, gradient norm clipped at 1. OUT records the class names (vitpredict prints them), the
    preprocessing, and in 'source' the parent file's sha256 and a training summary.

    Under torchrun every process runs this command: each reads its share of each --batch-size images,
    DDP averages the gradients (gloo on CPUs, NCCL on GPUs), and only rank 0 prints and writes.

    \b
    Examples:
      vitconvert finetune vit-b16.safetensors flowers/ flowers.safetensors --val-split 0.1
      vitconvert finetune vit-b16.safetensors train/ birds.safetensors --val val/ --epochs 5 --plot curves.png
      vitconvert finetune --model augreg-B16-in21k-ft-in1k-384 train.csv mine.safetensors --res 224 --lr 0.01
      vitconvert finetune vit-b16.safetensors train/ probe.safetensors --freeze-backbone --optimizer adamw --lr 1e-3
      vitconvert finetune vit-b16.safetensors train/ out.safetensors --checkpoint-dir ckpt/ --resume --json
      torchrun --nproc_per_node=4 -m vitconvert finetune vit-b16.safetensors train/ out.safetensors --device cuda
    """
    from ..catalog.resolve import resolve_weights
    from ..train.preflight import check_paths, is_main_process

    if len(paths) != (2 if model_name else 3):
        raise click.UsageError("give WEIGHTS DATA OUT, or --model NAME with DATA OUT")
    *weights, data, out = paths
    if resume and checkpoint_dir is None:
        raise click.UsageError("--resume continues from --checkpoint-dir DIR; give it too")
    main = is_main_process()
    try:
        weights_path = resolve_weights(weights[0] if weights else None, model_name)
        check_paths(data, out, force, plot)  # before torch is imported: a mistyped path answers at once
        from ..train.finetune import finetune

        defaults = {"batch_size": batch_size} if batch_size is not None else {}  # else the library's own
        # The bar on a terminal's stderr, whatever stdout is (--json lines or a file).
        with progress_bar("", quiet=not main) as bar:
            bars = _EpochBars(bar, as_json)
            history = finetune(
                weights_path, data, out, val=val, val_split=val_split, freeze_backbone=freeze_backbone,
                optimizer=optimizer, lr=lr, weight_decay=weight_decay, warmup_steps=warmup_steps, epochs=epochs,
                steps=steps, accumulate=accumulate, res=res, label_smoothing=label_smoothing, augment=augment,
                mixed_precision=mixed_precision, device=device, workers=workers, seed=seed, strict=strict,
                force=force, checkpoint_dir=checkpoint_dir, resume=resume, plot=plot,
                on_step=bars.step if bar.update else None,  # without a bar, no loss is read back each step
                on_epoch=bars.epoch, **defaults)
    except VitConvertError:
        if not main:  # every process meets the same bad input; rank 0 says so
            sys.exit(EXIT_ERROR)
        raise
    if main and not as_json:
        _summary(out, history, plot)


class _EpochBars:
    """A progress bar per epoch on a terminal (loss and images/s beside it), then the epoch's line (or,
    `as_json`, its JSON). Called in the process of rank 0 only."""

    def __init__(self, bar: Progress, as_json: bool) -> None:
        self.bar, self.as_json = bar, as_json

    def step(self, log) -> None:
        self.bar.label = f"epoch {log.epoch}/{log.epochs}"
        self.bar.suffix = f"loss {log.loss:.4f} {log.images_per_s:.0f} img/s"
        self.bar.update(log.step, log.steps)

    def epoch(self, log) -> None:
        self.bar.close()
        if self.as_json:
            click.echo(json.dumps(log.to_dict()))
        else:
            val = (f"val loss {log.val_loss:.4f}  top-1 {100 * log.val_top1:5.1f}%" if log.val_loss is not None
                   else "no validation data")
            click.echo(f"epoch {log.epoch:>3}  step {log.step:>6}  train loss {log.train_loss:.4f}  {val}  "
                       f"lr {log.lr:.2e}  {log.images_per_s:.0f} img/s  {log.seconds:.1f} s")


def _summary(out: str, history: list, plot: str | None) -> None:
    from ..formats.weights_file import read_record

    record = read_record(out)
    names = record.labels
    shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
    last = history[-1]
    top1 = f", validation top-1 {100 * last.val_top1:.1f}%" if last.val_top1 is not None else ""
    click.echo(f"wrote {out}: {len(names)} classes ({shown}){top1}")
    if plot:
        click.echo(f"wrote {plot}")
