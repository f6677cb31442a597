"""Our Vision Transformer: patch embedding, prefix tokens, position embeddings, pre-norm blocks, head.

Built only from a `ViTConfig`. Parameter names are timm's VisionTransformer names, so the
state dict of this model loads into timm's model of the same shape and the other way round.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..core.config import ViTConfig
from .hybrid import backbone_channels, build_backbone


class PatchEmbed(nn.Module):
    """Image (B, C, H, W) to patch tokens (B, N, D); hybrids run a ResNet first."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        in_chs = cfg.in_chans
        if cfg.hybrid_layers is not None:
            self.backbone = build_backbone(cfg.hybrid_layers, cfg.in_chans, cfg.hybrid_width)
            in_chs = backbone_channels(cfg.hybrid_layers, cfg.hybrid_width)
        self.proj = nn.Conv2d(in_chs, cfg.embed_dim, cfg.patch_size, cfg.patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "backbone"):
            x = self.backbone(x)
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, D // self.num_heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(B, N, D))

    def forward_first(self, x: torch.Tensor, n: int) -> torch.Tensor:
        """The output for the first `n` tokens only, (B, n, D): queries for those, keys and values for all.

        The qkv weight's rows are [q; k; v], so its slices are contiguous views, no copies.
        """
        B, N, D = x.shape
        H = self.num_heads
        w, b = self.qkv.weight, self.qkv.bias
        q = F.linear(x[:, :n], w[:D], None if b is None else b[:D]).reshape(B, n, H, D // H).transpose(1, 2)
        kv = F.linear(x, w[D:], None if b is None else b[D:]).reshape(B, N, 2, H, D // H).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, kv[0], kv[1])
        return self.proj(x.transpose(1, 2).reshape(B, n, D))

    def attention_probs(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax attention weights (B, heads, N, N); for attention maps, not the fast path."""
        B, N, D = x.shape
        q, k, _ = self.qkv(x).reshape(B, N, 3, self.num_heads, D // self.num_heads).permute(2, 0, 3, 1, 4)
        return (q @ k.transpose(-2, -1) * (D // self.num_heads) ** -0.5).softmax(-1)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, approximate: str) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate=approximate)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.embed_dim, eps=cfg.ln_eps)
        self.attn = Attention(cfg.embed_dim, cfg.num_heads, cfg.qkv_bias)
        self.norm2 = nn.LayerNorm(cfg.embed_dim, eps=cfg.ln_eps)
        self.mlp = Mlp(cfg.embed_dim, cfg.mlp_dim, "tanh" if cfg.act == "gelu_tanh" else "none")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))

    def forward_first(self, x: torch.Tensor, n: int) -> torch.Tensor:
        """`forward(x)[:, :n]`, computing only what those tokens need (every token's keys and values)."""
        first = x[:, :n] + self.attn.forward_first(self.norm1(x), n)
        return first + self.mlp(self.norm2(first))


class PreLogits(nn.Module):
    """The representation layer of the 2020 ImageNet-21k models: Linear + tanh."""

    def __init__(self, dim: int, size: int) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.fc(x))


class Intermediates(NamedTuple):
    """Every stage's output, named; `verify` uses them to say where two models part ways."""

    logits: torch.Tensor
    stages: dict[str, torch.Tensor]


class VisionTransformer(nn.Module):
    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.config = cfg
        D = cfg.embed_dim
        self.patch_embed = PatchEmbed(cfg)
        if cfg.pool == "token":
            self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        if cfg.distilled:
            self.dist_token = nn.Parameter(torch.zeros(1, 1, D))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_pos_tokens, D))
        self.blocks = nn.Sequential(*(Block(cfg) for _ in range(cfg.depth)))
        self.norm = nn.Identity() if cfg.fc_norm else nn.LayerNorm(D, eps=cfg.ln_eps)
        if cfg.fc_norm:
            self.fc_norm = nn.LayerNorm(D, eps=cfg.ln_eps)
        if cfg.representation_size:
            self.pre_logits = PreLogits(D, cfg.representation_size)
        self.head = nn.Linear(cfg.representation_size or D, cfg.num_classes)
        if cfg.distilled:
            self.head_dist = nn.Linear(D, cfg.num_classes)

    def embed_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Patch tokens plus prefix tokens, with position embeddings added."""
        x = self.patch_embed(x)
        prefix = [t.expand(x.shape[0], -1, -1) for t in self.prefix_tokens()]
        if self.config.no_embed_class:  # big_vision: the class token carries no position
            return torch.cat([*prefix, x + self.pos_embed], dim=1)
        return torch.cat([*prefix, x], dim=1) + self.pos_embed

    def prefix_tokens(self) -> list[torch.Tensor]:
        return [getattr(self, name) for name in ("cls_token", "dist_token") if hasattr(self, name)]

    def pool(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if self.config.pool == "gap":
            x = x.mean(dim=1)
            return self.fc_norm(x) if self.config.fc_norm else x
        if self.config.distilled:
            return x[:, 0], x[:, 1]
        return x[:, 0]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Every token after the blocks and the final norm, (B, N, D): timm's `forward_features`."""
        return self.norm(self.blocks(self.embed_tokens(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """`forward_features`' tokens pooled, then (unless `pre_logits`) through the head: timm's
        `forward_head`. The pooled features come before the representation layer (a distilled model
        averages its two tokens), as timm's do."""
        pooled = self.pool(x)
        if pre_logits:
            return (pooled[0] + pooled[1]) / 2 if isinstance(pooled, tuple) else pooled
        return self.head_logits(pooled)

    def forward_pooled(self, x: torch.Tensor) -> torch.Tensor:
        """`forward_head(forward_features(x), pre_logits=True)`, with the cheaper last block."""
        return self.forward_head(self.norm(self.tokens_for_pool(self.embed_tokens(x))), pre_logits=True)

    def head_logits(self, pooled: torch.Tensor | tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        if isinstance(pooled, tuple):  # DeiT distilled: the two heads averaged, as at inference in DeiT
            return (self.head(pooled[0]) + self.head_dist(pooled[1])) / 2
        if self.config.representation_size:
            pooled = self.pre_logits(pooled)
        return self.head(pooled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head_logits(self.pool(self.norm(self.tokens_for_pool(self.embed_tokens(x)))))

    def tokens_for_pool(self, x: torch.Tensor) -> torch.Tensor:
        """The blocks' output, where pooling reads it. A class-token model reads only the prefix
        tokens, and after the last block's attention no token sees another, so the last block runs
        its queries, projection and MLP for those tokens alone: the same arithmetic for the tokens
        that are read (up to float rounding of a smaller matrix product), about 1/depth less work."""
        if self.config.pool != "token" or not len(self.blocks):
            return self.blocks(x)
        *rest, last = self.blocks
        for block in rest:
            x = block(x)
        return last.forward_first(x, self.config.num_prefix_tokens)

    def forward_intermediates(self, x: torch.Tensor) -> Intermediates:
        stages = {"embed": self.embed_tokens(x)}
        x = stages["embed"]
        for i, block in enumerate(self.blocks):
            x = stages[f"blocks.{i}"] = block(x)
        x = stages["norm"] = self.norm(x)
        pooled = self.pool(x)
        if isinstance(pooled, tuple):
            stages["pool"], stages["pool_dist"] = pooled
        else:
            stages["pool"] = pooled
        return Intermediates(self.head_logits(pooled), stages)

    def attention_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Each block's softmax attention weights (B, heads, N, N), in order; for attention rollout.

        A separate pass, so `forward` keeps its fused attention kernel.
        """
        x = self.embed_tokens(x)
        maps = []
        for block in self.blocks:
            maps.append(block.attn.attention_probs(block.norm1(x)))
            x = block(x)
        return maps
