"""`vitconvert`: the command group. Commands parse and print; the library does the work.

Each command module imports the heavy parts of the library inside its function, so `--help`
and argument errors answer at once.
"""

from __future__ import annotations

import click

from .errors import EXIT_USAGE, run


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
             invoke_without_command=True)
@click.version_option(package_name="vitconvert")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Convert published Vision Transformer weights to exact, self-describing PyTorch files.

    \b
    Typical use:
      vitconvert convert ViT-B_16.npz vit-b16.safetensors
      vitconvert verify vit-b16.safetensors --timm-model vit_base_patch16_224.augreg_in21k_ft_in1k
      vitpredict cat.jpg --weights vit-b16.safetensors
      vitconvert export vit-b16.safetensors --to onnx vit-b16.onnx
      vitconvert finetune vit-b16.safetensors flowers/ flowers.safetensors --val-split 0.1
      vitconvert serve vit-b16.safetensors --port 8000

    Each command's --help has examples. Add --debug to any command to see a traceback when it fails.
    """
    if ctx.invoked_subcommand is None:
        # The help, as a help: on stdout (it pages and greps) and whole, not squeezed onto an
        # error line. Exit 2 all the same: nothing was done, so a script that ran `vitconvert $CMD`
        # with an empty $CMD must not pass for a success (click >= 8.2 exits 2 here too).
        click.echo(ctx.get_help())
        ctx.exit(EXIT_USAGE)


def main() -> None:
    run(cli)


def _register() -> None:
    from .convert import convert_cmd, hf2torch, jax2torch, timm2torch, torch2torch
    from .export import export
    from .finetune import finetune_cmd
    from .manifest import download_cmd, list_cmd
    from .serve import serve_cmd
    from .verify import verify
    from .zeroshot import embed_text_cmd, zeroshot_cmd

    for command in (convert_cmd, jax2torch, timm2torch, hf2torch, torch2torch, verify, export, list_cmd, download_cmd,
                    finetune_cmd, serve_cmd, zeroshot_cmd, embed_text_cmd):
        cli.add_command(command)


_register()
