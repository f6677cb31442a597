"""`vitconvert verify`."""

from __future__ import annotations

import json
import sys

import click

from ..core.config import ACTIVATIONS
from .errors import debug_option


@click.command("verify")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--timm-model", required=True, metavar="NAME", help="timm model name, e.g. vit_base_patch16_224.")
@click.option("--source", type=click.Path(dir_okay=False),
              help="The original checkpoint (.npz, .pth, .bin, .safetensors), loaded into timm with timm's own "
                   "loader. Without it timm gets the tensors of FILE.")
@click.option("--res", help="Compare at this size (R or HxW); position embeddings are resampled.")
@click.option("--image", type=click.Path(dir_okay=False), help="Use this image (through FILE's preprocessing) "
              "instead of a fixed random batch.")
@click.option("--atol", type=float, default=1e-4, show_default=True, help="Largest logit difference that passes.")
@click.option("--timm-act", type=click.Choice(["match", *ACTIVATIONS]), default="match", show_default=True,
              help="timm's MLP activation: 'match' uses the one FILE records (checks the conversion alone).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@debug_option
def verify(file: str, timm_model: str, source: str | None, res: str | None, image: str | None, atol: float,
           timm_act: str, as_json: bool) -> None:
    """Compare FILE's model with timm's on the same weights and input.

    timm's model is NAME as timm defines it: where FILE's architecture differs (width, depth, heads,
    classes, ...), the differences are listed and the check fails. Otherwise prints the max and mean
    absolute logit difference, top-1/top-5 agreement, the activation on each side and the first
    block where the two part ways. Exit status 0 when the max difference is within --atol, 1 when
    it is not or the architectures differ.

    \b
    Examples:
      vitconvert verify vit-b16.safetensors --timm-model vit_base_patch16_224.augreg_in21k_ft_in1k
      vitconvert verify vit-b16.safetensors --timm-model vit_base_patch16_224 --source ViT-B_16.npz
      vitconvert verify vit-b16.safetensors --timm-model vit_base_patch16_224 --image cat.jpg --res 384
      vitconvert verify vit-b16.safetensors --timm-model vit_base_patch16_224 --timm-act gelu --json
    """
    from ..core.config import parse_size
    from ..fidelity.verify import verify as run_verify

    report = run_verify(file, timm_model, source=source, img_size=parse_size(res) if res else None,
                        image=image, atol=atol, timm_act=timm_act)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    elif report.architecture_differences:
        click.echo(f"ours:   {file}")
        click.echo(f"timm:   {report.timm_model}")
        click.echo("arch:   differs, so nothing was run:")
        for d in report.architecture_differences:
            click.echo(f"        {d.describe('file')}")
        click.echo("FAIL")
    else:
        click.echo(f"ours:   {file} (activation {report.ours_activation})")
        click.echo(f"timm:   {report.timm_model}, weights from {report.timm_weights} "
                   f"(activation {report.timm_activation})")
        click.echo(f"input:  {report.input}")
        click.echo(f"logits: max abs diff {report.max_abs_diff:.3e}, mean abs diff {report.mean_abs_diff:.3e} "
                   f"(atol {report.atol:g})")
        click.echo(f"agree:  top-1 {report.top1_agreement:.0%}, top-5 {report.top5_agreement:.0%}")
        if report.first_divergence:
            click.echo(f"parted: first beyond atol at {report.first_divergence}")
        click.echo("PASS" if report.ok else "FAIL")
    sys.exit(0 if report.ok else 1)
