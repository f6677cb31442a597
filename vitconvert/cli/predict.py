"""`vitpredict`: top-k classes (and attention maps) for images, from one of our weights files.

Thin: click parses and prints, `vitconvert.Predictor` does the work. Arguments, image files and
the weights path are checked with light imports only (click, Pillow); torch is imported after
that, so `--help` and a mistyped path answer at once.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from ..core.cache import WEIGHTS_ENV, resolve_weights
from ..core.config import parse_size
from ..core.errors import VitConvertError
from .errors import EXIT_ERROR, debug_option, error_line, run
from .progress import progress_bar

# Below this many images a progress bar would only flicker. The bar goes to stderr, and only
# when stdout is a terminal too: a pipe or a file gets the results alone.
PROGRESS_MIN_IMAGES = 8


def _size(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        return parse_size(value)
    except VitConvertError as e:
        raise click.BadParameter(str(e)) from None


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.argument("images", nargs=-1, required=True, metavar="IMAGE...")
@click.option("--weights", type=click.Path(path_type=Path), metavar="FILE",
              help=f"Our weights file (.safetensors); default ${WEIGHTS_ENV}.")
@click.option("--model", "model_name", metavar="NAME",
              help="A converted model from the cache (see `vitconvert download NAME`).")
@click.option("--res", callback=_size, metavar="R|HxW",
              help="Run at another input size; position embeddings are resampled (bicubic).")
@click.option("--top", "top_k", type=click.IntRange(min=1), default=5, show_default=True,
              help="How many classes to show per image.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of tables.")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True,
              help="Images per forward pass.")
@click.option("--device", default="cpu", show_default=True, help="torch device, e.g. cpu or cuda:0.")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16", "int8"]), default="float32",
              show_default=True,
              help="Precision of the model (probabilities are always float32). bfloat16: GPUs and CPUs "
                   "where it is faster (a warning says when it is not); float16: GPUs; int8: the linear "
                   "layers in int8, CPU only (logits move by up to ~0.2 of their spread).")
@click.option("--compile", "compile_", is_flag=True,
              help="The fastest float32 path: on a CPU oneDNN's prepacked linear layers (1.25x here, no "
                   "wait); on a GPU torch.compile, compiling once per batch size (README, Speed).")
@click.option("--workers", type=click.IntRange(min=0), metavar="N",
              help="Processes decoding and resizing images ahead of the model; 0: none. Default: "
                   "none for a single batch; on a GPU up to 2; on the CPU only cores torch leaves idle.")
@click.option("--labels", metavar="imagenet-1k|imagenet-21k|FILE",
              help="Class names (a FILE has one name a line); default: the weights file's label set.")
@click.option("--attention-map", "attention_out", type=click.Path(dir_okay=False, path_type=Path),
              metavar="OUT.png",
              help="Save the attention rollout over each image (several images: OUT-<image>.png).")
@click.option("--recursive", "-r", is_flag=True, help="Also search the sub-folders of directories.")
@click.option("--skip-errors", is_flag=True,
              help="Exit 0 even if some images cannot be read (they are still reported).")
@debug_option
def command(images: tuple[str, ...], weights: Path | None, model_name: str | None,
            res: tuple[int, int] | None, top_k: int, as_json: bool, batch_size: int, device: str,
            dtype: str, compile_: bool, workers: int | None, labels: str | None,
            attention_out: Path | None, recursive: bool, skip_errors: bool) -> None:
    """Classify IMAGE... (files or directories of images) with a converted ViT.

    An image that cannot be read is reported (a line 'error: IMAGE: why' on stderr; in --json an
    entry with "error" instead of "predictions") and the others are still classified; the exit
    status is then 1 (0 with --skip-errors). What a directory holds besides images is skipped, with
    a note on stderr saying how many files and sub-folders.

    \b
    Examples:
      vitpredict cat.jpg --weights vit-b16.safetensors
      vitpredict cat.jpg --model augreg-B16-in21k-ft-in1k-384 --top 10 --attention-map attn.png
      vitpredict photos/ --recursive --weights vit-b16.safetensors --json > predictions.json
      vitpredict photos/ --weights vit-b16.safetensors --dtype bfloat16 --skip-errors
    """
    from ..inference.images import find_images, open_image

    found = find_images(images, recursive=recursive)
    if found.skipped():
        hint = " (--recursive searches sub-folders)" if found.skipped_folders else ""
        click.echo(f"note: skipped {found.skipped()}{hint}", err=True)
    paths = found.paths
    unreadable: dict[int, str] = {}
    for i, path in enumerate(paths):  # headers only: unreadable, empty, too large are told before the model loads
        try:
            open_image(path).close()
        except VitConvertError as e:
            unreadable[i] = str(e)
            click.echo(error_line(e), err=True)
    weights_path = resolve_weights(weights, model_name)
    map_paths = attention_paths(attention_out, paths) if attention_out else None
    readable = [path for i, path in enumerate(paths) if i not in unreadable]
    results: Iterator[Any] = iter(())
    if readable:  # else there is nothing to load the model for
        from ..inference.batches import default_workers
        from ..inference.predictor import Predictor  # torch from here on
        from ..inference.runtime import keep_freed_memory

        keep_freed_memory()  # this process is ours: reuse freed activations instead of faulting them in again
        predictor = Predictor(weights_path, img_size=res, device=device, labels=labels, dtype=dtype,
                              compile=compile_)
        if workers is None:
            workers = default_workers(len(readable), batch_size, predictor.device)
        if map_paths:  # refuse before the first prediction rather than after it
            from ..inference.attention import check_supported

            check_supported(predictor.config)
        results = predictor.iter_predict(readable, top_k=top_k, batch_size=batch_size, workers=workers,
                                         errors="report")
    many_on_terminal = sys.stdout.isatty() and len(paths) >= PROGRESS_MIN_IMAGES
    deferred: list[dict[str, Any]] = []
    failures = len(unreadable)
    with progress_bar("classifying", quiet=not many_on_terminal) as progress:
        for i, path in enumerate(paths):
            if i in unreadable:
                entry = {"image": str(path), "error": unreadable[i]}
            else:
                entry = next(results).to_dict()
                if "error" in entry:  # the header read but the image did not decode: told when reached
                    failures += 1
                    progress.echo(error_line(entry["error"]))
                elif map_paths:
                    predictor.attention_map(path).save(map_paths[i], format="PNG")
                    entry["attention_map"] = str(map_paths[i])
            if progress.update:
                progress.update(i + 1, len(paths))
            # Under a bar the tables wait until it is done; otherwise each prints when ready.
            if as_json or progress.update:
                deferred.append(entry)
            elif "error" not in entry:
                click.echo(format_table(entry))
    if as_json:
        click.echo(json.dumps(deferred, indent=2))
    else:
        for entry in deferred:
            if "error" not in entry:
                click.echo(format_table(entry))
    if failures and not skip_errors:
        sys.exit(EXIT_ERROR)


def attention_paths(out: Path, images: list[Path]) -> list[Path]:
    """OUT for one image; OUT-<image stem>.png each for several (numbered where stems repeat)."""
    if not out.parent.is_dir():
        raise VitConvertError(f"--attention-map: directory {out.parent} does not exist")
    if len(images) == 1:
        return [out]
    repeated = {stem for stem, n in Counter(p.stem for p in images).items() if n > 1}
    seen: Counter[str] = Counter()
    paths = []
    for image in images:
        seen[image.stem] += 1
        suffix = f"-{seen[image.stem]}" if image.stem in repeated else ""
        paths.append(out.with_name(f"{out.stem}-{image.stem}{suffix}.png"))
    return paths


def format_table(entry: dict[str, Any]) -> str:
    """One image's entry (as in --json): the image, then rank, probability in % and label (the
    class index when the classes have no names)."""
    lines = [entry["image"], "  rank     prob  label"]
    for p in entry["predictions"]:
        label = p["label"] if p["label"] is not None else str(p["index"])
        lines.append(f"  {p['rank']:>4}  {p['probability'] * 100:6.2f}%  {label}")
    if entry.get("attention_map"):
        lines.append(f"  attention map: {entry['attention_map']}")
    return "\n".join(lines) + "\n"


def main() -> None:
    run(command)


if __name__ == "__main__":
    main()
