"""transformers' two-tower models (CLIPModel, SiglipModel, Siglip2Model at a fixed resolution) to our two-tower
weights file: the `hf-towers` source format.

SRC is a directory as `save_pretrained` writes it (config.json, model.safetensors or pytorch_model.bin), with
the tokenizer files the processor saves beside them (tokenizer.json; SigLIP's spiece.model). The vision tower
becomes timm's names (q, k and v fused; CLIP: class token, ln_pre, the projection as an embedding head with a
zero bias; SigLIP: no class token, the attention-pooling head as timm's attn_pool), the text tower ours
(`text.*`), logit_scale (t) and logit_bias (b) the record's.

Siglip2Model is transformers' NaFlex model: patches embedded by a Linear on (row, column, channel)-flattened
pixels and a position table resized to each image's grid. At the grid its table was trained at (side x side
patches, num_patches = side**2), the resize is the identity and the Linear is a patch convolution: that model
converts exactly; other resolutions and aspect ratios (NaFlex itself) are not converted.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..core.config import ViTConfig
from ..core.errors import VitConvertError
from ..core.json_types import is_int
from ..core.text_config import TextConfig
from ..formats.weights_file import Preprocess
from .hf import HfReader
from .hf_layouts import ACTIVATIONS
from .hf_preprocess import RESAMPLE, preprocess_from
from .mapping import IDENTITY, Op, Rule, source_dims
from .source import Detection, Plan, Probe, Request, SourceFormat
from .text_towers import IMAGE_ONLY, TEXT_LEFT_OUT, TOKENIZER, file_tokenizer, find_tokenizer, text_tower

MODEL_TYPES = ("clip", "siglip", "siglip2")
ARCHITECTURES = {"clip": "CLIPModel", "siglip": "SiglipModel", "siglip2": "Siglip2Model"}
# transformers' config classes' defaults (5.x) for the keys a config.json leaves out.
TEXT_DEFAULTS = {"clip": dict(hidden_act="quick_gelu", layer_norm_eps=1e-5, eos_token_id=2, num_attention_heads=8),
                 "siglip": dict(hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6, num_attention_heads=12)}
TEXT_DEFAULTS["siglip2"] = TEXT_DEFAULTS["siglip"]
VISION_DEFAULTS = {"clip": dict(hidden_act="quick_gelu", layer_norm_eps=1e-5, num_attention_heads=12, num_channels=3),
                   "siglip": dict(hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6, num_attention_heads=12,
                                  num_channels=3)}
VISION_DEFAULTS["siglip2"] = VISION_DEFAULTS["siglip"]

CAT = Op("concatenated rows", lambda *xs: np.concatenate(xs, axis=0), lambda *ss: (sum(s[0] for s in ss), *ss[0][1:]))
ROW = Op("as one row", lambda x: x[None], lambda s: (1, *s))
TOKEN = Op("as a (1, 1, D) token", lambda x: x[None, None], lambda s: (1, 1, *s))
ZERO_BIAS = Op("a zero bias", lambda w: np.zeros(w.shape[0], np.float32), lambda s: (s[0],))
FIRST_THIRD = Op("the first third of the rows", lambda x: x[: x.shape[0] // 3], lambda s: (s[0] // 3, *s[1:]))
LAST_TWO_THIRDS = Op("the last two thirds of the rows", lambda x: x[x.shape[0] // 3:],
                     lambda s: (s[0] - s[0] // 3, *s[1:]))


def _linear_patches(patch: int, chans: int) -> Op:
    """Siglip2's patch Linear (D, p*p*C: row, column, channel) as a patch convolution's kernel (D, C, p, p)."""
    return Op("patch Linear as a convolution", lambda w: np.ascontiguousarray(
        w.reshape(w.shape[0], patch, patch, chans).transpose(0, 3, 1, 2)), lambda s: (s[0], chans, patch, patch))


def _layers(theirs: str, ours: str, over: str) -> list[Rule]:
    """transformers' encoder layers (q, k, v apart) as our blocks (qkv fused)."""
    t, o = f"{theirs}encoder.layers.{{i}}.", f"{ours}blocks.{{i}}."
    rules = [Rule(o + "attn.qkv." + p, tuple(f"{t}self_attn.{x}_proj.{p}" for x in "qkv"), CAT, over=over)
             for p in ("weight", "bias")]
    pairs = {"norm1": "layer_norm1", "attn.proj": "self_attn.out_proj", "norm2": "layer_norm2", "mlp.fc1": "mlp.fc1",
             "mlp.fc2": "mlp.fc2"}
    return rules + [Rule(o + k + "." + p, (t + v + "." + p,), IDENTITY, over=over) for k, v in pairs.items()
                    for p in ("weight", "bias")]


def _get(section: Mapping[str, Any], defaults: Mapping[str, Any], key: str) -> Any:
    return section.get(key, defaults.get(key))


def _act(name: object, where: str) -> str:
    if not isinstance(name, str) or name not in ACTIVATIONS:
        raise VitConvertError(f"{where}: hidden_act {name!r} is not one our model runs")
    return ACTIVATIONS[name]


def _vision(kind: str, vision: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]], projection: str | None,
            where: str) -> tuple[ViTConfig, list[Rule]]:
    d = VISION_DEFAULTS[kind]
    v = "vision_model."
    width = source_dims(shapes, f"{v}post_layernorm.weight", 1, where)[0]
    heads = _get(vision, d, "num_attention_heads")
    depth = len({k.split(".")[3] for k in shapes if k.startswith(f"{v}encoder.layers.")})
    mlp = source_dims(shapes, f"{v}encoder.layers.0.mlp.fc1.weight", 2, where)[0]
    n_pos = source_dims(shapes, f"{v}embeddings.position_embedding.weight", 2, where)[0]
    chans = _get(vision, d, "num_channels")
    common = dict(embed_dim=width, depth=depth, num_heads=heads, mlp_dim=mlp, in_chans=chans,
                  act=_act(_get(vision, d, "hidden_act"), where), ln_eps=_get(vision, d, "layer_norm_eps"))
    rules = _layers(v, "", "block") + [Rule("norm." + p, (f"{v}post_layernorm.{p}",), IDENTITY)
                                       for p in ("weight", "bias")]
    if kind == "siglip2":
        side = math.isqrt(n_pos)
        patch = vision.get("patch_size", 16)
        if side * side != n_pos or not is_int(patch):
            raise VitConvertError(f"{where}: Siglip2's {n_pos} positions are not a square grid: only its fixed "
                                  "resolution converts")
        patch_rule = Rule("patch_embed.proj.weight", (f"{v}embeddings.patch_embedding.weight",),
                          _linear_patches(patch, chans))
        size = (side * patch, side * patch)
    else:
        ph, pw = source_dims(shapes, f"{v}embeddings.patch_embedding.weight", 4, where)[2:]
        patch_rule = Rule("patch_embed.proj.weight", (f"{v}embeddings.patch_embedding.weight",), IDENTITY)
        grid = n_pos - (kind == "clip")
        side = math.isqrt(grid)
        if side * side != grid:
            raise VitConvertError(f"{where}: {grid} patch positions are not a square grid")
        patch, size = (ph, pw), (side * ph, side * pw)
    rules.append(patch_rule)
    try:
        if kind == "clip":
            embed = source_dims(shapes, projection, 2, where)[0]
            cfg = ViTConfig(img_size=size, patch_size=patch, num_classes=embed, pool="token", pre_norm=True,
                            patch_bias=False, **common)
            rules += [Rule("cls_token", (f"{v}embeddings.class_embedding",), TOKEN),
                      Rule("pos_embed", (f"{v}embeddings.position_embedding.weight",), ROW),
                      Rule("norm_pre.weight", (f"{v}pre_layrnorm.weight",), IDENTITY),
                      Rule("norm_pre.bias", (f"{v}pre_layrnorm.bias",), IDENTITY),
                      Rule("head.weight", (projection,), IDENTITY), Rule("head.bias", (projection,), ZERO_BIAS)]
        else:
            cfg = ViTConfig(img_size=size, patch_size=patch, num_classes=0, pool="map", class_token=False,
                            no_embed_class=True, **common)
            h = f"{v}head."
            rules += [Rule("patch_embed.proj.bias", (f"{v}embeddings.patch_embedding.bias",), IDENTITY),
                      Rule("pos_embed", (f"{v}embeddings.position_embedding.weight",), ROW),
                      Rule("attn_pool.latent", (h + "probe",), IDENTITY),
                      Rule("attn_pool.q.weight", (h + "attention.in_proj_weight",), FIRST_THIRD),
                      Rule("attn_pool.q.bias", (h + "attention.in_proj_bias",), FIRST_THIRD),
                      Rule("attn_pool.kv.weight", (h + "attention.in_proj_weight",), LAST_TWO_THIRDS),
                      Rule("attn_pool.kv.bias", (h + "attention.in_proj_bias",), LAST_TWO_THIRDS),
                      *(Rule(f"attn_pool.{o}.{p}", (f"{h}{t}.{p}",), IDENTITY) for o, t in (
                          ("proj", "attention.out_proj"), ("norm", "layernorm"), ("mlp.fc1", "mlp.fc1"),
                          ("mlp.fc2", "mlp.fc2")) for p in ("weight", "bias"))]
    except VitConvertError as e:
        raise VitConvertError(f"{where}: {e}") from None
    return cfg, rules


def _text(kind: str, text: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]], projection: str | None,
          where: str) -> tuple[TextConfig, list[Rule]]:
    d = TEXT_DEFAULTS[kind]
    t = "text_model."
    vocab, width = source_dims(shapes, f"{t}embeddings.token_embedding.weight", 2, where)
    ctx = source_dims(shapes, f"{t}embeddings.position_embedding.weight", 2, where)[0]
    if kind == "clip":
        eos = _get(text, d, "eos_token_id")
        # transformers' CLIP: a legacy eos_token_id of 2 means the highest id's position (OpenAI's argmax)
        pool, eos_id, proj_bias = ("argmax", None) if eos == 2 else ("eos", eos), None, False
        pool, eos_id = pool
        embed = source_dims(shapes, projection, 2, where)[0]
    else:
        pool, eos_id, proj_bias = "last", None, True
        embed = source_dims(shapes, f"{t}head.weight", 2, where)[0]
    try:
        cfg = TextConfig(vocab_size=vocab, context_length=ctx, width=width,
                         depth=len({k.split(".")[3] for k in shapes if k.startswith(f"{t}encoder.layers.")}),
                         num_heads=_get(text, d, "num_attention_heads"),
                         mlp_dim=source_dims(shapes, f"{t}encoder.layers.0.mlp.fc1.weight", 2, where)[0],
                         embed_dim=embed, act=_act(_get(text, d, "hidden_act"), where),
                         ln_eps=_get(text, d, "layer_norm_eps"), causal=kind == "clip", pool=pool, eos_id=eos_id,
                         proj_bias=proj_bias)
    except VitConvertError as e:
        raise VitConvertError(f"{where}: {e}") from None
    rules = [Rule("text.token_embed.weight", (f"{t}embeddings.token_embedding.weight",), IDENTITY),
             Rule("text.pos_embed", (f"{t}embeddings.position_embedding.weight",), ROW),
             *_layers(t, "text.", "text_block"),
             *(Rule(f"text.norm.{p}", (f"{t}final_layer_norm.{p}",), IDENTITY) for p in ("weight", "bias"))]
    if kind == "clip":
        rules.append(Rule("text.proj.weight", (projection,), IDENTITY))
    else:
        rules += [Rule(f"text.proj.{p}", (f"{t}head.{p}",), IDENTITY) for p in ("weight", "bias")]
    return cfg, rules


def _padding_side(folder: Path) -> object:
    import json

    try:
        return json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8")).get("padding_side")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return None


def _preprocess(kind: str, processor: Mapping[str, Any] | None, size: tuple[int, int],
                where: str) -> tuple[Preprocess, list[str]]:
    if kind != "siglip2":
        return preprocess_from(processor, kind, size, where)
    d = processor or {}
    resample = d.get("resample", 2)  # Siglip2ImageProcessor's default: bilinear
    pre = Preprocess(size=size, resize="squash", interpolation=RESAMPLE.get(resample, "bilinear"),
                     mean=tuple(d.get("image_mean", (0.5, 0.5, 0.5))), std=tuple(d.get("image_std", (0.5, 0.5, 0.5))))
    return pre, [f"Siglip2's processor resizes each image to fit max_num_patches (NaFlex); recorded as a resize to the "
                 f"fixed resolution, {size[0]}x{size[1]}"]


def _plan(reader: HfReader, request: Request) -> Plan:
    found = reader.found
    where, shapes = str(found.weights), reader.shapes
    kind = found.config.get("model_type")
    if kind not in MODEL_TYPES:
        raise VitConvertError(f"{where}: model_type {kind!r}; --from hf-towers converts {', '.join(MODEL_TYPES)}")
    vision, text = found.config.get("vision_config") or {}, found.config.get("text_config") or {}
    image, rules = _vision(kind, vision, shapes, "visual_projection.weight" if kind == "clip" else None, where)
    preprocess, notes = _preprocess(kind, found.processor, image.img_size, where)
    left_out: dict[str, str] = {}
    tower = None
    if request.options.get("image_only"):
        left_out = {k: TEXT_LEFT_OUT for k in shapes if not k.startswith(("vision_model.", "visual_projection."))}
        notes.append("the image tower alone (--image-only): the text tower, logit scale and bias left out")
    else:
        if "text_model.embeddings.token_embedding.weight" not in shapes or "logit_scale" not in shapes:
            raise VitConvertError(f"{where}: the text tower is damaged or missing (no text_model.embeddings."
                                  "token_embedding.weight or logit_scale); convert with --image-only for the image "
                                  "tower alone")
        tcfg, text_rules = _text(kind, text, shapes, "text_projection.weight" if kind == "clip" else None, where)
        rules += text_rules
        path = find_tokenizer(found.weights.parent, request.options.get("tokenizer"), where)
        # SiglipTokenizer canonicalises (lower-cased, punctuation removed); a tokenizer.json normalises inside, but
        # SigLIP 2's Gemma tokenizer.json does not lower-case the texts SigLIP 2 was trained on.
        clean = "siglip" if path.suffix == ".model" and kind != "clip" else "none"
        if kind != "clip" and path.suffix == ".json" and '"Lowercase"' not in path.read_text(encoding="utf-8"):
            clean = "lowercase"
            notes.append("texts lower-cased before the tokenizer, as SigLIP 2 was trained (big_vision) and as "
                         "transformers' Siglip2Tokenizer does")
        tokenizer = file_tokenizer(path, tcfg.context_length, clean, where)
        if kind != "clip" and _padding_side(path.parent) == "left":
            notes.append("the tokenizer's config pads on the left; padded on the right here, as SigLIP was trained "
                         "(its text tower has no mask, so the side changes the embedding)")
        b = float(reader.read("logit_bias").reshape(-1)[0]) if "logit_bias" in shapes else None
        tower = text_tower(tcfg, tokenizer, float(reader.read("logit_scale").reshape(-1)[0]), b, where)
        left_out = {k: "read into the record's logit_scale and logit_bias" for k in ("logit_scale", "logit_bias")
                    if k in shapes}
        notes.append(f"text tower: {tcfg.depth} blocks, {tcfg.width}-wide, pool {tcfg.pool}, tokenizer {path.name}, "
                     f"padded to {tcfg.context_length} on the right; probabilities by {tower.probability}")
    bindings = {"block": [{"i": i} for i in range(image.depth)],
                **({"text_block": [{"i": i} for i in range(tower.config.depth)]} if tower else {})}
    return Plan(config=image, rules=rules, bindings=bindings, source_format=f"transformers/{ARCHITECTURES[kind]}",
                preprocess=preprocess, labels=None, notes=notes, left_out=left_out,
                head_is_embedding=image.num_classes > 0, text=tower)


def _detect(probe: Probe) -> Detection | None:
    import json

    if probe.kind.kind not in ("directory", "safetensors", "pickle", "torch-zip"):
        return None
    folder = probe.path if probe.kind.kind == "directory" else probe.path.parent
    try:
        kind = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return None
    if kind not in MODEL_TYPES:
        return None
    if probe.kind.kind != "directory" and not any(k.startswith("vision_model.") for k in probe.keys):
        return None
    return Detection(1.0, f"config.json with model_type {kind!r}")


HF_TOWERS = SourceFormat(
    name="hf-towers", summary="transformers CLIPModel, SiglipModel, Siglip2Model (fixed resolution): both towers",
    detect=_detect, open=HfReader, plan=_plan, options=(IMAGE_ONLY, TOKENIZER),
    example="vitconvert convert siglip-base-patch16-224/ siglip-b16.safetensors",
    looks_for=f"a directory with a config.json of model_type {', '.join(MODEL_TYPES)}")
