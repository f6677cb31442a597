"""Position embeddings on another grid, by one of the named methods a weights file records: at load time
for a fixed size (`loading.at_size`) and at forward for the input's grid (`VisionTransformer`, which keeps
the tables it makes in a `GridTables`).

Every method resamples the patch grid in float32, prefix tokens untouched, align_corners off but in
'torchvision':

- 'bicubic': timm's `resample_abs_pos_embed` (its state-dict path): antialias, target given by `size=`,
  so a model at 384 gives what timm's model at 384 gives on the same weights.
- 'dino': facebookresearch/dino's `interpolate_pos_encoding`, so features at another size are DINO's.
- 'flexivit': big_vision's FlexiViT, which stores a small grid (7x7) and resizes it at every forward
  with `jax.image.resize(..., 'linear')`: bilinear, antialiased when shrinking.
- 'transformers': Hugging Face transformers' `interpolate_pos_encoding` (ViT, DeiT, Dinov2), so a file
  converted from transformers gives what transformers' model gives at that size.
- 'torchvision': torchvision's `interpolate_embeddings` (vision_transformer.py), which its users call on the
  state dict before building a VisionTransformer of another image_size.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..core.config import PosResize, ViTConfig
from ..core.errors import VitConvertError

# (1, D, oh, ow) float32 grid, new (h, w), old (h, w) -> (1, D, nh, nw).
GridResize = Callable[[torch.Tensor, tuple[int, int], tuple[int, int]], torch.Tensor]


def _timm_bicubic(grid: torch.Tensor, new: tuple[int, int], old: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(grid, size=new, mode="bicubic", antialias=True, align_corners=False)


def _dino(grid: torch.Tensor, new: tuple[int, int], old: tuple[int, int]) -> torch.Tensor:
    """DINO's resize, as facebookresearch/dino's vision_transformer.py runs it (checked against its source):

    - `scale_factor=((g + 0.1) / s, ...)`, g the new grid side, s the stored one: the +0.1 was added so
      that floor(s * g / s) cannot round down to g - 1 (dino issue #8). The output is still g, but the
      sampling grid is not `size=`'s:
    - the torch DINO ran on (1.7.1, its README) uses a given scale factor as such (since 1.6:
      recompute_scale_factor=None means False), so output pixel i samples (i + 0.5) * s / (g + 0.1) - 0.5,
      not (i + 0.5) * s / g - 0.5. Recomputing the scale (True, torch <= 1.5) would sample as `size=` does;
    - bicubic without antialias (torch 1.7 had none for bicubic) and align_corners off (its default);
    - DINO unpacks the image as `B, nc, w, h = x.shape`, so its 'w' is the height, and passes the scale
      factors as (w0, h0) to a (1, D, rows, cols) grid: rows scale by the height, columns by the width.
      The two swaps cancel; rows follow the new height here.
    Its stored grid is always square; a rectangular one scales each axis by its own (g + 0.1) / s.
    """
    scale = ((new[0] + 0.1) / old[0], (new[1] + 0.1) / old[1])
    return F.interpolate(grid, scale_factor=scale, mode="bicubic", align_corners=False,
                         recompute_scale_factor=False)


def _flexivit(grid: torch.Tensor, new: tuple[int, int], old: tuple[int, int]) -> torch.Tensor:
    """FlexiViT's `jax.image.resize(posemb, (1, h, w, c), 'linear')` (models/proj/flexi/vit.py), whose
    antialias defaults to True: jax's scale_and_translate weighs input pixel j for output i by the
    triangle 1 - |j - ((i + 0.5) * s - 0.5)| / max(s, 1), s = old / new, normalised over the pixels inside
    the grid. torch's antialiased bilinear computes those weights: the triangle widened by s when
    shrinking, the plain one (half-pixel bilinear, edges clamped) when enlarging."""
    return F.interpolate(grid, size=new, mode="bilinear", antialias=True, align_corners=False)


def _transformers(grid: torch.Tensor, new: tuple[int, int], old: tuple[int, int]) -> torch.Tensor:
    """transformers' `interpolate_pos_encoding` as 5.23 has it in ViT, DeiT and Dinov2 (read from its source):
    `size=(new_height, new_width)`, bicubic, align_corners off, and no antialias, which timm's has (the two
    differ by up to ~0.8 on N(0, 1) entries, also when enlarging: the antialiased kernel is renormalised at
    the borders instead of clamping). Dinov2 computes it in float32, as we do; ViT and DeiT in the model's
    dtype, and only when called with `interpolate_pos_encoding=True`."""
    return F.interpolate(grid, size=new, mode="bicubic", align_corners=False)


def _torchvision(grid: torch.Tensor, new: tuple[int, int], old: tuple[int, int]) -> torch.Tensor:
    """torchvision 0.29.1's `interpolate_embeddings` (read from its source): bicubic with align_corners=True,
    no antialias, `size=` the new grid side (it is square there; each side here)."""
    return F.interpolate(grid, size=new, mode="bicubic", align_corners=True)


def sincos_2d(grid: tuple[int, int], dim: int, device: torch.device | None = None,
              temperature: float = 10_000.0) -> torch.Tensor:
    """The fixed 2-D sin-cos table of a (rows, cols) patch grid, (1, rows*cols, dim), float32: big_vision's
    `posemb_sincos_2d` (MoCo v3's), which lucidrains' SimpleViT computes the same way. Each quarter of the
    channels is sin or cos of one axis at dim/4 frequencies from 1 to 1/temperature: [sin x, cos x,
    sin y, cos y], x the column, y the row, tokens in row-major order."""
    quarter = dim // 4
    omega = 1.0 / temperature ** (torch.arange(quarter, dtype=torch.float32, device=device) / (quarter - 1))
    y, x = torch.meshgrid(torch.arange(grid[0], dtype=torch.float32, device=device),
                          torch.arange(grid[1], dtype=torch.float32, device=device), indexing="ij")
    y, x = y.flatten()[:, None] * omega, x.flatten()[:, None] * omega
    return torch.cat([x.sin(), x.cos(), y.sin(), y.cos()], dim=1)[None]


# One function per name ViTConfig.pos_resize accepts (a test holds the two equal).
RESIZERS: dict[PosResize, GridResize] = {"bicubic": _timm_bicubic, "dino": _dino, "flexivit": _flexivit,
                                         "transformers": _transformers, "torchvision": _torchvision}


def resample_pos_embed(pos_embed: torch.Tensor, new_grid: tuple[int, int], old_grid: tuple[int, int],
                       num_prefix_tokens: int, method: str = "bicubic") -> torch.Tensor:
    """(1, prefix + oh*ow, D) -> (1, prefix + nh*nw, D), by `method` (a key of RESIZERS)."""
    if method not in RESIZERS:
        raise VitConvertError(f"position-embedding resize must be one of {', '.join(map(repr, RESIZERS))}, "
                              f"got {method!r}")
    if tuple(new_grid) == tuple(old_grid):
        return pos_embed
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    dim = pos_embed.shape[-1]
    grid = grid.float().reshape(1, old_grid[0], old_grid[1], dim).permute(0, 3, 1, 2)
    grid = RESIZERS[method](grid, tuple(new_grid), tuple(old_grid))
    grid = grid.permute(0, 2, 3, 1).reshape(1, -1, dim).to(pos_embed.dtype)
    return torch.cat([prefix, grid], dim=1)


def pos_embed_on_grid(pos_embed: torch.Tensor, cfg: ViTConfig, grid: tuple[int, int]) -> torch.Tensor:
    """`cfg`'s stored table (for `cfg.grid_size`) on `grid`, by `cfg.pos_resize`; the prefix tokens' rows,
    where the table has them, untouched."""
    prefix = 0 if cfg.no_embed_class else cfg.num_prefix_tokens
    return resample_pos_embed(pos_embed, grid, cfg.grid_size, prefix, method=cfg.pos_resize)


class GridTables:
    """Resampled position tables by grid, for a model that runs at sizes other than its own: each grid
    resamples once, until the table they came from changes.

    A table is valid for the parameter object it came from, at its autograd version (every in-place
    write bumps it: an optimizer step, `load_state_dict`'s copy, `with torch.no_grad(): p.add_(...)`),
    storage, dtype and device; anything else clears them all. A write through `.data` bypasses the
    version counter, as it bypasses autograd, and is not seen. At most `MAX_GRIDS` grids are kept,
    the oldest dropped first.
    """

    MAX_GRIDS = 8

    def __init__(self) -> None:
        # A weak reference, so that a replaced parameter is not kept alive by its tables.
        self._param: weakref.ref[torch.Tensor] | None = None
        self._state: tuple | None = None
        self._tables: dict[tuple[int, int], torch.Tensor] = {}

    def __getstate__(self) -> dict:
        return {}  # a copied or pickled model starts without tables (and a weak reference cannot be pickled)

    def __setstate__(self, state: dict) -> None:
        self.__init__()

    def get(self, param: torch.Tensor, grid: tuple[int, int],
            resample: Callable[[], torch.Tensor]) -> torch.Tensor:
        if param.is_inference():  # a model built under inference_mode: no version counter to key a table by
            return resample()
        state = (param._version, param.data_ptr(), param.dtype, param.device)
        if self._param is None or self._param() is not param or state != self._state:
            self._param, self._state, self._tables = weakref.ref(param), state, {}
        if grid not in self._tables:
            if len(self._tables) >= self.MAX_GRIDS:
                del self._tables[next(iter(self._tables))]
            self._tables[grid] = resample()
        return self._tables[grid]
