"""2-D rotary position embeddings (RoPE) in the variants timm's Eva builds (timm/layers/pos_embed_sincos.py),
computed for any patch grid, each with its own rule for grids other than the trained one:

- 'cat' (RotaryEmbeddingCat; EVA-02, PE, timm's SBB ViTs, Naver's axial RoPE-ViT): head_dim / 4 bands
  1 / t**(i / (head_dim / 4)) on each axis' patch index (+ offset); with a reference grid, position p of n
  rows counts as p * ref / n (so a larger grid spans the trained one's range more finely);
- 'mixed' (RotaryEmbeddingMixed; Naver's RoPE-Mixed): learned frequencies per block and head, `rope.freqs`
  (2, depth, heads, head_dim / 2), on the column (x) and row (y) indices: angle = x fx + y fy;
- 'dinov3' (RotaryEmbeddingDinoV3): periods t**(2i / (head_dim / 2)) on centred coordinates
  (index + 0.5 + offset) / size mapped to [-1, 1], angle = 2 pi coordinate / period; any grid spans [-1, 1].

The frequency channels of cat and dinov3 come axis by axis (rows then columns for 'ij', columns then rows for
'xy'), each pair of channels repeated for the two members it rotates (interleaved) or the table repeated for
the two halves of the head (rotate_half). Tables are (sin, cos) in float32, one row per token, the prefix
tokens' rows the identity; a `Rope` keeps them per grid and device, so a model makes them once per input size.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..core.config import ViTConfig
from .attn_context import AttnContext
from .posembed import GridTables

Tables = tuple[torch.Tensor, torch.Tensor]  # sin, cos


def _axis_positions(cfg: ViTConfig, grid: tuple[int, int]) -> list[torch.Tensor]:
    """Each axis' positions (rows, columns) for the kind's grid rule, float32."""
    if cfg.rope == "dinov3":
        sizes = {"separate": grid, "min": (min(grid),) * 2, "max": (max(grid),) * 2}[cfg.rope_normalize_coords]
        return [2.0 * ((torch.arange(0.5, s, dtype=torch.float32) + cfg.rope_grid_offset) / float(d)) - 1.0
                for s, d in zip(grid, sizes, strict=True)]
    if cfg.rope == "mixed":  # timm's mixed grid takes neither offset nor reference grid
        return [torch.arange(s, dtype=torch.int64).to(torch.float32) for s in grid]
    t = [torch.arange(s, dtype=torch.int64).to(torch.float32) + cfg.rope_grid_offset for s in grid]
    if cfg.rope_ref_grid is not None:
        t = [p / s * r for p, s, r in zip(t, grid, cfg.rope_ref_grid, strict=True)]
    return t


def coordinates(cfg: ViTConfig, grid: tuple[int, int]) -> torch.Tensor:
    """(rows * columns, 2) positions in row-major token order, channels in the config's indexing order."""
    rows, cols = _axis_positions(cfg, grid)
    r = rows[:, None].expand(grid)
    c = cols[None, :].expand(grid)
    channels = (r, c) if cfg.rope_grid_indexing == "ij" else (c, r)
    return torch.stack(channels, dim=-1).reshape(-1, 2)


def _layout(angles: torch.Tensor, half: bool) -> torch.Tensor:
    """(..., d/2) angles to (..., d): each repeated for its pair, interleaved or as two halves."""
    return torch.cat([angles, angles], dim=-1) if half else angles.repeat_interleave(2, dim=-1)


def fixed_angles(cfg: ViTConfig, grid: tuple[int, int]) -> torch.Tensor:
    """cat and dinov3: (N, head_dim / 2) angles (before the pair layout), float32."""
    bands = cfg.head_dim // 4
    coords = coordinates(cfg, grid)
    if cfg.rope == "dinov3":
        periods = cfg.rope_temperature ** (2.0 * torch.arange(bands, dtype=torch.float32) / (cfg.head_dim // 2))
        return (2 * math.pi * coords[:, :, None] / periods).flatten(1)
    exponents = torch.arange(0, bands, dtype=torch.int64).to(torch.float32) / bands
    freqs = 1.0 / (float(cfg.rope_temperature) ** exponents)
    return (coords[:, :, None] * freqs).flatten(1)


def mixed_angles(freqs: torch.Tensor, cfg: ViTConfig, grid: tuple[int, int]) -> torch.Tensor:
    """mixed: (depth, heads, N, head_dim / 2) angles from the learned (2, depth, heads, head_dim / 2) `freqs`."""
    coords = coordinates(cfg, grid).to(freqs.device)
    fx, fy = freqs.float()
    return coords[:, 0, None] * fx[..., None, :] + coords[:, 1, None] * fy[..., None, :]


def _with_prefix(angles: torch.Tensor, prefix: int) -> Tables:
    """sin and cos of the angles, with `prefix` identity rows (sin 0, cos 1) before the patches' rows."""
    sin, cos = angles.sin(), angles.cos()
    if prefix:
        shape = (*angles.shape[:-2], prefix, angles.shape[-1])
        sin = torch.cat([sin.new_zeros(shape), sin], dim=-2)
        cos = torch.cat([cos.new_ones(shape), cos], dim=-2)
    return sin, cos


class Rope(nn.Module):
    """The model's RoPE: tables per grid (cached, see the module docstring) and, for 'mixed', its learned
    frequencies as `freqs` (the state dict's `rope.freqs`, timm's name)."""

    MAX_GRIDS = 8

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        if cfg.rope == "mixed":
            self.freqs = nn.Parameter(torch.zeros(2, cfg.depth, cfg.num_heads, cfg.head_dim // 2))
            self._learned = GridTables()
        self._fixed: dict[tuple[tuple[int, int], torch.device], Tables] = {}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fixed": {}}  # a copy makes its own tables (on its own device)

    def tables(self, grid: tuple[int, int], device: torch.device) -> Tables:
        """(sin, cos) for every token on `grid`: (N, head_dim), or (depth, heads, N, head_dim) for 'mixed'."""
        cfg, half = self.cfg, self.cfg.rope_rotate_half
        prefix = cfg.num_prefix_tokens
        if cfg.rope == "mixed":
            def make() -> torch.Tensor:
                return torch.stack(_with_prefix(_layout(mixed_angles(self.freqs, cfg, grid), half), prefix))
            freqs = self.freqs
            # A gradient, a compiler or a tracer needs the tables in the graph, not tables made earlier.
            if (torch.is_grad_enabled() and freqs.requires_grad) or torch.compiler.is_compiling() \
                    or torch.jit.is_tracing():
                sin, cos = make()
            else:
                sin, cos = self._learned.get(freqs, grid, make)
            return sin, cos
        key = (grid, torch.device(device))
        if key not in self._fixed:
            if len(self._fixed) >= self.MAX_GRIDS:
                del self._fixed[next(iter(self._fixed))]
            sin, cos = _with_prefix(_layout(fixed_angles(cfg, grid), half), prefix)
            self._fixed[key] = (sin.to(device), cos.to(device))
        return self._fixed[key]

    def contexts(self, grid: tuple[int, int], device: torch.device) -> list[AttnContext]:
        """One context per block: shared for cat and dinov3, each block's own frequencies for mixed."""
        sin, cos = self.tables(grid, device)
        half = self.cfg.rope_rotate_half
        if self.cfg.rope == "mixed":
            return [AttnContext((sin[i], cos[i]), half) for i in range(self.cfg.depth)]
        return [AttnContext((sin, cos), half)] * self.cfg.depth
