"""BEiT's relative position bias: a learned table holding, for each head, one attention-logit bias per
(row, column) offset between two patches, and three more for the class token (class to patch, patch to
class, class to itself). timm's `Beit` (`RelativePositionBias`, `Attention.relative_position_bias_table`)
and transformers' `BeitRelativePositionBias` (BEiT, Data2VecVision) hold the same table, rows first in
offset order: row (dy + gh - 1) * (2 gw - 1) + (dx + gw - 1), then the three class-token rows.

Which row each pair of tokens reads (`relative_position_index`) follows from the grid: it is computed,
never stored (timm and transformers keep it as a buffer; old transformers files store it too, and it is
left out of ours). For another grid the table is resampled first, by the rule of the source it came from
(`RESIZERS`, ViTConfig.rel_pos_resize); the class-token rows are kept as they are by both:

- 'timm': `timm.layers.resize_rel_pos_bias_table` (timm's checkpoint filter, when a model is built at
  another `img_size`, and `set_input_size`), BEiT's own rule (unilm's run_class_finetuning.py): the stored
  offsets are placed on a geometric progression, 0, +-1, +-(1 + q), +-(1 + q + q^2), ..., whose ratio q
  (bisected in [1.01, 1.5]) makes the outermost reach the new grid's outermost offset; each new integer
  offset interpolates linearly between its neighbours on that progression (clamped past the ends). timm
  uses scipy's cubic interp2d instead when TIMM_USE_SCIPY is set; we follow its default.
- 'transformers': `BeitRelativePositionBias.forward` (5.x): the (2 gh - 1) x (2 gw - 1) offset grid
  resampled by `F.interpolate(..., mode="bilinear")` (align_corners off, no antialias) to the new one,
  at every forward from the stored table; at the stored size that is the table itself.

The two differ by design: timm's keeps the near offsets at their stored values (the progression's first
step is 1) and stretches the far ones; transformers' scales every offset by the same factor.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..core.config import RelPosResize, ViTConfig
from ..core.errors import VitConvertError
from ..core.param_shapes import rel_pos_table_rows
from .posembed import GridTables

# The class token's rows, after the patch offsets: class to patch, patch to class, class to class.
CLASS_ROWS = 3
# Indexes kept, by (grid, device), the oldest dropped first.
MAX_INDEXES = 16
_INDEXES: dict[tuple[tuple[int, int], torch.device | None], torch.Tensor] = {}
# (offsets, heads) table without the class rows, stored grid, new grid -> the same for the new grid.
TableResize = Callable[[torch.Tensor, tuple[int, int], tuple[int, int]], torch.Tensor]


def relative_position_index(grid: tuple[int, int], device: torch.device | None = None) -> torch.Tensor:
    """(N + 1, N + 1) long, N = gh * gw, tokens class first then patches in row-major order: the table row
    each query (rows) and key (columns) pair reads. Kept per grid and device for eager runs (every block reads
    the same index at each forward); made afresh under a tracer or compiler, whose tensors must not outlive it."""
    traced = torch.compiler.is_compiling() or torch.jit.is_tracing()
    key = (tuple(grid), None if device is None else torch.device(device))
    if not traced and key in _INDEXES:
        return _INDEXES[key]
    with torch.inference_mode(False):  # kept for later calls, which may need autograd: not an inference tensor
        index = _index(grid, device)
    if not traced and type(index) is torch.Tensor:  # not a tracer's fake tensor
        if len(_INDEXES) >= MAX_INDEXES:
            del _INDEXES[next(iter(_INDEXES))]
        _INDEXES[key] = index
    return index


def _index(grid: tuple[int, int], device: torch.device | None) -> torch.Tensor:
    gh, gw = grid
    rows = torch.arange(gh, device=device).repeat_interleave(gw)
    cols = torch.arange(gw, device=device).repeat(gh)
    offset = (rows[:, None] - rows[None, :] + gh - 1) * (2 * gw - 1) + (cols[:, None] - cols[None, :] + gw - 1)
    patches = (2 * gh - 1) * (2 * gw - 1)
    index = torch.empty(gh * gw + 1, gh * gw + 1, dtype=torch.long, device=device)
    index[1:, 1:] = offset
    index[0, 1:] = patches  # the class token's query on a patch
    index[1:, 0] = patches + 1  # a patch's query on the class token
    index[0, 0] = patches + 2
    return index


def _progression(src: int, dst: int) -> list[float]:
    """timm's `_calc`: the `src` stored offsets' positions on the new axis of `dst` offsets, a geometric
    progression from the centre out whose ratio is bisected (as timm does, in Python floats) until its
    `src // 2` steps sum to `dst // 2`."""
    left, right = 1.01, 1.5
    q = left
    while right - left > 1e-6:
        q = (left + right) / 2.0
        if (1.0 - q ** (src // 2)) / (1.0 - q) > dst // 2:
            right = q
        else:
            left = q
    steps, cur = [], 1.0
    for i in range(src // 2):
        steps.append(cur)
        cur += q ** (i + 1)
    return [-s for s in reversed(steps)] + [0.0] + steps


def _linear_weights(points: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(len(targets), len(points)): each target as a linear mix of its two neighbouring points, the ends
    held past them (timm's RegularGridInterpolator in one dimension)."""
    n = points.shape[0]
    weights = torch.zeros(targets.shape[0], n, dtype=points.dtype)
    if n == 1:
        return weights + 1.0
    right = torch.bucketize(targets, points).clamp(max=n - 1)
    left = (right - 1).clamp(min=0)
    to_left = (targets - points[left]).clamp(min=0)
    to_right = (points[right] - targets).clamp(min=0)
    # A target on the first point has it on both sides: the two halves of one weight.
    both = (to_left == 0) & (to_right == 0)
    to_left, to_right = to_left.masked_fill(both, 1.0), to_right.masked_fill(both, 1.0)
    span = to_left + to_right
    rows = torch.arange(targets.shape[0])
    weights.index_put_((rows, left), to_right / span, accumulate=True)
    weights.index_put_((rows, right), to_left / span, accumulate=True)
    return weights


def _timm(table: torch.Tensor, old: tuple[int, int], new: tuple[int, int]) -> torch.Tensor:
    """timm's `resize_rel_pos_bias_table` (see the module's docstring): the progression's positions rounded
    to float32 as timm holds them, the interpolation in float64."""
    (sh, sw), (dh, dw) = ((2 * g[0] - 1, 2 * g[1] - 1) for g in (old, new))
    wy, wx = (_linear_weights(torch.tensor(_progression(s, d), dtype=torch.float32).double(),
                              torch.arange(-(d // 2), d // 2 + 1, dtype=torch.float64))
              for s, d in ((sh, dh), (sw, dw)))
    grids = table.double().T.reshape(-1, sh, sw)  # (heads, rows, cols)
    wy, wx = wy.to(table.device), wx.to(table.device)  # the weights are made on the CPU, as timm's
    return (wy @ grids @ wx.T).reshape(grids.shape[0], -1).T


def _transformers(table: torch.Tensor, old: tuple[int, int], new: tuple[int, int]) -> torch.Tensor:
    """transformers' bilinear resize of the offset grid, in float32 as transformers runs it."""
    sh, sw = 2 * old[0] - 1, 2 * old[1] - 1
    grids = table.float().T.reshape(1, -1, sh, sw)
    out = F.interpolate(grids, size=(2 * new[0] - 1, 2 * new[1] - 1), mode="bilinear", align_corners=False)
    return out.reshape(out.shape[1], -1).T


# One function per name ViTConfig.rel_pos_resize accepts (a test holds the two equal).
RESIZERS: dict[RelPosResize, TableResize] = {"timm": _timm, "transformers": _transformers}


def resize_table(table: torch.Tensor, old: tuple[int, int], new: tuple[int, int], method: str) -> torch.Tensor:
    """A (rows, heads) table for grid `old` -> the table for grid `new`, by `method` (a key of RESIZERS),
    the class-token rows unchanged; in the table's dtype."""
    if method not in RESIZERS:
        raise VitConvertError(f"relative-position table resize must be one of {', '.join(map(repr, RESIZERS))}, "
                              f"got {method!r}")
    rows = rel_pos_table_rows(old)
    if table.ndim != 2 or table.shape[0] != rows:
        raise VitConvertError(f"a relative position table for a {old[0]}x{old[1]} grid has {rows} rows, "
                              f"got shape {tuple(table.shape)}")
    if tuple(old) == tuple(new):
        return table
    offsets = RESIZERS[method](table[:-CLASS_ROWS], tuple(old), tuple(new)).to(table.dtype)
    return torch.cat([offsets, table[-CLASS_ROWS:]])


def bias_from_table(table: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(1, heads, N + 1, N + 1): the attention-logit bias of a table made for `grid`."""
    n = grid[0] * grid[1] + 1
    index = relative_position_index(grid, table.device)
    return table[index.flatten()].reshape(n, n, -1).permute(2, 0, 1).unsqueeze(0)


class RelPosBias:
    """The bias of one table (a parameter of the module that holds it) on any grid: on the stored grid its
    own, on another the table resampled by the config's rule, kept per grid for inference (no grad) as
    posembed.GridTables keeps position tables, and resampled afresh where the table needs a gradient."""

    def __init__(self, cfg: ViTConfig) -> None:
        self.stored, self.method = cfg.grid_size, cfg.rel_pos_resize
        self._tables = GridTables()

    def __call__(self, table: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        if tuple(grid) == self.stored:
            return bias_from_table(table, self.stored)
        if (torch.is_grad_enabled() and table.requires_grad) or torch.compiler.is_compiling() \
                or torch.jit.is_tracing():
            return bias_from_table(resize_table(table, self.stored, grid, self.method), grid)
        resized = self._tables.get(table, grid, lambda: resize_table(table, self.stored, grid, self.method))
        return bias_from_table(resized, grid)


class RelativePositionBias(nn.Module):
    """One table for every block (timm's `rel_pos_bias`, BEiT's use_shared_rel_pos_bias)."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.relative_position_bias_table = nn.Parameter(torch.zeros(rel_pos_table_rows(cfg.grid_size),
                                                                     cfg.num_heads))
        self._bias = RelPosBias(cfg)

    def forward(self, grid: tuple[int, int]) -> torch.Tensor:
        return self._bias(self.relative_position_bias_table, grid)
