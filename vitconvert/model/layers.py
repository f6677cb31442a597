"""The layers a transformer block is made of, in each variant timm's VisionTransformer builds.

Module and parameter names are timm's (`qkv`, `q_norm`, `proj`, `fc1`, `fc1_g`, `ls1.gamma`, ...), so
state dicts move between the two unchanged. A layer a config leaves out is an `nn.Identity`, as in
timm: it holds no parameters and costs one call.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..core.config import Activation, ViTConfig
from ..core.param_shapes import rel_pos_table_shape
from .attn_context import AttnContext, logit_bias, rotate_qk
from .relpos import RelPosBias

NormFactory = Callable[[int], nn.Module]


class RmsNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight: timm's RmsNorm (no bias, no centring)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, self.weight.shape, self.weight, self.eps)


def norm_factory(cfg: ViTConfig) -> NormFactory:
    """The config's norm layer (LayerNorm or RMSNorm, its eps) for a given width."""
    if cfg.norm == "rmsnorm":
        return lambda dim: RmsNorm(dim, cfg.ln_eps)
    return lambda dim: nn.LayerNorm(dim, eps=cfg.ln_eps)


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): OpenAI CLIP's activation."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


# One module per ViTConfig.act name; a name missing here is a KeyError, not a silent GELU.
ACTIVATION_MODULES: dict[Activation, Callable[[], nn.Module]] = {
    "gelu": nn.GELU, "gelu_tanh": lambda: nn.GELU(approximate="tanh"), "quick_gelu": QuickGELU, "silu": nn.SiLU,
    "relu": nn.ReLU}


def activation(name: Activation) -> nn.Module:
    return ACTIVATION_MODULES[name]()


class Mlp(nn.Module):
    """fc1, activation, (norm), fc2."""

    def __init__(self, dim: int, hidden: int, act: str, norm: NormFactory | None = None, bias: bool = True) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, bias=bias)
        self.act = activation(act)
        self.norm = norm(hidden) if norm else nn.Identity()
        self.fc2 = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.norm(self.act(self.fc1(x))))


class GluMlp(nn.Module):
    """timm's GluMlp: fc1 gives value and gate halves, value * act(gate) (SwiGLUPacked: the gate first)."""

    def __init__(self, dim: int, hidden: int, act: str, norm: NormFactory | None, bias: bool,
                 gate_last: bool) -> None:
        super().__init__()
        self.gate_last = gate_last
        self.fc1 = nn.Linear(dim, hidden, bias=bias)
        self.act = activation(act)
        self.norm = norm(hidden // 2) if norm else nn.Identity()
        self.fc2 = nn.Linear(hidden // 2, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = self.fc1(x).chunk(2, dim=-1)
        x = x1 * self.act(x2) if self.gate_last else self.act(x1) * x2
        return self.fc2(self.norm(x))


class SwiGLU(nn.Module):
    """timm's SwiGLU: act(fc1_g(x)) * fc1_x(x), (norm), fc2."""

    def __init__(self, dim: int, hidden: int, act: str, norm: NormFactory | None, bias: bool) -> None:
        super().__init__()
        self.fc1_g = nn.Linear(dim, hidden, bias=bias)
        self.fc1_x = nn.Linear(dim, hidden, bias=bias)
        self.act = activation(act)
        self.norm = norm(hidden) if norm else nn.Identity()
        self.fc2 = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.norm(self.act(self.fc1_g(x)) * self.fc1_x(x)))


def block_mlp(cfg: ViTConfig) -> nn.Module:
    norm = norm_factory(cfg) if cfg.scale_mlp_norm else None
    args = (cfg.embed_dim, cfg.mlp_dim, cfg.act, norm, cfg.proj_bias)
    if cfg.mlp == "swiglu":
        return SwiGLU(*args)
    if cfg.mlp in ("glu", "swiglu_packed"):
        return GluMlp(*args, gate_last=cfg.mlp == "glu")
    return Mlp(*args)


class LayerScale(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Attention(nn.Module):
    """Multi-head self-attention, fused qkv; optional per-head q/k norms and a norm before `proj`. Its inner
    width (heads x head width) is the model's unless the config sets another head width.

    Block `index` of the config: with grouped-query attention (`kv_heads`) its own key/value head count, qkv's
    rows then q (heads x d), k and v (kv heads x d each). Without a key bias (`k_bias` off) the query and value
    biases are `q_bias` and `v_bias`, timm's EvaAttention's names; BEiT's relative position table of the block is
    `relative_position_bias_table` (the model puts its bias into the context). Each call takes the block's `AttnContext`
    (RoPE on q and k after their norms, an additive logit bias), or None.
    """

    # Each token attends to itself and those before it: a CLIP text tower's blocks (vitconvert.text) set it;
    # an image model never does.
    causal: bool = False

    def __init__(self, cfg: ViTConfig, index: int = 0) -> None:
        super().__init__()
        dim, inner, norm = cfg.embed_dim, cfg.attn_dim, norm_factory(cfg)
        self.num_heads, self.head_dim = cfg.num_heads, cfg.head_dim
        self.kv_heads = cfg.block_kv_heads(index)
        kv = self.kv_heads * cfg.head_dim
        self.split = [inner, kv, kv]
        if cfg.qkv_bias and not cfg.k_bias:
            self.q_bias = nn.Parameter(torch.zeros(inner))
            self.v_bias = nn.Parameter(torch.zeros(kv))
        else:
            self.q_bias = self.v_bias = None
        if cfg.rel_pos_bias:  # BEiT's table of this block (model/relpos.py), timm's Beit's name
            self.relative_position_bias_table = nn.Parameter(torch.zeros(rel_pos_table_shape(cfg)))
            self._rel_pos = RelPosBias(cfg)
        self.qkv = nn.Linear(dim, inner + 2 * kv, bias=cfg.qkv_bias and cfg.k_bias)
        self.q_norm = norm(cfg.head_dim) if cfg.qk_norm else nn.Identity()
        self.k_norm = norm(cfg.head_dim) if cfg.qk_norm else nn.Identity()
        self.norm = norm(inner) if cfg.scale_attn_norm else nn.Identity()
        self.proj = nn.Linear(inner, dim, bias=cfg.proj_bias)

    def rel_pos_bias(self, grid: tuple[int, int]) -> torch.Tensor | None:
        """This block's relative position bias on `grid`, (1, heads, N, N), or None without a table of its own."""
        if not hasattr(self, "relative_position_bias_table"):
            return None
        return self._rel_pos(self.relative_position_bias_table, grid)

    def _bias(self) -> torch.Tensor | None:
        """qkv's bias, the key's zeros between q_bias and v_bias where those hold it."""
        if self.q_bias is None:
            return self.qkv.bias
        return torch.cat((self.q_bias, torch.zeros_like(self.v_bias), self.v_bias))

    def _heads(self, t: torch.Tensor, heads: int) -> torch.Tensor:
        B, N, _ = t.shape
        return t.reshape(B, N, heads, self.head_dim).transpose(1, 2)

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys and values (B, heads, N, d) after the q/k norms; keys and values of kv_heads."""
        B, N, _ = x.shape
        # qkv itself, whatever a fast path made of it (model/optimize.py); q_bias and v_bias added after it.
        qkv = self.qkv(x) if self.q_bias is None else self.qkv(x) + self._bias()
        if self.kv_heads == self.num_heads:
            q, k, v = qkv.reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        else:
            q, k, v = torch.split(qkv, self.split, dim=-1)
            q, k, v = self._heads(q, self.num_heads), self._heads(k, self.kv_heads), self._heads(v, self.kv_heads)
        return self.q_norm(q), self.k_norm(k), v

    def _grouped(self, t: torch.Tensor) -> torch.Tensor:
        """Keys or values of kv_heads repeated for the query heads that read them (head h reads h // groups)."""
        groups = self.num_heads // self.kv_heads
        return t if groups == 1 else t.repeat_interleave(groups, dim=1)

    def forward(self, x: torch.Tensor, ctx: AttnContext | None = None) -> torch.Tensor:
        B, N, _ = x.shape
        q, k, v = self._qkv(x)
        q, k = rotate_qk(q, k, ctx)
        # A causal text tower has no context (no RoPE, no bias): SDPA takes a mask or is_causal, not both.
        x = F.scaled_dot_product_attention(q, self._grouped(k), self._grouped(v),
                                           attn_mask=logit_bias(ctx, dtype=q.dtype), is_causal=self.causal)
        return self.proj(self.norm(x.transpose(1, 2).reshape(B, N, -1)))

    def forward_first(self, x: torch.Tensor, n: int, ctx: AttnContext | None = None) -> torch.Tensor:
        """The output for the first `n` tokens only, (B, n, D): queries for those, keys and values for all.

        The qkv weight's rows are [q; k; v], so its slices are contiguous views, no copies.
        """
        B, N, _ = x.shape
        w, b, inner = self.qkv.weight, self._bias(), self.split[0]
        q = self._heads(F.linear(x[:, :n], w[:inner], None if b is None else b[:inner]), self.num_heads)
        k, v = torch.split(F.linear(x, w[inner:], None if b is None else b[inner:]), self.split[1:], dim=-1)
        q, k, v = self.q_norm(q), self.k_norm(self._heads(k, self.kv_heads)), self._heads(v, self.kv_heads)
        q, k = rotate_qk(q, k, ctx, queries=slice(0, n))
        x = F.scaled_dot_product_attention(q, self._grouped(k), self._grouped(v),
                                           attn_mask=logit_bias(ctx, slice(0, n), q.dtype))
        return self.proj(self.norm(x.transpose(1, 2).reshape(B, n, inner)))

    def attention_probs(self, x: torch.Tensor, ctx: AttnContext | None = None) -> torch.Tensor:
        """Softmax attention weights (B, heads, N, N); for attention maps, not the fast path."""
        q, k, _ = self._qkv(x)
        q, k = rotate_qk(q, k, ctx)
        logits = q * self.head_dim ** -0.5 @ self._grouped(k).transpose(-2, -1)  # timm's order of operations
        if (bias := logit_bias(ctx, dtype=logits.dtype)) is not None:
            logits = logits + bias
        return logits.softmax(-1)
