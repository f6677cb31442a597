"""`vitconvert`: the command group. Commands parse and print; the library does the work.

Each command module imports the heavy parts of the library inside its function, so `--help`
and argument errors answer at once.
"""

from __future__ import annotations

import click

from .errors import run


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="vitconvert")
def cli() -> None:
    """Convert published Vision Transformer weights to exact, self-describing PyTorch files.

    \b
    Typical use:
      vitconvert jax2torch ViT-B_16.npz vit-b16.safetensors
      vitconvert verify vit-b16.safetensors --timm-model vit_base_patch16_224.augreg_in21k_ft_in1k
      vitpredict cat.jpg --weights vit-b16.safetensors

    Add --debug to any command to see a traceback when it fails.
    """


def main() -> None:
    run(cli)


def _register() -> None:
    from .convert import jax2torch, timm2torch
    from .manifest import download_cmd, list_cmd
    from .verify import verify

    for command in (jax2torch, timm2torch, verify, list_cmd, download_cmd):
        cli.add_command(command)


_register()
