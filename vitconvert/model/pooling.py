"""Attention pooling with a learned query (MAP): timm's AttentionPoolLatent, big_vision's MAPHead.

One latent token attends over the tokens (queries from the latent, keys and values from the
tokens), the result is projected, then a residual MLP after a norm; the pooled vector is that
token. Parameter names are timm's: `latent`, `q`, `kv` (keys then values), `proj`, `norm`, `mlp`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import Mlp, NormFactory


class AttentionPoolLatent(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_dim: int, norm: NormFactory, act: str) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.latent = nn.Parameter(torch.zeros(1, 1, dim))
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm = norm(dim)
        self.mlp = Mlp(dim, mlp_dim, act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, D) tokens -> (B, D)."""
        B, N, D = x.shape
        H = self.num_heads
        q = self.q(self.latent).reshape(1, 1, H, D // H).transpose(1, 2).expand(B, -1, -1, -1)
        k, v = self.kv(x).reshape(B, N, 2, H, D // H).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v)
        x = self.proj(x.transpose(1, 2).reshape(B, 1, D))
        x = x + self.mlp(self.norm(x))
        return x[:, 0]
