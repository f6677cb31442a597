"""`vitconvert export`: one of our weights files to ONNX (checked in onnxruntime), or to a transformers model
directory."""

from __future__ import annotations

import json
from dataclasses import asdict

import click

from ..core.config import parse_size
from ..core.errors import VitConvertError
from .errors import debug_option


def _batch(ctx: click.Context, param: click.Parameter, value: str) -> int | None:
    if value == "dynamic":
        return None
    if value.isdigit() and int(value) >= 1:
        return int(value)
    raise click.BadParameter(f"must be a batch size of at least 1 or 'dynamic', got {value!r}")


def _size(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, int] | None:
    try:
        return None if value is None else parse_size(value)
    except VitConvertError as e:
        raise click.BadParameter(str(e)) from None


ONNX_ONLY = ("res", "batch", "opset")


@click.command("export")
@click.argument("src", metavar="FILE", type=click.Path(dir_okay=False))
@click.argument("dst", metavar="OUT", type=click.Path())
@click.option("--to", "fmt", type=click.Choice(["onnx", "hf"]), default="onnx", show_default=True,
              help="The format to write: an ONNX file, or a Hugging Face transformers model directory.")
@click.option("--res", callback=_size, metavar="R|HxW",
              help="ONNX: input size of the exported model (default: the trained size); position embeddings "
                   "are resampled.")
@click.option("--batch", callback=_batch, default="dynamic", show_default=True, metavar="N|dynamic",
              help="ONNX: a fixed batch size, or a dynamic batch axis.")
@click.option("--opset", type=click.IntRange(min=1), metavar="K", help="ONNX opset (default: the exporter's).")
@click.option("--features", is_flag=True,
              help="Output the pooled features instead of the logits (a model without a head always does); "
                   "hf: write the model without its classifier (ViTModel, DeiTModel, Dinov2Model).")
@click.option("--architecture", metavar="CLASS",
              help="hf: the transformers class to write where more than one computes the model (ViTModel or "
                   "ViTMSNModel, ViTForImageClassification or ViTMSNForImageClassification); default: the class "
                   "the file was converted from, else ViT's, DeiT's, Dinov2's or Dinov2WithRegisters'.")
@click.option("--force", is_flag=True, help="Replace OUT if it exists (hf: only a directory an export wrote).")
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON.")
@debug_option
@click.pass_context
def export(ctx: click.Context, src: str, dst: str, fmt: str, res: tuple[int, int] | None, batch: int | None,
           opset: int | None, features: bool, architecture: str | None, force: bool, as_json: bool) -> None:
    """Export FILE (a vitconvert weights file) as an ONNX model or a transformers model directory OUT.

    --to onnx: the file's record (preprocessing, label set, architecture at the exported size) goes into
    the ONNX metadata_props under 'vitconvert'. After writing, OUT is run in onnxruntime on a random batch
    against our model and the largest logit difference printed; over 1e-4 is an error and nothing is
    written. Needs the onnx extra: pip install 'vitconvert[onnx]'.

    --to hf: OUT becomes a directory that transformers' AutoModelForImageClassification (AutoModel for a
    model without a head) and AutoImageProcessor load with nothing else: config.json (the class names as
    id2label), model.safetensors and preprocessor_config.json, at the file's input size. A model
    transformers cannot express (a hybrid, 'gap' pooling, register tokens, ...) is refused, saying what
    and why. Needs neither torch nor transformers.

    \b
    Examples:
      vitconvert export vit-b16.safetensors --to onnx vit-b16.onnx
      vitconvert export vit-b16.safetensors --to onnx vit-b16-384.onnx --res 384 --batch 8
      vitconvert export vit-b16.safetensors --to onnx vit-b16-features.onnx --features --opset 18
      vitconvert export vit-b16.safetensors --to hf vit-b16-hf
      vitconvert export dino-s16.safetensors --to hf dino-s16-hf --force --json
      vitconvert export vit-s16.safetensors --to hf vit-msn-s16-hf --architecture ViTMSNModel
    """
    if fmt == "hf":
        given = [f"--{name}" for name in ONNX_ONLY
                 if ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT]
        if given:
            raise click.UsageError(f"{', '.join(given)}: {'an ONNX option' if len(given) == 1 else 'ONNX options'}; "
                                   "--to hf writes the model at the file's input size")
        _export_hf(src, dst, features, force, as_json, architecture)
        return
    if architecture is not None:
        raise click.UsageError("--architecture: an hf option; --to onnx writes our model's graph")
    from ..formats.paths import check_input, check_output

    check_input(src, "a vitconvert weights file")
    check_output(dst, force, suffix=".onnx")  # before torch is imported: a mistake answers at once
    from ..export.onnx import export_onnx

    done = export_onnx(src, dst, img_size=res, batch=batch, opset=opset, features=features, force=force)
    if as_json:
        click.echo(json.dumps({**asdict(done), "path": str(done.path),
                               "data_path": done.data_path and str(done.data_path),
                               "record": json.loads(done.record.to_json())}, indent=2))
        return
    shape = lambda dims: "(" + ", ".join(map(str, dims)) + ")"  # noqa: E731
    click.echo(f"wrote {done.path} (ONNX opset {done.opset})")
    if done.data_path:
        click.echo(f"  weights {done.data_path} (over protobuf's 2 GiB: keep it beside the model)")
    click.echo(f"  input   {shape(done.input_shape)} float32, preprocessed as the record says")
    click.echo(f"  output  {done.output} {shape(done.output_shape)}")
    click.echo(f"  check   onnxruntime vs ours on a random batch of {done.check_batch}: max abs diff "
               f"{done.max_abs_diff:.2e} (atol {done.atol:g})")


def _export_hf(src: str, dst: str, features: bool, force: bool, as_json: bool, architecture: str | None) -> None:
    from ..export.hf import export_hf

    done = export_hf(src, dst, features=features, force=force, architecture=architecture)
    if as_json:
        click.echo(json.dumps({**asdict(done), "path": str(done.path)}, indent=2))
        return
    auto = "AutoModel" if done.architecture.endswith("Model") else "AutoModelForImageClassification"
    click.echo(f"wrote {done.path} (transformers {done.architecture}, model_type {done.model_type})")
    click.echo(f"  files   {', '.join(done.files)} ({done.processor})")
    click.echo(f"  load    {auto}.from_pretrained(...), AutoImageProcessor.from_pretrained(...)")
    for note in done.notes:
        click.echo(f"  note    {note}")
