"""Our Vision Transformer: patch embedding, prefix tokens, position embeddings, blocks, pooling, head.

Built only from a `ViTConfig`. Parameter names are timm's VisionTransformer names, so the
state dict of this model loads into timm's model of the same shape and the other way round.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..core.config import ViTConfig
from ..core.errors import VitConvertError
from .attn_context import AttnContext
from .blocks import build_block
from .hybrid import backbone_channels, build_backbone
from .layers import norm_factory
from .pooling import AttentionPoolLatent
from .posembed import GridTables, pos_embed_on_grid, sincos_2d
from .relpos import RelativePositionBias
from .rope import Rope


class PatchEmbed(nn.Module):
    """Image (B, C, H, W) to patch tokens (B, N, D); hybrids run a ResNet first."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        in_chs = cfg.in_chans
        if cfg.hybrid_layers is not None:
            self.backbone = build_backbone(cfg.hybrid_layers, cfg.in_chans, cfg.hybrid_width, cfg.hybrid_gn_eps,
                                           cfg.hybrid_variant)
            in_chs = backbone_channels(cfg.hybrid_layers, cfg.hybrid_width)
        self.proj = nn.Conv2d(in_chs, cfg.embed_dim, cfg.patch_hw, cfg.patch_hw, bias=cfg.patch_bias)
        self.norm = norm_factory(cfg)(cfg.embed_dim) if cfg.patch_norm else nn.Identity()
        # A norm over each raw patch vector, in the kernel's (channel, row, column) order, which F.unfold's is too.
        self.pre_norm = norm_factory(cfg)(in_chs * cfg.patch_hw[0] * cfg.patch_hw[1]) if cfg.patch_pre_norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "backbone"):
            x = self.backbone(x)
        if self.pre_norm is None:
            return self.norm(self.proj(x).flatten(2).transpose(1, 2))
        # The projection is a matrix product over each patch vector; the norm comes between the two.
        patches = F.unfold(x, self.proj.kernel_size, stride=self.proj.stride).transpose(1, 2)
        return self.norm(F.linear(self.pre_norm(patches), self.proj.weight.flatten(1), self.proj.bias))


class PreLogits(nn.Module):
    """The representation layer: Linear + tanh (the 2020 ImageNet-21k models), or the Linear alone (a
    two-tower image projection before a zero-shot head)."""

    def __init__(self, dim: int, size: int, tanh: bool = True) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, size)
        self.tanh = tanh

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.fc(x)) if self.tanh else self.fc(x)


class Intermediates(NamedTuple):
    """Every stage's output, named; `verify` uses them to say where two models part ways."""

    logits: torch.Tensor
    stages: dict[str, torch.Tensor]


class TokenParts(NamedTuple):
    """A (B, N, D) token sequence split by kind: (B, D) or (B, R, D) each, None where the model has none."""

    class_token: torch.Tensor | None
    register_tokens: torch.Tensor | None  # register tokens (timm's reg_token; DINOv3's storage tokens)
    dist_token: torch.Tensor | None  # DeiT's distillation token
    patch_tokens: torch.Tensor  # (B, h * w, D), row by row


def token_parts(x: torch.Tensor, cfg: ViTConfig) -> TokenParts:
    """`cfg`'s model's tokens ([class, registers, distillation, patches], timm's order) split by kind."""
    start, parts = 0, []
    for count, single in ((int(cfg.has_class_token), True), (cfg.reg_tokens, False), (int(cfg.distilled), True)):
        parts.append(None if not count else x[:, start] if single else x[:, start:start + count])
        start += count
    return TokenParts(*parts, x[:, start:])


class VisionTransformer(nn.Module):
    """Runs at its config's size and at any other its patches tile: the stored position table resampled
    to the input's grid by the config's `pos_resize` (the same arithmetic as `load_model(img_size=)`),
    a sincos2d table computed for it. Resampled tables are kept per grid for inference (no grad), and
    computed afresh, differentiably, where the table needs a gradient; at the config's own size the
    stored table is used as it is, so export and compile see no resampling."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.config = cfg
        D = cfg.embed_dim
        norm = norm_factory(cfg)
        self.patch_embed = PatchEmbed(cfg)
        if cfg.has_class_token:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        if cfg.reg_tokens:
            self.reg_token = nn.Parameter(torch.zeros(1, cfg.reg_tokens, D))
        if cfg.distilled:
            self.dist_token = nn.Parameter(torch.zeros(1, 1, D))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_pos_tokens, D)) if cfg.pos_embed == "learn" else None
        # Registered where timm's Eva registers it, so that `rope.freqs` sits where its state dict has it.
        self.rope = Rope(cfg) if cfg.rope != "none" else None
        self.norm_pre = norm(D) if cfg.pre_norm else nn.Identity()
        self.rel_pos_bias = RelativePositionBias(cfg) if cfg.shared_rel_pos_bias else None
        self.blocks = nn.Sequential(*(build_block(cfg, i) for i in range(cfg.depth)))
        self.norm = norm(D) if cfg.final_norm and not cfg.fc_norm else nn.Identity()
        if cfg.pool == "map":
            self.attn_pool = AttentionPoolLatent(D, cfg.pool_heads or cfg.num_heads, cfg.pool_mlp_dim or cfg.mlp_dim,
                                                 norm, cfg.act)
        self.fc_norm = norm(D) if cfg.final_norm and cfg.fc_norm else nn.Identity()
        if cfg.representation_size:
            self.pre_logits = PreLogits(D, cfg.representation_size, tanh=cfg.pre_logits_act == "tanh")
        # A backbone (no classes) ends in its pooled features, as timm's does.
        self.head = nn.Linear(cfg.representation_size or D, cfg.num_classes) if cfg.num_classes else nn.Identity()
        if cfg.distilled:
            self.head_dist = nn.Linear(D, cfg.num_classes)
        self._grid_tables = GridTables()

    def embed_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Prefix tokens and patch tokens, with position embeddings added (and the pre-norm, if any)."""
        grid = self.config.input_grid((x.shape[-2], x.shape[-1]))  # before any compute
        x = self.patch_embed(x)
        prefix = [t.expand(x.shape[0], -1, -1) for t in self.prefix_tokens()]
        if self.config.pos_embed == "sincos2d":  # computed for this grid (so never resampled), patches only
            x = torch.cat([*prefix, x + sincos_2d(grid, x.shape[-1], x.device).to(x.dtype)], dim=1)
        elif self.pos_embed is None:
            x = torch.cat([*prefix, x], dim=1)
        elif self.config.no_embed_class:  # big_vision, DeiT III: the prefix tokens carry no position
            x = torch.cat([*prefix, x + self.pos_embed_for(grid)], dim=1)
        else:
            x = torch.cat([*prefix, x], dim=1) + self.pos_embed_for(grid)
        return self.norm_pre(x)

    def attn_contexts(self, x: torch.Tensor) -> list[AttnContext] | None:
        """Each block's positional context for images `x` (B, C, H, W): RoPE for their grid, made once per grid
        (model/rope.py), and BEiT's relative position bias (model/relpos.py: the shared table's, plus the
        block's own); None where the model has neither, which keeps every block on its plain path."""
        cfg = self.config
        if self.rope is None and not (cfg.rel_pos_bias or cfg.shared_rel_pos_bias):
            return None
        grid = cfg.input_grid((x.shape[-2], x.shape[-1]))
        ctxs = self.rope.contexts(grid, x.device) if self.rope is not None else [AttnContext()] * len(self.blocks)
        if not (cfg.rel_pos_bias or cfg.shared_rel_pos_bias):
            return ctxs
        shared = self.rel_pos_bias(grid) if self.rel_pos_bias is not None else None
        biases = [block.attn.rel_pos_bias(grid) for block in self.blocks]
        biases = [own if shared is None else shared if own is None else own + shared for own in biases]
        return [ctx._replace(bias=bias) for ctx, bias in zip(ctxs, biases, strict=True)]

    def run_blocks(self, x: torch.Tensor, ctxs: list[AttnContext] | None) -> torch.Tensor:
        """The blocks in turn, each with its context."""
        if ctxs is None:
            return self.blocks(x)
        for block, ctx in zip(self.blocks, ctxs, strict=True):
            x = block(x, ctx)
        return x

    def pos_embed_for(self, grid: tuple[int, int]) -> torch.Tensor:
        """The stored position table on `grid`: itself on the stored grid, else resampled by the config's
        method, from the table as it is now."""
        pos, cfg = self.pos_embed, self.config
        if grid == cfg.grid_size:
            return pos
        # A gradient, a compiler or a tracer needs the resampling in the graph, not a table made earlier.
        if (torch.is_grad_enabled() and pos.requires_grad) or torch.compiler.is_compiling() or torch.jit.is_tracing():
            return pos_embed_on_grid(pos, cfg, grid)
        return self._grid_tables.get(pos, grid, lambda: pos_embed_on_grid(pos, cfg, grid))

    def prefix_tokens(self) -> list[torch.Tensor]:
        return [getattr(self, name) for name in ("cls_token", "reg_token", "dist_token") if hasattr(self, name)]

    def pool(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The final-normed tokens to the head's input: timm's `pool`, then its `fc_norm`."""
        cfg = self.config
        if cfg.distilled:
            return x[:, 0], x[:, 1]
        if cfg.pool == "token":
            return self.fc_norm(x[:, 0])
        if cfg.pool == "none":  # every token, the prefix tokens too
            return self.fc_norm(x)
        if not cfg.pool_include_prefix:
            x = x[:, cfg.num_prefix_tokens:]
        if cfg.pool == "gap":
            x = x.mean(dim=1)
        elif cfg.pool == "avgmax":
            x = 0.5 * (x.amax(dim=1) + x.mean(dim=1))
        elif cfg.pool == "max":
            x = x.amax(dim=1)
        elif cfg.pool == "map":
            x = self.attn_pool(x)
        return self.fc_norm(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Every token after the blocks and the final norm, (B, N, D): timm's `forward_features`."""
        ctxs = self.attn_contexts(x)
        return self.norm(self.run_blocks(self.embed_tokens(x), ctxs))

    def get_intermediate_layers(self, x: torch.Tensor, n: int | Sequence[int] = 1, reshape: bool = False,
                                return_class_token: bool = False, norm: bool = True, *,
                                return_extra_tokens: bool = False) -> tuple:
        """DINOv2's and DINOv3's `get_intermediate_layers`: the patch tokens after each block asked for.

        `n` an int: the last n blocks; a sequence: those block indices (negative ones count from the
        end, as in timm). One entry per block, in block order (DINO's order, whatever the sequence's).
        `norm`: each output through the final norm first. `reshape`: (B, D, h, w) for the input's patch
        grid, else (B, h * w, D). `return_class_token` / `return_extra_tokens` (DINOv3's keyword: the
        prefix tokens after the class token, (B, R, D): registers/storage tokens, DeiT's distillation
        token) make each entry a tuple (patches, class, extra), in that order, as DINOv3's. Only the
        blocks up to the last one asked for run.
        """
        take = self.block_indices(n)
        if return_class_token and not self.config.has_class_token:
            raise VitConvertError("return_class_token: this model has no class token")
        cfg = self.config
        grid = cfg.input_grid((x.shape[-2], x.shape[-1]))
        ctxs = self.attn_contexts(x) or [None] * len(self.blocks)
        h, entries = self.embed_tokens(x), []
        for i, (block, ctx) in enumerate(zip(self.blocks[:take[-1] + 1], ctxs, strict=False)):
            h = block(h, ctx)
            if i not in take:
                continue
            out = self.norm(h) if norm else h
            patches = out[:, cfg.num_prefix_tokens:]
            if reshape:
                patches = patches.reshape(x.shape[0], *grid, -1).permute(0, 3, 1, 2).contiguous()
            entry = (patches, *([out[:, 0]] if return_class_token else []),
                     *([out[:, int(cfg.has_class_token):cfg.num_prefix_tokens]] if return_extra_tokens else []))
            entries.append(entry if len(entry) > 1 else patches)
        return tuple(entries)

    def block_indices(self, n: int | Sequence[int]) -> list[int]:
        """`get_intermediate_layers`' `n` as sorted block indices; an index out of range is refused."""
        depth = len(self.blocks)
        if isinstance(n, int):
            if not 1 <= n <= depth:
                raise VitConvertError(f"n={n}: this model has {depth} blocks, so the last 1 to {depth} can be taken")
            return list(range(depth - n, depth))
        indices = [i + depth if i < 0 else i for i in n]
        bad = [i for i, j in zip(n, indices, strict=True) if not 0 <= j < depth]
        if bad or not indices or len(set(indices)) != len(indices):
            raise VitConvertError(f"blocks {list(n)}: give distinct indices from {-depth} to {depth - 1} "
                                  f"(this model has {depth} blocks)")
        return sorted(indices)

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
        ctxs = self.attn_contexts(x)
        return self.forward_head(self.norm(self.tokens_for_pool(self.embed_tokens(x), ctxs)), pre_logits=True)

    def head_logits(self, pooled: torch.Tensor | tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        if isinstance(pooled, tuple):  # DeiT distilled: the two heads averaged, as at inference in DeiT
            return (self.head(pooled[0]) + self.head_dist(pooled[1])) / 2
        if self.config.representation_size:
            pooled = self.pre_logits(pooled)
        if self.config.head_norm == "l2":
            pooled = F.normalize(pooled, dim=-1)
        return self.head(pooled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits; for a model without a head, the pooled features."""
        ctxs = self.attn_contexts(x)
        return self.head_logits(self.pool(self.norm(self.tokens_for_pool(self.embed_tokens(x), ctxs))))

    def tokens_for_pool(self, x: torch.Tensor, ctxs: list[AttnContext] | None = None) -> torch.Tensor:
        """The blocks' output, where pooling reads it. Token pooling reads only the class token (and
        DeiT's distillation token), and after the last block's attention no token sees another, so the
        last block runs its queries, projection and MLP for those tokens alone: the same arithmetic for
        the tokens that are read (up to float rounding of a smaller matrix product), about 1/depth less
        work."""
        if self.config.pool != "token" or not len(self.blocks):
            return self.run_blocks(x, ctxs)
        *rest, last = self.blocks
        ctxs = ctxs or [None] * len(self.blocks)
        for block, ctx in zip(rest, ctxs, strict=False):
            x = block(x, ctx)
        return last.forward_first(x, 1 + self.config.distilled, ctxs[-1])

    def forward_intermediates(self, x: torch.Tensor) -> Intermediates:
        ctxs = self.attn_contexts(x) or [None] * len(self.blocks)
        stages = {"embed": self.embed_tokens(x)}
        x = stages["embed"]
        for i, (block, ctx) in enumerate(zip(self.blocks, ctxs, strict=True)):
            x = stages[f"blocks.{i}"] = block(x, ctx)
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
        ctxs = self.attn_contexts(x) or [None] * len(self.blocks)
        x = self.embed_tokens(x)
        maps = []
        for block, ctx in zip(self.blocks, ctxs, strict=True):
            maps.append(block.attention_probs(x, ctx))
            x = block(x, ctx)
        return maps
