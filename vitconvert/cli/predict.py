"""`vitpredict`: top-k classes (and attention maps), or embeddings, for images, from one of our
weights files.

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
from click.core import ParameterSource

from ..catalog.resolve import WEIGHTS_ENV, resolve_weights
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
              help="Run at another input size; position embeddings are resampled as the file records.")
@click.option("--patch-size", callback=_size, metavar="P|HxW",
              help="Run at another patch size (FlexiViT's way: the patch kernel PI-resized, the position "
                   "embeddings resampled to the new grid); any model. The input size stays unless --res.")
@click.option("--top", "top_k", type=click.IntRange(min=1), default=5, show_default=True,
              help="How many classes to show per image.")
@click.option("--json", "as_json", is_flag=True,
              help="Print a JSON list instead of tables (with --embed: the summary as JSON).")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True,
              help="Images per forward pass.")
@click.option("--device", default="cpu", show_default=True, help="torch device, e.g. cpu or cuda:0.")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16", "int8"]), default="float32",
              show_default=True,
              help="Precision of the model (probabilities and embeddings are always float32). bfloat16: GPUs "
                   "and CPUs where it is faster (a warning says when it is not); float16: GPUs; int8: the "
                   "linear layers in int8, CPU only (logits move by up to ~0.2 of their spread).")
@click.option("--compile", "compile_", is_flag=True,
              help="The fastest float32 path: on a CPU oneDNN's prepacked linear layers (1.22-1.32x eager "
                   "on a 2-core AMD EPYC, no wait); on a GPU torch.compile, compiling once per batch size "
                   "(README, Speed).")
@click.option("--workers", type=click.IntRange(min=0), metavar="N",
              help="Processes decoding and resizing images ahead of the model; 0: none. Default: "
                   "none for a single batch; on a GPU every core but one; on the CPU only cores torch leaves idle.")
@click.option("--labels", metavar="imagenet-1k|imagenet-21k|FILE",
              help="Class names (a FILE has one name a line); default: the weights file's label set.")
@click.option("--attention-map", "attention_out", type=click.Path(dir_okay=False, path_type=Path),
              metavar="OUT.png",
              help="Save the attention rollout over each image (several images: OUT-<image>.png).")
@click.option("--embed", "embed_out", is_flag=False, flag_value="", default=None, metavar="OUT.npz",
              help="Instead of classifying, write one float32 vector per image to OUT.npz (arrays 'paths' "
                   "and 'embeddings'): the pooled features the head reads. Any model, with or without a head. "
                   "With --ray, give no file: the embeddings join the --output table.")
@click.option("--tokens", is_flag=True,
              help="With --embed: every token after the final norm, (images, tokens, width).")
@click.option("--normalize", is_flag=True, help="With --embed: each vector scaled to unit length.")
@click.option("--recursive", "-r", is_flag=True, help="Also search the sub-folders of directories.")
@click.option("--skip-errors", is_flag=True,
              help="Exit 0 even if some images cannot be read (they are still reported).")
@click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None, metavar="[ADDRESS]",
              help="Run on Ray Data (pip install 'vitconvert[ray]'): alone, a local Ray on this machine; with "
                   "ADDRESS (e.g. ray://head:10001 or auto), that cluster. Needs --output.")
@click.option("--output", type=click.Path(path_type=Path), metavar="OUT.parquet",
              help="With --ray: the results as Parquet (a directory of part files, read as one table by "
                   "pandas.read_parquet or pyarrow).")
@click.option("--replicas", type=click.IntRange(min=1), default=1, show_default=True,
              help="With --ray: model copies working in parallel (each on --device).")
@click.option("--cpus-per-replica", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
              help="With --ray: CPUs (and torch threads) each replica takes; one CPU must stay free for reading.")
@click.option("--force", is_flag=True, help="With --ray: replace an existing --output.")
@debug_option
def command(images: tuple[str, ...], weights: Path | None, model_name: str | None,
            res: tuple[int, int] | None, patch_size: tuple[int, int] | None, top_k: int, as_json: bool, batch_size: int, device: str,
            dtype: str, compile_: bool, workers: int | None, labels: str | None,
            attention_out: Path | None, embed_out: str | None, tokens: bool, normalize: bool,
            recursive: bool, skip_errors: bool, ray_address: str | None, output: Path | None, replicas: int,
            cpus_per_replica: float, force: bool) -> None:
    """Classify IMAGE... (files or directories of images) with a converted ViT, or embed them (--embed).

    An image that cannot be read is reported (a line 'error: IMAGE: why' on stderr; in --json an
    entry with "error" instead of "predictions") and the others are still classified (or embedded:
    OUT.npz lists only those); the exit status is then 1 (0 with --skip-errors). What a directory
    holds besides images is skipped, with a note on stderr saying how many files and sub-folders.

    \b
    Examples:
      vitpredict cat.jpg --weights vit-b16.safetensors
      vitpredict cat.jpg --model augreg-B16-in21k-ft-in1k-384 --top 10 --attention-map attn.png
      vitpredict photos/ --recursive --weights vit-b16.safetensors --json > predictions.json
      vitpredict photos/ --weights vit-b16.safetensors --dtype bfloat16 --skip-errors
      vitpredict photos/ --model orig-B16-in21k --embed features.npz --normalize
      vitpredict cat.jpg --weights flexivit-b.safetensors --patch-size 16 --res 240
      vitpredict photos/ -r --weights vit-b16.safetensors --ray --output predictions.parquet --embed
      vitpredict photos/ --weights vit-b16.safetensors --ray auto --replicas 8 --device cuda --output p.parquet
      vitpredict photos/ --weights vit-b16.safetensors --ray --replicas 2 --cpus-per-replica 0.5 --output p.parquet
    """
    from ..inference.images import find_images, open_image

    if (ray_address is None) != (output is None):
        raise click.UsageError("--ray and --output go together")
    if ray_address is not None and patch_size is not None:
        raise click.UsageError("--patch-size runs without --ray only")
    if ray_address is None:
        embed_out = check_embed_options(click.get_current_context(), embed_out, tokens, normalize, labels,
                                        attention_out)
    elif embed_out:
        raise click.UsageError("with --ray, --embed takes no file: the embeddings go into the --output table")
    found = find_images(images, recursive=recursive)
    if found.skipped():
        hint = " (--recursive searches sub-folders)" if found.skipped_folders else ""
        click.echo(f"note: skipped {found.skipped()}{hint}", err=True)
    paths = found.paths
    if ray_address is not None:
        return on_ray(paths, resolve_weights(weights, model_name), ray_address, output, top_k=top_k,
                      embed=embed_out is not None, img_size=res, batch_size=batch_size, replicas=replicas,
                      cpus_per_replica=cpus_per_replica,
                      device=device, dtype=dtype, force=force, as_json=as_json, skip_errors=skip_errors)
    unreadable: dict[int, str] = {}
    for i, path in enumerate(paths):  # headers only: unreadable, empty, too large are told before the model loads
        try:
            open_image(path).close()
        except VitConvertError as e:
            unreadable[i] = str(e)
            click.echo(error_line(e), err=True)
    weights_path = resolve_weights(weights, model_name)
    if embed_out is None:  # a model without classes is refused before its tensors are read
        from ..formats.weights_file import read_record
        from ..inference.labels import check_top_k

        record = read_record(weights_path)
        check_top_k(record.config.num_classes, record.head_is_zero, str(weights_path), record.head_is_embedding)
    else:
        from ..formats.paths import check_output

        check_output(embed_out, force=True)
    map_paths = attention_paths(attention_out, paths) if attention_out else None
    readable = [path for i, path in enumerate(paths) if i not in unreadable]
    results: Iterator[Any] = iter(())
    if readable:  # else there is nothing to load the model for
        from ..inference.batches import default_workers
        from ..inference.predictor import Predictor  # torch from here on
        from ..inference.runtime import keep_freed_memory

        keep_freed_memory()  # this process is ours: reuse freed activations instead of faulting them in again
        predictor = Predictor(weights_path, img_size=res, device=device, labels=labels, dtype=dtype,
                              compile=compile_, patch_size=patch_size)
        if workers is None:
            workers = default_workers(len(readable), batch_size, predictor.device)
        if map_paths:  # refuse before the first prediction rather than after it
            from ..inference.attention import check_supported

            check_supported(predictor.config)
        if embed_out:
            results = predictor.iter_embed(readable, tokens=tokens, normalize=normalize, batch_size=batch_size,
                                           workers=workers, errors="report")
        else:
            results = predictor.iter_predict(readable, top_k=top_k, batch_size=batch_size, workers=workers,
                                             errors="report")
    many_on_terminal = sys.stdout.isatty() and len(paths) >= PROGRESS_MIN_IMAGES
    deferred: list[dict[str, Any]] = []
    embedded: list[Any] = []  # --embed: the ImageEmbedding of each image embedded, in order
    failures = len(unreadable)
    with progress_bar("embedding" if embed_out else "classifying", quiet=not many_on_terminal) as progress:
        for i, path in enumerate(paths):
            result = None if i in unreadable else next(results)
            if result is None:
                entry = {"image": str(path), "error": unreadable[i]}
            elif result.error is not None:  # the header read but the image did not decode: told when reached
                failures += 1
                progress.echo(error_line(result.error))
                entry = {"image": str(path), "error": result.error}
            elif embed_out:
                embedded.append(result)
                entry = None
            else:
                entry = result.to_dict()
                if map_paths:
                    predictor.attention_map(path).save(map_paths[i], format="PNG")
                    entry["attention_map"] = str(map_paths[i])
            if progress.update:
                progress.update(i + 1, len(paths))
            if entry is None:
                continue
            # Under a bar the tables wait until it is done; otherwise each prints when ready. With
            # --embed the entries are the failures, for the summary.
            if as_json or progress.update or embed_out:
                deferred.append(entry)
            elif "error" not in entry:
                click.echo(format_table(entry))
    if embed_out:
        write_embeddings(embed_out, embedded, deferred, tokens, normalize, as_json)
    elif as_json:
        click.echo(json.dumps(deferred, indent=2))
    else:
        for entry in deferred:
            if "error" not in entry:
                click.echo(format_table(entry))
    if failures and not skip_errors:
        sys.exit(EXIT_ERROR)


def check_embed_options(ctx: click.Context, embed_out: str | None, tokens: bool, normalize: bool,
                        labels: str | None, attention_out: Path | None) -> Path | None:
    """--embed's file; --tokens and --normalize need --embed; what only classifying uses does not go with it."""
    if embed_out is None:
        if tokens or normalize:
            raise click.UsageError("--tokens and --normalize shape the output of --embed OUT.npz; give it too")
        return None
    if not embed_out:
        raise click.UsageError("--embed needs a file to write, e.g. --embed features.npz (put it after the images)")
    given = [name for name, value in (("--labels", labels), ("--attention-map", attention_out)) if value]
    if ctx.get_parameter_source("top_k") is ParameterSource.COMMANDLINE:
        given.append("--top")
    if given:
        raise click.UsageError(f"--embed writes features, not classes: {' and '.join(given)} cannot go with it")
    return Path(embed_out)


def write_embeddings(out: Path, embedded: list[Any], failed: list[dict[str, Any]], tokens: bool,
                     normalize: bool, as_json: bool) -> None:
    """OUT.npz from the images embedded, then one summary line (or JSON with the failures too)."""
    import numpy as np

    from ..formats.embeddings import save_embeddings

    if not embedded:
        raise VitConvertError(f"no image could be embedded, so {out} was not written")
    embeddings = np.stack([r.embedding for r in embedded])
    save_embeddings(out, [r.image for r in embedded], embeddings)
    what = ("tokens" if tokens else "pooled features") + (", unit length" if normalize else "")
    if as_json:
        click.echo(json.dumps({"output": str(out), "images": len(embedded), "shape": list(embeddings.shape),
                               "dtype": "float32", "tokens": tokens, "normalized": normalize,
                               "errors": failed}, indent=2))
        return
    failures = f"; {len(failed)} image{'s' if len(failed) != 1 else ''} failed" if failed else ""
    click.echo(f"wrote {out}: {len(embedded)} embeddings, shape {tuple(embeddings.shape)} float32 ({what}){failures}")


def on_ray(paths: list[Path], weights: Path, address: str, output: Path, *, top_k: int, embed: bool,
           img_size: tuple[int, int] | None, batch_size: int, replicas: int, cpus_per_replica: float, device: str,
           dtype: str,
           force: bool, as_json: bool, skip_errors: bool) -> None:
    """The same predictions on Ray Data, into a Parquet table; unreadable images are rows with an error."""
    try:
        import ray
    except ImportError:
        raise VitConvertError("--ray needs Ray Data: pip install 'vitconvert[ray]'") from None
    from ..cluster import predict_dataset, write_predictions

    if output.exists() and not force:  # before starting a cluster
        raise VitConvertError(f"output {output} exists; pass --force to replace it")
    if device != "cpu" and not device.startswith("cuda"):
        raise VitConvertError(f"--ray runs replicas on cpu or cuda, not {device!r}")
    started = not ray.is_initialized()  # a Ray this process already runs is used as it is
    if started:
        ray.init(address=None if address == "local" else address, include_dashboard=False,
                 log_to_driver=False, logging_level="WARNING")
    try:
        dataset = predict_dataset([str(p) for p in paths], weights, top_k=top_k, embed=embed, img_size=img_size,
                                  batch_size=batch_size, replicas=replicas, cpus_per_replica=cpus_per_replica,
                                  dtype=dtype,
                                  num_gpus=1 if device.startswith("cuda") else 0)
        summary = write_predictions(dataset, output, force=force)
    finally:
        if started:
            ray.shutdown()
    if as_json:
        click.echo(json.dumps({"output": str(output), **summary}))
    else:
        click.echo(f"wrote {output}: {summary['images']} images, {summary['errors']} unreadable")
    if summary["errors"] and not skip_errors:
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
