"""Parameter names and shapes of the model a `ViTConfig` describes, computed without torch.

Converters check every planned tensor against these before writing, and `read_record` checks
a file's header against them; the JAX path must not import torch, hence no model here. Names and
order are those of `VisionTransformer.state_dict()` (the tests compare the two over many configs).
"""

from __future__ import annotations

from collections.abc import Mapping

from .config import ViTConfig
from .errors import VitConvertError, name_list

Shapes = dict[str, tuple[int, ...]]


def param_shapes(cfg: ViTConfig) -> Shapes:
    d = cfg.embed_dim
    shapes: Shapes = {}
    # Parameters held directly by the model come first in a state dict, then its sub-modules'.
    if cfg.pool == "token":
        shapes["cls_token"] = (1, 1, d)
    if cfg.distilled:
        shapes["dist_token"] = (1, 1, d)
    shapes["pos_embed"] = (1, cfg.num_pos_tokens, d)
    in_chs = cfg.in_chans
    if cfg.hybrid_layers is not None:
        in_chs = _backbone(shapes, cfg.hybrid_layers, cfg.in_chans, cfg.hybrid_width)
    shapes["patch_embed.proj.weight"] = (d, in_chs, cfg.patch_size, cfg.patch_size)
    shapes["patch_embed.proj.bias"] = (d,)
    for i in range(cfg.depth):
        b = f"blocks.{i}"
        _norm(shapes, f"{b}.norm1", d)
        shapes[f"{b}.attn.qkv.weight"] = (3 * d, d)
        if cfg.qkv_bias:
            shapes[f"{b}.attn.qkv.bias"] = (3 * d,)
        _linear(shapes, f"{b}.attn.proj", d, d)
        _norm(shapes, f"{b}.norm2", d)
        _linear(shapes, f"{b}.mlp.fc1", d, cfg.mlp_dim)
        _linear(shapes, f"{b}.mlp.fc2", cfg.mlp_dim, d)
    _norm(shapes, "fc_norm" if cfg.fc_norm else "norm", d)
    if cfg.representation_size:
        _linear(shapes, "pre_logits.fc", d, cfg.representation_size)
    _linear(shapes, "head", cfg.representation_size or d, cfg.num_classes)
    if cfg.distilled:
        _linear(shapes, "head_dist", d, cfg.num_classes)
    return shapes


def _backbone(shapes: Shapes, layers: tuple[int, ...], in_chans: int, width: int) -> int:
    """The hybrid ResNetV2 (see hybrid.py); returns its output channels."""
    stem = "patch_embed.backbone.stem" if layers else "patch_embed.backbone"
    shapes[f"{stem}.conv.weight"] = (width, in_chans, 7, 7)
    _norm(shapes, f"{stem}.norm", width)
    chs = width
    for s, depth in enumerate(layers):
        out = 4 * width * 2 ** s
        mid = out // 4
        for u in range(depth):
            unit = f"patch_embed.backbone.stages.{s}.blocks.{u}"
            unit_in = chs if u == 0 else out
            if u == 0 and (s > 0 or unit_in != out):  # stride 2 or a change of width: a projection
                shapes[f"{unit}.downsample.conv.weight"] = (out, unit_in, 1, 1)
                _norm(shapes, f"{unit}.downsample.norm", out)
            for r, (cin, cout, k) in enumerate(((unit_in, mid, 1), (mid, mid, 3), (mid, out, 1)), start=1):
                shapes[f"{unit}.conv{r}.weight"] = (cout, cin, k, k)
                _norm(shapes, f"{unit}.norm{r}", cout)
        chs = out
    return chs


def _norm(shapes: Shapes, name: str, dim: int) -> None:
    shapes[f"{name}.weight"] = (dim,)
    shapes[f"{name}.bias"] = (dim,)


def _linear(shapes: Shapes, name: str, fan_in: int, fan_out: int) -> None:
    shapes[f"{name}.weight"] = (fan_out, fan_in)
    shapes[f"{name}.bias"] = (fan_out,)


def check_shapes(cfg: ViTConfig, shapes: Mapping[str, tuple[int, ...]], where: str) -> None:
    """Every tensor has the name and shape `cfg` implies, and none is missing.

    Converters call this on their plan before writing, and `read_record` on a file's header: a
    file whose tensors disagree with its own record would otherwise fail only when it is loaded,
    far from the checkpoint that caused it.
    """
    expected = param_shapes(cfg)
    wrong = [f"{k} {tuple(shape)} (expected {expected[k]})" for k, shape in shapes.items()
             if k in expected and tuple(shape) != expected[k]]
    extra, missing = set(shapes) - set(expected), set(expected) - set(shapes)
    problems = []
    if wrong:
        more = f" and {len(wrong) - 6} more" if len(wrong) > 6 else ""
        problems.append(f"inconsistent shapes: {'; '.join(wrong[:6])}{more}")
    if extra:
        problems.append(f"tensors the model lacks: {name_list(extra)}")
    if missing:
        problems.append(f"tensors the model needs but the file lacks: {name_list(missing)}")
    if problems:
        raise VitConvertError(f"{where}: " + "; ".join(problems))
