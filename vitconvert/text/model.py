"""A two-tower model's text tower, built from a `TextConfig` alone, as our ViT is from a ViTConfig.

Token embedding plus learned positions, our ViT's pre-norm `Block`s (causally masked for CLIP), the final
norm on every token, a pooling (TextConfig.pool), the projection. Module names are those of the file's
`text.*` tensors without the prefix (core/text_config.py's `text_param_shapes`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..core.config import ViTConfig
from ..core.text_config import TextConfig
from ..model.blocks import Block
from ..model.pooling import AttentionPoolLatent


def block_config(cfg: TextConfig) -> ViTConfig:
    """The ViT config whose `Block` is a text block: the same width, heads, MLP, activation and norm."""
    return ViTConfig(embed_dim=cfg.width, depth=cfg.depth, num_heads=cfg.num_heads, mlp_dim=cfg.mlp_dim,
                     act=cfg.act, ln_eps=cfg.ln_eps, qkv_bias=cfg.qkv_bias, num_classes=0)


class TextTransformer(nn.Module):
    """ids (N, L <= context_length) -> the un-normalised text embedding (N, out_dim)."""

    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.config = cfg
        bcfg = block_config(cfg)
        self.token_embed = nn.Embedding(cfg.vocab_size, cfg.width)
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.context_length, cfg.width))
        self.blocks = nn.Sequential(*(Block(bcfg) for _ in range(cfg.depth)))
        for block in self.blocks:
            block.attn.causal = cfg.causal
        self.norm = nn.LayerNorm(cfg.width, eps=cfg.ln_eps)
        if cfg.pool == "map":
            self.attn_pool = AttentionPoolLatent(cfg.width, cfg.num_heads, cfg.mlp_dim,
                                                 lambda d: nn.LayerNorm(d, eps=cfg.ln_eps), cfg.act)
        self.proj = nn.Linear(cfg.width, cfg.embed_dim, bias=cfg.proj_bias) if cfg.embed_dim else nn.Identity()

    def forward_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """Every token after the final norm, (N, L, width)."""
        x = self.token_embed(ids) + self.pos_embed[:, :ids.shape[1]]
        return self.norm(self.blocks(x))

    def pool(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        pool, rows = self.config.pool, torch.arange(x.shape[0], device=x.device)
        if pool == "argmax":
            return x[rows, ids.argmax(dim=-1)]
        if pool == "eos":
            return x[rows, (ids == self.config.eos_id).int().argmax(dim=-1)]
        if pool == "last":
            return x[:, -1]
        if pool == "first":
            return x[:, 0]
        return self.attn_pool(x)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.proj(self.pool(self.forward_tokens(ids), ids))


class TextModel(TextTransformer):
    """`load_text_model`'s module: the text tower with its tokenizer and its logit scale and bias.

    `tokenize(texts)` makes the ids, `forward(ids)` the un-normalised embedding (the source's encode_text or
    ztxt), `encode(texts)` both; `normalize(img) @ normalize(txt).T * logit_scale + logit_bias` is the
    source's logits, turned into probabilities by `probability` ('softmax' or 'sigmoid').
    """

    def __init__(self, cfg: TextConfig, tokenizer: object, logit_scale: float, logit_bias: float = 0.0,
                 probability: str = "softmax") -> None:
        super().__init__(cfg)
        self.tokenizer = tokenizer
        self.logit_scale, self.logit_bias, self.probability = logit_scale, logit_bias, probability

    def tokenize(self, texts: str | Sequence[str]) -> torch.Tensor:
        return self.tokenizer(texts).to(self.pos_embed.device)

    @torch.no_grad()
    def encode(self, texts: str | Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """The texts' embeddings (N, out_dim), tokenized at once and run `batch_size` texts at a time."""
        ids = self.tokenize(texts)
        return torch.cat([self(chunk) for chunk in ids.split(batch_size)]) if len(ids) else self(ids)
