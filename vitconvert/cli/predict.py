"""`vitpredict`: top-k classes (and attention maps), or embeddings, for images, from one of our
weights files.

Thin: click parses and prints, `vitconvert.Predictor` does the work. Arguments, image files and
the weights path are checked with light imports only (click, Pillow); torch is imported after
that, so `--help` and a mistyped path answer at once.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from ..catalog.resolve import WEIGHTS_ENV, resolve_weights
from ..core.config import parse_size
from ..core.errors import VitConvertError
from .errors import EXIT_ERROR, debug_option, error_line, run
from .progress import progress_bar

# Below this many images a progress bar would only flicker. The bar goes to stderr when stderr is a
# terminal, whatever stdout is: `vitpredict DIR --json > out.json` shows it too.
PROGRESS_MIN_IMAGES = 8


@dataclass(frozen=True)
class Options:
    """What the command line asked for, as click parsed it."""

    images: tuple[str, ...]
    weights: Path | None
    model_name: str | None
    res: tuple[int, int] | None
    patch_size: tuple[int, int] | None
    top_k: int
    as_json: bool
    batch_size: int
    device: str
    dtype: str
    compile_: bool
    workers: int | None
    labels: str | None
    classes: str | None
    templates: str | None
    attention_out: Path | None
    embed_out: str | None  # None: classify; '': --embed without a file (with --ray); else OUT.npz
    tokens: bool
    normalize: bool
    recursive: bool
    skip_errors: bool
    ray_address: str | None
    output: Path | None
    replicas: int
    cpus_per_replica: float
    force: bool
    verbose: bool


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
              help="The fastest float32 path: on a CPU oneDNN's prepacked linear layers (no wait); on a GPU "
                   "torch.compile, compiling once per batch size. How much faster: docs/speed.md.")
@click.option("--workers", type=click.IntRange(min=0), metavar="N",
              help="Processes decoding and resizing images ahead of the model; 0: none. Default: "
                   "none for a single batch; on a GPU every core but one; on the CPU only cores torch leaves idle.")
@click.option("--labels", metavar="imagenet-1k|imagenet-21k|FILE",
              help="Class names (a FILE has one name a line); default: the weights file's label set.")
@click.option("--classes", metavar="imagenet-1k|FILE|LIST",
              help="With a two-tower --weights file (CLIP, SigLIP, LiT): classify into these classes by their "
                   "names, as `vitconvert zeroshot` would (imagenet-1k, a FILE with one a line, or 'cat,dog').")
@click.option("--templates", metavar="SET|FILE|TEMPLATE",
              help="With --classes: the prompt templates (default imagenet, OpenAI's 80; see "
                   "`vitconvert zeroshot --help`).")
@click.option("--attention-map", "attention_out", type=click.Path(dir_okay=False, path_type=Path),
              metavar="OUT.png",
              help="Save the attention rollout over each image (several images: OUT-<image>.png).")
@click.option("--embed", "embed_out", is_flag=False, flag_value="", default=None, metavar="OUT.npz",
              help="Instead of classifying, write one float32 vector per image to OUT.npz (arrays 'paths' "
                   "and 'embeddings'): the pooled features the head reads. Any model, with or without a head. "
                   "With --ray, give no file: the embeddings join the --output table.")
@click.option("--tokens", is_flag=True,
              help="With --embed: the patch tokens after the final norm, (images, h*w, width), and apart from "
                   "them 'grid' (h, w) and the prefix tokens the model has: 'class_tokens', 'register_tokens' "
                   "(registers, DINOv3's storage tokens), 'dist_tokens'.")
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
@click.option("--force", is_flag=True, help="Replace an existing --embed, --attention-map or --output file.")
@click.option("--verbose", "-v", is_flag=True, help="With --ray: show Ray's own log lines too.")
@debug_option
def command(**given: Any) -> None:
    """Classify IMAGE... (files or directories of images) with a converted ViT, or embed them (--embed).

    An image that cannot be read is reported (a line 'error: IMAGE: why' on stderr; in --json an
    entry with "error" instead of "predictions") and the others are still classified (or embedded:
    OUT.npz lists only those); the exit status is then 1 (0 with --skip-errors). What a directory
    holds besides images is skipped, with a note on stderr naming them.
    An existing --embed, --attention-map or --output file is replaced only with --force.

    \b
    Examples:
      vitpredict cat.jpg --weights vit-b16.safetensors
      vitpredict cat.jpg --model augreg-B16-in21k-ft-in1k-384 --top 10 --attention-map attn.png
      vitpredict photos/ --recursive --weights vit-b16.safetensors --json > predictions.json
      vitpredict photos/ --weights vit-b16.safetensors --dtype bfloat16 --skip-errors
      vitpredict photos/ --model orig-B16-in21k --embed features.npz --normalize
      vitpredict photos/ --weights dinov3-vitb16.safetensors --res 448x640 --embed dense.npz --tokens
      vitpredict cat.jpg --weights flexivit-b.safetensors --patch-size 16 --res 240
      vitpredict photos/ -r --weights vit-b16.safetensors --ray --output predictions.parquet --embed
      vitpredict photos/ --weights vit-b16.safetensors --ray auto --replicas 8 --device cuda --output p.parquet
      vitpredict photos/ --weights vit-b16.safetensors --ray --replicas 2 --cpus-per-replica 0.5 --output p.parquet
      vitpredict cat.jpg --weights siglip-b16.safetensors --classes imagenet-1k
      vitpredict cat.jpg --weights clip-b32.safetensors --classes "cat,dog" --templates "a photo of a {}."
    """
    from ..inference.images import find_images

    options = Options(**given)
    embed_out = check_usage(click.get_current_context(), options)
    found = find_images(options.images, recursive=options.recursive)
    if found.skipped():
        hint = " (--recursive searches sub-folders)" if found.skipped_folders else ""
        click.echo(f"note: skipped {found.skipped()}{hint}", err=True)
    with zeroshot_weights(options) as options:
        if options.ray_address is not None:
            on_ray(found.paths, options)
        else:
            predict_here(found.paths, options, embed_out)


@contextmanager
def zeroshot_weights(o: Options) -> Iterator[Options]:
    """With --classes, `o` on a zero-shot classifier built from the two-tower --weights file into a temporary
    file (the one `vitconvert zeroshot` writes), removed afterwards; else `o` as it is."""
    if o.classes is None:
        yield o
        return
    from ..zeroshot.classifier import ZeroShotRequest, zeroshot_classifier_file

    request = ZeroShotRequest(o.classes, o.templates or "imagenet")
    with contextlib.ExitStack() as stack:
        with progress_bar("embedding prompts", quiet=False) as progress:  # closed before the predictions start
            out = stack.enter_context(zeroshot_classifier_file(resolve_weights(o.weights, o.model_name), request,
                                                               progress=progress.update))
        yield replace(o, weights=out, model_name=None, classes=None)


def check_usage(ctx: click.Context, o: Options) -> Path | None:
    """The options that do not go together (exit 2); returns --embed's file, if any."""
    if o.weights is not None and o.model_name is not None:
        raise click.UsageError("give --weights FILE or --model NAME, not both")
    if o.templates is not None and o.classes is None:
        raise click.UsageError("--templates fill in the names of --classes; give --classes too")
    if o.classes is not None and (o.labels is not None or o.embed_out is not None):
        raise click.UsageError(f"--classes names the classes to rank: it cannot go with "
                               f"{'--labels' if o.labels is not None else '--embed'}")
    if (o.ray_address is None) != (o.output is None):
        raise click.UsageError("--ray and --output go together")
    if o.ray_address is not None:
        if o.patch_size is not None:
            raise click.UsageError("--patch-size runs without --ray only")
        if o.embed_out:
            raise click.UsageError("with --ray, --embed takes no file: the embeddings go into the --output table")
        if o.tokens:
            raise click.UsageError("--tokens runs without --ray only (the --output table holds pooled features)")
        return None
    if o.verbose:
        raise click.UsageError("--verbose shows Ray's log lines; it goes with --ray")
    if o.embed_out is None:
        if o.tokens or o.normalize:
            raise click.UsageError("--tokens and --normalize shape the output of --embed OUT.npz; give it too")
        return None
    if not o.embed_out:
        raise click.UsageError("--embed needs a file to write, e.g. --embed features.npz (put it after the images)")
    given = [name for name, value in (("--labels", o.labels), ("--attention-map", o.attention_out)) if value]
    if ctx.get_parameter_source("top_k") is ParameterSource.COMMANDLINE:
        given.append("--top")
    if given:
        raise click.UsageError(f"--embed writes features, not classes: {' and '.join(given)} cannot go with it")
    return Path(o.embed_out)


def predict_here(paths: list[Path], o: Options, embed_out: Path | None) -> None:
    """Classify (or embed) `paths` in this process: everything that can be refused is, before torch is
    imported; then the results as they come, each unreadable image named on stderr."""
    from ..formats.paths import check_output
    from ..inference.images import open_image
    from ..inference.plan import plan_prediction

    if embed_out is not None:
        check_output(embed_out, o.force, suffix=".npz", what="--embed")
    unreadable: dict[int, str] = {}
    for i, path in enumerate(paths):  # headers only: unreadable, empty, too large are told before the model loads
        try:
            open_image(path).close()
        except VitConvertError as e:
            unreadable[i] = str(e)
            click.echo(error_line(e), err=True)
    plan = plan_prediction(o.weights, model=o.model_name, img_size=o.res, patch_size=o.patch_size, labels=o.labels,
                           classify=embed_out is None, attention=o.attention_out is not None)
    map_paths = attention_paths(o.attention_out, paths, o.force) if o.attention_out else None
    readable = [path for i, path in enumerate(paths) if i not in unreadable]
    predictor, results = None, iter(())
    if readable:  # else there is nothing to load the model for
        from ..inference.batches import default_workers
        from ..inference.predictor import Predictor  # torch from here on
        from ..inference.runtime import keep_freed_memory

        keep_freed_memory()  # this process is ours: reuse freed activations instead of faulting them in again
        predictor = Predictor(plan, device=o.device, dtype=o.dtype, compile=o.compile_)
        workers = default_workers(len(readable), o.batch_size, predictor.device) if o.workers is None else o.workers
        if embed_out:
            results = predictor.iter_embed(readable, tokens=o.tokens, normalize=o.normalize,
                                           batch_size=o.batch_size, workers=workers, errors="report")
        else:
            results = predictor.iter_predict(readable, top_k=o.top_k, batch_size=o.batch_size, workers=workers,
                                             errors="report")
    failures = report(paths, unreadable, results, o, embed_out, predictor, map_paths)
    if failures and not o.skip_errors:
        sys.exit(EXIT_ERROR)


def report(paths: list[Path], unreadable: dict[int, str], results: Iterator[Any], o: Options,
           embed_out: Path | None, predictor: Any, map_paths: list[Path] | None) -> int:
    """Print (or, --embed, write) each image's result in input order; returns how many images failed."""
    deferred: list[dict[str, Any]] = []
    embedded: list[Any] = []  # --embed: the ImageEmbedding of each image embedded, in order
    failures = len(unreadable)
    with progress_bar("embedding" if embed_out else "classifying",
                      quiet=len(paths) < PROGRESS_MIN_IMAGES) as progress:
        # A table printed on the terminal the bar is drawn on would break it: those wait until it is done.
        wait = o.as_json or embed_out is not None or (progress.update is not None and sys.stdout.isatty())
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
            if wait:  # with --embed the entries are the failures, for the summary
                deferred.append(entry)
            elif "error" not in entry:
                click.echo(format_table(entry))
    if embed_out:
        write_embeddings(embed_out, embedded, deferred, o.tokens, o.normalize, o.as_json,
                         predictor.grid if predictor is not None else None)
    elif o.as_json:
        click.echo(json.dumps(deferred, indent=2))
    else:
        for entry in deferred:
            if "error" not in entry:
                click.echo(format_table(entry))
    return failures


def write_embeddings(out: Path, embedded: list[Any], failed: list[dict[str, Any]], tokens: bool,
                     normalize: bool, as_json: bool, grid: tuple[int, int] | None) -> None:
    """OUT.npz from the images embedded (with `tokens`, their patch grid and prefix tokens too), then one
    summary line (or JSON with the failures too)."""
    import numpy as np

    from ..formats.embeddings import save_embeddings

    if not embedded:
        raise VitConvertError(f"no image could be embedded, so {out} was not written")
    embeddings = np.stack([r.embedding for r in embedded])
    prefix = {name: np.stack([r.prefix[name] for r in embedded]) for name in embedded[0].prefix}
    extra = {"grid": np.array(grid), **prefix} if tokens else {}
    save_embeddings(out, [r.image for r in embedded], embeddings, extra)  # checked before the model loaded
    what = f"patch tokens on a {grid[0]}x{grid[1]} grid" if tokens else "pooled features"
    what += (f", {' and '.join(prefix)} apart" if prefix else "") + (", unit length" if normalize else "")
    if as_json:
        summary = {"output": str(out), "images": len(embedded), "shape": list(embeddings.shape),
                   "dtype": "float32", "tokens": tokens, "normalized": normalize}
        if tokens:
            summary |= {"grid": list(grid), "prefix_tokens": {name: list(a.shape) for name, a in prefix.items()}}
        click.echo(json.dumps({**summary, "errors": failed}, indent=2))
        return
    failures = f"; {len(failed)} image{'s' if len(failed) != 1 else ''} failed" if failed else ""
    click.echo(f"wrote {out}: {len(embedded)} embeddings, shape {tuple(embeddings.shape)} float32 ({what}){failures}")


def on_ray(paths: list[Path], o: Options) -> None:
    """The same predictions on Ray Data, into a Parquet table; each unreadable image is named on stderr (and
    is a row with an error). Ray's own log lines only with --verbose."""
    try:
        import ray
    except ImportError:
        raise VitConvertError("--ray needs Ray Data: pip install 'vitconvert[ray]'") from None
    from ..cluster import predict_dataset, quiet_ray, write_predictions

    weights = resolve_weights(o.weights, o.model_name)
    if o.output.exists() and not o.force:  # before starting a cluster
        raise VitConvertError(f"output {o.output} exists; pass --force to replace it")
    if o.device != "cpu" and not o.device.startswith("cuda"):
        raise VitConvertError(f"--ray runs replicas on cpu or cuda, not {o.device!r}")
    started = not ray.is_initialized()  # a Ray this process already runs is used as it is
    with quiet_ray(not o.verbose):
        if started:
            ray.init(address=None if o.ray_address == "local" else o.ray_address, include_dashboard=False,
                     log_to_driver=o.verbose, logging_level="INFO" if o.verbose else "ERROR")
        try:
            dataset = predict_dataset([str(p) for p in paths], weights, top_k=o.top_k, embed=o.embed_out is not None,
                                      img_size=o.res, batch_size=o.batch_size, replicas=o.replicas,
                                      cpus_per_replica=o.cpus_per_replica, dtype=o.dtype,
                                      num_gpus=1 if o.device.startswith("cuda") else 0)
            summary = write_predictions(dataset, o.output, force=o.force)
        finally:
            if started:
                ray.shutdown()
    for failure in summary["failed"]:
        click.echo(error_line(failure["error"]), err=True)
    if o.as_json:
        click.echo(json.dumps({"output": str(o.output), **summary}))
    else:
        click.echo(f"wrote {o.output}: {summary['images']} images, {summary['errors']} unreadable")
    if summary["errors"] and not o.skip_errors:
        sys.exit(EXIT_ERROR)


def attention_paths(out: Path, images: list[Path], force: bool) -> list[Path]:
    """OUT for one image; OUT-<image stem>.png each for several (numbered where stems repeat); each checked
    as an output (a PNG, its directory there, not replaced without `force`)."""
    from ..formats.paths import check_output

    check_output(out, force or len(images) > 1, suffix=".png", what="--attention-map")  # several: OUT names them
    if len(images) == 1:
        return [out]
    repeated = {stem for stem, n in Counter(p.stem for p in images).items() if n > 1}
    seen: Counter[str] = Counter()
    paths = []
    for image in images:
        seen[image.stem] += 1
        suffix = f"-{seen[image.stem]}" if image.stem in repeated else ""
        paths.append(check_output(out.with_name(f"{out.stem}-{image.stem}{suffix}.png"), force, what="--attention-map"))
    return paths


def format_table(entry: dict[str, Any]) -> str:
    """One image's entry (as in --json): the image, then rank, probability in % and label (the
    class index when the classes have no names). Sigmoid probabilities (SigLIP's) say so in the header:
    each class is scored on its own, and they do not sum to 1."""
    lines = [entry["image"], "  rank  sigmoid  label" if entry.get("probabilities") == "sigmoid"
             else "  rank     prob  label"]
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
