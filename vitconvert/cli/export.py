"""`vitconvert export`: one of our weights files to ONNX, checked in onnxruntime."""

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


@click.command("export")
@click.argument("src", metavar="FILE", type=click.Path(dir_okay=False))
@click.argument("dst", metavar="OUT", type=click.Path(dir_okay=False))
@click.option("--to", "fmt", type=click.Choice(["onnx"]), default="onnx", show_default=True,
              help="The format to write.")
@click.option("--res", callback=_size, metavar="R|HxW",
              help="Input size of the exported model (default: the trained size); position embeddings "
                   "are resampled.")
@click.option("--batch", callback=_batch, default="dynamic", show_default=True, metavar="N|dynamic",
              help="A fixed batch size, or a dynamic batch axis.")
@click.option("--opset", type=click.IntRange(min=1), metavar="K", help="ONNX opset (default: the exporter's).")
@click.option("--features", is_flag=True,
              help="Output the pooled features instead of the logits (a model without a head always does).")
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON.")
@debug_option
def export(src: str, dst: str, fmt: str, res: tuple[int, int] | None, batch: int | None, opset: int | None,
           features: bool, force: bool, as_json: bool) -> None:
    """Export FILE (a vitconvert weights file) as an ONNX model OUT.

    The file's record (preprocessing, label set, architecture at the exported size) goes into the
    ONNX metadata_props under 'vitconvert'. After writing, OUT is run in onnxruntime on a random batch
    against our model and the largest logit difference printed; over 1e-4 is an error and nothing is
    written. Needs the onnx extra: pip install 'vitconvert[onnx]'.

    \b
    Examples:
      vitconvert export vit-b16.safetensors --to onnx vit-b16.onnx
      vitconvert export vit-b16.safetensors --to onnx vit-b16-384.onnx --res 384 --batch 8
      vitconvert export vit-b16.safetensors --to onnx vit-b16-features.onnx --features --opset 18
    """
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
