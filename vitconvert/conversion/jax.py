"""Google's JAX `.npz` checkpoints to our weights file, with numpy alone (no torch, no model).

The layout is read from the keys, the architecture from the shapes; the arrays stream through the
mapping table into the safetensors writer one tensor at a time.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ..core.config import ViTConfig
from ..core.errors import VitConvertError
from ..formats.npz import NpzReader
from ..formats.weights_file import Preprocess, WeightsRecord, label_set_for
from . import jax_layouts, jax_text
from .jax_layouts import JaxLayout
from .mapping import source_dims
from .source import Detection, Option, Plan, Probe, Request, SourceFormat
from .text_towers import IMAGE_ONLY, TOKENIZER, file_tokenizer, find_tokenizer, text_tower

GELU = {"tanh": "gelu_tanh", "erf": "gelu"}


# A 'sincos2d' file stores no position table, so nothing in it shows the size it was trained at: big_vision's
# ImageNet models (the only published ones) train at 224.
SINCOS_SIZE = 224


class Shaped(Protocol):
    """What the layout and the architecture are read from: the arrays' shapes (an `NpzReader`)."""

    path: Path
    shapes: Mapping[str, tuple[int, ...]]


def config_from_shapes(reader: Shaped, layout: JaxLayout, act: str) -> ViTConfig:
    """The architecture, from array shapes alone."""
    s, p, where = reader.shapes, layout.prefix, str(reader.path)
    kh, kw, in_chs, dim = source_dims(s, f"{p}embedding/kernel", 4, where)
    if kh != kw:
        raise VitConvertError(f"{reader.path}: non-square patches ({kh}x{kw}) are not supported")
    depth = jax_layouts.count_blocks(layout, s, str(reader.path))
    if depth == 0:
        raise VitConvertError(f"{reader.path}: no encoder blocks found under {layout.prefix}Transformer/")
    q = layout.block_key(f"{layout.mha}/query/kernel").format(i=0).split("[")[0]
    mlp = layout.block_key(f"{layout.mlp}/Dense_0/kernel").format(i=0).split("[")[0]
    for key in (q, mlp, *([layout.pos_embed] if layout.posemb == "learn" else [])):
        if key not in s:
            raise VitConvertError(f"{reader.path}: missing key {key} ({layout.name} layout)")
    heads = source_dims(s, q, 3, where, layout.scanned)[1]
    mlp_dim = source_dims(s, mlp, 2, where, layout.scanned)[1]
    if layout.map_head:  # our attention pooling has the blocks' heads, as big_vision's MAPHead has
        probe_q = f"{p}MAPHead_0/MultiHeadDotProductAttention_0/query/kernel"
        if probe_q in s and source_dims(s, probe_q, 3, where)[1] != heads:
            raise VitConvertError(f"{reader.path}: the attention pooling has {s[probe_q][1]} heads, the blocks "
                                  f"{heads}; both must have the same")
    stage_units = jax_layouts.hybrid_units(layout, s, str(reader.path)) if layout.hybrid else None
    has_cls = f"{p}cls" in s
    pool = "map" if layout.map_head else "token" if has_cls else "gap"
    pre = source_dims(s, f"{p}pre_logits/bias", 1, where) if f"{p}pre_logits/bias" in s else None
    hybrid_width = 64
    if layout.hybrid:
        _, _, in_chs, hybrid_width = source_dims(s, f"{p}conv_root/kernel", 4, where)
    num_classes = source_dims(s, f"{p}head/bias", 1, where)[0] if f"{p}head/bias" in s else 0
    try:
        base = ViTConfig(
            patch_size=kh, in_chans=in_chs, embed_dim=dim, depth=depth,
            num_heads=heads, mlp_dim=mlp_dim, num_classes=num_classes, pool=pool, class_token=has_cls,
            representation_size=pre[-1] if pre else None, act=act, pos_embed=layout.posemb,
            # big_vision adds positions to the patches alone; said only where a class token could differ,
            # so a model without one is spelled as timm spells it (SigLIP's: no_embed_class False).
            no_embed_class=layout.name == "big_vision" and has_cls, hybrid_layers=stage_units,
            hybrid_width=hybrid_width,
            img_size=(32 * kh, 32 * kh))  # a placeholder any backbone stride divides; set below
    except VitConvertError as e:  # shapes that make no model: say which file they came from
        raise VitConvertError(f"{reader.path}: {e}") from None
    if layout.posemb != "learn":
        return base.replace(img_size=(SINCOS_SIZE // base.total_stride * base.total_stride,) * 2)
    n_pos = source_dims(s, layout.pos_embed, 3, where)[1]
    n_patches = n_pos - (0 if base.no_embed_class else base.num_prefix_tokens)
    side = math.isqrt(max(n_patches, 0))
    if side * side != n_patches or side == 0:
        raise VitConvertError(
            f"{reader.path}: {layout.pos_embed} has {n_pos} positions, which is not a square grid "
            f"plus {base.num_prefix_tokens} class token(s)")
    return base.replace(img_size=(side * base.total_stride,) * 2)


def layout_notes(reader: NpzReader, layout: JaxLayout, cfg: ViTConfig, with_text: bool = False) -> list[str]:
    """What the record should say about how the file became this model (`with_text`: its text tower kept too)."""
    notes = []
    if any(reader.stored_dtype(k) == "bfloat16" for k in reader.shapes):
        notes.append("source arrays stored as bfloat16")
    if layout.posemb == "sincos2d":
        notes.append(f"no position table stored: big_vision's sincos2d, computed for the grid of each input "
                     f"size; the training size is not in the file, {cfg.img_size[0]}x{cfg.img_size[1]} assumed")
    if layout.two_tower and not with_text:
        left = layout.other_tower(reader.shapes)
        notes.append(f"the image tower ({layout.prefix}) of a two-tower image-text model; the text tower and "
                     f"the loss's scalars ({len(left)} arrays: {layout.outer}txt/..., {layout.outer}t, "
                     f"{layout.outer}b) are left out")
    if layout.two_tower:
        if cfg.num_classes:
            notes.append(f"the tower's head is its projection into the {cfg.num_classes}-wide image-text "
                         "embedding, not a classifier: the model's output is the image embedding (zimg) "
                         "before its L2 normalisation")
        else:
            notes.append("the model's output is the image embedding (zimg): the pooled features, before "
                         "their L2 normalisation")
    return notes


class Published(Protocol):
    """What a catalogue of published checkpoints knows about one (the hub's manifest entries)."""

    name: str
    config: ViTConfig
    preprocess: Preprocess
    labels: str | None
    preprocess_source: str


class Catalog(Protocol):
    def match_file(self, filename: str, config: ViTConfig) -> Published | None: ...

    def published_img_size(self, filename: str, config: ViTConfig) -> tuple[int, int] | None: ...


@dataclass(frozen=True)
class Identified:
    """A file's layout and architecture, and the published checkpoint it is, if a catalog knows it."""

    layout: JaxLayout
    config: ViTConfig  # pos_resize: the published checkpoint's, else 'bicubic'
    known: Published | None
    notes: tuple[str, ...]


def identify(reader: Shaped, act: str = GELU["tanh"], catalog: Catalog | None = None) -> Identified:
    """The layout and architecture from the shapes alone, then the published checkpoint `catalog` knows
    by the file's name and that architecture (what `convert_jax` records, and `download` checks)."""
    layout = jax_layouts.detect(reader.shapes, str(reader.path))
    cfg = config_from_shapes(reader, layout, act)
    notes = []
    if catalog is None:
        return Identified(layout, cfg.replace(pos_resize="bicubic"), None, ())
    name = Path(reader.path).name
    # The grid fixes the patches, not the pixels beyond the last whole patch: the authors' size is the name.
    if (size := catalog.published_img_size(name, cfg)) is not None and size != cfg.img_size:
        notes.append(f"image size {size[0]}x{size[1]} as published; the stored {cfg.grid_size[0]}x"
                     f"{cfg.grid_size[1]} position grid alone would say {cfg.img_size[0]}x{cfg.img_size[1]} "
                     f"(the patch embedding never reads the last {size[0] - cfg.img_size[0]} px)")
        cfg = cfg.replace(img_size=size)
    known = catalog.match_file(name, cfg)
    return Identified(layout, cfg.replace(pos_resize=known.config.pos_resize if known else "bicubic"), known,
                      tuple(notes))


def convert_jax(src: str | os.PathLike, dst: str | os.PathLike, *, force: bool = False,
                gelu: str = "tanh", dtype: str = "float32", preprocess: Preprocess | None = None,
                labels: str | Sequence[str] | None = None, catalog: Catalog | None = None,
                allow_nonfinite: bool = False, pos_resize: str | None = None,
                progress: Callable[[int, int], None] | None = None) -> WeightsRecord:
    """Convert a JAX `.npz` ViT checkpoint at `src` into our weights file at `dst`: `vitconvert.convert(...,
    source='jax')`.

    gelu: 'tanh' (what the JAX models were trained with; exact reproduction) or 'erf' (timm's).
    dtype: stored tensor dtype. preprocess / labels ('imagenet-1k', 'imagenet-21k' or the class
    names in class order): what to record; each that is not given is, when `catalog` (e.g.
    `vitconvert.load_manifest()`, as `vitconvert jax2torch` passes) knows the file by name and
    architecture, that published checkpoint's; else Google's evaluation pipeline at the training
    size and the label set implied by the class count.
    pos_resize: how the model resizes its position embeddings for other input sizes, recorded in the
    file: 'bicubic' (timm's), 'dino' (facebookresearch/dino's), 'transformers' or 'flexivit' (FlexiViT's, which resizes
    its stored grid at every input size); None: the published checkpoint's, when `catalog` knows the
    file (a FlexiViT file's is 'flexivit'), else 'bicubic'.
    A two-tower image-text file (SigLIP, LiT) becomes its image tower, whose output is the image
    embedding before its L2 normalisation; a head there is the tower's projection into the embedding
    (recorded as `head_is_embedding`), not a classifier.
    progress(done_bytes, total_bytes) is called after each tensor.
    """
    from .pipeline import convert

    return convert(src, dst, source="jax", force=force, dtype=dtype, labels=labels, preprocess=preprocess,
                   pos_resize=pos_resize, allow_nonfinite=allow_nonfinite, progress=progress, gelu=gelu,
                   catalog=catalog)


def two_tower_text(reader: NpzReader, layout: JaxLayout, act: str, tokenizer: str) -> tuple[object, list]:
    """The text tower of a two-tower file (its record and its table), with the SentencePiece `tokenizer`: cleans,
    pads and ends texts as big_vision's colabs do (jax_text.clean, pad_token; its zero-shot evaluation
    canonicalizes the prompts besides, which `vitconvert zeroshot` does)."""
    where, o = str(reader.path), layout.outer
    config = jax_text.text_config(reader.shapes, o, act, where)
    if f"{o}t" not in reader.shapes:
        raise VitConvertError(f"{where}: no temperature {o}t beside the text tower: a damaged two-tower file "
                              "(convert with --image-only for the image tower alone)")
    path = find_tokenizer(reader.path.parent, tokenizer, where)
    tok = file_tokenizer(path, config.context_length, jax_text.clean(config.vocab_size), where,
                         pad_default=jax_text.pad_token(config.vocab_size))
    t = float(reader.read(f"{o}t").reshape(-1)[0])
    b = float(reader.read(f"{o}b").reshape(-1)[0]) if f"{o}b" in reader.shapes else None
    return text_tower(config, tok, t, b, where), jax_text.text_rules(reader.shapes, o)


def _detect(probe: Probe) -> Detection | None:
    if probe.kind.kind != "npz":
        return None
    try:
        layout = jax_layouts.detect(dict.fromkeys(probe.keys), str(probe.path))
    except VitConvertError:
        return None
    return Detection(1.0, f"an .npz with {layout.prefix}embedding/kernel: the {layout.name} layout")


def _plan(reader: NpzReader, request: Request) -> Plan:
    gelu = request.options.get("gelu", "tanh")
    if gelu not in GELU:
        raise VitConvertError(f"gelu must be 'tanh' or 'erf', got {gelu!r}")
    found = identify(reader, GELU[gelu], request.options.get("catalog"))
    layout, cfg, known = found.layout, found.config, found.known
    with_text = layout.two_tower and request.options.get("tokenizer") is not None \
        and not request.options.get("image_only")
    notes = [*layout_notes(reader, layout, cfg, with_text), *found.notes]
    embedding = layout.two_tower and cfg.num_classes > 0
    labels = known.labels if known else None
    if known:
        wanted = [what for what, given in (("preprocessing", request.preprocess), ("labels", request.labels))
                  if given is None]
        if wanted:
            notes.append(f"{' and '.join(wanted)} of the published checkpoint '{known.name}' "
                         f"({known.preprocess_source})")
        if request.pos_resize is None and cfg.pos_resize != "bicubic":
            notes.append(f"position embeddings resized '{cfg.pos_resize}' at other sizes, as the published "
                         f"checkpoint '{known.name}' is run")
    o = layout.outer
    rules, bindings = jax_layouts.rules(layout), jax_layouts.bindings(cfg.depth, cfg.hybrid_layers)
    text = None
    if with_text:
        text, text_rules = two_tower_text(reader, layout, GELU[gelu], request.options["tokenizer"])
        rules += text_rules
        bindings["text_block"] = [{"i": i} for i in range(text.config.depth)]
        notes.append(f"text tower: {text.config.depth} blocks, {text.config.width}-wide, pool {text.config.pool}, "
                     f"tokenizer {Path(request.options['tokenizer']).name}; probabilities by {text.probability}")
    elif layout.two_tower and jax_text.has_text_tower(reader.shapes, o) and not request.options.get("image_only"):
        notes.append("the image tower alone: a big_vision .npz holds no tokenizer; give its SentencePiece model "
                     "with --tokenizer FILE to keep the text tower too")
    left_out = {} if text else {
        k: "the text tower of a two-tower image-text model" if k.startswith(f"{o}txt/") else
        "a scalar of the image-text loss (temperature t, bias b)" for k in layout.other_tower(reader.shapes)}
    if text:
        left_out = {k: "read into the record's logit_scale and logit_bias" for k in (f"{o}t", f"{o}b")
                    if k in reader.shapes}
    return Plan(
        config=cfg, rules=rules, bindings=bindings, text=text,
        source_format=f"jax-npz/{layout.name}" + ("-scanned" if layout.scanned else ""),
        preprocess=known.preprocess if known else Preprocess.google(cfg.img_size),
        labels=labels if labels is not None or embedding else label_set_for(cfg.num_classes),
        notes=notes, left_out=left_out, head_is_embedding=embedding)


JAX = SourceFormat(
    name="jax", summary="Google's JAX .npz checkpoints: vit_jax (2020, AugReg), big_vision (SigLIP, FlexiViT, ...)",
    detect=_detect, open=lambda probe: NpzReader(probe.path), plan=_plan,
    options=(Option("gelu", "--gelu", "the MLP activation to record: 'tanh' (the JAX models'; default) or 'erf'"),
             Option("catalog", "", "the published checkpoints the file's name is looked up in (Python only; the "
                                   "command line gives the manifest)"),
             TOKENIZER, IMAGE_ONLY),
    example="vitconvert convert ViT-B_16.npz vit-b16.safetensors",
    looks_for="an .npz with embedding/kernel at the top or under opt/target/, params/, img/ or params/img/")
