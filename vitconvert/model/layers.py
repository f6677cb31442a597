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
    width (heads x head width) is the model's unless the config sets another head width."""

    # Each token attends to itself and those before it: a CLIP text tower's blocks (vitconvert.text) set it;
    # an image model never does.
    causal: bool = False

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        dim, inner, norm = cfg.embed_dim, cfg.attn_dim, norm_factory(cfg)
        self.num_heads, self.head_dim = cfg.num_heads, cfg.head_dim
        self.qkv = nn.Linear(dim, 3 * inner, bias=cfg.qkv_bias)
        self.q_norm = norm(cfg.head_dim) if cfg.qk_norm else nn.Identity()
        self.k_norm = norm(cfg.head_dim) if cfg.qk_norm else nn.Identity()
        self.norm = norm(inner) if cfg.scale_attn_norm else nn.Identity()
        self.proj = nn.Linear(inner, dim, bias=cfg.proj_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(self.q_norm(q), self.k_norm(k), v, is_causal=self.causal)
        return self.proj(self.norm(x.transpose(1, 2).reshape(B, N, -1)))

    def forward_first(self, x: torch.Tensor, n: int) -> torch.Tensor:
        """The output for the first `n` tokens only, (B, n, D): queries for those, keys and values for all.

        The qkv weight's rows are [q; k; v], so its slices are contiguous views, no copies.
        """
        B, N, _ = x.shape
        H, Dh = self.num_heads, self.head_dim
        w, b, inner = self.qkv.weight, self.qkv.bias, H * Dh
        q = F.linear(x[:, :n], w[:inner], None if b is None else b[:inner]).reshape(B, n, H, Dh).transpose(1, 2)
        kv = F.linear(x, w[inner:], None if b is None else b[inner:]).reshape(B, N, 2, H, Dh).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(self.q_norm(q), self.k_norm(kv[0]), kv[1])
        return self.proj(self.norm(x.transpose(1, 2).reshape(B, n, inner)))

    def attention_probs(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax attention weights (B, heads, N, N); for attention maps, not the fast path."""
        B, N, _ = x.shape
        q, k, _ = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = self.q_norm(q), self.k_norm(k)
        return (q * self.head_dim ** -0.5 @ k.transpose(-2, -1)).softmax(-1)  # timm's order of operations
