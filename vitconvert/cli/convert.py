"""`vitconvert convert` (any source format, recognised from the file), and the per-format `jax2torch`,
`timm2torch`, `hf2torch` and `torch2torch`: all of them the library's one `convert_source` call."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import click

from ..core.config import POS_RESIZES
from .errors import debug_option
from .progress import progress_bar

DTYPES = click.Choice(["float32", "bfloat16", "float16"])
POS_RESIZE = click.Choice(POS_RESIZES)


def _report(converted, dst: str, as_json: bool) -> None:
    record = converted.record
    if as_json:
        click.echo(json.dumps({"output": dst, "format": converted.format, "record": json.loads(record.to_json()),
                               "left_out": converted.left_out}, indent=2))
        return
    c = record.config
    arch = f"{c.embed_dim}-wide, {c.depth} blocks, {c.num_heads} heads, patch {c.patch_size}"
    if c.hybrid_layers is not None:
        arch += f", ResNet stages {list(c.hybrid_layers)}"
    click.echo(f"wrote {dst}")
    click.echo(f"  source      {record.source.file} ({record.source.format}, sha256 {record.source.sha256[:12]}...)")
    head = f"{c.num_classes} classes" if c.num_classes else "no head (returns features)"
    if record.head_is_embedding:
        head = f"head projects into a {c.num_classes}-wide embedding (returns it)"
    if (text := record.text) is not None:
        t = text.config
        head += (f"; text tower {t.width}-wide, {t.depth} blocks, {t.context_length} tokens ({text.tokenizer.kind}), "
                 f"logit scale {text.logit_scale:.4g}, bias {text.logit_bias:.4g}, {text.probability}")
    click.echo(f"  model       {arch}; pool {c.pool}; {head}; act {c.act}")
    click.echo(f"  input       {c.img_size[0]}x{c.img_size[1]}, {record.preprocess.resize} "
               f"({record.preprocess.interpolation}), mean {list(record.preprocess.mean)}")
    click.echo(f"  labels      {_describe_labels(record.labels)}")
    click.echo(f"  pos resize  {c.pos_resize} (position embeddings at other input sizes)")
    if record.head_is_zero:
        click.echo("  note        the head is all zeros (published for fine-tuning): vitpredict will refuse top-k")
    for note in record.notes:
        click.echo(f"  note        {note}")


def _describe_labels(labels: str | tuple[str, ...] | None) -> str:
    if labels is None:
        return "none (vitpredict shows class indices)"
    if isinstance(labels, str):
        return labels
    shown = ", ".join(labels[:3]) + (", ..." if len(labels) > 3 else "")
    return f"{len(labels)} class names ({shown})"


def _labels(value: str | None) -> str | list[str] | None:
    """--labels: a label set's name as it is, a file as the names it holds (one a line)."""
    from ..formats.weights_file import LABEL_SETS
    from ..inference.labels import read_label_file

    if value is None or value in LABEL_SETS.values():
        return value
    return read_label_file(value)


def _convert(source: str | None, src: str, dst: str, labels: str | None, quiet: bool, as_json: bool, *,
             options: dict[str, Any] | None = None, defaults: dict[str, Any] | None = None, **shared: Any) -> None:
    """Convert under a progress bar with the --labels it was given, then print what was written. options: the
    format options given (a format that does not take one is a usage error); defaults: used where it does."""
    from ..conversion.pipeline import convert_source
    from ..conversion.source import OptionError

    names = _labels(labels)
    try:
        with progress_bar("converting", quiet, in_bytes=True) as progress:
            converted = convert_source(src, dst, source=source, labels=names, progress=progress.update,
                                       options={k: v for k, v in (options or {}).items() if v is not None},
                                       defaults=defaults, **shared)
    except OptionError as e:
        flags = {o.name: o.flag for fmt in _all_formats() for o in fmt.options if o.flag}
        takes = ", ".join(o.flag for o in e.format.options if o.flag) or "none of them"
        raise click.UsageError(f"{', '.join(flags.get(n, n) for n in e.names)} does not apply to --from "
                               f"{e.format.name} (it takes {takes})") from None
    if not quiet or as_json:
        _report(converted, dst, as_json)


def _all_formats() -> list:
    from ..conversion.source import all_formats

    return all_formats()


def converter_options(command: Callable) -> Callable:
    """The options every converter has, in the same words."""
    for option in reversed((
            click.option("--labels", metavar="imagenet-1k|imagenet-21k|FILE",
                         help="Class names to record, which vitpredict then prints: a label set, or a FILE "
                              "with one name a line, one line per class. Default: the ImageNet set of "
                              "the class count (jax2torch: a published file's own; hf2torch: id2label's names)."),
            click.option("--dtype", type=DTYPES, default="float32", show_default=True,
                         help="Dtype of the stored tensors."),
            click.option("--force", is_flag=True, help="Replace DST if it exists."),
            click.option("--allow-nonfinite", is_flag=True, help="Convert even if weights hold NaN or Inf."),
            click.option("--pos-resize", type=POS_RESIZE,
                         help="How the model resizes its position embeddings for other input sizes, recorded "
                              "in the file: 'bicubic' (timm's resample_abs_pos_embed; the default but for "
                              "hf2torch), 'dino' (facebookresearch/dino's interpolate_pos_encoding: the +0.1 "
                              "scale factor), 'flexivit' (FlexiViT's antialiased bilinear resize of its stored "
                              "grid; jax2torch records it for the FlexiViT files the manifest knows) or "
                              "'transformers' (transformers' interpolate_pos_encoding: no antialias; hf2torch's "
                              "default) or 'torchvision' (torchvision's interpolate_embeddings: bicubic, "
                              "align_corners=True; the torchvision format's default)."),
            click.option("--quiet", "-q", is_flag=True, help="No progress bar and no summary."),
            click.option("--json", "as_json", is_flag=True, help="Print the written record as JSON."),
            debug_option)):
        command = option(command)
    return command


@click.command("jax2torch")
@click.argument("src", type=click.Path(dir_okay=False))
@click.argument("dst", type=click.Path(dir_okay=False))
@click.option("--gelu", type=click.Choice(["tanh", "erf"]), default="tanh", show_default=True,
              help="MLP activation to record: 'tanh' reproduces the JAX model (trained with tanh GELU); "
                   "'erf' is what timm runs.")
@converter_options
def jax2torch(src: str, dst: str, gelu: str, labels: str | None, dtype: str, force: bool,
              allow_nonfinite: bool, pos_resize: str | None, quiet: bool, as_json: bool) -> None:
    """Convert a Google JAX ViT checkpoint (.npz) to a vitconvert weights file.

    The layout is detected from the keys: the vit_jax files of the 2020 and AugReg sets (also under
    opt/target/), big_vision files (params/, scanned or not; computed sincos2d position embeddings;
    attention pooling, MAPHead), hybrids (R50+ViT-B/16, R26+S/32, R+Ti/16), 'gap' models, the
    pre_logits representation layer and bfloat16 arrays; of a two-tower image-text file (SigLIP,
    SigLIP 2, LiT), the image tower, whose output is the image embedding. The architecture is read
    from the array shapes. Nothing is written unless the whole conversion succeeds.

    \b
    Examples:
      vitconvert jax2torch ViT-B_16.npz vit-b16.safetensors
      vitconvert jax2torch ViT-B_16.npz vit-b16-erf.safetensors --gelu erf --dtype bfloat16
      vitconvert jax2torch ViT-B_16.npz vit-b16.safetensors --force --quiet
      vitconvert jax2torch flowers.npz flowers.safetensors --labels flower_names.txt
      vitconvert jax2torch webli_en_b16_224_63724782.npz siglip-b16.safetensors
      vitconvert jax2torch my_flexivit.npz flexivit.safetensors --pos-resize flexivit
    """
    from ..catalog.manifest import load_manifest

    _convert("jax", src, dst, labels, quiet, as_json, options=dict(gelu=gelu, catalog=load_manifest()), force=force,
             dtype=dtype, allow_nonfinite=allow_nonfinite, pos_resize=pos_resize)


@click.command("timm2torch")
@click.argument("src", type=click.Path(dir_okay=False))
@click.argument("dst", type=click.Path(dir_okay=False))
@click.option("--model", "model_name", metavar="TIMM_NAME",
              help="timm model name, with or without tag (e.g. vit_base_patch16_224.augreg_in21k_ft_in1k): "
                   "supplies what the tensors do not show (heads, activation, norm eps, pooling) from timm's "
                   "definition and the checkpoint's own preprocessing from its pretrained cfg. Refused unless "
                   "its architecture is the checkpoint's.")
@click.option("--heads", type=click.IntRange(min=1),
              help="Attention heads; needed without --model when the width is not a standard one (Ti, S, B, L, H).")
@converter_options
def timm2torch(src: str, dst: str, model_name: str | None, heads: int | None, labels: str | None,
               dtype: str, force: bool, allow_nonfinite: bool, pos_resize: str | None, quiet: bool,
               as_json: bool) -> None:
    """Convert a timm ViT state dict (.pth, .bin or .safetensors) to a vitconvert weights file.

    Any of timm's VisionTransformer family: classifiers and backbones without a head (CLIP, SigLIP,
    DINO, DINOv2, ...). Training checkpoints wrapped in 'model' / 'state_dict' / 'model_ema', DINO's
    'teacher' / 'student' with 'backbone.' prefixes, or with 'module.' prefixes are unwrapped. What
    the keys and shapes show (class and register tokens, layer scale, norms, MLP kind, attention
    pooling, ...) is read from them; what they do not (activation, norm eps, ...) comes from --model,
    or timm's defaults where those are safe, else the error says what is missing. Pickles are read
    with weights_only=True, so a file that would run code is refused.

    \b
    Examples:
      vitconvert timm2torch model.safetensors vit-ti.safetensors --model vit_tiny_patch16_224.augreg_in21k
      vitconvert timm2torch open_clip.bin clip-b16.safetensors --model vit_base_patch16_clip_224.openai
      vitconvert timm2torch dino_checkpoint.pth dino-s16.safetensors
      vitconvert timm2torch checkpoint.pth mine.safetensors --heads 8
      vitconvert timm2torch pytorch_model.bin vit-b16.safetensors --dtype float16 --json
      vitconvert timm2torch finetuned.pth birds.safetensors --heads 6 --labels bird_names.txt
      vitconvert timm2torch dino_deitsmall16_pretrain.pth dino-s16.safetensors --pos-resize dino
    """
    _convert("timm", src, dst, labels, quiet, as_json, options=dict(model=model_name, num_heads=heads), force=force,
             dtype=dtype, allow_nonfinite=allow_nonfinite, pos_resize=pos_resize)


@click.command("hf2torch")
@click.argument("src", type=click.Path())
@click.argument("dst", type=click.Path(dir_okay=False))
@converter_options
def hf2torch(src: str, dst: str, labels: str | None, dtype: str, force: bool, allow_nonfinite: bool,
             pos_resize: str | None, quiet: bool, as_json: bool) -> None:
    """Convert a Hugging Face transformers ViT, DeiT, Dinov2, ViTMSN or ViTMAE checkpoint to a vitconvert weights file.

    SRC is the directory save_pretrained writes (config.json, model.safetensors or pytorch_model.bin, or
    their shards and model.safetensors.index.json / pytorch_model.bin.index.json, read shard by shard;
    preprocessor_config.json), or its weights file with config.json beside it: ViTModel,
    ViTForImageClassification, DeiTModel, DeiTForImageClassification(WithTeacher), Dinov2Model,
    Dinov2WithRegistersModel, ViTMSNModel, ViTMSNForImageClassification, ViTMAEModel and the encoder of
    ViTMAEForPreTraining (its decoder is left out; the encoder runs without random masking), ViTHybridModel
    and ViTHybridForImageClassification (transformers 4's files: a BiT stem, run as timm's R50 hybrid). The
    architecture is read from config.json (layer_norm_eps, hidden_act, ...), the class names from its
    id2label, the preprocessing from preprocessor_config.json; ViTModel's pooler is kept as the
    representation layer. transformers is not needed: safetensors files are read with numpy, .bin
    files with torch.load(weights_only=True). The file records transformers' position-embedding
    resize (--pos-resize transformers) unless told otherwise.

    \b
    Examples:
      vitconvert hf2torch vit-base-patch16-224/ vit-b16.safetensors
      vitconvert hf2torch dinov2-small/model.safetensors dinov2-s14.safetensors --dtype bfloat16
      vitconvert hf2torch deit-base-distilled-patch16-224/ deit-b16.safetensors --json
      vitconvert hf2torch my-finetune/ birds.safetensors --labels bird_names.txt --force
      vitconvert hf2torch vit-huge-sharded/ vit-h14.safetensors
    """
    _convert("hf", src, dst, labels, quiet, as_json, force=force, dtype=dtype, allow_nonfinite=allow_nonfinite,
             pos_resize=pos_resize)


def _json_object(value: str | None, option: str) -> dict | None:
    """A JSON object given inline, or the path of a file holding one."""
    if value is None:
        return None
    text = value
    if not value.lstrip().startswith("{"):
        from pathlib import Path

        if not Path(value).is_file():
            raise click.BadParameter(f"expected a JSON object or a file holding one, got {value!r}", param_hint=option)
        text = Path(value).read_text()
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as e:
        raise click.BadParameter(f"not valid JSON ({e})", param_hint=option) from None
    if not isinstance(parsed, dict):
        raise click.BadParameter(f"expected a JSON object, got {type(parsed).__name__}", param_hint=option)
    return parsed


def _names(value: str | None) -> dict | None:
    """--map: PART=NAME pairs separated by commas, or a JSON object (inline or in a file)."""
    if value is None or "=" not in value:
        return _json_object(value, "--map")
    pairs = [item.partition("=") for item in value.split(",") if item.strip()]
    if bad := [part for part, eq, name in pairs if not eq or not part.strip() or not name.strip()]:
        raise click.BadParameter(f"expected PART=NAME pairs separated by commas, got {', '.join(map(repr, bad))}",
                                 param_hint="--map")
    return {part.strip(): name.strip() for part, _, name in pairs}


@click.command("torch2torch")
@click.argument("src", type=click.Path(dir_okay=False))
@click.argument("dst", type=click.Path(dir_okay=False))
@click.option("--source", type=click.Choice(["lucidrains", "jeonsworld", "torch-encoder"]), required=True,
              help="Whose model: lucidrains' vit-pytorch (ViT, SimpleViT), jeonsworld's ViT-pytorch (its R50 hybrid "
                   "too), or a ViT built on torch.nn.TransformerEncoder.")
@click.option("--model-args", metavar="JSON",
              help="What the weights do not show, by the source's constructor names (a JSON object, or a file "
                   "holding one): lucidrains heads, dim_head, pool (cls|mean), image_size, patch_size, channels; "
                   "jeonsworld num_heads; torch-encoder nhead (required), norm_first, activation (relu|gelu), "
                   "layer_norm_eps, pool (cls|mean), image_size.")
@click.option("--map", "names", metavar="PART=NAME,...",
              help="torch-encoder: the state-dict names of the parts around the encoder, PART one of patch_embed "
                   "(a Conv2d), cls_token, pos_embed, head, norm (a final LayerNorm outside the encoder); or a JSON "
                   "object (a file holding one). Unnamed parts go by those names.")
@converter_options
def torch2torch(src: str, dst: str, source: str, model_args: str | None, names: str | None, labels: str | None,
                dtype: str, force: bool, allow_nonfinite: bool, pos_resize: str | None, quiet: bool,
                as_json: bool) -> None:
    """Convert the state dict of a PyTorch ViT (.pth, .pt, .bin, .safetensors) to a vitconvert weights file.

    The architecture is read from the keys and shapes (for lucidrains, which release's names they are);
    what they cannot show comes from --model-args. Keys that nothing maps are an error that names
    them. Pickles are read with weights_only=True. A model timm's VisionTransformer cannot build
    (post-norm blocks, an attention width other than the model's, a norm before the patch projection,
    SimpleViT's sin-cos positions, jeonsworld's ResNet) is converted all the same, and the summary
    says that timm cannot load the file.

    \b
    Examples:
      vitconvert torch2torch vit.pt vit.safetensors --source lucidrains --model-args '{"heads": 8}'
      vitconvert torch2torch simple.pt simple.safetensors --source lucidrains --model-args '{"image_size": 256}'
      vitconvert torch2torch cifar10_checkpoint.bin vit-b16-cifar10.safetensors --source jeonsworld
      vitconvert torch2torch model.pth model.safetensors --source torch-encoder --model-args '{"nhead": 4}'
      vitconvert torch2torch m.pth m.safetensors --source torch-encoder --model-args '{"nhead": 4, "norm_first": true}'
      vitconvert torch2torch m.pth m.safetensors --source torch-encoder --model-args '{"nhead": 4}' --map head=fc
    """
    args, parts = _json_object(model_args, "--model-args"), _names(names)
    if parts and source != "torch-encoder":
        raise click.UsageError(f"--map names the parts around an nn.TransformerEncoder; {source}'s names are known")
    _convert(source, src, dst, labels, quiet, as_json, options=dict(model_args=args, names=parts), force=force,
             dtype=dtype, allow_nonfinite=allow_nonfinite, pos_resize=pos_resize)


class _ConvertCommand(click.Command):
    """`vitconvert convert`, whose --help lists the registry's formats (imported only when help is asked)."""

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Formats (--from)"):
            formatter.write_dl([(fmt.name, fmt.summary) for fmt in _all_formats()])
        with formatter.section("Examples"):
            lines = [fmt.example for fmt in _all_formats() if fmt.example]
            lines += ["vitconvert convert model.pth out.safetensors --from timm "
                      "--model vit_small_patch16_224.augreg_in21k",
                      "vitconvert convert ViT-B_16.npz out.safetensors --gelu erf --dtype bfloat16 --json"]
            formatter.write_text("\b\n" + "\n".join(lines))
        super().format_epilog(ctx, formatter)


@click.command("convert", cls=_ConvertCommand)
@click.argument("src", type=click.Path())
@click.argument("dst", type=click.Path(dir_okay=False))
@click.option("--from", "source", metavar="FORMAT",
              help="The source format (listed below); default: the one the file shows, from its magic bytes and key "
                   "names (two that fit are an error naming both).")
@click.option("--gelu", type=click.Choice(["tanh", "erf"]),
              help="jax: the MLP activation to record, 'tanh' (the JAX models'; the default) or 'erf' (timm's).")
@click.option("--model", "model_name", metavar="NAME",
              help="timm: timm's model name, with or without tag, for what the tensors do not show; open_clip: "
                   "OpenCLIP's model name (its bundled config), where no open_clip_config.json is beside SRC; "
                   "torchvision: vit_b_16, vit_b_32, vit_l_16, vit_l_32 or vit_h_14, checked against the shapes.")
@click.option("--image-only", is_flag=True,
              help="open_clip, hf-towers: keep the image tower alone (a two-tower file's text tower left out).")
@click.option("--tokenizer", "tokenizer", type=click.Path(dir_okay=False), metavar="FILE",
              help="open_clip, hf-towers: the text tower's tokenizer (tokenizer.json, spiece.model) where it is "
                   "not beside SRC.")
@click.option("--heads", type=click.IntRange(min=1),
              help="timm: attention heads, for a width that is not standard; torchvision: those of a custom "
                   "VisionTransformer.")
@click.option("--weights-enum", metavar="NAME",
              help="torchvision: the weight enum whose transforms to record (e.g. "
                   "ViT_B_16_Weights.IMAGENET1K_SWAG_E2E_V1); default: the one the model and its size leave.")
@click.option("--model-args", metavar="JSON",
              help="lucidrains, jeonsworld, torch-encoder: what the weights do not show (see torch2torch --help).")
@click.option("--map", "names", metavar="PART=NAME,...",
              help="torch-encoder: the names of the parts around the encoder (see torch2torch --help).")
@converter_options
def convert_cmd(src: str, dst: str, source: str | None, gelu: str | None, model_name: str | None, image_only: bool,
                tokenizer: str | None, heads: int | None, weights_enum: str | None, model_args: str | None,
                names: str | None, labels: str | None, dtype: str, force: bool,
                allow_nonfinite: bool, pos_resize: str | None, quiet: bool, as_json: bool) -> None:
    """Convert a ViT checkpoint of any source format to a vitconvert weights file.

    The format is recognised from SRC itself: an .npz's keys (Transformer/, params/, img/) for Google's
    JAX files; a directory (or weights file) with transformers' config.json; a state dict's key names
    (patch_embed. and blocks. for timm, DINO's teacher/backbone. too, to_patch_embedding. for
    vit-pytorch, transformer.embeddings. for jeonsworld, layers.N.self_attn. for nn.TransformerEncoder,
    conv_proj and encoder.pos_embedding for torchvision; visual.* for OpenCLIP, both towers: a TorchScript
    archive as OpenAI releases them too, read without running its code); a directory with config.json of
    model_type clip, siglip or siglip2 (both towers).
    Where two formats fit, or none, the error says which and what it looked for; --from chooses. The
    format options (--gelu, --model, --heads, --weights-enum, --model-args, --map, --image-only, --tokenizer)
    are refused for a format that does not take them. Every source tensor is converted or listed, with its
    reason, as left out (the summary's notes; --json's left_out). The result is the file jax2torch,
    timm2torch, hf2torch or torch2torch writes.
    """
    from ..catalog.manifest import load_manifest
    from ..conversion.source import FORMATS

    if source is not None and source not in FORMATS:
        raise click.BadParameter(f"{source!r} is not a format; the formats are: {', '.join(FORMATS)}",
                                 param_hint="--from")
    options = dict(gelu=gelu, model=model_name, num_heads=heads, weights_enum=weights_enum,
                   model_args=_json_object(model_args, "--model-args"), names=_names(names),
                   image_only=image_only or None, tokenizer=tokenizer)
    _convert(source, src, dst, labels, quiet, as_json, options=options, defaults=dict(catalog=load_manifest()),
             force=force, dtype=dtype, allow_nonfinite=allow_nonfinite, pos_resize=pos_resize)
