"""Position embeddings on another grid.

One method, named: bicubic on the grid with antialias, align_corners off, the target given by
`size=`, computed in float32, prefix tokens untouched. This is timm's `resample_abs_pos_embed`
(its state-dict path), so a model at 384 gives what timm's model at 384 gives on the same weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def resample_pos_embed(pos_embed: torch.Tensor, new_grid: tuple[int, int], old_grid: tuple[int, int],
                       num_prefix_tokens: int) -> torch.Tensor:
    """(1, prefix + oh*ow, D) -> (1, prefix + nh*nw, D)."""
    if tuple(new_grid) == tuple(old_grid):
        return pos_embed
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    dim = pos_embed.shape[-1]
    grid = grid.float().reshape(1, old_grid[0], old_grid[1], dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=tuple(new_grid), mode="bicubic", antialias=True, align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, -1, dim).to(pos_embed.dtype)
    return torch.cat([prefix, grid], dim=1)
