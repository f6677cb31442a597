"""Hugging Face transformers checkpoints (ViT, DeiT, Dinov2, BEiT, Data2VecVision, ...) to our weights file.

SRC is a directory as `save_pretrained` writes it (config.json, model.safetensors or pytorch_model.bin, or
their shards and index: `hf_sharded`; preprocessor_config.json), or its weights file with the config.json
beside it. The architecture comes from config.json, read as JSON (transformers is never imported); which head
and names the checkpoint has, from its keys; the tensors stream through `hf_layouts`' table into the writer
one at a time. safetensors files are read with numpy alone; pickled .bin files only with
torch.load(weights_only=True), the reader timm2torch uses, imported for them alone.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.config import ViTConfig
from ..core.errors import VitConvertError
from ..core.json_types import is_int, is_real
from ..formats.paths import check_input
from ..formats.safetensors_file import SafetensorsReader
from ..formats.weights_file import WeightsRecord
from . import hf_layouts
from .hf_layouts import HfLayout
from .hf_preprocess import preprocess_from
from .hf_sharded import INDEXES, ShardedReader, find_index
from .jax_layouts import bindings as resnet_bindings
from .mapping import ArrayReader, Shape
from .source import Detection, Plan, Probe, Request, SourceFormat

WEIGHTS = ("model.safetensors", "pytorch_model.bin")
PICKLES = (".bin", ".pth", ".pt")


@dataclass(frozen=True)
class HfCheckpoint:
    """A transformers checkpoint's files, its config.json and preprocessor_config.json read."""

    weights: Path
    config: dict[str, Any]
    processor: dict[str, Any] | None


def locate(src: str | os.PathLike) -> HfCheckpoint:
    """The weights, config.json and (if there) preprocessor_config.json of a directory or weights file."""
    src = Path(src)
    if src.is_dir():
        folder = src
        weights = next((src / name for name in WEIGHTS if (src / name).is_file()), None) or find_index(src)
        if weights is None:
            raise VitConvertError(f"{src}: no {' or '.join(WEIGHTS)} in the directory, nor a shard index "
                                  f"({' or '.join(INDEXES)})")
    else:
        weights, folder = check_input(src, "a transformers checkpoint (a directory or its weights file)"), src.parent
        if weights.suffix != ".safetensors" and weights.suffix not in PICKLES:
            raise VitConvertError(f"{src}: expected a .safetensors or a pickled .bin weights file, or their directory")
        if (index := find_index(folder)) is not None and weights.name in index.read_text(encoding="utf-8",
                                                                                          errors="replace"):
            raise VitConvertError(f"{src}: one shard of the checkpoint {index.name} indexes: give the directory, "
                                  f"{folder}, to convert them all")
    config = folder / "config.json"
    if not config.is_file():
        raise VitConvertError(f"{src}: no config.json beside the weights (hf2torch reads the architecture from "
                              "it: give the directory save_pretrained wrote)")
    processor = folder / "preprocessor_config.json"
    return HfCheckpoint(weights, _read_json(config), _read_json(processor) if processor.is_file() else None)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise VitConvertError(f"{path}: cannot read it as JSON ({getattr(e, 'strerror', None) or e})") from None
    if not isinstance(value, dict):
        raise VitConvertError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def read_weights(path: Path, probed: Probe | None = None) -> ArrayReader:
    """A reader of the checkpoint's tensors: numpy for safetensors; torch's weights-only unpickler for .bin
    (or the state dict `probed` already read from this very file); a shard index's shards, shard by shard."""
    if path.name in INDEXES:
        return ShardedReader(path)
    if path.suffix == ".safetensors":
        return SafetensorsReader(path)
    from ..formats.state_dict import TensorReader, read_state_dict  # torch, for pickles only

    state = probed.state_dict if probed is not None and probed.path == path else None
    return TensorReader((state or read_state_dict(path)).tensors, path)


class HfReader:
    """A transformers checkpoint: its weights' tensors, and its config.json and preprocessor_config.json."""

    def __init__(self, probe: Probe) -> None:
        self.found = locate(probe.path)
        self.path = self.found.weights
        self.tensors = read_weights(self.path, probe)
        self.shapes: Mapping[str, Shape] = self.tensors.shapes

    def read(self, key: str):  # noqa: ANN201 (the inner reader's float32 array)
        return self.tensors.read(key)

    def check_weights(self, keys: list[str], where: str) -> None:
        if check := getattr(self.tensors, "check_weights", None):
            check(keys, where)

    def close(self) -> None:
        if close := getattr(self.tensors, "close", None):
            close()


def _claimed_type(config: Mapping[str, Any]) -> str | None:
    """The model type config.json names: its model_type, or where it has none the type of the class its
    `architectures` names (as AutoModel falls back on); one of ours, else None."""
    kind = config.get("model_type")
    if kind is not None:
        return kind if kind in hf_layouts.MODEL_TYPES else None
    names = config.get("architectures")
    by_class = {name: t for (t, _), name in hf_layouts.ARCHITECTURES.items()}
    return next((by_class[n] for n in names if isinstance(n, str) and n in by_class), None) \
        if isinstance(names, list) else None


def model_type(config: Mapping[str, Any], where: str) -> str:
    kind = _claimed_type(config)
    if kind is None:
        given = config.get("model_type")
        found = f"model_type {given!r}" if given is not None else "no model_type, and no architectures it converts"
        raise VitConvertError(f"{where}: {found}; hf2torch converts model types "
                              f"{', '.join(hf_layouts.MODEL_TYPES)} ({', '.join(hf_layouts.ARCHITECTURES.values())})")
    return kind


# ViTHybrid's backbone_config as the only BiT our model/hybrid.py builds: transformers 4's ViTHybridConfig default.
BIT = {"layer_type": "bottleneck", "global_padding": "same", "hidden_act": "relu", "num_groups": 32}


def _bit_fields(config: Mapping[str, Any], shapes: Mapping[str, Shape], layout: HfLayout,
                where: str) -> dict[str, Any]:
    """Our hybrid's fields from a ViTHybrid's backbone_config (BitConfig's defaults where it leaves keys out,
    ViTHybridConfig's default backbone where it has none) and its keys."""
    backbone = config.get("backbone_config")
    backbone = {**BIT, "embedding_dynamic_padding": True} if backbone is None else backbone
    if not isinstance(backbone, Mapping):
        raise VitConvertError(f"{where}: backbone_config must be a JSON object, got {backbone!r}")
    defaults = {"layer_type": "preactivation", "global_padding": None, "hidden_act": "relu", "num_groups": 32}
    if differ := [f"{k} {backbone.get(k, defaults[k])!r}" for k, want in BIT.items()
                  if str(backbone.get(k, defaults[k])).lower() != str(want)]:
        raise VitConvertError(f"{where}: a ViTHybrid backbone with {', '.join(differ)}: our hybrid is the BiT of "
                              f"{', '.join(f'{k} {v!r}' for k, v in BIT.items())} (timm's R50 hybrids)")
    stem = f"{layout.prefix}{hf_layouts.BIT}embedder.convolution.weight"
    if stem not in shapes or len(shapes[stem]) != 4:
        raise VitConvertError(f"{where}: no BiT stem convolution ({stem})")
    return dict(hybrid_layers=hf_layouts.bit_units(shapes, layout.prefix), hybrid_width=shapes[stem][0],
                in_chans=shapes[stem][1], hybrid_gn_eps=BIT_GN_EPS)


# BitGroupNormActivation's eps (and timm's GroupNormAct's in its hybrids).
BIT_GN_EPS = 1e-5


def config_from_json(config: Mapping[str, Any], layout: HfLayout, where: str,
                     shapes: Mapping[str, Shape] | None = None) -> ViTConfig:
    """Our config from config.json (transformers' defaults for keys it leaves out) and the layout."""
    defaults = hf_layouts.DEFAULTS[layout.model_type]

    def get(key: str) -> Any:
        return config.get(key, defaults[key])

    dim, heads = get("hidden_size"), get("num_attention_heads")
    act = get("hidden_act")
    if layout.mlp != "mlp":
        act = "silu"  # transformers' Dinov2 SwiGLU is silu whatever hidden_act says
    elif not isinstance(act, str) or act not in hf_layouts.ACTIVATIONS:
        raise VitConvertError(f"{where}: hidden_act {act!r} is not one our model runs "
                              f"({', '.join(sorted(hf_layouts.ACTIVATIONS))})")
    else:
        act = hf_layouts.ACTIVATIONS[act]
    head_dim = config.get("head_dim")  # transformers' own default where null: hidden_size / heads
    if head_dim is not None and not (is_int(head_dim) and is_int(heads) and head_dim * heads == dim):
        raise VitConvertError(f"{where}: head_dim {head_dim!r} x {heads!r} heads is not hidden_size {dim!r}; "
                              "our attention splits the width evenly into heads")
    dinov2 = layout.family == "dinov2"
    if layout.pooler and get("pooler_act") != "tanh":
        raise VitConvertError(f"{where}: pooler_act {get('pooler_act')!r}; our representation layer "
                              "is tanh")
    registers = get("num_register_tokens") if layout.model_type == "dinov2_with_registers" else 0
    if dinov2:
        ratio = get("mlp_ratio")
        if not (is_int(dim) and is_real(ratio) and 0 < dim * ratio < 2 ** 31):
            raise VitConvertError(f"{where}: mlp_ratio {ratio!r} with hidden_size {dim!r} makes no MLP width")
        mlp_dim = hf_layouts.dinov2_mlp_hidden(dim, ratio, layout.mlp != "mlp")
        mlp_dim = 2 * mlp_dim if layout.mlp == "swiglu_packed" else mlp_dim
    else:
        mlp_dim = get("intermediate_size")
    size, patch = (tuple(v) if isinstance(v, list) else (v, v) if is_int(v) else v
                   for v in (get("image_size"), get("patch_size")))
    if layout.beit and (layout.rel_pos or layout.shared_rel_pos) and isinstance(size, tuple) \
            and isinstance(patch, tuple) and len(size) == len(patch) == 2 \
            and size[0] // patch[0] != size[1] // patch[1]:
        raise VitConvertError(f"{where}: a relative position table for a non-square grid: transformers' "
                              "BeitRelativePositionBias reads it transposed (its (width, height) reshape), so its "
                              "outputs are not BEiT's")
    fields = dict(img_size=size, patch_size=patch, in_chans=get("num_channels"), embed_dim=dim,
                  depth=get("num_hidden_layers"), num_heads=heads, mlp_dim=mlp_dim, act=act,
                  # BEiT's query and value always have biases (its key none: k_bias), and its config no qkv_bias
                  ln_eps=get("layer_norm_eps"), qkv_bias=True if layout.beit else get("qkv_bias"),
                  num_classes=_num_classes(config, layout),
                  distilled=layout.head == "teacher",
                  reg_tokens=int(layout.model_type == "deit" and layout.head != "teacher") + registers,
                  no_embed_class=layout.model_type == "dinov2_with_registers",
                  representation_size=config.get("pooler_output_size") or dim if layout.pooler else None,
                  layer_scale=dinov2, mlp=layout.mlp, pos_resize=POS_RESIZE.get(layout.model_type, "transformers"))
    if layout.model_type == "vit-hybrid":
        fields |= _bit_fields(config, shapes or {}, layout, where)
    if layout.beit:
        fields |= dict(pool="gap" if layout.beit_norm == "pooler" else "token", fc_norm=layout.beit_norm == "pooler",
                       final_norm=layout.beit_norm != "none", class_token=True, k_bias=False,
                       pos_embed="learn" if layout.abs_pos else "none", layer_scale=layout.layer_scale,
                       rel_pos_bias=layout.rel_pos, shared_rel_pos_bias=layout.shared_rel_pos,
                       rel_pos_resize="transformers")
    try:
        return ViTConfig(**fields)
    except (VitConvertError, TypeError) as e:  # values of the wrong type: say which file they came from
        raise VitConvertError(f"{where}: {e}") from None


# transformers' interpolate_pos_encoding: bicubic without antialias (posembed's 'transformers'), but in
# Dinov2WithRegisters, which antialiases (timm's 'bicubic': size=, antialias=True, align_corners off).
POS_RESIZE = {"dinov2_with_registers": "bicubic"}


def beit_layout(config: Mapping[str, Any], layout: HfLayout, where: str) -> HfLayout:
    """A BEiT layout with the optional parts its config.json's use_* flags (transformers' defaults where it
    leaves them out) build; the keys must then be those (the pipeline names any missing or left over)."""
    defaults = hf_layouts.DEFAULTS[layout.model_type]

    def flag(key: str) -> bool:
        value = config.get(key, defaults[key])
        if not isinstance(value, bool):
            raise VitConvertError(f"{where}: {key} must be true or false, got {value!r}")
        return value

    scale = config.get("layer_scale_init_value", defaults["layer_scale_init_value"])
    if not is_real(scale):
        raise VitConvertError(f"{where}: layer_scale_init_value must be a number, got {scale!r}")
    if flag("use_mean_pooling") != (layout.beit_norm in ("pooler", "none", "mim")):
        found = {"pooler": "pooler.layernorm", "encoder": "layernorm", "mim": "layernorm", "none": "no final norm"}
        raise VitConvertError(f"{where}: use_mean_pooling is {flag('use_mean_pooling')}, but the checkpoint holds "
                              f"{found[layout.beit_norm]}")
    return dataclasses.replace(layout, abs_pos=flag("use_absolute_position_embeddings"),
                               rel_pos=flag("use_relative_position_bias"),
                               shared_rel_pos=flag("use_shared_relative_position_bias"), layer_scale=scale > 0)


def _num_classes(config: Mapping[str, Any], layout: HfLayout) -> int:
    if layout.head in (None, "decoder", "mim"):
        return 0
    id2label = config.get("id2label")
    return len(id2label) if isinstance(id2label, Mapping) else config.get("num_labels", 2)


def class_names(config: Mapping[str, Any], num_classes: int) -> tuple[tuple[str, ...] | None, list[str]]:
    """The class names of id2label, or None where it holds transformers' placeholders (LABEL_0, ...)."""
    id2label = config.get("id2label")
    if not num_classes or not isinstance(id2label, Mapping):
        return None, []
    names = {str(k): v for k, v in id2label.items()}
    if set(names) != {str(i) for i in range(num_classes)} or not all(isinstance(v, str) for v in names.values()):
        return None, ["id2label does not name classes 0..n-1 with strings: class names not recorded"]
    ordered = tuple(names[str(i)] for i in range(num_classes))
    if all(name == f"LABEL_{i}" for i, name in enumerate(ordered)):
        return None, []
    return ordered, []


def convert_hf(src: str | os.PathLike, dst: str | os.PathLike, *, force: bool = False, dtype: str = "float32",
               labels: str | Sequence[str] | None = None, allow_nonfinite: bool = False,
               pos_resize: str | None = None, progress: Callable[[int, int], None] | None = None) -> WeightsRecord:
    """Convert a transformers checkpoint (ViT, DeiT, Dinov2, BEiT, ...: hf_layouts.MODEL_TYPES) at `src` (its
    directory, or its weights file with config.json beside it) into our weights file at `dst`:
    `vitconvert.convert(..., source='hf')`.

    The architecture is config.json's; the class names its id2label's (unless `labels`: 'imagenet-1k',
    'imagenet-21k' or the names in class order); the preprocessing preprocessor_config.json's, where ours
    can express it (the record's notes say where not). pos_resize: how the model resizes its position
    embeddings for other input sizes, default 'transformers' (what transformers' model does).
    progress(done_bytes, total_bytes) is called after each tensor.
    """
    from .pipeline import convert

    return convert(src, dst, source="hf", force=force, dtype=dtype, labels=labels, pos_resize=pos_resize,
                   allow_nonfinite=allow_nonfinite, progress=progress)


def _plan(reader: HfReader, request: Request) -> Plan:
    found = reader.found
    where, config_file = str(found.weights), str(found.weights.parent / "config.json")
    kind = model_type(found.config, config_file)
    layout, ignored = hf_layouts.detect(kind, reader.shapes, where)
    swiglu = layout.family == "dinov2" and found.config.get("use_swiglu_ffn", False)
    layout = dataclasses.replace(layout, qkv_bias=found.config.get("qkv_bias", True),
                                 mlp=("swiglu" if layout.modular else "swiglu_packed") if swiglu else "mlp")
    if layout.beit:
        layout = beit_layout(found.config, layout, config_file)
    cfg = config_from_json(found.config, layout, config_file, reader.shapes)
    names, notes = class_names(found.config, cfg.num_classes)
    preprocess, more = preprocess_from(found.processor, kind, cfg.img_size, where)
    notes += more + _layout_notes(layout, ignored)
    if preprocess.size != cfg.img_size:
        notes.append(f"the processor makes {preprocess.size[0]}x{preprocess.size[1]} inputs, the model is stored at "
                     f"{cfg.img_size[0]}x{cfg.img_size[1]}: run it with --res {preprocess.size[0]}x"
                     f"{preprocess.size[1]} (img_size=...) for transformers' pipeline")
    return Plan(config=cfg, rules=hf_layouts.import_rules(layout),
                bindings=resnet_bindings(cfg.depth, cfg.hybrid_layers),
                source_format=f"transformers/{layout.architecture}", preprocess=preprocess, labels=names,
                notes=notes, left_out=ignored)


def _layout_notes(layout: HfLayout, ignored: Mapping[str, str]) -> list[str]:
    notes = []
    if layout.model_type == "deit" and layout.head != "teacher":
        notes.append("DeiT's distillation token, which no head of this model reads, is kept as a register token "
                     "(reg_token): it takes part in the attention as in transformers")
    if any(k.endswith("pooler.dense.weight") for k in ignored):
        notes.append("the pooler beside the classifier was left out: transformers' classification models do not "
                     "run it")
    if any(k.endswith("mask_token") and not k.startswith("decoder.") for k in ignored):
        notes.append("the mask_token (masked-image pre-training only) was left out")
    if layout.head == "decoder":
        notes.append("ViTMAEForPreTraining's decoder was left out: the encoder converts, and runs as ViTMAEModel "
                     "with mask_ratio 0 and the patches in their order (no random masking)")
    elif layout.head == "mim":
        notes.append("BeitForMaskedImageModeling: its encoder, with the pre-training head's norm as the final norm; "
                     "the features are its class token after that norm")
    elif layout.model_type == "vit_mae":
        notes.append("ViTMAE's encoder runs without its random masking: ViTMAEModel with mask_ratio 0 and the "
                     "patches in their order")
    if layout.model_type == "dinov2_with_registers":
        notes.append("the class token is stored with its position embedding added, and the table holds the "
                     "patches' rows (as timm stores DINOv2 with registers): transformers adds that row to the "
                     "class token alone and never resizes it")
    if layout.model_type == "vit-hybrid":
        notes.append("ViTHybrid's BiT kernels stored standardized as its WeightStandardizedConv2d computes them "
                     "(batch_norm over each kernel, eps 1e-8: timm's StdConv2dSame)")
    if layout.layer_prefix is not None:
        notes.append("the encoder's layers at the top of the file (encoder.layer.N) beside vit.embeddings, as "
                     "transformers 5 saves ViTMSNForImageClassification")
    if layout.modular:
        notes.append("tensors named as transformers 5's modules (a state_dict saved as it is)")
    return notes


def _detect(probe: Probe) -> Detection | None:
    """A directory with config.json (save_pretrained's), or a weights file with one beside it, whose model_type
    is one hf2torch converts."""
    folder = probe.path if probe.kind.kind == "directory" else probe.path.parent
    if probe.kind.kind not in ("directory", "safetensors", "pickle", "torch-zip"):
        return None
    config = folder / "config.json"
    if not config.is_file():
        return None
    try:
        value = json.loads(config.read_text(encoding="utf-8"))
        kind = _claimed_type(value) if isinstance(value, dict) else None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        kind = None
    if kind is None:
        return None
    prefixes = ("embeddings.", f"{hf_layouts.BASE_PREFIX.get(kind, kind)}embeddings.")
    if probe.kind.kind != "directory" and not any(k.startswith(prefixes) for k in probe.keys):
        return None  # a config.json beside some other checkpoint
    return Detection(1.0, f"config.json of model type {kind!r}" + (" beside it" if probe.kind.kind != "directory"
                                                                    else ""))


HF = SourceFormat(
    name="hf", summary="Hugging Face transformers ViT, DeiT, Dinov2 (with registers), ViTMSN, ViTMAE, ViTHybrid, "
                       "BEiT, Data2VecVision (save_pretrained's directory, sharded too, or its weights file)",
    detect=_detect, open=HfReader, plan=_plan,
    example="vitconvert convert vit-base-patch16-224/ vit-b16.safetensors",
    looks_for=f"a directory (or a weights file beside) with a config.json of model_type "
              f"{', '.join(hf_layouts.MODEL_TYPES)}")
