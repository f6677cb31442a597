"""What a block's attention takes besides its tokens: the positional context the ViT makes once per input grid.

`VisionTransformer.attn_contexts(grid, device)` makes one `AttnContext` per block (the same object where the
blocks share it) or None where the model has neither RoPE nor an attention bias, and every block's `forward`,
`forward_first` and `attention_probs` pass theirs on to the attention, which applies it with `rotate_qk` and
`logit_bias`. None keeps the attention exactly what it was without these fields.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class AttnContext(NamedTuple):
    """One block's positional context, for every token of one input grid.

    rope: (sin, cos) for the queries and keys, each (N, head_dim) or (heads, N, head_dim), N counting every token:
        the prefix tokens' rows are sin 0, cos 1 (RoPE leaves them as they are), so that one elementwise product
        covers the whole sequence. Kept in float32; the rotation is computed in float32 and cast back, as timm's.
    rotate_half: the rotated pairs are the halves of a head (x_i, x_{i + d/2}) rather than neighbours (x_2i, x_2i+1).
    bias: added to the attention logits, broadcasting to (B, heads, N, N) (BEiT's relative position bias).
    """

    rope: tuple[torch.Tensor, torch.Tensor] | None = None
    rotate_half: bool = False
    bias: torch.Tensor | None = None


def _rotated(x: torch.Tensor, half: bool) -> torch.Tensor:
    """x rotated by 90 degrees in each pair: (-x_odd, x_even) interleaved, or (-x2, x1) for halves."""
    if half:
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat([-x2, x1], dim=-1)
    return torch.stack([-x[..., 1::2], x[..., ::2]], dim=-1).reshape(x.shape)


def rotate_qk(q: torch.Tensor, k: torch.Tensor, ctx: AttnContext | None,
              queries: slice | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Queries and keys (B, heads, n, d) with the context's RoPE applied; `queries` says which tokens' rows q
    holds where it holds fewer than k (forward_first)."""
    if ctx is None or ctx.rope is None:
        return q, k
    sin, cos = ctx.rope
    qsin, qcos = (sin, cos) if queries is None else (sin[..., queries, :], cos[..., queries, :])
    q = (q * qcos + _rotated(q, ctx.rotate_half) * qsin).to(q.dtype)
    k = (k * cos + _rotated(k, ctx.rotate_half) * sin).to(k.dtype)
    return q, k


def logit_bias(ctx: AttnContext | None, queries: slice | None = None, dtype: torch.dtype | None = None
               ) -> torch.Tensor | None:
    """The context's additive logit bias for the query rows asked for (every row by default), or None."""
    if ctx is None or ctx.bias is None:
        return None
    bias = ctx.bias if queries is None else ctx.bias[..., queries, :]
    return bias if dtype is None else bias.to(dtype)
