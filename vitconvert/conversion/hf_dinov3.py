"""transformers' DINOv3ViTModel directories to our weights file (the hf-dinov3 source format), and the table
`export --to hf` writes them back with.

SRC is what `save_pretrained` writes (config.json of model_type 'dinov3_vit', model.safetensors or
pytorch_model.bin, preprocessor_config.json), or its weights file with config.json beside it; read as
hf.py reads transformers' other ViTs (config.json as JSON: transformers is never imported). The names are
the serialized ones (`layer.N.attention.q_proj`, ...) or transformers 5's module names (`model.layer.N...`,
a state_dict saved as it is). Our model is the one DINOv3's own release files convert to (conversion/dinov3.py):
q/k/v fused into qkv, the key bias transformers leaves out (key_bias false) left out as q_bias/v_bias,
lambda1 as layer scale, the register tokens ours, RoPE 'dinov3' with config.json's rope_theta as the base.
Where the weights hold RoPE's inverse frequencies (`rope_embeddings.inv_freq`, not persistent in transformers
5) they must be rope_theta's.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core.config import ViTConfig
from ..core.errors import VitConvertError
from ..core.json_types import is_int, is_real
from . import hf_layouts
from .hf import HfReader
from .hf_preprocess import preprocess_from
from .mapping import IDENTITY, Op, Rule, Shape, block_bindings
from .source import Detection, Plan, Probe, Request, SourceFormat

MODEL_TYPE = "dinov3_vit"
ARCHITECTURE = "DINOv3ViTModel"
# DINOv3ViTConfig's defaults (transformers 5.25), for the keys a config.json leaves out.
DEFAULTS: dict[str, Any] = dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536,
                                hidden_act="gelu", layer_norm_eps=1e-5, rope_theta=100.0, image_size=224,
                                patch_size=16, num_channels=3, query_bias=True, key_bias=False, value_bias=True,
                                proj_bias=True, mlp_bias=True, layerscale_value=1.0, use_gated_mlp=False,
                                num_register_tokens=0)
MASK_TOKEN = "DINOv3's masked-patch token: pre-training only"
NO_REGISTERS = "an empty table: the model has no register tokens (num_register_tokens 0)"
INV_FREQ = "RoPE's inverse frequencies, which our model computes from rope_theta: checked equal"
# Relative difference allowed between stored inverse frequencies and rope_theta's: float32 rounding of a power.
INV_FREQ_RTOL = 1e-6


@dataclass(frozen=True)
class Names:
    """Which names a checkpoint uses: the serialized ones, or transformers 5's module names."""

    modular: bool = False

    @property
    def block(self) -> str:
        return "model.layer.{i}." if self.modular else "layer.{i}."


def pairs(cfg: ViTConfig, names: Names = Names()) -> list[tuple[str, tuple[str, ...], str | None]]:
    """(our tensor, theirs whose rows concatenated make it, 'block' where once per layer) for `cfg`."""
    b = names.block
    table: list[tuple[str, tuple[str, ...], str | None]] = [
        ("cls_token", ("embeddings.cls_token",), None),
        ("patch_embed.proj.weight", ("embeddings.patch_embeddings.weight",), None),
        ("patch_embed.proj.bias", ("embeddings.patch_embeddings.bias",), None)]
    if cfg.reg_tokens:
        table.append(("reg_token", ("embeddings.register_tokens",), None))
    blocks = [("norm1.weight", "norm1.weight"), ("norm1.bias", "norm1.bias"), ("norm2.weight", "norm2.weight"),
              ("norm2.bias", "norm2.bias"), ("attn.proj.weight", "attention.o_proj.weight"),
              ("ls1.gamma", "layer_scale1.lambda1"), ("ls2.gamma", "layer_scale2.lambda1")]
    if cfg.proj_bias:
        blocks.append(("attn.proj.bias", "attention.o_proj.bias"))
    mlp = ([("fc1_g", "gate_proj"), ("fc1_x", "up_proj"), ("fc2", "down_proj")] if cfg.mlp == "swiglu"
           else [("fc1", "up_proj"), ("fc2", "down_proj")])
    blocks += [(f"mlp.{ours}.{p}", f"mlp.{theirs}.{p}") for ours, theirs in mlp
               for p in (("weight", "bias") if cfg.proj_bias else ("weight",))]
    table += [(f"blocks.{{i}}.{ours}", (f"{b}{theirs}",), "block") for ours, theirs in blocks]
    qkv = tuple(f"{b}attention.{x}_proj" for x in "qkv")
    table.append(("blocks.{i}.attn.qkv.weight", tuple(f"{n}.weight" for n in qkv), "block"))
    if cfg.qkv_bias and cfg.k_bias:
        table.append(("blocks.{i}.attn.qkv.bias", tuple(f"{n}.bias" for n in qkv), "block"))
    elif cfg.qkv_bias:
        table += [("blocks.{i}.attn.q_bias", (f"{qkv[0]}.bias",), "block"),
                  ("blocks.{i}.attn.v_bias", (f"{qkv[2]}.bias",), "block")]
    return table + [(f"norm.{p}", (f"norm.{p}",), None) for p in ("weight", "bias")]


def _concat_shape(*shapes: Shape) -> Shape:
    if any(s[1:] != shapes[0][1:] for s in shapes):
        raise ValueError("the parts differ beyond their rows")
    return (sum(s[0] for s in shapes), *shapes[0][1:])


CONCAT = Op("rows concatenated", lambda *a: np.concatenate(a, axis=0), _concat_shape)


def _rows(j: int, n: int) -> Op:
    """Part j of n equal row blocks."""
    def shape(s: Shape) -> Shape:
        if s[0] % n:
            raise ValueError(f"{s[0]} rows do not split in {n}")
        return (s[0] // n, *s[1:])

    return Op(f"row block {j} of {n}", lambda a: a[j * (a.shape[0] // n):(j + 1) * (a.shape[0] // n)], shape)


def import_rules(cfg: ViTConfig, names: Names) -> list[Rule]:
    return [Rule(ours, theirs, IDENTITY if len(theirs) == 1 else CONCAT, over=over)
            for ours, theirs, over in pairs(cfg, names)]


def export_rules(cfg: ViTConfig) -> list[Rule]:
    """transformers' serialized tensors from ours (each of theirs a row block of one of ours)."""
    return [Rule(t, (ours,), IDENTITY if len(theirs) == 1 else _rows(j, len(theirs)), over=over)
            for ours, theirs, over in pairs(cfg) for j, t in enumerate(theirs)]


def config_from_json(config: Mapping[str, Any], where: str) -> ViTConfig:
    """Our config from a DINOv3ViTConfig's config.json (its defaults for keys it leaves out)."""
    def get(key: str) -> Any:
        return config.get(key, DEFAULTS[key])

    act = get("hidden_act")
    if not isinstance(act, str) or act not in hf_layouts.ACTIVATIONS:
        raise VitConvertError(f"{where}: hidden_act {act!r} is not one our model runs "
                              f"({', '.join(sorted(hf_layouts.ACTIVATIONS))})")
    biases = (get("query_bias"), get("key_bias"), get("value_bias"))
    if biases not in ((True, False, True), (True, True, True), (False, False, False)):
        raise VitConvertError(f"{where}: query_bias, key_bias, value_bias {list(biases)}: our attention has a bias "
                              "on all three, on the queries and values, or on none")
    if get("proj_bias") != get("mlp_bias"):
        raise VitConvertError(f"{where}: proj_bias {get('proj_bias')} and mlp_bias {get('mlp_bias')}: our model "
                              "has biases on both or on neither")
    theta = get("rope_theta")
    if not is_real(theta) or theta <= 0:
        raise VitConvertError(f"{where}: rope_theta must be a positive number, got {theta!r}")
    size, patch = (tuple(v) if isinstance(v, list) else (v, v) if is_int(v) else v
                   for v in (get("image_size"), get("patch_size")))
    try:
        return ViTConfig(img_size=size, patch_size=patch, in_chans=get("num_channels"), embed_dim=get("hidden_size"),
                         depth=get("num_hidden_layers"), num_heads=get("num_attention_heads"),
                         mlp_dim=get("intermediate_size"), mlp="swiglu" if get("use_gated_mlp") else "mlp",
                         act=hf_layouts.ACTIVATIONS[act], ln_eps=get("layer_norm_eps"), qkv_bias=biases[0],
                         k_bias=biases[1] or not biases[0], proj_bias=get("proj_bias"), layer_scale=True,
                         reg_tokens=get("num_register_tokens"), pos_embed="none", rope="dinov3",
                         rope_temperature=float(theta), rope_rotate_half=True, rope_normalize_coords="separate",
                         pool="token", num_classes=0)
    except (VitConvertError, TypeError) as e:
        raise VitConvertError(f"{where}: {e}") from None


def inv_freq(theta: float, head_dim: int) -> np.ndarray:
    """transformers' DINOv3ViTRopePositionEmbedding.inv_freq, 1 / theta ** arange(0, 1, 4 / head_dim), float32."""
    return (1 / theta ** np.arange(0, 1, 4 / head_dim, dtype=np.float32)).astype(np.float32)


def _check_inv_freq(reader: HfReader, key: str, cfg: ViTConfig, where: str) -> None:
    stored, expected = reader.read(key), inv_freq(cfg.rope_temperature, cfg.head_dim)
    if stored.shape != expected.shape or not np.allclose(stored, expected, rtol=INV_FREQ_RTOL, atol=0):
        implied = f"rope_theta {1 / float(stored[1]) ** (1 / (4 / cfg.head_dim)):.6g}" if stored.shape == \
            expected.shape and stored[1] > 0 else f"{len(stored)} frequencies"
        raise VitConvertError(f"{where}: config.json's rope_theta {cfg.rope_temperature:g} is not the one the "
                              f"weights imply: {key} holds the inverse frequencies of {implied}")


def _plan(reader: HfReader, request: Request) -> Plan:
    found = reader.found
    where, config_file = str(found.weights), str(found.weights.parent / "config.json")
    if found.config.get("model_type") != MODEL_TYPE:
        raise VitConvertError(f"{config_file}: model_type {found.config.get('model_type')!r}, not {MODEL_TYPE!r}")
    cfg = config_from_json(found.config, config_file)
    names = Names(modular=any(k.startswith("model.layer.") for k in reader.shapes))
    freq = next((k for k in reader.shapes if k.endswith("rope_embeddings.inv_freq")), None)
    if freq is not None:
        _check_inv_freq(reader, freq, cfg, where)
    processor = found.processor or {"image_processor_type": "DINOv3ViTImageProcessor"}
    preprocess, notes = preprocess_from(processor, "vit", cfg.img_size, where)
    notes = [f"transformers' {ARCHITECTURE}: RoPE base rope_theta {cfg.rope_temperature:g}; register tokens kept as "
             "reg_token; pooled by the class token (its pooler_output), no head", *notes]
    if names.modular:
        notes.append("tensors named as transformers 5's modules (a state_dict saved as it is)")
    left_out = {k: MASK_TOKEN for k in reader.shapes if k.endswith("embeddings.mask_token")}
    if not cfg.reg_tokens and "embeddings.register_tokens" in reader.shapes:
        left_out["embeddings.register_tokens"] = NO_REGISTERS
    if freq is not None:
        left_out[freq] = INV_FREQ
    return Plan(config=cfg, rules=import_rules(cfg, names), bindings=block_bindings(cfg.depth),
                source_format=f"transformers/{ARCHITECTURE}", preprocess=preprocess, labels=None, notes=notes,
                left_out=left_out)


def _detect(probe: Probe) -> Detection | None:
    """A directory with config.json of model_type 'dinov3_vit', or a weights file with one beside it."""
    if probe.kind.kind not in ("directory", "safetensors", "pickle", "torch-zip"):
        return None
    config = (probe.path if probe.kind.kind == "directory" else probe.path.parent) / "config.json"
    try:
        kind = json.loads(config.read_text(encoding="utf-8")).get("model_type") if config.is_file() else None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        kind = None
    if kind != MODEL_TYPE or probe.kind.kind != "directory" and "embeddings.cls_token" not in probe.keys:
        return None
    return Detection(1.0, f"config.json with model_type {MODEL_TYPE!r}")


HF_DINOV3 = SourceFormat(
    name="hf-dinov3", summary="Hugging Face transformers DINOv3ViTModel (save_pretrained's directory, or its weights)",
    detect=_detect, open=HfReader, plan=_plan,
    example="vitconvert convert dinov3-vitb16-pretrain-lvd1689m/ dinov3-vitb16.safetensors",
    looks_for=f"a directory (or a weights file beside) with a config.json of model_type {MODEL_TYPE!r}")
