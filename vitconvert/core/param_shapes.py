"""Parameter names and shapes of the model a `ViTConfig` describes, computed without torch.

Converters check every planned tensor against these before writing, and `read_record` checks
a file's header against them; the JAX path must not import torch, hence no model here. Names and
order are those of `VisionTransformer.state_dict()` (the tests compare the two over many configs).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from .config import ViTConfig
from .errors import VitConvertError, name_list

Shapes = dict[str, tuple[int, ...]]
# Adds a norm layer's parameters (LayerNorm: weight and bias; RMSNorm: weight) under a name.
NormShapes = Callable[[Shapes, str, int], None]


def param_shapes(cfg: ViTConfig) -> Shapes:
    d = cfg.embed_dim
    shapes: Shapes = {}
    norm = _norm_layer(cfg)
    # Parameters held directly by the model come first in a state dict, then its sub-modules'.
    if cfg.has_class_token:
        shapes["cls_token"] = (1, 1, d)
    if cfg.reg_tokens:
        shapes["reg_token"] = (1, cfg.reg_tokens, d)
    if cfg.distilled:
        shapes["dist_token"] = (1, 1, d)
    if cfg.pos_embed == "learn":
        shapes["pos_embed"] = (1, cfg.num_pos_tokens, d)
    in_chs = cfg.in_chans
    if cfg.hybrid_layers is not None:
        in_chs = _backbone(shapes, cfg.hybrid_layers, cfg.in_chans, cfg.hybrid_width)
    shapes["patch_embed.proj.weight"] = (d, in_chs, *cfg.patch_hw)
    if cfg.patch_bias:
        shapes["patch_embed.proj.bias"] = (d,)
    if cfg.patch_norm:
        norm(shapes, "patch_embed.norm", d)
    if cfg.patch_pre_norm:
        norm(shapes, "patch_embed.pre_norm", in_chs * cfg.patch_hw[0] * cfg.patch_hw[1])
    if cfg.rope == "mixed":  # learned RoPE frequencies: (x, y), per block and head
        shapes["rope.freqs"] = (2, cfg.depth, cfg.num_heads, cfg.head_dim // 2)
    if cfg.pre_norm:
        norm(shapes, "norm_pre", d)
    if cfg.shared_rel_pos_bias:
        shapes["rel_pos_bias.relative_position_bias_table"] = rel_pos_table_shape(cfg)
    for i in range(cfg.depth):
        _block(shapes, cfg, i, norm)
    if cfg.final_norm and not cfg.fc_norm:
        norm(shapes, "norm", d)
    if cfg.pool == "map":
        attention_pool_shapes(shapes, "attn_pool", d, cfg.pool_mlp_dim or cfg.mlp_dim, norm)
    if cfg.final_norm and cfg.fc_norm:
        norm(shapes, "fc_norm", d)
    if cfg.representation_size:
        _linear(shapes, "pre_logits.fc", d, cfg.representation_size)
    if cfg.num_classes:
        _linear(shapes, "head", cfg.representation_size or d, cfg.num_classes)
    if cfg.distilled:
        _linear(shapes, "head_dist", d, cfg.num_classes)
    return shapes


def _block(shapes: Shapes, cfg: ViTConfig, i: int, norm: NormShapes) -> None:
    d, b = cfg.embed_dim, f"blocks.{i}"
    if cfg.block == "parallel":
        _parallel_block(shapes, cfg, b, norm)
    elif cfg.block in ("res_post", "post_norm"):  # each branch registered before its norm
        _attention(shapes, cfg, i, norm)
        norm(shapes, f"{b}.norm1", d)
        _mlp(shapes, cfg, b, norm)
        norm(shapes, f"{b}.norm2", d)
    else:
        norm(shapes, f"{b}.norm1", d)
        _attention(shapes, cfg, i, norm)
        if cfg.layer_scale:
            shapes[f"{b}.ls1.gamma"] = (d,)
        norm(shapes, f"{b}.norm2", d)
        _mlp(shapes, cfg, b, norm)
        if cfg.layer_scale and cfg.mlp_layer_scale:
            shapes[f"{b}.ls2.gamma"] = (d,)


def _mlp(shapes: Shapes, cfg: ViTConfig, b: str, norm: NormShapes) -> None:
    d, hidden = cfg.embed_dim, cfg.mlp_dim
    if cfg.mlp == "swiglu":
        _linear(shapes, f"{b}.mlp.fc1_g", d, hidden, cfg.proj_bias)
        _linear(shapes, f"{b}.mlp.fc1_x", d, hidden, cfg.proj_bias)
    else:
        _linear(shapes, f"{b}.mlp.fc1", d, hidden, cfg.proj_bias)
    if cfg.mlp in ("glu", "swiglu_packed"):  # half of fc1's outputs gate the other half
        hidden //= 2
    if cfg.scale_mlp_norm:
        norm(shapes, f"{b}.mlp.norm", hidden)
    _linear(shapes, f"{b}.mlp.fc2", hidden, d, cfg.proj_bias)


def rel_pos_table_rows(grid: tuple[int, int]) -> int:
    """Rows of a relative position bias table for a (rows, cols) patch grid: one per offset between two
    patches, and three for the class token (model/relpos.py)."""
    return (2 * grid[0] - 1) * (2 * grid[1] - 1) + 3


def rel_pos_table_shape(cfg: ViTConfig) -> tuple[int, int]:
    """(rows, heads) of the relative position bias tables `cfg` stores, for its own grid."""
    return rel_pos_table_rows(cfg.grid_size), cfg.num_heads


def _attention(shapes: Shapes, cfg: ViTConfig, i: int, norm: NormShapes) -> None:
    d, inner, b = cfg.embed_dim, cfg.attn_dim, f"blocks.{i}"
    kv = cfg.block_kv_heads(i) * cfg.head_dim
    if cfg.qkv_bias and not cfg.k_bias:  # the attention's own parameters come before its qkv's
        shapes[f"{b}.attn.q_bias"] = (inner,)
        shapes[f"{b}.attn.v_bias"] = (kv,)
    if cfg.rel_pos_bias:
        shapes[f"{b}.attn.relative_position_bias_table"] = rel_pos_table_shape(cfg)
    _linear(shapes, f"{b}.attn.qkv", d, inner + 2 * kv, cfg.qkv_bias and cfg.k_bias)
    if cfg.qk_norm:
        norm(shapes, f"{b}.attn.q_norm", cfg.head_dim)
        norm(shapes, f"{b}.attn.k_norm", cfg.head_dim)
    if cfg.scale_attn_norm:
        norm(shapes, f"{b}.attn.norm", inner)
    _linear(shapes, f"{b}.attn.proj", inner, d, cfg.proj_bias)


def _parallel_block(shapes: Shapes, cfg: ViTConfig, b: str, norm: NormShapes) -> None:
    d, hidden = cfg.embed_dim, cfg.mlp_dim  # (validated: no grouped queries, no q/v-only biases)
    if not cfg.qkv_bias:  # the MLP's input bias, apart from a bias-free fused projection
        shapes[f"{b}.mlp_bias"] = (hidden,)
    norm(shapes, f"{b}.in_norm", d)
    _linear(shapes, f"{b}.in_proj", d, hidden + 3 * d, cfg.qkv_bias)
    if cfg.qk_norm:
        norm(shapes, f"{b}.q_norm", d // cfg.num_heads)
        norm(shapes, f"{b}.k_norm", d // cfg.num_heads)
    _linear(shapes, f"{b}.attn_out_proj", d, d, cfg.proj_bias)
    _linear(shapes, f"{b}.mlp_out_proj", hidden, d, cfg.proj_bias)
    if cfg.layer_scale:
        shapes[f"{b}.ls.gamma"] = (d,)


def attention_pool_shapes(shapes: Shapes, name: str, dim: int, mlp_dim: int, norm: NormShapes) -> None:
    """timm's AttentionPoolLatent (model/pooling.py): one latent query attending over the tokens."""
    shapes[f"{name}.latent"] = (1, 1, dim)
    _linear(shapes, f"{name}.q", dim, dim)
    _linear(shapes, f"{name}.kv", dim, 2 * dim)
    _linear(shapes, f"{name}.proj", dim, dim)
    norm(shapes, f"{name}.norm", dim)
    _linear(shapes, f"{name}.mlp.fc1", dim, mlp_dim)
    _linear(shapes, f"{name}.mlp.fc2", mlp_dim, dim)


def _backbone(shapes: Shapes, layers: tuple[int, ...], in_chans: int, width: int) -> int:
    """The hybrid ResNetV2 (see hybrid.py); returns its output channels."""
    stem = "patch_embed.backbone.stem" if layers else "patch_embed.backbone"
    shapes[f"{stem}.conv.weight"] = (width, in_chans, 7, 7)
    _layer_norm(shapes, f"{stem}.norm", width)
    chs = width
    for s, depth in enumerate(layers):
        out = 4 * width * 2 ** s
        mid = out // 4
        for u in range(depth):
            unit = f"patch_embed.backbone.stages.{s}.blocks.{u}"
            unit_in = chs if u == 0 else out
            if u == 0 and (s > 0 or unit_in != out):  # stride 2 or a change of width: a projection
                shapes[f"{unit}.downsample.conv.weight"] = (out, unit_in, 1, 1)
                _layer_norm(shapes, f"{unit}.downsample.norm", out)
            for r, (cin, cout, k) in enumerate(((unit_in, mid, 1), (mid, mid, 3), (mid, out, 1)), start=1):
                shapes[f"{unit}.conv{r}.weight"] = (cout, cin, k, k)
                _layer_norm(shapes, f"{unit}.norm{r}", cout)
        chs = out
    return chs


def _norm_layer(cfg: ViTConfig) -> NormShapes:
    return _rms_norm if cfg.norm == "rmsnorm" else _layer_norm


def _layer_norm(shapes: Shapes, name: str, dim: int) -> None:
    """LayerNorm, and GroupNorm: a scale and a bias per channel."""
    shapes[f"{name}.weight"] = (dim,)
    shapes[f"{name}.bias"] = (dim,)


def _rms_norm(shapes: Shapes, name: str, dim: int) -> None:
    shapes[f"{name}.weight"] = (dim,)


def _linear(shapes: Shapes, name: str, fan_in: int, fan_out: int, bias: bool = True) -> None:
    shapes[f"{name}.weight"] = (fan_out, fan_in)
    if bias:
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
