"""torchvision's VisionTransformer state dicts (`vit_b_16`, `vit_b_32`, `vit_l_16`, `vit_l_32`, `vit_h_14`) to
our weights file: the torchvision source format.

The architecture is read from the shapes and must be one of the five builders' (`model=` names which; a
custom `VisionTransformer(...)` converts when `num_heads` is given, as the head count is not in the weights).
The preprocessing is the weight enum's (`ViT_*_Weights.*`: its `ImageClassification(crop_size, resize_size,
interpolation)` partial, ImageNet's mean and std), named by `weights_enum` or, where the shapes leave one
choice, chosen from the model and its input size. Everything else is fixed in torchvision's code:
LayerNorm eps 1e-6, exact GELU, qkv biases (nn.MultiheadAttention), the class token, a tanh pre_logits
layer when representation_size is set, and its `interpolate_embeddings` for other input sizes (bicubic,
align_corners=True: pos_resize 'torchvision').

torchvision is never imported: the enums' transforms are written out below (torchvision 0.29.1's
vision_transformer.py) and a test holds them to the installed torchvision.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace

from ..core.config import ViTConfig
from ..core.errors import VitConvertError
from ..formats.weights_file import Preprocess
from .hf import read_weights
from .hf_preprocess import crop_pct_for
from .mapping import IDENTITY, Rule, Shape, block_bindings
from .source import Detection, Option, Plan, Probe, Reader, Request, SourceFormat

# The builders: (hidden_dim, num_layers, num_heads, mlp_dim, patch_size), vision_transformer.py's arguments.
ARCHITECTURES: dict[str, tuple[int, int, int, int, int]] = {
    "vit_b_16": (768, 12, 12, 3072, 16),
    "vit_b_32": (768, 12, 12, 3072, 32),
    "vit_l_16": (1024, 24, 16, 4096, 16),
    "vit_l_32": (1024, 24, 16, 4096, 32),
    "vit_h_14": (1280, 32, 16, 5120, 14),
}
# torchvision's norm_layer default, partial(nn.LayerNorm, eps=1e-6).
LN_EPS = 1e-6
# ImageClassification's defaults (torchvision/transforms/_presets.py).
IMAGENET_MEAN_STD = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
DEFAULT_RESIZE = 256


@dataclass(frozen=True)
class WeightsEnum:
    """One `ViT_*_Weights` member: its model, and its transforms' ImageClassification(crop_size,
    resize_size, interpolation) (the mean and std are ImageNet's in every one)."""

    model: str
    crop: int
    resize: int = DEFAULT_RESIZE
    interpolation: str = "bilinear"

    @property
    def preprocess(self) -> Preprocess:
        # ImageClassification resizes the short side to resize_size and crops crop_size from the centre:
        # our 'crop' with floor(crop / crop_pct) = resize_size, which crop_pct_for makes exact.
        mean, std = IMAGENET_MEAN_STD
        return Preprocess(size=(self.crop, self.crop), resize="crop",
                          crop_pct=min(crop_pct_for(self.crop, self.resize), 1.0),
                          interpolation=self.interpolation, mean=mean, std=std)


# torchvision 0.29.1's weight enums, as its vision_transformer.py defines them (a test reads them back).
WEIGHTS: dict[str, WeightsEnum] = {
    "ViT_B_16_Weights.IMAGENET1K_V1": WeightsEnum("vit_b_16", 224),
    "ViT_B_16_Weights.IMAGENET1K_SWAG_E2E_V1": WeightsEnum("vit_b_16", 384, 384, "bicubic"),
    "ViT_B_16_Weights.IMAGENET1K_SWAG_LINEAR_V1": WeightsEnum("vit_b_16", 224, 224, "bicubic"),
    "ViT_B_32_Weights.IMAGENET1K_V1": WeightsEnum("vit_b_32", 224),
    "ViT_L_16_Weights.IMAGENET1K_V1": WeightsEnum("vit_l_16", 224, 242),
    "ViT_L_16_Weights.IMAGENET1K_SWAG_E2E_V1": WeightsEnum("vit_l_16", 512, 512, "bicubic"),
    "ViT_L_16_Weights.IMAGENET1K_SWAG_LINEAR_V1": WeightsEnum("vit_l_16", 224, 224, "bicubic"),
    "ViT_L_32_Weights.IMAGENET1K_V1": WeightsEnum("vit_l_32", 224),
    "ViT_H_14_Weights.IMAGENET1K_SWAG_E2E_V1": WeightsEnum("vit_h_14", 518, 518, "bicubic"),
    "ViT_H_14_Weights.IMAGENET1K_SWAG_LINEAR_V1": WeightsEnum("vit_h_14", 224, 224, "bicubic"),
}

LAYER = "encoder.layers.encoder_layer_{i}."
_LAYER = re.compile(r"^encoder\.layers\.encoder_layer_(\d+)\.")
# MLPBlock before torchvision 0.14 (pytorch/vision#6053) named its Linears linear_1 and linear_2; torchvision's
# own loader renames them to 0 and 3, and so does this table.
MLP_NAMES = {"current": ("mlp.0", "mlp.3"), "legacy": ("mlp.linear_1", "mlp.linear_2")}
MARKS = ("class_token", "encoder.pos_embedding")


def rules(mlp: tuple[str, str], pre_logits: bool) -> list[Rule]:
    """torchvision's names -> ours (timm's): renames only, as nn.MultiheadAttention's in_proj is q, k, v stacked
    like timm's qkv and every Linear is (out, in) on both sides."""
    table = [Rule("patch_embed.proj.weight", ("conv_proj.weight",), IDENTITY),
             Rule("patch_embed.proj.bias", ("conv_proj.bias",), IDENTITY),
             Rule("cls_token", ("class_token",), IDENTITY),
             Rule("pos_embed", ("encoder.pos_embedding",), IDENTITY)]
    block = [("norm1", "ln_1"), ("attn.proj", "self_attention.out_proj"), ("norm2", "ln_2"),
             ("mlp.fc1", mlp[0]), ("mlp.fc2", mlp[1])]
    for w in ("weight", "bias"):
        table += [Rule(f"blocks.{{i}}.{ours}.{w}", (f"{LAYER}{theirs}.{w}",), IDENTITY, over="block")
                  for ours, theirs in block]
        table += [Rule(f"blocks.{{i}}.attn.qkv.{w}", (f"{LAYER}self_attention.in_proj_{w}",), IDENTITY, over="block"),
                  Rule(f"norm.{w}", (f"encoder.ln.{w}",), IDENTITY),
                  Rule(f"head.{w}", (f"heads.head.{w}",), IDENTITY)]
        if pre_logits:
            table.append(Rule(f"pre_logits.fc.{w}", (f"heads.pre_logits.{w}",), IDENTITY))
    return table


def _dims(shapes: Mapping[str, Shape], key: str, rank: int, where: str) -> Shape:
    if key not in shapes:
        raise VitConvertError(f"{where}: not a torchvision VisionTransformer state dict: no {key}")
    if len(shapes[key]) != rank:
        raise VitConvertError(f"{where}: {key} has shape {shapes[key]}, expected {rank} dimensions")
    return shapes[key]


def _architecture(dims: tuple[int, int, int, int], model: str | None, num_heads: int | None, where: str) -> int:
    """The head count of a model of (hidden_dim, num_layers, mlp_dim, patch_size): one of the five builders'
    (the one `model` names, if named), or any shapes with `num_heads` given."""
    found = next((name for name, (d, n, _, m, p) in ARCHITECTURES.items() if (d, n, m, p) == dims), None)
    shown = "hidden_dim {}, {} layers, mlp_dim {}, patch {}".format(*dims)
    if model is not None:
        if model not in ARCHITECTURES:
            raise VitConvertError(f"model {model!r} is not one of torchvision's ViTs: {', '.join(ARCHITECTURES)}")
        if found != model:
            d, n, _, m, p = ARCHITECTURES[model]
            raise VitConvertError(f"{where}: the checkpoint is not a {model} (hidden_dim {d}, {n} layers, mlp_dim {m}, "
                                  f"patch {p}): its shapes are {shown}" + (f", a {found}" if found else ""))
        return ARCHITECTURES[model][2]
    if num_heads is not None:
        return num_heads
    if found is None:
        raise VitConvertError(f"{where}: its shapes ({shown}) match none of torchvision's ViTs "
                              f"({', '.join(ARCHITECTURES)}): for a VisionTransformer(...) of your own, give its "
                              "num_heads (--heads N)")
    return ARCHITECTURES[found][2]


def _weights(name: str | None, model: str | None, size: int, num_classes: int, where: str) -> tuple[WeightsEnum | None,
                                                                                                   list[str]]:
    """The weight enum named (checked against the model and size), or the one the model and size leave."""
    if name is not None:
        name = name.removeprefix("torchvision.models.")
        if name not in WEIGHTS:
            raise VitConvertError(f"weights enum {name!r} is not one of torchvision's ViT weights: "
                                  f"{', '.join(WEIGHTS)}")
        chosen = WEIGHTS[name]
        if (chosen.model, chosen.crop) != (model, size):
            raise VitConvertError(f"{where}: {name} is {chosen.model} at {chosen.crop} px, but the checkpoint is "
                                  f"{model or 'a custom VisionTransformer'} at {size} px")
        return chosen, [f"preprocessing: torchvision's {name}.transforms"]
    fits = [n for n, w in WEIGHTS.items() if (w.model, w.crop) == (model, size)]
    if not fits or num_classes != 1000:
        return None, ["no torchvision weight enum is this model at this size with ImageNet's 1000 classes: "
                      "recorded ImageClassification's defaults (bilinear, the centre 224/256 of the short side, "
                      "ImageNet's mean and std) at the model's size (Python: preprocess=Preprocess(...))"]
    notes = [f"preprocessing: torchvision's {fits[0]}.transforms"]
    if len(fits) > 1:
        notes[0] += (f" (chosen for {model} at {size} px; {', '.join(fits[1:])} has the same shapes and other "
                     "transforms: name it with --weights-enum)")
    return WEIGHTS[fits[0]], notes


def _plan(reader: Reader, request: Request) -> Plan:
    shapes, where = reader.shapes, str(reader.path)
    if any(k.startswith("conv_proj.conv_") for k in shapes):
        raise VitConvertError(f"{where}: a VisionTransformer with conv_stem_configs (a stack of Conv2d, BatchNorm "
                              "and ReLU before the patch projection), which our model does not express")
    dim, chans, ph, pw = _dims(shapes, "conv_proj.weight", 4, where)
    if ph != pw:
        raise VitConvertError(f"{where}: conv_proj has {ph}x{pw} patches; torchvision's are square")
    layers = {int(m[1]) for k in shapes if (m := _LAYER.match(k))}
    if not layers or layers != set(range(len(layers))):
        raise VitConvertError(f"{where}: encoder layers {sorted(layers) or 'none'}: expected encoder_layer_0 .. N-1")
    depth = len(layers)
    mlp = MLP_NAMES["legacy" if f"{LAYER.format(i=0)}mlp.linear_1.weight" in shapes else "current"]
    mlp_dim = _dims(shapes, f"{LAYER.format(i=0)}{mlp[0]}.weight", 2, where)[0]
    options = request.options
    heads = _architecture((dim, depth, mlp_dim, ph), options.get("model"), options.get("num_heads"), where)
    model = next((n for n, (d, k, _, m, p) in ARCHITECTURES.items() if (d, k, m, p) == (dim, depth, mlp_dim, ph)),
                 None)
    seq = _dims(shapes, "encoder.pos_embedding", 3, where)[1] - 1
    side = math.isqrt(max(seq, 0))
    if side < 1 or side * side != seq:
        raise VitConvertError(f"{where}: encoder.pos_embedding holds {seq} patch positions, not a square grid "
                              "(torchvision's VisionTransformer is square)")
    pre_logits = "heads.pre_logits.weight" in shapes
    head = "heads.head.weight"
    num_classes = _dims(shapes, head, 2, where)[0]
    try:
        cfg = ViTConfig(img_size=(side * ph, side * ph), patch_size=ph, in_chans=chans, embed_dim=dim, depth=depth,
                        num_heads=heads, mlp_dim=mlp_dim, num_classes=num_classes, ln_eps=LN_EPS, act="gelu",
                        representation_size=shapes["heads.pre_logits.weight"][0] if pre_logits else None,
                        pos_resize="torchvision")
    except VitConvertError as e:
        raise VitConvertError(f"{where}: {e}") from None
    weights, notes = _weights(options.get("weights_enum"), model, cfg.img_size[0], num_classes, where)
    if model is None:
        notes.insert(0, f"a custom torchvision VisionTransformer ({heads} heads, as given)")
    if mlp == MLP_NAMES["legacy"]:
        notes.append("MLP named as before torchvision 0.14 (mlp.linear_1, mlp.linear_2)")
    # Without an enum: ImageClassification's defaults, its 224-of-256 crop scaled to the model's size.
    preprocess = weights.preprocess if weights else replace(WEIGHTS["ViT_B_16_Weights.IMAGENET1K_V1"].preprocess,
                                                            size=cfg.img_size)
    return Plan(config=cfg, rules=rules(mlp, pre_logits), bindings=block_bindings(depth),
                source_format=f"torchvision/{model or 'VisionTransformer'}", preprocess=preprocess,
                labels="imagenet-1k" if num_classes == 1000 else None, notes=notes)


def _open(probe: Probe) -> Reader:
    return read_weights(probe.path, probe)


def _detect(probe: Probe) -> Detection | None:
    if probe.kind.kind not in ("pickle", "torch-zip", "safetensors") or not all(k in probe.keys for k in MARKS) \
            or not any(k.startswith("conv_proj.") for k in probe.keys):
        return None
    return Detection(1.0, "a state dict with conv_proj.*, class_token and encoder.pos_embedding")


TORCHVISION = SourceFormat(
    name="torchvision", summary="torchvision's vit_b_16, vit_b_32, vit_l_16, vit_l_32, vit_h_14 (their state dicts)",
    detect=_detect, open=_open, plan=_plan,
    options=(Option("model", "--model", "which of torchvision's ViTs (checked against the shapes)"),
             Option("num_heads", "--heads", "the head count of a custom VisionTransformer"),
             Option("weights_enum", "--weights-enum", "the weight enum whose transforms to record, e.g. "
                                                      "ViT_B_16_Weights.IMAGENET1K_SWAG_E2E_V1")),
    example="vitconvert convert vit_b_16-c867db91.pth vit-b16.safetensors",
    looks_for="conv_proj.*, class_token and encoder.pos_embedding")
