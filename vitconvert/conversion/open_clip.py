"""OpenCLIP and OpenAI CLIP state dicts (OpenCLIP's own layout) to our two-tower weights file.

The image tower is either OpenCLIP's VisionTransformer (`visual.conv1`, `visual.transformer.resblocks.N.*`,
`visual.proj`), which becomes timm's names as timm's `_convert_openai_clip` reads it (the projection is an
embedding head with a zero bias), or a timm trunk (`visual.trunk.*`: SigLIP via OpenCLIP), whose names are
timm's already. The text tower is OpenCLIP's TextTransformer (`token_embedding`, `positional_embedding`,
`transformer.resblocks.N.*`, `ln_final`, `text_projection`; under `text.` in its CustomTextCLIP models), and
`logit_scale` (t; the factor is exp(t)) and `logit_bias` (SigLIP's b) become the record's.

What the tensors do not show (the activation, the head counts, the masks and pooling of the text tower, the
tokenizer) comes from OpenCLIP's model config: `open_clip_config.json` beside the checkpoint (as the Hugging
Face hub's OpenCLIP repositories hold it, with the preprocessing), or `--model NAME`, OpenCLIP's bundled config
of that name (read as JSON from the installed open_clip; nothing of it is imported).

OpenAI's own releases are TorchScript archives: `formats/state_dict.py` refuses them saying how to get the
state dict OpenCLIP reads.
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..core.config import ViTConfig
from ..core.errors import VitConvertError
from ..core.json_types import is_int
from ..core.param_shapes import param_shapes
from ..core.text_config import TextConfig
from ..formats.weights_file import Preprocess
from .hf_preprocess import OPENAI_CLIP
from .mapping import IDENTITY, Op, Rule, block_bindings, source_dims
from .source import Detection, Option, Plan, Probe, Request, SourceFormat
from .text_towers import (
    IMAGE_ONLY,
    TEXT_LEFT_OUT,
    TOKENIZER,
    clip_tokenizer,
    file_tokenizer,
    find_tokenizer,
    text_tower,
)

CONFIG_FILE = "open_clip_config.json"
TRANSPOSE = Op("transpose", lambda x: np.ascontiguousarray(x.T), lambda s: s[::-1])
ROW = Op("as one row", lambda x: x[None], lambda s: (1, *s))
TOKEN = Op("as a (1, 1, D) token", lambda x: x[None, None], lambda s: (1, 1, *s))
ZERO_BIAS = Op("a zero bias for the projection's outputs", lambda p: np.zeros(p.shape[1], np.float32),
               lambda s: (s[1],))
# OpenAI's state dicts keep three sizes as tensors; open_clip's build_model_from_openai_state_dict drops them.
SIZES = ("input_resolution", "context_length", "vocab_size")
SIZES_LEFT_OUT = "OpenAI's model sizes, stored as tensors (open_clip drops them)"
# open_clip's defaults (CLIPVisionCfg, CLIPTextCfg) for what a model config leaves out.
VISION_HEAD_WIDTH, TEXT_HEADS, CLIP_EPS = 64, 8, 1e-5

# OpenCLIP's residual attention block, under `{p}transformer.resblocks.{i}.`, and ours under `{q}blocks.{i}.`.
BLOCK = {"norm1.weight": "ln_1.weight", "norm1.bias": "ln_1.bias", "attn.qkv.weight": "attn.in_proj_weight",
         "attn.qkv.bias": "attn.in_proj_bias", "attn.proj.weight": "attn.out_proj.weight",
         "attn.proj.bias": "attn.out_proj.bias", "norm2.weight": "ln_2.weight", "norm2.bias": "ln_2.bias",
         "mlp.fc1.weight": "mlp.c_fc.weight", "mlp.fc1.bias": "mlp.c_fc.bias", "mlp.fc2.weight": "mlp.c_proj.weight",
         "mlp.fc2.bias": "mlp.c_proj.bias"}


def _block_rules(theirs: str, ours: str, over: str) -> list[Rule]:
    return [Rule(f"{ours}blocks.{{i}}.{k}", (f"{theirs}transformer.resblocks.{{i}}.{v}",), IDENTITY, over=over)
            for k, v in BLOCK.items()]


def _depth(shapes: Mapping[str, tuple[int, ...]], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"transformer\.resblocks\.(\d+)\.")
    return len({m[1] for k in shapes if (m := pattern.match(k))})


def _text_prefix(keys: Mapping[str, Any] | frozenset[str]) -> str | None:
    """'' for CLIP's text tower at the top, 'text.' for CustomTextCLIP's; None without one."""
    return next((p for p in ("", "text.") if f"{p}token_embedding.weight" in keys), None)


class OpenClipReader:
    """An OpenCLIP state dict, and the model config that says what its tensors do not."""

    def __init__(self, probe: Probe) -> None:
        from ..formats.state_dict import TensorReader, read_state_dict

        self.path = probe.path
        self.tensors = TensorReader((probe.state_dict or read_state_dict(probe.path)).tensors, probe.path)
        self.shapes = self.tensors.shapes

    def read(self, key: str) -> np.ndarray:
        return self.tensors.read(key)

    def check_weights(self, keys: list[str], where: str) -> None:
        self.tensors.check_weights(keys, where)


def bundled_config(name: str) -> dict[str, Any]:
    """OpenCLIP's bundled model config `name` (open_clip/model_configs/NAME.json), read without importing it."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise VitConvertError(f"--model {name}: OpenCLIP's model configs come with open_clip (pip install "
                              f"open-clip-torch), or put the checkpoint's {CONFIG_FILE} beside it")
    folder = Path(next(iter(spec.submodule_search_locations))) / "model_configs"
    path = folder / f"{name}.json"
    if not path.is_file():
        import difflib

        names = sorted(p.stem for p in folder.glob("*.json"))
        close = difflib.get_close_matches(name, names, n=3)
        raise VitConvertError(f"--model {name}: not an OpenCLIP model config"
                              + (f"; did you mean {', '.join(close)}?" if close else ""))
    return json.loads(path.read_text(encoding="utf-8"))


def model_config(reader: OpenClipReader, name: str | None) -> tuple[dict[str, Any], dict[str, Any], str]:
    """(model_cfg, preprocess_cfg, where they came from): `--model`'s, else open_clip_config.json's."""
    beside = reader.path.parent / CONFIG_FILE
    if name is not None:
        return bundled_config(name), {}, f"OpenCLIP's {name} config"
    if beside.is_file():
        try:
            d = json.loads(beside.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise VitConvertError(f"{beside}: cannot read it as JSON ({e})") from None
        if not isinstance(d, dict) or not isinstance(d.get("model_cfg"), dict):
            raise VitConvertError(f"{beside}: no model_cfg object (OpenCLIP's open_clip_config.json has one)")
        pre = d.get("preprocess_cfg")
        return d["model_cfg"], pre if isinstance(pre, dict) else {}, str(beside)
    raise VitConvertError(f"{reader.path}: the tensors do not show the activation, the head counts nor the text "
                          f"tower's mask and pooling: name the OpenCLIP model with --model NAME (model=NAME; OpenAI's "
                          f"weights: e.g. ViT-B-32-quickgelu) or put its {CONFIG_FILE} beside the checkpoint")


def _positive(value: Any, what: str, where: str) -> int:
    if not (is_int(value) and value > 0):
        raise VitConvertError(f"{where}: {what} must be a positive integer, got {value!r}")
    return value


def _native_image(shapes: Mapping[str, tuple[int, ...]], vision: Mapping[str, Any], act: str,
                  where: str) -> tuple[ViTConfig, list[Rule]]:
    """OpenCLIP's own VisionTransformer in timm's names (timm's `_convert_openai_clip`)."""
    for unsupported, what in (("visual.attn_pool.query", "attentional pooling"),
                              ("visual.transformer.resblocks.0.ls_1.gamma", "layer scale")):
        if unsupported in shapes:
            raise VitConvertError(f"{where}: an OpenCLIP image tower with {what} is not converted yet")
    pool = vision.get("pool_type", "tok")
    if pool != "tok" or vision.get("final_ln_after_pool") or vision.get("global_average_pool"):
        raise VitConvertError(f"{where}: only OpenCLIP's class-token pooling is converted (pool_type 'tok'), got "
                              f"{pool!r}")
    width, chans, ph, pw = source_dims(shapes, "visual.conv1.weight", 4, where)
    n_pos = source_dims(shapes, "visual.positional_embedding", 2, where)[0] - 1
    side = math.isqrt(n_pos)
    if side * side != n_pos:
        raise VitConvertError(f"{where}: visual.positional_embedding holds {n_pos} patch positions, not a square grid")
    head_width = _positive(vision.get("head_width", VISION_HEAD_WIDTH), "vision_cfg.head_width", where)
    if width % head_width:
        raise VitConvertError(f"{where}: width {width} is not a multiple of head_width {head_width}")
    depth = _depth(shapes, "visual.")
    embed = source_dims(shapes, "visual.proj", 2, where)[1]
    try:
        cfg = ViTConfig(img_size=(side * ph, side * pw), patch_size=(ph, pw), in_chans=chans, embed_dim=width,
                        depth=depth, num_heads=width // head_width,
                        mlp_dim=source_dims(shapes, "visual.transformer.resblocks.0.mlp.c_fc.weight", 2, where)[0],
                        num_classes=embed, pool="token", act=act, ln_eps=CLIP_EPS, pre_norm=True, patch_bias=False)
    except VitConvertError as e:
        raise VitConvertError(f"{where}: {e}") from None
    rules = [Rule("patch_embed.proj.weight", ("visual.conv1.weight",), IDENTITY),
             Rule("cls_token", ("visual.class_embedding",), TOKEN),
             Rule("pos_embed", ("visual.positional_embedding",), ROW),
             Rule("norm_pre.weight", ("visual.ln_pre.weight",), IDENTITY),
             Rule("norm_pre.bias", ("visual.ln_pre.bias",), IDENTITY),
             *_block_rules("visual.", "", "block"),
             Rule("norm.weight", ("visual.ln_post.weight",), IDENTITY),
             Rule("norm.bias", ("visual.ln_post.bias",), IDENTITY),
             Rule("head.weight", ("visual.proj",), TRANSPOSE),
             Rule("head.bias", ("visual.proj",), ZERO_BIAS)]
    return cfg, rules


def _trunk_image(shapes: Mapping[str, tuple[int, ...]], vision: Mapping[str, Any], embed_dim: int,
                 where: str) -> tuple[ViTConfig, list[Rule], Preprocess]:
    """A timm trunk (`visual.trunk.*`): timm's own names, its architecture from timm's model of that name."""
    from .timm import config_from_shapes
    from .timm_models import timm_pretrained

    name = vision.get("timm_model_name")
    if not isinstance(name, str):
        raise VitConvertError(f"{where}: a timm trunk (visual.trunk.*) without vision_cfg.timm_model_name")
    proj = vision.get("timm_proj", "linear")
    if proj not in ("linear", "none") or vision.get("timm_pool", "avg") in ("abs_attn", "rot_attn"):
        raise VitConvertError(f"{where}: timm_proj {proj!r} / timm_pool {vision.get('timm_pool')!r}: only a linear "
                              "projection or none, after timm's own pooling, is converted")
    trunk = {k.removeprefix("visual.trunk."): v for k, v in shapes.items() if k.startswith("visual.trunk.")}
    kwargs = {"num_classes": embed_dim if proj == "none" and "head.weight" in trunk else 0,
              "global_pool": vision.get("timm_pool", "avg")}
    named, preprocess = timm_pretrained(name, kwargs)
    inferred = config_from_shapes(trunk, where, named=True)
    if differences := inferred.differences_from(named):
        raise VitConvertError(f"{where}: timm's {name} has another architecture than visual.trunk: "
                              f"{'; '.join(d.describe('checkpoint') for d in differences)}")
    rules = [Rule(k, (f"visual.trunk.{k}",), IDENTITY) for k in param_shapes(named)]
    if "visual.head.proj.weight" in shapes:  # open_clip's projection after timm's pooling
        if named.num_classes:
            raise VitConvertError(f"{where}: both the trunk's head and visual.head.proj: not a model open_clip builds")
        out = source_dims(shapes, "visual.head.proj.weight", 2, where)[0]
        named = named.replace(num_classes=out)
        rules = [Rule(k, (f"visual.trunk.{k}",), IDENTITY) for k in param_shapes(named) if not k.startswith("head.")]
        rules.append(Rule("head.weight", ("visual.head.proj.weight",), IDENTITY))
        bias = "visual.head.proj.bias" if "visual.head.proj.bias" in shapes else "visual.head.proj.weight"
        rules.append(Rule("head.bias", (bias,), IDENTITY if bias.endswith("bias") else
                          Op("a zero bias", lambda w: np.zeros(w.shape[0], np.float32), lambda s: (s[0],))))
    return named, rules, preprocess


def _text(shapes: Mapping[str, tuple[int, ...]], text: Mapping[str, Any], quick_gelu: bool, p: str,
          where: str) -> tuple[TextConfig, list[Rule]]:
    if f"{p}cls_emb" in shapes or text.get("embed_cls"):
        raise VitConvertError(f"{where}: a text tower with a class token (CoCa) is not converted")
    if f"{p}transformer.resblocks.0.ls_1.gamma" in shapes or text.get("hf_model_name"):
        raise VitConvertError(f"{where}: a text tower with layer scale or a transformers text model is not converted")
    vocab, width = source_dims(shapes, f"{p}token_embedding.weight", 2, where)
    ctx = source_dims(shapes, f"{p}positional_embedding", 2, where)[0]
    linear = f"{p}text_projection.weight" in shapes
    if linear:
        embed = source_dims(shapes, f"{p}text_projection.weight", 2, where)[0]
    else:
        embed = source_dims(shapes, f"{p}text_projection", 2, where)[1] if f"{p}text_projection" in shapes else 0
    act_kwargs = text.get("act_kwargs") or {}
    act = "quick_gelu" if quick_gelu else "gelu_tanh" if act_kwargs.get("approximate") == "tanh" else "gelu"
    pool = text.get("pool_type", "argmax")
    if pool not in ("argmax", "eos", "last", "first"):
        raise VitConvertError(f"{where}: text_cfg.pool_type {pool!r} is not one of open_clip's poolings")
    if text.get("final_ln_after_pool") or text.get("use_pad_mask"):
        raise VitConvertError(f"{where}: final_ln_after_pool and use_pad_mask are not converted")
    try:
        cfg = TextConfig(vocab_size=vocab, context_length=ctx, width=width, depth=_depth(shapes, p),
                         num_heads=text.get("heads", TEXT_HEADS),
                         mlp_dim=source_dims(shapes, f"{p}transformer.resblocks.0.mlp.c_fc.weight", 2, where)[0],
                         embed_dim=embed, act=act, ln_eps=(text.get("norm_kwargs") or {}).get("eps", CLIP_EPS),
                         causal=not text.get("no_causal_mask", False), pool=pool,
                         eos_id=text.get("eos_id", 2) if pool == "eos" else None,
                         proj_bias=f"{p}text_projection.bias" in shapes)
    except VitConvertError as e:
        raise VitConvertError(f"{where}: {e}") from None
    rules = [Rule("text.token_embed.weight", (f"{p}token_embedding.weight",), IDENTITY),
             Rule("text.pos_embed", (f"{p}positional_embedding",), ROW),
             *_block_rules(p, "text.", "text_block"),
             Rule("text.norm.weight", (f"{p}ln_final.weight",), IDENTITY),
             Rule("text.norm.bias", (f"{p}ln_final.bias",), IDENTITY)]
    if linear:
        rules.append(Rule("text.proj.weight", (f"{p}text_projection.weight",), IDENTITY))
        rules.append(Rule("text.proj.bias", (f"{p}text_projection.bias",), IDENTITY, optional=True))
    elif embed:
        rules.append(Rule("text.proj.weight", (f"{p}text_projection",), TRANSPOSE))
    return cfg, rules


def _preprocess(pre: Mapping[str, Any], size: tuple[int, int],
                trunk: Preprocess | None) -> tuple[Preprocess, list[str]]:
    """open_clip's eval transform: resize the shorter side (bicubic) and centre-crop, or squash; CLIP's mean
    and std unless its preprocess_cfg (or the timm trunk's) says otherwise."""
    if not pre:
        if trunk is not None:
            return trunk.at_size(size), ["preprocessing: the timm trunk's (no open_clip_config.json preprocess_cfg)"]
        return Preprocess(size=size, resize="crop", crop_pct=1.0, interpolation="bicubic", mean=OPENAI_CLIP[0],
                          std=OPENAI_CLIP[1]), ["preprocessing: OpenCLIP's default (bicubic, shorter side, centre "
                                                "crop, OpenAI's mean and std)"]
    interpolation = pre.get("interpolation", "bicubic")
    if interpolation not in ("bicubic", "bilinear"):
        raise VitConvertError(f"preprocess_cfg.interpolation {interpolation!r} is not one vitconvert runs")
    mode = pre.get("resize_mode", "shortest")
    if mode not in ("shortest", "squash"):
        raise VitConvertError(f"preprocess_cfg.resize_mode {mode!r} is not one vitconvert runs (shortest, squash)")
    return Preprocess(size=size, resize="crop" if mode == "shortest" else "squash", crop_pct=1.0,
                      interpolation=interpolation, mean=tuple(pre.get("mean", OPENAI_CLIP[0])),
                      std=tuple(pre.get("std", OPENAI_CLIP[1]))), []


def _plan(reader: OpenClipReader, request: Request) -> Plan:
    shapes, where = reader.shapes, str(reader.path)
    model_cfg, pre, told = model_config(reader, request.options.get("model"))
    vision, text_cfg = model_cfg.get("vision_cfg") or {}, model_cfg.get("text_cfg") or {}
    quick_gelu = bool(model_cfg.get("quick_gelu", False))
    trunk_pre = None
    if any(k.startswith("visual.trunk.") for k in shapes):
        image, rules, trunk_pre = _trunk_image(shapes, vision, model_cfg.get("embed_dim", 0), where)
    elif "visual.conv1.weight" in shapes:
        image, rules = _native_image(shapes, vision, "quick_gelu" if quick_gelu else "gelu", where)
    else:
        raise VitConvertError(f"{where}: no image tower converted: neither visual.conv1.weight (OpenCLIP's "
                              "VisionTransformer) nor visual.trunk.* (a timm trunk)")
    preprocess, notes = _preprocess(pre, image.img_size, trunk_pre)
    notes = [f"architecture from {told}", *notes]
    left_out = {k: SIZES_LEFT_OUT for k in SIZES if k in shapes}
    left_out |= {k: "open_clip's causal mask buffer (rebuilt from the config)" for k in shapes
                 if k.endswith("attn_mask")}
    p = _text_prefix(shapes)
    text = None
    embedding = image.num_classes > 0
    if request.options.get("image_only"):
        text_keys = [k for k in shapes if not k.startswith("visual.") and k not in left_out]
        left_out |= dict.fromkeys(text_keys, TEXT_LEFT_OUT)
        notes.append("the image tower alone (--image-only): the text tower, logit scale and bias left out")
    else:
        if p is None or "logit_scale" not in shapes:
            raise VitConvertError(f"{where}: the text tower is damaged or missing (no token_embedding.weight or "
                                  "logit_scale); convert with --image-only for the image tower alone")
        tcfg, text_rules = _text(shapes, text_cfg, quick_gelu, p, where)
        rules += text_rules
        tokenizer = _tokenizer(reader, request, text_cfg, tcfg.context_length, where)
        t = float(reader.read("logit_scale").reshape(-1)[0])
        b = float(reader.read("logit_bias").reshape(-1)[0]) if "logit_bias" in shapes else None
        text = text_tower(tcfg, tokenizer, t, b, where)
        left_out |= {k: "read into the record's logit_scale and logit_bias" for k in ("logit_scale", "logit_bias")
                     if k in shapes}
        notes.append(f"text tower: {tcfg.depth} blocks, {tcfg.width}-wide, {'causal' if tcfg.causal else 'no mask'}, "
                     f"pool {tcfg.pool}; probabilities by {text.probability}")
    bindings = {**block_bindings(image.depth),
                **({"text_block": [{"i": i} for i in range(text.config.depth)]} if text else {})}
    return Plan(config=image, rules=rules, bindings=bindings,
                source_format="open_clip" + (f"/{request.options['model']}" if request.options.get("model") else ""),
                preprocess=preprocess, labels=None, notes=notes, left_out=left_out,
                head_is_embedding=embedding, text=text)


def _tokenizer(reader: OpenClipReader, request: Request, text_cfg: Mapping[str, Any], context: int, where: str):
    clean = (text_cfg.get("tokenizer_kwargs") or {}).get("clean")
    if not text_cfg.get("hf_tokenizer_name") and request.options.get("tokenizer") is None:
        return clip_tokenizer(context, clean or "lower")
    path = find_tokenizer(reader.path.parent, request.options.get("tokenizer"), where)
    return file_tokenizer(path, context, clean or "whitespace", where)  # open_clip's HFTokenizer cleans 'whitespace'


def _detect(probe: Probe) -> Detection | None:
    if probe.kind.kind not in ("pickle", "torch-zip", "safetensors"):
        return None
    image = "visual.conv1.weight" in probe.keys or any(k.startswith("visual.trunk.") for k in probe.keys)
    if not image:
        return None
    text = _text_prefix(probe.keys)
    return Detection(1.0, "an OpenCLIP state dict (visual.*" + (f", {text}token_embedding" if text is not None else "")
                     + ")")


OPEN_CLIP = SourceFormat(
    name="open_clip", summary="OpenCLIP and OpenAI CLIP state dicts (both towers), SigLIP via OpenCLIP's timm trunk",
    detect=_detect, open=OpenClipReader, plan=_plan,
    options=(Option("model", "--model", "OpenCLIP's model name (its bundled config), where no open_clip_config.json "
                                        "is beside the checkpoint"), IMAGE_ONLY, TOKENIZER),
    example="vitconvert convert open_clip_pytorch_model.bin clip-b32.safetensors --model ViT-B-32",
    looks_for="a state dict with visual.conv1.weight or visual.trunk.* (OpenCLIP's layout)")
