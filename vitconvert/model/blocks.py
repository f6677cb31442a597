"""The transformer blocks of timm's VisionTransformer: pre-norm (`Block`, nearly every ViT), residual
post-norm (`ResPostBlock`) and parallel (`ParallelScalingBlock`, ViT-22B style), under timm's names; and
torch's post-norm `TransformerEncoderLayer` (`PostNormBlock`), under the same names.

Each has `forward(x, ctx)`, `forward_first(x, n, ctx)` (the first n tokens of `forward(x)`, computing no
more than those need: the shortcut of the last block under token pooling) and `attention_probs(x, ctx)` (the
softmax weights, for attention maps); `ctx` is the block's `AttnContext` (RoPE, a logit bias) or None, which
the ViT makes once per input grid (model/attn_context.py). Block `index` of the config picks its own
key/value heads (`kv_heads`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..core.config import BlockKind, ViTConfig
from .attn_context import AttnContext, logit_bias, rotate_qk
from .layers import Attention, LayerScale, activation, block_mlp, norm_factory


class Block(nn.Module):
    """Pre-norm residual block: x + ls1(attn(norm1(x))), then x + ls2(mlp(norm2(x)))."""

    def __init__(self, cfg: ViTConfig, index: int = 0) -> None:
        super().__init__()
        norm = norm_factory(cfg)
        self.norm1 = norm(cfg.embed_dim)
        self.attn = Attention(cfg, index)
        self.ls1 = LayerScale(cfg.embed_dim) if cfg.layer_scale else nn.Identity()
        self.norm2 = norm(cfg.embed_dim)
        self.mlp = block_mlp(cfg)
        self.ls2 = LayerScale(cfg.embed_dim) if cfg.layer_scale and cfg.mlp_layer_scale else nn.Identity()

    def forward(self, x: torch.Tensor, ctx: AttnContext | None = None) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x), ctx))
        return x + self.ls2(self.mlp(self.norm2(x)))

    def forward_first(self, x: torch.Tensor, n: int, ctx: AttnContext | None = None) -> torch.Tensor:
        """`forward(x)[:, :n]`, computing only what those tokens need (every token's keys and values)."""
        first = x[:, :n] + self.ls1(self.attn.forward_first(self.norm1(x), n, ctx))
        return first + self.ls2(self.mlp(self.norm2(first)))

    def attention_probs(self, x: torch.Tensor, ctx: AttnContext | None = None) -> torch.Tensor:
        return self.attn.attention_probs(self.norm1(x), ctx)


class ResPostBlock(nn.Module):
    """Residual post-norm: x + norm1(attn(x)), then x + norm2(mlp(x))."""

    def __init__(self, cfg: ViTConfig, index: int = 0) -> None:
        super().__init__()
        norm = norm_factory(cfg)
        self.attn = Attention(cfg, index)
        self.norm1 = norm(cfg.embed_dim)
        self.mlp = block_mlp(cfg)
        self.norm2 = norm(cfg.embed_dim)

    def forward(self, x: torch.Tensor, ctx: AttnContext | None = None) -> torch.Tensor:
        x = x + self.norm1(self.attn(x, ctx))
        return x + self.norm2(self.mlp(x))

    def forward_first(self, x: torch.Tensor, n: int, ctx: AttnContext | None = None) -> torch.Tensor:
        first = x[:, :n] + self.norm1(self.attn.forward_first(x, n, ctx))
        return first + self.norm2(self.mlp(first))

    def attention_probs(self, x: torch.Tensor, ctx: AttnContext | None = None) -> torch.Tensor:
        return self.attn.attention_probs(x, ctx)


class PostNormBlock(ResPostBlock):
    """torch's TransformerEncoderLayer with norm_first=False (the original Transformer's order): the norm after
    each residual sum, norm1(x + attn(x)), then norm2(x + mlp(x)). ResPostBlock's layers, in another order."""

    def forward(self, x: torch.Tensor, ctx: AttnContext | None = None) -> torch.Tensor:
        x = self.norm1(x + self.attn(x, ctx))
        return self.norm2(x + self.mlp(x))

    def forward_first(self, x: torch.Tensor, n: int, ctx: AttnContext | None = None) -> torch.Tensor:
        first = self.norm1(x[:, :n] + self.attn.forward_first(x, n, ctx))
        return self.norm2(first + self.mlp(first))


class ParallelScalingBlock(nn.Module):
    """Attention and MLP side by side from one norm and one fused input projection (rows: MLP hidden, then
    q, k, v), their outputs projected apart and summed: x + ls(attn_out_proj(attn) + mlp_out_proj(act(h)))."""

    def __init__(self, cfg: ViTConfig, index: int = 0) -> None:
        super().__init__()
        dim, hidden = cfg.embed_dim, cfg.mlp_dim
        norm = norm_factory(cfg)
        self.num_heads, self.split = cfg.num_heads, [hidden, dim, dim, dim]
        # timm keeps the MLP's input bias apart when the projection has none (qkv_bias off).
        self.mlp_bias = None if cfg.qkv_bias else nn.Parameter(torch.zeros(hidden))
        self.in_norm = norm(dim)
        self.in_proj = nn.Linear(dim, hidden + 3 * dim, bias=cfg.qkv_bias)
        self.q_norm = norm(dim // cfg.num_heads) if cfg.qk_norm else nn.Identity()
        self.k_norm = norm(dim // cfg.num_heads) if cfg.qk_norm else nn.Identity()
        self.mlp_act = activation(cfg.act)
        self.attn_out_proj = nn.Linear(dim, dim, bias=cfg.proj_bias)
        self.mlp_out_proj = nn.Linear(hidden, dim, bias=cfg.proj_bias)
        self.ls = LayerScale(dim) if cfg.layer_scale else nn.Identity()

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        B, N, D = t.shape
        return t.view(B, N, self.num_heads, D // self.num_heads).transpose(1, 2)

    def _branches(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        h, q, k, v = torch.split(self.in_proj(self.in_norm(x)), self.split, dim=-1)
        if self.mlp_bias is not None:
            h = h + self.mlp_bias
        return h, self.q_norm(self._heads(q)), self.k_norm(self._heads(k)), self._heads(v)

    def forward(self, x: torch.Tensor, ctx: AttnContext | None = None) -> torch.Tensor:
        B, N, D = x.shape
        h, q, k, v = self._branches(x)
        q, k = rotate_qk(q, k, ctx)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=logit_bias(ctx, dtype=q.dtype))
        a = a.transpose(1, 2).reshape(B, N, D)
        return x + self.ls(self.attn_out_proj(a) + self.mlp_out_proj(self.mlp_act(h)))

    def forward_first(self, x: torch.Tensor, n: int, ctx: AttnContext | None = None) -> torch.Tensor:
        return self.forward(x, ctx)[:, :n]  # the fused projection serves keys and values: little to leave out

    def attention_probs(self, x: torch.Tensor, ctx: AttnContext | None = None) -> torch.Tensor:
        _, q, k, _ = self._branches(x)
        q, k = rotate_qk(q, k, ctx)
        logits = q * q.shape[-1] ** -0.5 @ k.transpose(-2, -1)
        if (bias := logit_bias(ctx, dtype=logits.dtype)) is not None:
            logits = logits + bias
        return logits.softmax(-1)


BLOCKS: dict[BlockKind, type[nn.Module]] = {"pre_norm": Block, "res_post": ResPostBlock,
                                             "parallel": ParallelScalingBlock, "post_norm": PostNormBlock}


def build_block(cfg: ViTConfig, index: int = 0) -> nn.Module:
    """Block `index` of the model `cfg` describes."""
    return BLOCKS[cfg.block](cfg, index)
