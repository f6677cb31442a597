"""timm VisionTransformer state dicts (.pth, .bin, .safetensors) to our weights file: the timm source format.

Our tensor names are timm's, so the mapping table is the identity over the names our config
implies (but for hybrid ResNet kernels, stored standardized); what needs work is DINO's and DINOv2's
release layouts and inferring the config (`config_from_shapes`). The state dict is read by
`formats.state_dict` (safely: weights_only), out of its training wrappers.

The config comes from the keys and shapes where they tell it. What they do not tell (the head count
of an unusual width, the activation, the norm eps, the pooling, ...) comes from timm's own definition
of the model when it is named (`model=`, built on the meta device and read back by
`timm_models.timm_config`, which `verify` uses too), or else from timm's defaults where those are
safe, and is otherwise an error naming the missing fact.

torch is imported only when a checkpoint is read, so that recognising an .npz never imports it.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..core.config import ViTConfig
from ..core.errors import VitConvertError
from ..core.param_shapes import param_shapes
from ..formats.weights_file import Preprocess, WeightsRecord, label_set_for
from .dinov3 import is_release as is_dinov3_release
from .mapping import IDENTITY, Op, Rule, source_dims
from .source import Detection, Option, Plan, Probe, Request, SourceFormat
from .timm_beit import TABLE, beit_layout, rel_pos_tables

if TYPE_CHECKING:
    import torch

    from ..formats.state_dict import TensorReader
    from .timm_models import Difference

# timm's hybrid ResNetV2: StdConv2dSame standardizes (w - mean) / sqrt(var + 1e-8); GroupNorm eps 1e-5.
TIMM_WS_EPS = 1e-8
TIMM_GN_EPS = 1e-5

# Heads of the usual widths (Ti, S, B, L, H); for any other width the head count must be given.
HEADS_BY_WIDTH = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16}
# timm's ViT default when the checkpoint's own pretrained cfg is not named.
TIMM_DEFAULT_PREPROCESS = dict(resize="crop", crop_pct=0.9, interpolation="bicubic",
                               mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
# Config fields that no tensor shows: a named model supplies them, else timm's defaults (the config's).
NEVER_SEEN = ("act", "ln_eps", "pos_resize", "pool_include_prefix", "hybrid_gn_eps")


@dataclass(frozen=True)
class Inferred:
    """A checkpoint's architecture as far as its keys and shapes tell it."""

    # What the tensors do not show is at timm's VisionTransformer defaults here.
    config: ViTConfig
    # Config fields the tensors do not show: a named model's values stand for them.
    unseen: tuple[str, ...]
    # Facts without a safe default, in words: without a named model, each is an error.
    missing: tuple[str, ...] = ()
    # Defaults taken for what the tensors do not show, in words (for the record's notes).
    assumed: tuple[str, ...] = ()
    positions: tuple[int, ...] | None = None  # the shape of pos_embed

    def differences_from(self, named: ViTConfig, ignore: Iterable[str] = ()) -> list[Difference]:
        """Where a named model's architecture is not what the tensors show (but for `ignore`)."""
        from .timm_models import architecture_differences  # torch: only where a model is named

        skip = set(self.unseen) | set(ignore)
        if (named.pool == "map") != (self.config.pool == "map"):
            skip.discard("pool")  # attention pooling shows in the keys (attn_pool.*)
        if param_shapes(named).get("pos_embed") == self.positions:
            # The grid was read as a square: where the name's positions are these, its grid is theirs.
            skip |= {"img_size", "no_embed_class"}
        return architecture_differences(self.config, named, ignore=skip)


def _dinov2_release(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """facebookresearch/dinov2's own backbone files in timm's layout, as timm's `_convert_dinov2` reads them:
    the training-only mask_token left out, register tokens kept apart from the position embedding (whose
    first row, the class token's position, is folded into the class token), the giant's fused SwiGLU
    layers w12/w3 named fc1/fc2."""
    out, notes = {}, ["DINOv2 release: its mask_token (used in training only) was left out"]
    for k, v in tensors.items():
        if k != "mask_token":
            out[re.sub(r"^(blocks\.\d+\.mlp\.)w(12|3)\.", lambda m: m[1] + ("fc1." if m[2] == "12" else "fc2."), k)] = v
    if "register_tokens" in out and "pos_embed" in out and "cls_token" in out:
        pos = out["pos_embed"]
        out["reg_token"] = out.pop("register_tokens")
        out["cls_token"] = out["cls_token"] + pos[:, :1]
        out["pos_embed"] = pos[:, 1:]
        notes.append("DINOv2 release: register_tokens are reg_token, and the class token's position row is "
                     "added to the class token, as timm reads these files")
    return out, notes


def config_from_shapes(shapes: Mapping[str, tuple[int, ...]], where: str, num_heads: int | None = None,
                 named: bool = False) -> Inferred:
    """The architecture the keys and shapes of a timm VisionTransformer state dict tell.

    named: a named model will supply what they do not tell (so an unknown head count is no error)."""
    if "patch_embed.proj.weight" not in shapes:
        keys = ", ".join(sorted(shapes)[:6])
        raise VitConvertError(f"{where}: not a timm ViT state dict (no patch_embed.proj.weight); "
                              f"its keys begin: {keys}")

    def has(key: str) -> bool:
        return key in shapes

    def dims(key: str, rank: int) -> tuple[int, ...]:
        return source_dims(shapes, key, rank, where)

    dim, in_chans, ph, pw = dims("patch_embed.proj.weight", 4)
    depth = len({m[1] for k in shapes if (m := re.match(r"blocks\.(\d+)\.", k))})
    b = "blocks.0."
    unseen, missing, assumed = list(NEVER_SEEN), [], []
    # Parallel blocks show their fused projection; residual post-norm blocks look as pre-norm ones do.
    block = "parallel" if has(b + "in_proj.weight") else "pre_norm"
    attn, first_norm = (b, b + "in_norm") if block == "parallel" else (b + "attn.", b + "norm1")
    if block == "parallel":
        mlp, mlp_dim = "mlp", dims(b + "in_proj.weight", 2)[0] - 3 * dim
    elif has(b + "mlp.fc1_g.weight"):
        mlp, mlp_dim = "swiglu", dims(b + "mlp.fc1_g.weight", 2)[0]
        missing.append("the activation of its SwiGLU MLP (AIMv2: silu)")
    elif has(b + "mlp.fc1.weight"):
        mlp, mlp_dim = "mlp", dims(b + "mlp.fc1.weight", 2)[0]
        if has(b + "mlp.fc2.weight") and 2 * dims(b + "mlp.fc2.weight", 2)[1] == mlp_dim:
            mlp = "swiglu_packed"  # fc1 packs a value and a gate half
            unseen.append("mlp")
            missing.append("which half of fc1 gates its GLU MLP (timm's GluMlp or SwiGLUPacked) and the activation")
    else:
        raise VitConvertError(f"{where}: missing blocks.0.mlp.fc1.weight (no transformer blocks?)")
    if block == "pre_norm":
        unseen.append("block")
        assumed.append("pre-norm blocks")

    hybrid_layers, hybrid_width, backbone_stride = None, ViTConfig.hybrid_width, 1
    stem = next((k for k in ("patch_embed.backbone.stem.conv.weight", "patch_embed.backbone.conv.weight") if has(k)),
                None)
    if stem is not None:
        hybrid_width, in_chans = dims(stem, 4)[:2]
        units: dict[int, set[int]] = {}
        for k in shapes:
            if m := re.match(r"patch_embed\.backbone\.stages\.(\d+)\.blocks\.(\d+)\.", k):
                units.setdefault(int(m[1]), set()).add(int(m[2]))
        hybrid_layers = tuple(len(units.get(i, ())) for i in range(max(units, default=-1) + 1))
        backbone_stride = 4 * 2 ** max(len(hybrid_layers) - 1, 0)

    class_token, distilled = has("cls_token"), has("dist_token")
    reg_tokens = dims("reg_token", 3)[1] if has("reg_token") else 0
    final_norm, fc_norm = has("norm.weight") or has("fc_norm.weight"), has("fc_norm.weight")
    beit = any(k.endswith(TABLE) for k in shapes)  # timm's Beit, whose relative position tables show it
    if has("attn_pool.latent"):
        pool = "map"
        missing.append("the activation of its attention-pooling model (SigLIP: gelu or gelu_tanh)")
    elif class_token and fc_norm and beit:  # Beit's fc_norm comes with its mean pooling unless told otherwise
        pool = "gap"
        unseen.append("pool")
        assumed.append("pooling 'gap' (the mean of the patch tokens, timm's Beit with fc_norm)")
    elif class_token and fc_norm:
        pool = "gap"
        unseen.append("pool")
        missing.append("whether it pools the class token or the mean of the patches (a class token and fc_norm)")
    elif class_token:  # or the mean beside it, as timm allows: the keys look the same
        pool = "token"
        unseen.append("pool")
        assumed.append("pooling 'token' (the class token)")
    else:
        pool = "gap"
        unseen.append("pool")
        assumed.append("pooling 'gap' (the mean of the patch tokens)")

    prefix = class_token + reg_tokens + distilled
    stride = (backbone_stride * ph, backbone_stride * pw)
    no_embed_class, grid = False, (14, 14)  # a placeholder when no position embedding shows the grid
    if has("pos_embed"):
        n_pos = dims("pos_embed", 3)[1]
        # Positions for the patches only (no_embed_class) or for the prefix tokens too: the grid is square.
        readings = {False: n_pos - prefix} if prefix == 0 else {True: n_pos, False: n_pos - prefix}
        squares = [nec for nec, n in readings.items() if n > 0 and math.isqrt(n) ** 2 == n]
        if len(squares) == 1:
            side, no_embed_class = math.isqrt(readings[squares[0]]), squares[0]
            grid = (side, side)
        else:
            unseen += ["img_size", "no_embed_class"]
            missing.append(f"the input size: pos_embed holds {n_pos} positions, "
                           + ("a square grid both with and without" if squares else "no square grid with or without")
                           + f" its {prefix} prefix token(s)")
        if prefix == 0:
            unseen.append("no_embed_class")  # nothing to leave out: both readings are one model
    elif not beit:
        unseen += ["img_size", "no_embed_class"]
        missing.append("the input size (there is no pos_embed)")
    rel_pos_bias, shared_rel_pos_bias, table_grid, table_heads = rel_pos_tables(
        shapes, where, grid if has("pos_embed") and "img_size" not in unseen else None)
    grid = table_grid or grid
    if table_heads is not None:  # a table has a column per head
        if num_heads not in (None, table_heads):
            raise VitConvertError(f"{where}: {num_heads} heads given, but its relative position tables have "
                                  f"{table_heads} (one column per head)")
        num_heads = table_heads

    if has(attn + "q_norm.weight"):  # per-head norms show the head width
        head_dim = dims(attn + "q_norm.weight", 1)[0]
        num_heads = num_heads or (dim // head_dim if head_dim and dim % head_dim == 0 else None)
    if num_heads is None:
        if named:
            num_heads = 1  # divides any width; the name's count stands for it
        elif dim in HEADS_BY_WIDTH:
            num_heads = HEADS_BY_WIDTH[dim]
            assumed.append(f"{num_heads} heads (the standard for width {dim})")
        else:
            # The shapes do not say how the width splits into heads, and a guess makes a model that runs
            # and is wrong.
            raise VitConvertError(f"{where}: width {dim} has no standard head count (standard widths: "
                                  f"{', '.join(map(str, HEADS_BY_WIDTH))}); give it with --heads N "
                                  "(num_heads=N), or name the timm model with --model NAME")
        unseen.append("num_heads")
    norm = "rmsnorm" if has(first_norm + ".weight") and not has(first_norm + ".bias") else "layernorm"
    if norm == "rmsnorm":
        missing.append("the eps of its RMSNorm and its activation (AIMv2: 1e-5, silu)")
    if has("norm_pre.weight"):
        missing.append("the activation and norm eps of a CLIP-style model with norm_pre (quick_gelu in "
                       "OpenAI's; LayerNorm eps 1e-5)")
    assumed += ["activation gelu", "norm eps 1e-6"]
    pre = dims("pre_logits.fc.weight", 2) if has("pre_logits.fc.weight") else None
    try:
        cfg = ViTConfig(
            img_size=(grid[0] * stride[0], grid[1] * stride[1]), patch_size=(ph, pw), in_chans=in_chans,
            embed_dim=dim, depth=depth, num_heads=num_heads, mlp_dim=mlp_dim,
            num_classes=dims("head.weight", 2)[0] if has("head.weight") else 0, pool=pool, fc_norm=fc_norm,
            representation_size=pre[0] if pre else None, distilled=distilled,
            qkv_bias=has(b + ("in_proj.bias" if block == "parallel" else "attn.qkv.bias")) or has(b + "attn.q_bias"),
            k_bias=not has(b + "attn.q_bias"),  # Beit's (and Eva's) q and v biases beside a bias-free qkv
            no_embed_class=no_embed_class, hybrid_layers=hybrid_layers, hybrid_width=hybrid_width,
            hybrid_gn_eps=ViTConfig.hybrid_gn_eps if stem is None else TIMM_GN_EPS, class_token=class_token,
            reg_tokens=reg_tokens, final_norm=final_norm,
            pre_norm=has("norm_pre.weight"), patch_bias=has("patch_embed.proj.bias"),
            patch_norm=has("patch_embed.norm.weight"), pos_embed="learn" if has("pos_embed") else "none",
            norm=norm, layer_scale=has(b + "ls1.gamma") or has(b + "ls.gamma"), qk_norm=has(attn + "q_norm.weight"),
            scale_attn_norm=has(b + "attn.norm.weight"), scale_mlp_norm=has(b + "mlp.norm.weight"),
            proj_bias=has(b + ("attn_out_proj.bias" if block == "parallel" else "attn.proj.bias")), mlp=mlp,
            block=block, rel_pos_bias=rel_pos_bias, shared_rel_pos_bias=shared_rel_pos_bias)
    except VitConvertError as e:  # shapes that make no model: say which file they came from
        raise VitConvertError(f"{where}: {e}") from None
    return Inferred(cfg, tuple(unseen), tuple(missing), tuple(assumed), shapes.get("pos_embed"))



def _timm_standardized_conv(w: np.ndarray) -> np.ndarray:
    """The kernel timm's StdConv2dSame convolves with: (w - mean) / sqrt(var + 1e-8) over (Cin, H, W), by
    the same float32 batch_norm call, so that it is timm's kernel to the bit (float64 would differ by
    rounding, which 16 ResNet units amplify to ~2e-5 in the logits)."""
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(w)
    return F.batch_norm(t.reshape(1, t.shape[0], -1), None, None, training=True, momentum=0.0,
                        eps=TIMM_WS_EPS).reshape_as(t).numpy()


TIMM_STD_CONV = Op("timm weight-standardized conv kernel", _timm_standardized_conv, lambda s: s)


def _rule(name: str) -> Rule:
    """Identity, but for the hybrid ResNet's kernels: our model runs them as plain convolutions."""
    if name.startswith("patch_embed.backbone.") and re.search(r"conv\d?\.weight$", name):
        return Rule(name, (name,), TIMM_STD_CONV)
    return Rule(name, (name,), IDENTITY)


DINO_HEAD = "DINO's projection head: a training head, not a classifier"
DINOV2_MASK = "DINOv2's mask_token: used in masked-image training only"


def release_layout(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], bool, list[str], dict[str, str]]:
    """The tensors in timm's names, for DINO's and DINOv2's own release files: DINO's 'backbone.' prefix
    taken off and its projection head ('head.*') left out; DINOv2's release read as timm reads it; a Beit's
    in our names (timm_beit.beit_layout: its layer scales, what its pre-training alone uses). Returns
    the tensors, whether it is a DINO (v1) backbone, notes, and the keys left out with their reasons."""
    tensors, notes, left_out = beit_layout(tensors)  # its mask_token is BEiT's, not DINOv2's
    dino = "patch_embed.proj.weight" not in tensors and "backbone.patch_embed.proj.weight" in tensors
    if dino:
        head = [k for k in tensors if k.startswith("head.")]
        left_out.update(dict.fromkeys(head, DINO_HEAD))
        tensors = {k.removeprefix("backbone."): v for k, v in tensors.items() if not k.startswith("head.")}
        notes.append("DINO checkpoint: backbone.* converted" + (
            f"; its projection head ({len(head)} tensors, head.*) is a training head, not a classifier, and was "
            "left out" if head else ""))
    if "mask_token" in tensors and "patch_embed.proj.weight" in tensors:
        tensors, more = _dinov2_release(tensors)
        left_out["mask_token"] = DINOV2_MASK
        # DINOv2 resamples position embeddings by size=, as timm does, not by DINO's scale factor.
        dino, notes = False, notes + more
    return tensors, dino, notes, left_out


class TimmReader:
    """A timm state dict's tensors, in timm's names (`release_layout`), with what that left out."""

    def __init__(self, probe: Probe) -> None:
        from ..formats.state_dict import TensorReader, read_state_dict

        path = probe.path
        checkpoint = probe.state_dict or read_state_dict(path)  # a safetensors file: read here, not probed
        tensors, self.dino, self.notes, self.left_out = release_layout(checkpoint.tensors)
        self.tensors: TensorReader = TensorReader(tensors, path)
        self.path, self.shapes = path, self.tensors.shapes

    def read(self, key: str) -> np.ndarray:
        return self.tensors.read(key)

    def check_weights(self, keys: Iterable[str], where: str) -> None:
        self.tensors.check_weights(keys, where)


def _plan(reader: TimmReader, request: Request) -> Plan:
    from .timm_models import builds_eva, timm_pretrained

    src, model = reader.path, request.options.get("model")
    if model and builds_eva(model):  # an Eva without Eva's own keys (PE Core, PE Spatial): Eva's names and RoPE
        from .timm_eva import TIMM_EVA

        return TIMM_EVA.plan(reader, Request({k: v for k, v in request.options.items() if k != "num_heads"},
                                             request.labels, request.preprocess, request.pos_resize))
    named = timm_pretrained(model, request.options.get("timm_kwargs")) if model else None
    inferred = config_from_shapes(reader.shapes, str(src), request.options.get("num_heads"), named=named is not None)
    notes = list(reader.notes)
    if named is None:
        if inferred.missing:
            raise VitConvertError(
                f"{src}: the tensors do not show {'; nor '.join(inferred.missing)}: name the timm model with "
                "--model NAME (model=NAME), e.g. the name it was published under")
        cfg = inferred.config
        preprocess = Preprocess(size=cfg.img_size, **TIMM_DEFAULT_PREPROCESS)
        notes.append(f"timm's defaults assumed for what the tensors do not show ({', '.join(inferred.assumed)}) "
                     "and timm's ViT preprocessing; convert with --model NAME.TAG for the checkpoint's own")
    else:
        cfg, preprocess = named
        # A named model stands for what the tensors do not show; everything they show must be its.
        differences = inferred.differences_from(cfg)
        if differences:
            raise VitConvertError(f"{src}: timm's {model} has another architecture than this checkpoint: "
                                  f"{'; '.join(d.describe('checkpoint') for d in differences)}")
    if reader.dino:  # DINO resamples its position embeddings its own way (docs/position-embeddings.md)
        cfg = cfg.replace(pos_resize="dino")
    if cfg.hybrid_layers is not None:
        notes.append("hybrid ResNet kernels stored standardized as timm's StdConv2dSame computes them, "
                     f"(w - mean) / sqrt(var + {TIMM_WS_EPS})")
    return Plan(config=cfg, rules=[_rule(name) for name in param_shapes(cfg)], bindings={},
                source_format="timm" + (f"/{model}" if model else ""), preprocess=preprocess,
                labels=label_set_for(cfg.num_classes), notes=notes, left_out=dict(reader.left_out))


# Keys only a timm VisionTransformer (or DINO's release of one, under backbone.) has.
TIMM_MARKS = ("patch_embed.proj.weight", "backbone.patch_embed.proj.weight")


def _detect(probe: Probe) -> Detection | None:
    if probe.kind.kind not in ("pickle", "torch-zip", "safetensors"):
        return None
    from .timm_eva import has_eva_marks

    mark = next((k for k in TIMM_MARKS if k in probe.keys), None)
    # A Beit has Eva's marks (gamma_1, q_bias) too, and relative position tables, which no Eva has.
    beit = any(k.endswith(TABLE) for k in probe.keys)
    if mark is None or not any(k.startswith(("blocks.", "backbone.blocks.")) for k in probe.keys) \
            or has_eva_marks(probe.keys) and not beit or is_dinov3_release(probe.keys):  # timm-eva's, dinov3's
        return None
    dino = " (DINO's backbone)" if mark.startswith("backbone.") else " (a Beit's relative position tables)" if beit \
        else ""
    return Detection(1.0, f"a state dict with {mark} and blocks.N.*{dino}")


TIMM = SourceFormat(
    name="timm", summary="timm VisionTransformer and Beit state dicts (.pth, .bin, .safetensors), DINO and DINOv2 "
                         "included",
    detect=_detect, open=TimmReader, plan=_plan,
    options=(Option("model", "--model", "timm's model name (with tag): what the tensors do not show"),
             Option("num_heads", "--heads", "attention heads, for a width that is not a standard one"),
             Option("timm_kwargs", "", "given to timm.create_model with the model name (Python only)")),
    example="vitconvert convert dino_deitsmall16_pretrain.pth dino-s16.safetensors",
    looks_for="a state dict with patch_embed.proj.weight and blocks.N.* (or under backbone.)")


def convert_timm(src: str | os.PathLike, dst: str | os.PathLike, *, model: str | None = None,
                 num_heads: int | None = None, force: bool = False, dtype: str = "float32",
                 labels: str | Sequence[str] | None = None, allow_nonfinite: bool = False,
                 pos_resize: str | None = None, progress: Callable[[int, int], None] | None = None,
                 timm_kwargs: Mapping[str, Any] | None = None) -> WeightsRecord:
    """Convert a timm ViT state dict at `src` into our weights file at `dst`: `vitconvert.convert(...,
    source='timm')`.

    model: a timm name, with or without tag (e.g. 'vit_base_patch16_224.augreg_in21k_ft_in1k'); it
    supplies what the tensors do not show (heads, activation, norm eps, pooling, ...) and the
    checkpoint's own preprocessing, and must have the checkpoint's architecture (timm_kwargs: given to
    timm.create_model with it). Without it, what the tensors do not show is timm's VisionTransformer
    default (heads by the standard widths, else `num_heads`) where that is safe, else an error naming
    the missing fact; preprocessing is timm's ViT default (bicubic, crop 0.9, mean = std = 0.5).
    labels: 'imagenet-1k', 'imagenet-21k' or the class names in class order; default the ImageNet
    label set the class count implies.
    pos_resize: how the model resizes its position embeddings for other input sizes, recorded in the
    file: 'bicubic' (timm's own), 'dino' (facebookresearch/dino's); None: 'dino' for a DINO checkpoint,
    else 'bicubic'.
    """
    from .pipeline import convert

    return convert(src, dst, source="timm", force=force, dtype=dtype, labels=labels, pos_resize=pos_resize,
                   allow_nonfinite=allow_nonfinite, progress=progress, model=model, num_heads=num_heads,
                   timm_kwargs=timm_kwargs)
