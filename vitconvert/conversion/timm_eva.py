"""timm `Eva` state dicts (EVA, EVA-02, PE, RoPE-ViT, DINOv3, LingBot, Sapiens2 in timm's names) to our weights
file: the timm-eva source format.

A format of its own beside `timm`, because the same keys mean another model: an Eva state dict holds
VisionTransformer's names (patch_embed, blocks.N.attn.qkv, ...) and rotary position embeddings that no tensor
shows, so a file must be recognised by Eva's own marks (`gamma_1`, `attn.q_bias`, `attn.q_proj`, `rope.freqs`)
and its RoPE taken from timm's definition of the model. Where a file has none of those marks (PE Core and
Spatial without layer scale look like a VisionTransformer), `timm` claims it, and a `--model` naming an Eva
model hands it over here.

Our names are timm's VisionTransformer names; Eva's differ in three places, renamed here: layer scale
`gamma_1`/`gamma_2` (ours `ls1.gamma`/`ls2.gamma`), separate `q_proj`/`k_proj`/`v_proj` (ours one fused `qkv`,
their rows concatenated: q, k, v), and their biases (`qkv.bias`, or `q_bias`/`v_bias` where k_proj has none).

Without --model, only RoPE-Mixed files (whose learned `rope.freqs` is the RoPE) convert, with timm's Naver
defaults (xy grid); any other Eva file needs --model NAME.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from ..core.config import ViTConfig
from ..core.errors import VitConvertError
from ..core.param_shapes import param_shapes
from ..formats.weights_file import Preprocess, label_set_for
from .mapping import IDENTITY, Op, Rule, Shape
from .source import Detection, Option, Plan, Probe, Request, SourceFormat
from .timm_beit import TABLE

if TYPE_CHECKING:
    from .timm import TimmReader

T = TypeVar("T")

# Keys only timm's Eva writes (VisionTransformer names its layer scale ls1.gamma and fuses qkv with one bias).
EVA_MARKS = re.compile(r"^(blocks\.\d+\.(gamma_1|attn\.q_bias|attn\.q_proj\.weight)|rope\.freqs)$")
_SEPARATE = re.compile(r"^(blocks\.\d+\.attn\.)([qkv])_proj\.(weight|bias)$")
_GAMMA = re.compile(r"^(blocks\.\d+\.)gamma_([12])$")


def has_eva_marks(keys: Sequence[str] | frozenset[str]) -> bool:
    """Whether a state dict's keys are an Eva's, not a VisionTransformer's."""
    return any(EVA_MARKS.match(k) for k in keys)


def eva_sources(keys: Sequence[str] | frozenset[str]) -> dict[str, tuple[str, ...]]:
    """Our name -> the Eva keys it is made of (rows concatenated where several), for every key of an Eva state
    dict."""
    keys = set(keys)
    out: dict[str, tuple[str, ...]] = {}
    for k in sorted(keys):
        if m := _GAMMA.match(k):
            out[f"{m[1]}ls{m[2]}.gamma"] = (k,)
        elif m := _SEPARATE.match(k):
            attn, part, kind = m.groups()
            if kind == "weight":
                out[f"{attn}qkv.weight"] = tuple(f"{attn}{p}_proj.weight" for p in "qkv")
            elif f"{attn}k_proj.bias" in keys:
                out[f"{attn}qkv.bias"] = tuple(f"{attn}{p}_proj.bias" for p in "qkv")
            elif part != "k":  # EVA-02: a query and a value bias, no key bias
                out[f"{attn}{part}_bias"] = (k,)
        else:
            out[k] = (k,)
    return out


def to_our_names(state: Mapping[str, T], concat: Callable[[list[T]], T]) -> dict[str, T]:
    """An Eva state dict (tensors or shapes) under our names; `concat` joins row blocks."""
    return {ours: state[srcs[0]] if len(srcs) == 1 else concat([state[s] for s in srcs])
            for ours, srcs in eva_sources(state.keys()).items()}


def to_eva_names(state: Mapping[str, T], eva_keys: Sequence[str], rows: Callable[[T, int, int], T]) -> dict[str, T]:
    """Our state dict under the names of an Eva model whose state dict has `eva_keys`: `rows(t, a, b)` is rows
    a..b of t. The inverse of `to_our_names`."""
    out: dict[str, T] = {}
    for ours, srcs in eva_sources(eva_keys).items():
        t = state[ours]
        if len(srcs) == 1:
            out[srcs[0]] = t
            continue
        # q has the query heads' rows (proj's inputs); k and v share the rest equally.
        q, n = state[f"{ours.rsplit('.', 2)[0]}.proj.weight"].shape[1], t.shape[0]
        kv = (n - q) // 2
        out.update({srcs[0]: rows(t, 0, q), srcs[1]: rows(t, q, q + kv), srcs[2]: rows(t, q + kv, n)})
    return out


def _rows_shape(*shapes: Shape) -> Shape:
    if len({s[1:] for s in shapes}) != 1:
        raise ValueError("query, key and value widths differ")
    return (sum(s[0] for s in shapes), *shapes[0][1:])


QKV_ROWS = Op("q, k, v projections -> fused qkv rows", lambda *xs: np.concatenate(xs, axis=0), _rows_shape)


def _rules(sources: Mapping[str, tuple[str, ...]], targets: Sequence[str]) -> list[Rule]:
    # A target the file lacks is named missing by the mapping engine, from its identity source.
    return [Rule(t, sources.get(t, (t,)), QKV_ROWS if len(sources.get(t, ())) > 1 else IDENTITY) for t in targets]


def _plan(reader: TimmReader, request: Request) -> Plan:
    from .timm_models import builds_eva, timm_pretrained

    src, model = reader.path, request.options.get("model")
    if model and not builds_eva(model):  # Eva's marks, but a model of timm's VisionTransformer or Beit named
        from .timm import TIMM

        return TIMM.plan(reader, request)
    sources = eva_sources(reader.shapes.keys())
    notes = list(reader.notes)
    if model:
        cfg, preprocess = timm_pretrained(model, request.options.get("timm_kwargs"))
    else:
        cfg, preprocess = _mixed_without_name(reader, src, sources)
        notes.append("no --model: RoPE-Mixed as timm builds Naver's (xy grid), its other options from the tensors "
                     "and timm's defaults; convert with --model NAME.TAG for the checkpoint's own")
    if cfg.rope != "none":
        notes.append(f"rotary position embeddings ({cfg.rope}) computed for the input's patch grid at run time; "
                     "timm's Eva keeps no RoPE tables in its state dict")
    renamed = sorted({s for t, srcs in sources.items() if srcs != (t,) for s in srcs})
    if renamed:
        notes.append("Eva's names renamed: gamma_1/gamma_2 to ls1.gamma/ls2.gamma, q_proj/k_proj/v_proj rows "
                     "concatenated into qkv (q, k, v), their biases into qkv.bias or q_bias/v_bias")
    return Plan(config=cfg, rules=_rules(sources, list(param_shapes(cfg))), bindings={},
                source_format="timm-eva" + (f"/{model}" if model else ""), preprocess=preprocess,
                labels=label_set_for(cfg.num_classes), notes=notes, left_out=dict(reader.left_out))


def _mixed_without_name(reader: TimmReader, src: Any, sources: Mapping[str, tuple[str, ...]]
                        ) -> tuple[ViTConfig, Preprocess]:
    """A RoPE-Mixed file's config from its tensors: timm's VisionTransformer reading of the shapes under our
    names, the heads from `rope.freqs`, and Eva's marks (q/v biases, attention-only layer scale)."""
    from .timm import TIMM_DEFAULT_PREPROCESS, config_from_shapes

    shapes = {ours: _rows_shape(*(reader.shapes[s] for s in srcs)) for ours, srcs in sources.items()}
    if "rope.freqs" not in shapes:
        raise VitConvertError(f"{src}: a timm Eva state dict does not show its rotary position embedding (kind, "
                              "temperature, grid rule): name the timm model with --model NAME (model=NAME), "
                              "e.g. eva02_base_patch14_224 or vit_base_patch16_rope_224")
    freqs = shapes.pop("rope.freqs")
    if len(freqs) != 4 or freqs[0] != 2:
        raise VitConvertError(f"{src}: rope.freqs has shape {freqs}, expected (2, depth, heads, head_dim / 2)")
    q_bias = "blocks.0.attn.q_bias" in shapes
    plain = {k: v for k, v in shapes.items() if not k.endswith(("attn.q_bias", "attn.v_bias"))}
    inferred = config_from_shapes(plain, str(src), num_heads=freqs[2])
    # RoPE runs at any size: without a position table, the size is only the record's (timm's 224 for these).
    missing = [m for m in inferred.missing if "there is no pos_embed" not in m]
    if missing:
        raise VitConvertError(f"{src}: the tensors do not show {'; nor '.join(missing)}: name the timm "
                              "model with --model NAME (model=NAME)")
    cfg = inferred.config.replace(
        rope="mixed", rope_temperature=10.0, rope_grid_indexing="xy", qkv_bias=inferred.config.qkv_bias or q_bias,
        k_bias=not q_bias, mlp_layer_scale="blocks.0.ls2.gamma" in shapes or "blocks.0.ls1.gamma" not in shapes,
        layer_scale="blocks.0.ls1.gamma" in shapes)
    expected = (2, cfg.depth, cfg.num_heads, cfg.head_dim // 2)
    if freqs != expected:
        raise VitConvertError(f"{src}: rope.freqs has shape {freqs}, but its blocks make {expected} "
                              f"(2, depth {cfg.depth}, heads {cfg.num_heads}, head_dim / 2 {cfg.head_dim // 2})")
    return cfg, Preprocess(size=cfg.img_size, **TIMM_DEFAULT_PREPROCESS)


def _detect(probe: Probe) -> Detection | None:
    if probe.kind.kind not in ("pickle", "torch-zip", "safetensors") or "patch_embed.proj.weight" not in probe.keys:
        return None
    mark = next((k for k in sorted(probe.keys) if EVA_MARKS.match(k)), None)
    if any(k.endswith(TABLE) for k in probe.keys):  # a Beit's relative position tables: the timm format's
        return None
    return None if mark is None else Detection(1.0, f"a timm state dict with Eva's {mark}")


def _open(probe: Probe) -> TimmReader:
    from .timm import TimmReader

    return TimmReader(probe)


TIMM_EVA = SourceFormat(
    name="timm-eva", summary="timm Eva state dicts: EVA, EVA-02, PE, RoPE-ViT, DINOv3, LingBot, Sapiens2 (RoPE ViTs)",
    detect=_detect, open=_open, plan=_plan,
    options=(Option("model", "--model", "timm's Eva model name (with tag): its RoPE and what the tensors do not show"),
             Option("timm_kwargs", "", "given to timm.create_model with the model name (Python only)")),
    example="vitconvert convert eva02_base.safetensors eva02-b.safetensors --model eva02_base_patch14_224",
    looks_for="a state dict with patch_embed.proj.weight and Eva's blocks.N.gamma_1, attn.q_bias, attn.q_proj or "
              "rope.freqs, and no relative position tables (a Beit's: the timm format's)")
