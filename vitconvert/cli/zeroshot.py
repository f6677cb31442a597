"""`vitconvert zeroshot` (a two-tower file's image tower with a zero-shot head, written as an ordinary
classifier) and `vitconvert embed-text` (text embeddings to .npz, as `vitpredict --embed` writes images')."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .errors import debug_option
from .progress import progress_bar

DTYPES = click.Choice(["float32", "bfloat16", "float16"])
CLASSES_HELP = ("Class names: imagenet-1k (OpenAI's CLIP names), a FILE (one name a line) or a comma-separated "
                "list 'cat,dog,bird'.")
TEMPLATES_HELP = ("Prompt templates, '{}' where the class name goes: imagenet (OpenAI's 80), imagenet-simple "
                  "(their 7), clip_paper / clip_best (big_vision's), a FILE (one a line) or one template "
                  "'a photo of a {}.'.")


@click.command("zeroshot")
@click.argument("src", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE")
@click.argument("dst", type=click.Path(dir_okay=False, path_type=Path), metavar="OUT.safetensors")
@click.option("--classes", required=True, metavar="imagenet-1k|FILE|LIST", help=CLASSES_HELP)
@click.option("--templates", default="imagenet", show_default=True, metavar="SET|FILE|TEMPLATE",
              help=TEMPLATES_HELP)
@click.option("--dtype", type=DTYPES, default="float32", show_default=True, help="Storage dtype of OUT.")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True,
              help="Prompts per forward pass of the text tower.")
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print the written record as JSON.")
@debug_option
def zeroshot_cmd(src: Path, dst: Path, classes: str, templates: str, dtype: str, batch_size: int, force: bool,
                 quiet: bool, as_json: bool) -> None:
    """Write OUT.safetensors: FILE's image tower with a zero-shot head for --classes, an ordinary
    classifier that vitpredict, export, Ray Data and finetune read as any other.

    FILE is a two-tower weights file (CLIP, SigLIP, LiT, converted with both towers). Each class's
    prompts are embedded by the text tower, normalised, averaged and normalised again (as OpenCLIP's and
    big_vision's evaluations do), and become the head's rows, the logit scale and bias folded in; the
    head reads the unit-length image embedding. Probabilities: softmax for CLIP and LiT, sigmoid for
    SigLIP, as the model was trained (the file records which).

    \b
    Examples:
      vitconvert zeroshot siglip-b16.safetensors siglip-in1k.safetensors --classes imagenet-1k
      vitconvert zeroshot clip-b32.safetensors pets.safetensors --classes "cat,dog,hamster" \\
          --templates "a photo of a {}, a type of pet."
      vitconvert zeroshot clip-b32.safetensors mine.safetensors --classes names.txt --templates imagenet-simple
    """
    from ..zeroshot.classifier import ZeroShotRequest, build_zeroshot_classifier

    with progress_bar("embedding prompts", quiet) as progress:
        record = build_zeroshot_classifier(src, dst, ZeroShotRequest(classes, templates), force=force, dtype=dtype,
                                           batch_size=batch_size, progress=progress.update)
    if as_json:
        click.echo(json.dumps({"output": str(dst), "record": json.loads(record.to_json())}, indent=2))
        return
    c = record.config
    click.echo(f"wrote {dst}: {c.num_classes} classes on the {c.representation_size or c.embed_dim}-wide image "
               f"embedding, {record.probability} probabilities")
    click.echo(f"  note        {record.notes[-1]}")


@click.command("embed-text")
@click.argument("src", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE")
@click.option("--texts", required=True, metavar="FILE|TEXT",
              help="The texts: a FILE (one a line, blank lines skipped) or one text.")
@click.option("-o", "--output", "out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              metavar="OUT.npz", help="Arrays 'texts' and 'embeddings' (float32, one row per text).")
@click.option("--normalize", is_flag=True, help="Each vector scaled to unit length.")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True,
              help="Texts per forward pass.")
@click.option("--force", is_flag=True, help="Replace OUT.npz if it exists.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@debug_option
def embed_text_cmd(src: Path, texts: str, out: Path, normalize: bool, batch_size: int, force: bool,
                   as_json: bool) -> None:
    """Write the text tower's embeddings of --texts to OUT.npz: the un-normalised text embedding (the
    source's encode_text / ztxt) unless --normalize; beside `vitpredict IMAGES --embed` of the same file,
    `normalize(img) @ normalize(txt).T * logit_scale + logit_bias` are the model's logits.

    \b
    Examples:
      vitconvert embed-text siglip-b16.safetensors --texts captions.txt -o captions.npz
      vitconvert embed-text clip-b32.safetensors --texts "a photo of a cat" -o cat.npz --normalize
    """
    from ..zeroshot.text_embeddings import embed_texts_to_npz

    summary = embed_texts_to_npz(src, texts, out, normalize=normalize, batch_size=batch_size, force=force)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(f"wrote {out}: {summary['texts']} embeddings, shape {tuple(summary['shape'])} float32"
               f"{', unit length' if normalize else ''}; logit_scale {summary['logit_scale']:g}, "
               f"logit_bias {summary['logit_bias']:g} ({summary['probability']})")
