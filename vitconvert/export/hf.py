"""`export_hf`: one of our weights files to a directory transformers loads with nothing else: config.json,
model.safetensors (transformers' serialized names; our qkv split into query, key, value) and
preprocessor_config.json.

The model is written as the transformers class that computes what ours does: ViT (with the pooler for a
representation layer), DeiT (distilled, or with the unread second token as a register token), Dinov2
(layer scale, SwiGLU), Dinov2WithRegisters (with register tokens) or BEiT (relative position tables, q and
v biases, mean pooling with its norm); ViTMSN's classes, which compute what ViT's do without a pooler, where
the file came from one or they are asked for (`architecture=`). What none of them expresses is refused,
every reason named, before anything is written: a directory that loads and computes something else would be
worse than none. The tensors stream from our file through `hf_layouts`' table (the one hf2torch reads) into
the output one at a time; numpy only, and the directory appears under its name only when complete.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..conversion import hf_dinov3, hf_layouts
from ..conversion.hf_layouts import HfLayout
from ..conversion.hf_preprocess import processor_for
from ..conversion.mapping import block_bindings, plan_tensors
from ..core.config import ViTConfig
from ..core.errors import VitConvertError
from ..formats.dtypes import STORAGE
from ..formats.paths import check_input
from ..formats.safetensors_file import SafetensorsReader, TensorSpec, atomic_directory, write_safetensors
from ..formats.weights_file import WeightsRecord, read_record
from ..inference.labels import builtin_labels

FILES = ("config.json", "model.safetensors", "preprocessor_config.json")


@dataclass(frozen=True)
class HfExport:
    """What `export_hf` wrote."""

    path: Path
    architecture: str  # transformers' class, e.g. 'ViTForImageClassification'
    model_type: str
    processor: str  # the image processor class of preprocessor_config.json
    files: tuple[str, ...]
    notes: tuple[str, ...]  # where transformers' preprocessing differs from the file's


def unexpressible(cfg: ViTConfig, features: bool) -> list[str]:
    """What in `cfg` no transformers ViT, DeiT, Dinov2 or Dinov2WithRegisters computes, each with the reason;
    [] if all is."""
    head = cfg.num_classes > 0 and not features
    registers = _with_registers(cfg)
    checks = [
        (cfg.hybrid_layers is not None, ("a ResNet stem before the patch embedding (a hybrid): transformers' ViT "
                                         "embeds the image's patches directly (and transformers 5 has no ViTHybrid)")),
        (cfg.pool != "token", f"pooling {cfg.pool!r}: transformers' ViT, DeiT and Dinov2 read the class token"),
        (cfg.fc_norm, "a norm after the pooling (fc_norm): transformers normalises every token before it"),
        (not cfg.final_norm, "no final norm: transformers' models end in a LayerNorm"),
        (cfg.norm != "layernorm", f"{cfg.norm} layers: transformers' ViT normalises with LayerNorm"),
        (cfg.block != "pre_norm", f"{cfg.block} blocks: transformers' ViT blocks are pre-norm"),
        (cfg.pre_norm, "a norm before the blocks (norm_pre)"),
        (not cfg.patch_bias, "a patch embedding without bias"),
        (cfg.patch_norm, "a norm inside the patch embedding"),
        (cfg.pos_embed != "learn", "no position embedding: transformers adds a learned one"),
        (cfg.no_embed_class and not registers,
         ("position embeddings for the patches only (no_embed_class): transformers adds one to the class token too "
          "(Dinov2WithRegisters gives its registers none, but has layer scale)")),
        (cfg.qk_norm, "norms on the queries and keys"),
        (cfg.scale_attn_norm, "a norm before the attention projection"),
        (cfg.scale_mlp_norm, "a norm inside the MLP"),
        (not cfg.proj_bias, "projections without bias"),
        ((cfg.reg_tokens > 1 or cfg.reg_tokens == 1 and cfg.layer_scale) and not registers,
         (f"{cfg.reg_tokens} register token(s): transformers' ViT and Dinov2 have none (DeiT's distillation token "
          "stands for one, in a model without layer scale; Dinov2WithRegisters has them, with layer scale and no "
          "position embedding for them, no_embed_class)")),
        (cfg.mlp == "glu", "a GLU MLP gated by its second half"),
        (cfg.mlp != "mlp" and not cfg.layer_scale, ("a SwiGLU MLP without layer scale: only transformers' Dinov2 "
                                                    "has SwiGLU, and it has layer scale")),
        (cfg.mlp != "mlp" and cfg.act != "silu", f"a SwiGLU MLP with {cfg.act}: transformers' Dinov2 SwiGLU is silu"),
        (cfg.layer_scale and head, ("layer scale with a classifier: transformers' model with layer scale (Dinov2) "
                                    "classifies the class token and the mean of the patches together; export the "
                                    "features (--features) for a Dinov2Model")),
        (cfg.layer_scale and bool(cfg.representation_size), ("a representation layer with layer scale: "
                                                             "Dinov2Model has no pooler")),
        (cfg.layer_scale and cfg.distilled, "a distillation token with layer scale: transformers' DeiT has none"),
        (cfg.distilled and bool(cfg.representation_size), ("a representation layer in a distilled model: "
                                                          "transformers' DeiT classifies the two tokens directly")),
        (cfg.head_norm != "none", "a head on the unit-length features (a zero-shot classifier): transformers' "
                                  "classifiers read the features as they are"),
        (bool(cfg.representation_size) and head, ("a representation layer before the classifier: transformers' "
                                                  "ViTForImageClassification classifies the class token directly; "
                                                  "export the features (--features) for a ViTModel whose pooler "
                                                  "it is")),
        (cfg.rope != "none", f"rotary position embeddings ({cfg.rope}): transformers' ViT, DeiT and Dinov2 have "
                             "none (DINOv3's own, DINOv3ViTModel, is written for rope 'dinov3')"),
        (cfg.attn_head_dim is not None or cfg.kv_heads is not None,
         "attention heads not of the width's split (another head width, or grouped-query attention)"),
        (cfg.layer_scale and not cfg.mlp_layer_scale, "layer scale on the attention branch only"),
    ]
    problems = [why for failed, why in checks if failed]
    if cfg.layer_scale and not problems and hf_layouts.dinov2_mlp_ratio(cfg.embed_dim, _hidden(cfg),
                                                                        cfg.mlp != "mlp") is None:
        problems.append(f"an MLP {_hidden(cfg)} wide: no mlp_ratio makes transformers' Dinov2 that wide")
    return problems


def _with_registers(cfg: ViTConfig) -> bool:
    """Dinov2WithRegisters' model: layer scale, register tokens without positions, the class token's in it."""
    return cfg.layer_scale and cfg.reg_tokens > 0 and cfg.no_embed_class and cfg.has_class_token


def is_beit(cfg: ViTConfig) -> bool:
    """Whether `cfg` needs transformers' BEiT: relative position tables, q and v biases without a key bias, or
    the mean of the patches after a class token, normed after the pooling (BEiT's use_mean_pooling)."""
    return cfg.rel_pos_bias or cfg.shared_rel_pos_bias or (cfg.qkv_bias and not cfg.k_bias) or (
        cfg.pool == "gap" and cfg.fc_norm and cfg.has_class_token)


def beit_unexpressible(cfg: ViTConfig) -> list[str]:
    """What in a BEiT-like `cfg` transformers' BeitModel and BeitForImageClassification do not compute."""
    gh, gw = cfg.grid_size
    checks = [
        (not (cfg.has_class_token and cfg.num_prefix_tokens == 1), "prefix tokens other than BEiT's one class token"),
        (cfg.pool not in ("token", "gap"), f"pooling {cfg.pool!r}: BEiT reads the class token or the patches' mean"),
        (cfg.pool == "gap" and (not cfg.fc_norm or cfg.pool_include_prefix),
         "a mean pooling other than BEiT's (the patch tokens' mean, then its norm)"),
        (cfg.pool == "token" and cfg.fc_norm, "a norm after the class token: BEiT normalises every token before it"),
        (not cfg.final_norm, "no final norm: transformers' BEiT ends in a LayerNorm"),
        (not cfg.qkv_bias or cfg.k_bias, ("attention biases other than BEiT's (on the queries and values, none on the "
                                          "keys)")),
        ((cfg.rel_pos_bias or cfg.shared_rel_pos_bias) and gh != gw,
         (f"a relative position table for a {gh}x{gw} grid: transformers' BEiT reads one of a non-square grid "
          "transposed")),
        (not isinstance(cfg.patch_size, int), "non-square patches: transformers' BEiT divides by one patch size"),
        (cfg.hybrid_layers is not None, "a ResNet stem before the patch embedding"),
        (cfg.norm != "layernorm", f"{cfg.norm} layers: BEiT normalises with LayerNorm"),
        (cfg.block != "pre_norm", f"{cfg.block} blocks: BEiT's blocks are pre-norm"),
        (cfg.pre_norm or cfg.patch_norm or cfg.patch_pre_norm or cfg.qk_norm or cfg.scale_attn_norm
         or cfg.scale_mlp_norm, "norms BEiT has not (before the blocks, in the patch embedding, on q and k, in "
                                "the attention or the MLP)"),
        (not cfg.patch_bias or not cfg.proj_bias, "projections without bias"),
        (cfg.pos_embed == "sincos2d" or cfg.no_embed_class, "a position embedding other than BEiT's learned one"),
        (cfg.mlp != "mlp", f"a {cfg.mlp} MLP: BEiT's is fc1, activation, fc2"),
        (cfg.attn_head_dim is not None or cfg.kv_heads is not None, "attention heads not of the width's split"),
        (cfg.rope != "none", "rotary position embeddings"),
        (cfg.layer_scale and not cfg.mlp_layer_scale, "layer scale on the attention branch only"),
        (bool(cfg.representation_size), "a representation layer: BEiT's pooler has none"),
        (cfg.head_norm != "none", "a head on the unit-length features (a zero-shot classifier): transformers' "
                                  "classifiers read the features as they are"),
        (cfg.act not in hf_layouts.EXPORT_ACTIVATIONS, f"activation {cfg.act}"),
    ]
    return [why for failed, why in checks if failed]


def _hidden(cfg: ViTConfig) -> int:
    """The MLP's hidden width as transformers counts it (a packed SwiGLU's fc1 holds two of them)."""
    return cfg.mlp_dim // 2 if cfg.mlp == "swiglu_packed" else cfg.mlp_dim


def target_layout(cfg: ViTConfig, features: bool = False, where: str = "model") -> HfLayout:
    """The transformers model that computes what `cfg` does (its features only, with `features`)."""
    problems = beit_unexpressible(cfg) if is_beit(cfg) else unexpressible(cfg, features)
    if problems:
        raise VitConvertError(f"{where}: transformers cannot express this model: {'; '.join(problems)}; "
                              "nothing was written")
    head = cfg.num_classes > 0 and not features
    if is_beit(cfg):
        return HfLayout("beit", "beit." if head else "", "classifier" if head else None, qkv_bias=True,
                        abs_pos=cfg.pos_embed == "learn", rel_pos=cfg.rel_pos_bias,
                        shared_rel_pos=cfg.shared_rel_pos_bias, layer_scale=cfg.layer_scale,
                        beit_norm="pooler" if cfg.pool == "gap" else "encoder")
    if cfg.layer_scale:
        return HfLayout("dinov2_with_registers" if cfg.reg_tokens else "dinov2", qkv_bias=cfg.qkv_bias, mlp=cfg.mlp)
    if cfg.distilled or cfg.reg_tokens:
        kind = None if not head else "teacher" if cfg.distilled else "classifier"
        return HfLayout("deit", "deit." if kind else "", kind, bool(cfg.representation_size), cfg.qkv_bias,
                      second_token="dist_token" if cfg.distilled else "reg_token")
    return HfLayout("vit", "vit." if head else "", "classifier" if head else None, bool(cfg.representation_size),
                  cfg.qkv_bias)


# Classes that compute what a layout's does, under another model type: ViTMSN's are ViT's without the pooler.
ALTERNATIVES = {("vit", None, False): "vit_msn", ("vit", "classifier", False): "vit_msn"}


def choose_layout(record: WeightsRecord, features: bool, architecture: str | None, where: str) -> HfLayout:
    """`target_layout`, or the class named by `architecture` (by default the file's own transformers class)
    where it computes the same."""
    layout = target_layout(record.config, features, where)
    same = {layout.architecture: layout}
    if (kind := ALTERNATIVES.get((layout.model_type, layout.head, layout.pooler))) is not None:
        other = dataclasses.replace(layout, model_type=kind)
        same[other.architecture] = other
    if architecture is None:
        source = record.source.format.removeprefix("transformers/")
        return same.get(source, layout)
    if architecture not in same:
        raise VitConvertError(f"{where}: transformers' {architecture} does not compute this model; "
                              f"{' or '.join(same)} does: nothing was written")
    return same[architecture]


def hf_config(record: WeightsRecord, layout: HfLayout, dtype: str) -> dict[str, Any]:
    """config.json for `layout`, from our record."""
    cfg = record.config
    h, w = cfg.img_size
    d: dict[str, Any] = {
        "architectures": [layout.architecture], "model_type": layout.model_type, "hidden_size": cfg.embed_dim,
        "num_hidden_layers": cfg.depth, "num_attention_heads": cfg.num_heads,
        "hidden_act": hf_layouts.EXPORT_ACTIVATIONS[cfg.act], "layer_norm_eps": cfg.ln_eps,
        "image_size": h if h == w else [h, w], "patch_size": cfg.patch_size if isinstance(cfg.patch_size, int)
        else list(cfg.patch_size), "num_channels": cfg.in_chans, "qkv_bias": cfg.qkv_bias,
        "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, "initializer_range": 0.02, "dtype": dtype,
    }
    if layout.beit:
        del d["qkv_bias"]  # BEiT's queries and values have a bias, its keys none
        d.update(intermediate_size=cfg.mlp_dim, use_absolute_position_embeddings=layout.abs_pos,
                 use_relative_position_bias=layout.rel_pos, use_shared_relative_position_bias=layout.shared_rel_pos,
                 layer_scale_init_value=0.1 if layout.layer_scale else 0.0, use_mean_pooling=cfg.pool == "gap",
                 use_mask_token=False, drop_path_rate=0.0)
    elif layout.family == "dinov2":
        d.update(mlp_ratio=hf_layouts.dinov2_mlp_ratio(cfg.embed_dim, _hidden(cfg), cfg.mlp != "mlp"),
                 use_swiglu_ffn=cfg.mlp != "mlp", layerscale_value=1.0, drop_path_rate=0.0)
        d.update(num_register_tokens=cfg.reg_tokens) if cfg.reg_tokens else d.update(use_mask_token=True)
    elif layout.model_type == "vit_msn":  # no pooler
        d.update(intermediate_size=cfg.mlp_dim)
    else:
        d.update(intermediate_size=cfg.mlp_dim, pooler_output_size=cfg.representation_size or cfg.embed_dim,
                 pooler_act="tanh", encoder_stride=cfg.patch_size if isinstance(cfg.patch_size, int) else 16)
    if layout.head:
        names = _class_names(record)
        d.update(id2label={str(i): name for i, name in enumerate(names)},
                 label2id={name: i for i, name in enumerate(names)})
    return d


def _class_names(record: WeightsRecord) -> list[str]:
    """The record's class names; transformers' placeholders (LABEL_0, ...) where it has none."""
    labels, n = record.labels, record.config.num_classes
    if isinstance(labels, str):
        return builtin_labels(labels)
    return list(labels) if labels else [f"LABEL_{i}" for i in range(n)]


def dinov3_unexpressible(cfg: ViTConfig) -> list[str]:
    """What in a DINOv3 model (rope 'dinov3') transformers' DINOv3ViTModel does not compute; [] if all is."""
    checks = [
        (cfg.num_classes > 0, "a classifier: DINOv3ViTModel is a backbone; export the features (--features)"),
        (cfg.pool != "token", f"pooling {cfg.pool!r}: DINOv3ViTModel's pooler_output is the class token"),
        (cfg.fc_norm or not cfg.final_norm or cfg.pre_norm, "other final norms than DINOv3ViTModel's one LayerNorm"),
        (cfg.norm != "layernorm" or cfg.block != "pre_norm", "other norms or blocks than DINOv3's pre-norm LayerNorm"),
        (cfg.pos_embed != "none", "an absolute position embedding beside RoPE"),
        (not cfg.rope_rotate_half or cfg.rope_normalize_coords != "separate" or cfg.rope_grid_offset
         or cfg.rope_grid_indexing != "ij", "another RoPE layout than DINOv3's (halves, 'separate', no offset)"),
        (not cfg.layer_scale or not cfg.mlp_layer_scale, "no layer scale on both branches: DINOv3ViTModel has it"),
        (cfg.mlp not in ("mlp", "swiglu"), f"a {cfg.mlp} MLP"),
        (not cfg.has_class_token or cfg.distilled or cfg.hybrid_layers is not None or cfg.patch_norm
         or not cfg.patch_bias or cfg.patch_pre_norm, "another patch embedding or prefix than DINOv3's"),
        (cfg.qk_norm or cfg.scale_attn_norm or cfg.scale_mlp_norm or cfg.kv_heads is not None
         or cfg.attn_head_dim is not None, "norms or heads inside the attention or MLP that DINOv3 has not"),
    ]
    return [why for failed, why in checks if failed]


def dinov3_config(record: WeightsRecord, dtype: str) -> dict[str, Any]:
    """config.json of a DINOv3ViTModel computing what `record`'s model does."""
    cfg = record.config
    h, w = cfg.img_size
    return {"architectures": [hf_dinov3.ARCHITECTURE], "model_type": hf_dinov3.MODEL_TYPE,
            "hidden_size": cfg.embed_dim, "num_hidden_layers": cfg.depth, "num_attention_heads": cfg.num_heads,
            "intermediate_size": cfg.mlp_dim, "hidden_act": hf_layouts.EXPORT_ACTIVATIONS[cfg.act],
            "layer_norm_eps": cfg.ln_eps, "rope_theta": cfg.rope_temperature, "image_size": h if h == w else [h, w],
            "patch_size": cfg.patch_hw[0] if cfg.patch_hw[0] == cfg.patch_hw[1] else list(cfg.patch_hw),
            "num_channels": cfg.in_chans, "query_bias": cfg.qkv_bias, "key_bias": cfg.qkv_bias and cfg.k_bias,
            "value_bias": cfg.qkv_bias, "proj_bias": cfg.proj_bias, "mlp_bias": cfg.proj_bias,
            "layerscale_value": 1.0, "drop_path_rate": 0.0, "use_gated_mlp": cfg.mlp == "swiglu",
            "num_register_tokens": cfg.reg_tokens, "attention_dropout": 0.0, "initializer_range": 0.02,
            "dtype": dtype}


def export_hf(src: str | os.PathLike, dst: str | os.PathLike, *, features: bool = False,
              force: bool = False, architecture: str | None = None) -> HfExport:
    """Write our weights file `src` as a transformers model directory `dst`.

    features: leave the classifier out (ViTModel, DeiTModel or Dinov2Model, for AutoModel); a model without
    a head always is. dst must not exist, or be empty; with `force`, a directory holding only what an export
    writes is replaced. architecture: the transformers class to write, where more than one computes the model
    (ViTModel or ViTMSNModel, ...); default: the file's own (hf2torch's source), else ViT's, DeiT's or Dinov2's.
    Refused, naming every reason, when transformers cannot express the model.
    """
    src = check_input(src, "a vitconvert weights file")
    record = read_record(src)
    if record.config.rope == "dinov3":
        return _export_dinov3(src, dst, record, features, force)
    layout = choose_layout(record, features, architecture, str(src))
    reader = SafetensorsReader(src)
    dtype = _dtype(reader)
    dropped = [k for k in reader.shapes if k.startswith(("head.", "head_dist."))] if layout.head is None else []
    specs = plan_tensors(hf_layouts.export_rules(layout), reader, block_bindings(record.config.depth),
                         where=str(src), ignore=dropped)
    specs += [TensorSpec(name, (1, record.config.embed_dim), lambda d=record.config.embed_dim: np.zeros((1, d)))
              for name in hf_layouts.UNUSED.get(layout.model_type, ())]
    processor, notes = processor_for(record.preprocess)
    if layout.beit:
        notes += _beit_resize_notes(record.config)
    with atomic_directory(dst, force, replaceable=frozenset(FILES).__contains__) as tmp:
        _write_json(tmp / "config.json", hf_config(record, layout, dtype))
        _write_json(tmp / "preprocessor_config.json", processor)
        write_safetensors(tmp / "model.safetensors", specs, dtype, {"format": "pt"})
    return HfExport(path=Path(dst), architecture=layout.architecture, model_type=layout.model_type,
                    processor=processor["image_processor_type"], files=FILES, notes=tuple(notes))


def _beit_resize_notes(cfg: ViTConfig) -> list[str]:
    """Where transformers' BEiT resamples for other input sizes otherwise than the file says (at its own size the
    two are the same)."""
    notes = []
    if (cfg.rel_pos_bias or cfg.shared_rel_pos_bias) and cfg.rel_pos_resize != "transformers":
        notes.append(f"at other input sizes transformers resamples the relative position tables bilinearly, the file "
                     f"by {cfg.rel_pos_resize}'s rule")
    if cfg.pos_embed == "learn" and cfg.pos_resize != "transformers":
        notes.append(f"at other input sizes transformers resamples the position embeddings its own way, the file by "
                     f"{cfg.pos_resize!r}")
    return notes


def _dtype(reader: SafetensorsReader) -> str:
    return next(name for name, (code, _) in STORAGE.items() if code == next(iter(reader.dtypes.values())))


def _export_dinov3(src: Path, dst: str | os.PathLike, record: WeightsRecord, features: bool, force: bool) -> HfExport:
    """A DINOv3 model (rope 'dinov3') as transformers' DINOv3ViTModel, through hf_dinov3's table."""
    cfg = record.config.replace(num_classes=0) if features else record.config
    if problems := dinov3_unexpressible(cfg):
        raise VitConvertError(f"{src}: transformers' DINOv3ViTModel cannot express this model: {'; '.join(problems)}; "
                              "nothing was written")
    reader = SafetensorsReader(src)
    dtype = _dtype(reader)
    dropped = [k for k in reader.shapes if k.startswith("head.")]
    specs = plan_tensors(hf_dinov3.export_rules(cfg), reader, block_bindings(cfg.depth), where=str(src),
                         ignore=dropped)
    # transformers' own initial value: the mask token is pre-training only, and nothing should load uninitialised.
    specs.append(TensorSpec("embeddings.mask_token", (1, 1, cfg.embed_dim), lambda: np.zeros((1, 1, cfg.embed_dim))))
    if not cfg.reg_tokens:  # transformers holds an empty table then
        specs.append(TensorSpec("embeddings.register_tokens", (1, 0, cfg.embed_dim),
                                lambda: np.zeros((1, 0, cfg.embed_dim))))
    processor, notes = processor_for(record.preprocess)
    with atomic_directory(dst, force, replaceable=frozenset(FILES).__contains__) as tmp:
        _write_json(tmp / "config.json", dinov3_config(record, dtype))
        _write_json(tmp / "preprocessor_config.json", processor)
        write_safetensors(tmp / "model.safetensors", specs, dtype, {"format": "pt"})
    return HfExport(path=Path(dst), architecture=hf_dinov3.ARCHITECTURE, model_type=hf_dinov3.MODEL_TYPE,
                    processor=processor["image_processor_type"], files=FILES, notes=tuple(notes))


def _write_json(path: Path, value: dict[str, Any]) -> None:
    path.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")

