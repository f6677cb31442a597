"""transformers' ViT, DeiT, Dinov2 (with registers too), ViTMSN, ViTMAE, BEiT and Data2VecVision checkpoints as
data: which of their tensors make which of ours, in both directions (hf2torch reads the table one way, `export
--to hf` the other).

A `Pair` says that our tensors' rows, concatenated, are the same matrix as theirs concatenated: q, k and v
are our fused qkv; the gate and up halves of Dinov2's SwiGLU are one packed fc1 on one side or the other.
Every op is a partition of rows, so one table serves both directions; nothing is transposed (transformers'
Linear weights are (out, in), as torch's and ours are).

Names: the serialized ones (what `save_pretrained` writes and every published checkpoint holds:
`encoder.layer.N.attention.attention.query`, ...), or transformers 5's module names
(`layers.N.attention.q_proj`, ...), which a `state_dict()` saved as it is holds; `detect` reads which from
the keys. Export writes the serialized names, which every transformers version reads.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ..core.errors import VitConvertError
from .mapping import IDENTITY, Op, Rule, Shape

MODEL_TYPES = ("vit", "deit", "dinov2", "dinov2_with_registers", "vit_msn", "vit_mae", "vit-hybrid", "beit",
               "data2vec-vision")
# BEiT's and Data2VecVision's models are one architecture under two names (transformers copies one into the other).
BEIT_TYPES = ("beit", "data2vec-vision")
# Which names each model type's tensors have: ViT's (ViTMSN, ViTMAE and BEiT copy its modules) or Dinov2's.
FAMILY = {"vit": "vit", "deit": "vit", "vit_msn": "vit", "vit_mae": "vit", "vit-hybrid": "vit", "dinov2": "dinov2",
          "dinov2_with_registers": "dinov2", "beit": "vit", "data2vec-vision": "vit"}
# base_model_prefix: where a model with a head (or ViTMAE's decoder) keeps the encoder.
BASE_PREFIX = {"vit": "vit.", "deit": "deit.", "vit_msn": "vit.", "vit_mae": "vit.", "vit-hybrid": "vit.",
               "dinov2": "dinov2.", "dinov2_with_registers": "dinov2_with_registers.", "beit": "beit.",
               "data2vec-vision": "data2vec_vision."}
# ViTHybrid's BiT backbone, under its patch embedding (transformers 4's deprecated vit_hybrid, whose forward is
# ViT's on the backbone's last feature map: `backbone(pixel_values).feature_maps[-1]`, then `projection`).
BIT = "embeddings.patch_embeddings.backbone.bit."
# transformers' config classes' defaults (5.23), for the keys a config.json leaves out, as transformers reads it.
DEFAULTS: dict[str, dict[str, object]] = {
    "vit": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                hidden_act="gelu", layer_norm_eps=1e-12, image_size=224, patch_size=16, num_channels=3,
                qkv_bias=True, pooler_act="tanh"),
    "dinov2": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, mlp_ratio=4, hidden_act="gelu",
                   layer_norm_eps=1e-6, image_size=224, patch_size=14, num_channels=3, qkv_bias=True,
                   use_swiglu_ffn=False),
}
DEFAULTS["deit"] = DEFAULTS["vit"]
# ViTMSN and ViTMAE have ViT's fields but the pooler's (they have none).
DEFAULTS["vit_mae"] = {k: v for k, v in DEFAULTS["vit"].items() if k != "pooler_act"}
DEFAULTS["vit_msn"] = {**DEFAULTS["vit_mae"], "layer_norm_eps": 1e-6}
DEFAULTS["dinov2_with_registers"] = {**DEFAULTS["dinov2"], "patch_size": 16, "num_register_tokens": 4}
# ViTHybridConfig's (transformers 4.45, deprecated/vit_hybrid; transformers 5 has no such class to read them from)
DEFAULTS["vit-hybrid"] = {**DEFAULTS["vit_mae"], "patch_size": 1}
DEFAULTS["beit"] = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                        hidden_act="gelu", layer_norm_eps=1e-12, image_size=224, patch_size=16, num_channels=3,
                        use_absolute_position_embeddings=False, use_relative_position_bias=False,
                        use_shared_relative_position_bias=False, layer_scale_init_value=0.1, use_mean_pooling=True)
DEFAULTS["data2vec-vision"] = DEFAULTS["beit"]
# transformers' activation names (its ACT2FN) -> ours. The tanh forms are one function written several ways
# (torch's kernel, or the formula in Python), equal up to float rounding.
ACTIVATIONS = {"gelu": "gelu", "gelu_python": "gelu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_python_tanh": "gelu_tanh",
               "gelu_new": "gelu_tanh", "gelu_fast": "gelu_tanh", "gelu_accurate": "gelu_tanh",
               "quick_gelu": "quick_gelu", "silu": "silu", "swish": "silu"}
# Ours -> the name export writes: torch's own kernels, as ours run them.
EXPORT_ACTIVATIONS = {"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "quick_gelu": "quick_gelu", "silu": "silu"}
ARCHITECTURES = {("vit", None): "ViTModel", ("vit", "classifier"): "ViTForImageClassification",
                 ("deit", None): "DeiTModel", ("deit", "classifier"): "DeiTForImageClassification",
                 ("deit", "teacher"): "DeiTForImageClassificationWithTeacher", ("dinov2", None): "Dinov2Model",
                 ("dinov2_with_registers", None): "Dinov2WithRegistersModel", ("vit_msn", None): "ViTMSNModel",
                 ("vit_msn", "classifier"): "ViTMSNForImageClassification", ("vit_mae", None): "ViTMAEModel",
                 ("vit_mae", "decoder"): "ViTMAEForPreTraining", ("vit-hybrid", None): "ViTHybridModel",
                 ("vit-hybrid", "classifier"): "ViTHybridForImageClassification",
                 ("beit", None): "BeitModel", ("beit", "classifier"): "BeitForImageClassification",
                 ("beit", "mim"): "BeitForMaskedImageModeling", ("data2vec-vision", None): "Data2VecVisionModel",
                 ("data2vec-vision", "classifier"): "Data2VecVisionForImageClassification"}
# Held by transformers' Dinov2Model but used only in masked-image pre-training: left out of our files, and
# written as zeros (transformers' own initial value) on export so that nothing loads uninitialised.
UNUSED = {"dinov2": ("embeddings.mask_token",), "dinov2_with_registers": ("embeddings.mask_token",)}


@dataclass(frozen=True)
class HfLayout:
    model_type: str  # one of MODEL_TYPES
    # Where the encoder's tensors are: '' in the bare encoders (ViTModel, ...), 'vit.' / 'deit.' under a head.
    prefix: str = ""
    # None; 'classifier' (on the class token); 'teacher' (DeiT's cls_classifier and distillation_classifier);
    # 'decoder' (ViTMAEForPreTraining's pixel decoder, which is left out: the encoder converts); 'mim'
    # (BeitForMaskedImageModeling's lm_head, left out: the encoder and the head's norm convert).
    head: str | None = None
    pooler: bool = False  # ViTModel's and DeiTModel's pooler, Dense + tanh on the class token
    qkv_bias: bool = True
    # Our MLP kind: 'mlp', or Dinov2's SwiGLU: 'swiglu_packed' (one fc1, gate rows first) or 'swiglu' (apart).
    mlp: str = "mlp"
    modular: bool = False  # transformers 5's module names instead of the serialized ones
    # Our name for DeiT's distillation token: 'dist_token' where a head reads it, else 'reg_token' (a token
    # after the class token that no head reads, which is what a register token is).
    second_token: str = "reg_token"
    # Where the encoder's layers are when not under `prefix`: transformers 5.25 saves ViTMSNForImageClassification's
    # as encoder.layer.N at the top (and loads them back so), beside vit.embeddings. None: under `prefix`.
    layer_prefix: str | None = None
    # BEiT's optional parts (model_type beit, data2vec-vision; their config.json's use_* flags): the position
    # embeddings, a relative position table per layer, one shared, the layer scales (lambda_1, lambda_2).
    abs_pos: bool = True
    rel_pos: bool = False
    shared_rel_pos: bool = False
    layer_scale: bool = False
    # Where BEiT's final norm is: 'pooler' (after the mean of the patches: use_mean_pooling; our fc_norm),
    # 'encoder' (on every token: our norm), 'mim' (BeitForMaskedImageModeling's own, on every token: our norm),
    # 'none' (a BeitModel saved without its pooler, under mean pooling: no norm at all).
    beit_norm: str = "none"

    @property
    def architecture(self) -> str:
        return ARCHITECTURES[(self.model_type, self.head)]

    @property
    def family(self) -> str:
        return FAMILY[self.model_type]

    @property
    def beit(self) -> bool:
        return self.model_type in BEIT_TYPES


@dataclass(frozen=True)
class Pair:
    """Our tensors and theirs, each side's rows concatenated being the same matrix."""

    ours: tuple[str, ...]
    theirs: tuple[str, ...]
    over: str | None = None  # 'block': once per layer, as {i}


def pairs(layout: HfLayout) -> list[Pair]:
    p, dinov2, modular = layout.prefix, layout.family == "dinov2", layout.modular
    emb = f"{p}embeddings."
    lp = p if layout.layer_prefix is None else layout.layer_prefix
    layer = f"{lp}layers.{{i}}." if modular and not dinov2 else f"{lp}encoder.layer.{{i}}."
    q, k, v, o = (("attention.q_proj", "attention.k_proj", "attention.v_proj", "attention.o_proj") if modular else
                  ("attention.attention.query", "attention.attention.key", "attention.attention.value",
                   "attention.output.dense"))
    norm1, norm2 = ("norm1", "norm2") if dinov2 else ("layernorm_before", "layernorm_after")
    fc1, fc2 = ("mlp.fc1", "mlp.fc2") if modular or dinov2 else ("intermediate.dense", "output.dense")
    table = [
        Pair(("patch_embed.proj.weight",), (f"{emb}patch_embeddings.projection.weight",)),
        Pair(("patch_embed.proj.bias",), (f"{emb}patch_embeddings.projection.bias",)),
    ]
    if layout.model_type == "dinov2_with_registers":  # the class token and its position: _registers_rules
        table.append(Pair(("reg_token",), (f"{emb}register_tokens",)))
    else:
        table.append(Pair(("cls_token",), (f"{emb}cls_token",)))
        if layout.abs_pos:
            table.append(Pair(("pos_embed",), (f"{emb}position_embeddings",)))
    if layout.model_type == "deit":
        table.append(Pair((layout.second_token,), (f"{emb}distillation_token",)))
    if layout.beit:
        table += _beit_pairs(layout, layer, q, v)
    for w in ("weight", "bias"):
        table.append(Pair((f"blocks.{{i}}.norm1.{w}",), (f"{layer}{norm1}.{w}",), "block"))
        if w == "weight" or layout.qkv_bias and not layout.beit:  # BEiT's q and v biases: _beit_pairs
            table.append(Pair((f"blocks.{{i}}.attn.qkv.{w}",), tuple(f"{layer}{n}.{w}" for n in (q, k, v)), "block"))
        table += [Pair((f"blocks.{{i}}.attn.proj.{w}",), (f"{layer}{o}.{w}",), "block"),
                  Pair((f"blocks.{{i}}.norm2.{w}",), (f"{layer}{norm2}.{w}",), "block")]
        if layout.mlp == "mlp":
            table += [Pair((f"blocks.{{i}}.mlp.fc1.{w}",), (f"{layer}{fc1}.{w}",), "block"),
                      Pair((f"blocks.{{i}}.mlp.fc2.{w}",), (f"{layer}{fc2}.{w}",), "block")]
        else:
            packed = ("mlp.fc1",) if layout.mlp == "swiglu_packed" else ("mlp.fc1_g", "mlp.fc1_x")
            gate_up = ("mlp.gate_proj", "mlp.up_proj") if modular else ("mlp.weights_in",)
            table += [Pair(tuple(f"blocks.{{i}}.{n}.{w}" for n in packed), tuple(f"{layer}{n}.{w}" for n in gate_up),
                           "block"),
                      Pair((f"blocks.{{i}}.mlp.fc2.{w}",),
                           (f"{layer}mlp.{'down_proj' if modular else 'weights_out'}.{w}",), "block")]
        if not layout.beit:
            table.append(Pair((f"norm.{w}",), (f"{p}layernorm.{w}",)))
        elif layout.beit_norm != "none":
            ours, theirs = {"pooler": ("fc_norm", f"{p}pooler.layernorm"), "encoder": ("norm", f"{p}layernorm"),
                            "mim": ("norm", "layernorm")}[layout.beit_norm]
            table.append(Pair((f"{ours}.{w}",), (f"{theirs}.{w}",)))
        if layout.pooler:
            table.append(Pair((f"pre_logits.fc.{w}",), (f"{p}pooler.dense.{w}",)))
        if layout.head == "classifier":
            table.append(Pair((f"head.{w}",), (f"classifier.{w}",)))
        elif layout.head == "teacher":
            table += [Pair((f"head.{w}",), (f"cls_classifier.{w}",)),
                      Pair((f"head_dist.{w}",), (f"distillation_classifier.{w}",))]
    if dinov2:
        table += [Pair((f"blocks.{{i}}.ls{n}.gamma",), (f"{layer}layer_scale{n}.lambda1",), "block") for n in (1, 2)]
    return table


def _beit_pairs(layout: HfLayout, layer: str, q: str, v: str) -> list[Pair]:
    """BEiT's own tensors: q and v biases (its keys have none), the layer scales, the relative position tables."""
    p, table = layout.prefix, "relative_position_bias.relative_position_bias_table"
    pairs_ = [Pair(("blocks.{i}.attn.q_bias",), (f"{layer}{q}.bias",), "block"),
              Pair(("blocks.{i}.attn.v_bias",), (f"{layer}{v}.bias",), "block")]
    if layout.layer_scale:
        pairs_ += [Pair((f"blocks.{{i}}.ls{n}.gamma",), (f"{layer}lambda_{n}",), "block") for n in (1, 2)]
    if layout.rel_pos:
        theirs = f"{layer}{table}" if layout.modular else f"{layer}attention.attention.{table}"
        pairs_.append(Pair(("blocks.{i}.attn.relative_position_bias_table",), (theirs,), "block"))
    if layout.shared_rel_pos:
        theirs = f"{p}shared_position_bias.relative_position_bias_table" if layout.modular else f"{p}encoder.{table}"
        pairs_.append(Pair(("rel_pos_bias.relative_position_bias_table",), (theirs,)))
    return pairs_


def _rows(part: int, parts: int) -> Op:
    """Row block `part` of `parts` equal blocks of the sources' rows, concatenated."""

    def apply(*arrays: np.ndarray) -> np.ndarray:
        whole = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
        n = whole.shape[0] // parts
        return whole[part * n:(part + 1) * n]

    def shape(*shapes: Shape) -> Shape:
        if any(not s for s in shapes) or len({s[1:] for s in shapes}) != 1:
            raise ValueError("their shapes differ beyond the rows")
        rows = sum(s[0] for s in shapes)
        if rows % parts:
            raise ValueError(f"{rows} rows do not split into {parts} equal parts")
        return (rows // parts, *shapes[0][1:])

    return Op(f"rows concatenated, block {part + 1} of {parts}", apply, shape)


def _rules(pairs_: list[Pair], to_ours: bool) -> list[Rule]:
    rules = []
    for pair in pairs_:
        targets, sources = (pair.ours, pair.theirs) if to_ours else (pair.theirs, pair.ours)
        for j, target in enumerate(targets):
            op = IDENTITY if len(targets) == len(sources) == 1 else _rows(j, len(targets))
            rules.append(Rule(target, sources, op, over=pair.over))
    return rules


def _add_class_position(cls: np.ndarray, pos: np.ndarray) -> np.ndarray:
    return cls + pos[:, :1]


def _class_position_shape(cls: Shape, pos: Shape) -> Shape:
    if len(cls) != 3 or len(pos) != 3 or cls[:2] != (1, 1) or pos[0] != 1 or cls[2] != pos[2] or pos[1] < 2:
        raise ValueError("expected (1, 1, D) and (1, 1 + patches, D)")
    return cls


def _with_zero_class_row(pos: np.ndarray) -> np.ndarray:
    return np.concatenate([np.zeros_like(pos[:, :1]), pos], axis=1)


def _registers_rules(layout: HfLayout, to_ours: bool) -> list[Rule]:
    """Dinov2WithRegisters adds position_embeddings[0] to the class token alone and never resizes it, and its
    register tokens get none. Ours, as timm stores DINOv2 with registers (no_embed_class): the class token with
    that row added (the same float32 sum transformers computes at every forward) and the patches' table;
    written back as that class token and a zero row before the patches' table, which computes the same."""
    emb = f"{layout.prefix}embeddings."
    cls, pos = f"{emb}cls_token", f"{emb}position_embeddings"
    if to_ours:
        return [Rule("cls_token", (cls, pos), Op("the class token plus its position embedding",
                                                 _add_class_position, _class_position_shape)),
                Rule("pos_embed", (pos,), Op("the patches' rows", lambda a: a[:, 1:],
                                             lambda s: (s[0], s[1] - 1, *s[2:]))),
                ]
    return [Rule(cls, ("cls_token",), IDENTITY),
            Rule(pos, ("pos_embed",), Op("a zero row for the class token, then the patches' rows",
                                         _with_zero_class_row, lambda s: (s[0], s[1] + 1, *s[2:])))]


def _bit_rules(layout: HfLayout) -> list[Rule]:
    """ViTHybrid's BiT (non-preactivation bottlenecks, TF 'SAME' padding) is timm's ResNetV2 of the R50 hybrids,
    which our model/hybrid.py builds: its WeightStandardizedConv2d is timm's StdConv2dSame (F.batch_norm over
    each kernel, eps 1e-8), stored standardized; its GroupNorms (eps 1e-5) are timm's. Bindings: jax_layouts'."""
    from .timm import TIMM_STD_CONV

    bit, unit = f"{layout.prefix}{BIT}", "patch_embed.backbone.stages.{si}.blocks.{ui}"
    src = f"{bit}encoder.stages.{{si}}.layers.{{ui}}"
    table = [Rule("{root}.conv.weight", (f"{bit}embedder.convolution.weight",), TIMM_STD_CONV, over="stem"),
             Rule(f"{unit}.downsample.conv.weight", (f"{src}.downsample.conv.weight",), TIMM_STD_CONV,
                  over="projection")]
    for w in ("weight", "bias"):
        table += [Rule(f"{{root}}.norm.{w}", (f"{bit}embedder.norm.{w}",), IDENTITY, over="stem"),
                  Rule(f"{unit}.downsample.norm.{w}", (f"{src}.downsample.norm.{w}",), IDENTITY, over="projection")]
    for r in (1, 2, 3):
        table += [Rule(f"{unit}.conv{r}.weight", (f"{src}.conv{r}.weight",), TIMM_STD_CONV, over="unit"),
                  *(Rule(f"{unit}.norm{r}.{w}", (f"{src}.norm{r}.{w}",), IDENTITY, over="unit")
                    for w in ("weight", "bias"))]
    return table


def bit_units(shapes: Mapping[str, Shape], prefix: str) -> tuple[int, ...]:
    """Units per stage of a ViTHybrid's BiT, counted from its keys."""
    found = {(int(m[1]), int(m[2])) for k in shapes
             if (m := re.match(re.escape(f"{prefix}{BIT}") + r"encoder\.stages\.(\d+)\.layers\.(\d+)\.", k))}
    return tuple(sum(1 for s, _ in found if s == stage) for stage in range(max((s for s, _ in found), default=-1) + 1))


def import_rules(layout: HfLayout) -> list[Rule]:
    """Their tensors -> ours."""
    extra = _registers_rules(layout, True) if layout.model_type == "dinov2_with_registers" else []
    extra += _bit_rules(layout) if layout.model_type == "vit-hybrid" else []
    return extra + _rules(pairs(layout), to_ours=True)


def export_rules(layout: HfLayout) -> list[Rule]:
    """Our tensors -> theirs."""
    extra = _registers_rules(layout, False) if layout.model_type == "dinov2_with_registers" else []
    return extra + _rules(pairs(layout), to_ours=False)


POOLER = "the pooler beside the classifier: transformers' classification models do not run it"
MASK_TOKENS = {"beit": "BEiT's mask_token: masked-image pre-training only",
               "data2vec-vision": "Data2VecVision's mask_token: masked-image pre-training only"}
MASK_TOKEN = "the mask_token: masked-image pre-training only"
DECODER = "ViTMAEForPreTraining's decoder: it reconstructs masked pixels in pre-training; the encoder converts"
INDEX_BUFFER = "relative_position_index: a buffer computed from the grid (older transformers saved it), not stored"
LM_HEAD = "BEiT's lm_head: the pre-training classifier over the visual tokenizer's codes"


def detect(model_type: str, shapes: Mapping[str, Shape], where: str) -> tuple[HfLayout, dict[str, str]]:
    """The layout of a checkpoint of `model_type` from its keys (which head, a pooler, which names), and the
    keys transformers would not run, which are left out, each with its reason: a pooler beside a classifier
    (transformers builds its classifiers without one), the mask tokens of masked-image pre-training, ViTMAE's
    decoder, BEiT's relative_position_index buffers and pre-training lm_head. qkv_bias, the MLP kind and
    BEiT's optional parts are the config's."""
    base = BASE_PREFIX[model_type]
    prefix = base if f"{base}embeddings.cls_token" in shapes else ""
    head = "teacher" if "cls_classifier.weight" in shapes else "classifier" if "classifier.weight" in shapes else None
    if model_type == "vit_mae" and any(k.startswith("decoder.") for k in shapes):
        head = "decoder"
    if model_type == "beit" and "lm_head.weight" in shapes:
        head = "mim"
    if FAMILY[model_type] == "dinov2" and head:
        name = ARCHITECTURES[(model_type, None)].removesuffix("Model")
        raise VitConvertError(
            f"{where}: {name}ForImageClassification classifies the class token and the mean of the patch tokens "
            "together (a classifier on 2 x hidden_size features), which our model does not express; its "
            f"encoder ({base}*) converts as a {name}Model, without the classifier")
    if (model_type, head) not in ARCHITECTURES:
        raise VitConvertError(f"{where}: a {model_type} checkpoint with a teacher's heads is not a model "
                              "transformers has")
    pooler = f"{prefix}pooler.dense.weight" in shapes
    ignored = dict.fromkeys((f"{prefix}{k}" for k in UNUSED.get(model_type, ())), MASK_TOKEN)
    if pooler and head:
        ignored |= dict.fromkeys((f"{prefix}pooler.dense.weight", f"{prefix}pooler.dense.bias"), POOLER)
    # ViTMSNModel(use_mask_token=True), BEiT's use_mask_token
    if model_type in ("vit_msn", *BEIT_TYPES) and f"{prefix}embeddings.mask_token" in shapes:
        ignored[f"{prefix}embeddings.mask_token"] = MASK_TOKENS.get(model_type, MASK_TOKEN)
    if head == "decoder":
        ignored |= dict.fromkeys(sorted(k for k in shapes if k.startswith("decoder.")), DECODER)
    if model_type in BEIT_TYPES:
        ignored |= {k: INDEX_BUFFER for k in shapes if k.endswith("relative_position_index")}
        ignored |= {k: LM_HEAD for k in shapes if k.startswith("lm_head.")}
    # The layers under the prefix, or (transformers 5.25's ViTMSN classifier) at the top beside it.
    layer_prefix = next((lp for lp in (prefix, "") for layers in ("layers", "encoder.layer")
                         if any(k.startswith(f"{lp}{layers}.0.") for k in shapes)), prefix)
    modular = any(f"{layer_prefix}{layers}.0.attention.q_proj.weight" in shapes
                  for layers in ("layers", "encoder.layer"))
    return HfLayout(model_type, prefix, head, pooler and not head, modular=modular,
                    second_token="dist_token" if head == "teacher" else "reg_token",
                    layer_prefix=None if layer_prefix == prefix else layer_prefix,
                    beit_norm=_beit_norm(prefix, shapes, where) if model_type in BEIT_TYPES else "none"), ignored


def _beit_norm(prefix: str, shapes: Mapping[str, Shape], where: str) -> str:
    """Where a BEiT checkpoint keeps its final norm (HfLayout.beit_norm), from its keys."""
    found = [name for name, key in (("pooler", f"{prefix}pooler.layernorm.weight"),
                                    ("encoder", f"{prefix}layernorm.weight"), ("mim", "layernorm.weight"))
             if key in shapes and (name != "mim" or prefix)]
    if len(found) > 1:
        raise VitConvertError(f"{where}: BEiT with two final norms ({' and '.join(found)}): our model has one")
    return found[0] if found else "none"


def dinov2_mlp_hidden(hidden_size: int, mlp_ratio: float, swiglu: bool) -> int:
    """The hidden width of transformers' Dinov2 MLP (its formula, 5.23): int(hidden_size * mlp_ratio); for
    its SwiGLU, two thirds of that rounded up to a multiple of 8."""
    width = int(hidden_size * mlp_ratio)
    return (int(width * 2 / 3) + 7) // 8 * 8 if swiglu else width


def dinov2_mlp_ratio(hidden_size: int, hidden: int, swiglu: bool) -> float | None:
    """An mlp_ratio for which transformers' formula gives `hidden` (an integer one where there is), or None."""
    near = round(1.5 * hidden) if swiglu else hidden
    widths = sorted(range(max(near - 12, 1), near + 13), key=lambda w: (w % hidden_size != 0, abs(w - near)))
    for width in widths:
        ratio = width / hidden_size
        for candidate in (ratio, math.nextafter(ratio, math.inf)):  # the product may round to width - epsilon
            if dinov2_mlp_hidden(hidden_size, candidate, swiglu) == hidden:
                return int(candidate) if candidate == int(candidate) else candidate
    return None
