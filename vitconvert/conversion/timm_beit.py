"""timm's `Beit` state dicts (timm/models/beit.py: BEiT and BEiT v2), read by the timm source format.

A Beit's tensors are a VisionTransformer's under timm's names but for what BEiT adds, which our ViT holds
under the same names (model/relpos.py, layers.Attention) except for the layer scales:

- `blocks.N.gamma_1`, `gamma_2` (Beit's, and Eva's) are our `blocks.N.ls1.gamma`, `ls2.gamma`;
- `blocks.N.attn.q_bias`, `attn.v_bias` beside a bias-free `attn.qkv` (no key bias): ours, k_bias off;
- `blocks.N.attn.relative_position_bias_table` (use_rel_pos_bias) and `rel_pos_bias.relative_position_bias_table`
  (use_shared_rel_pos_bias): ours, rel_pos_bias and shared_rel_pos_bias; their (rows, heads) shape tells the
  patch grid (rows = (2 g - 1)^2 + 3 for a square g x g one) and the head count, which a Beit without `pos_embed`
  (use_abs_pos_emb off, every published one) shows nowhere else.

Left out, each with its reason: `relative_position_index` (a buffer of the grid, which timm recomputes and does not
store; unilm's original files do), and what only BEiT's masked-image pre-training uses: `mask_token`, `lm_head`
(the classifier over the visual tokenizer's codes) and BEiT v2's `cls_pt_layers` (the blocks of its patch
aggregation head). Torch-free: key names and shapes only.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import TypeVar

from ..core.errors import VitConvertError
from ..core.param_shapes import rel_pos_table_rows

T = TypeVar("T")

TABLE = "relative_position_bias_table"
SHARED_TABLE = f"rel_pos_bias.{TABLE}"
INDEX_BUFFER = "relative_position_index: a buffer computed from the grid (timm recomputes it too), not stored"
PRETRAINING = {
    "mask_token": "BEiT's mask_token: used in masked-image pre-training only",
    "lm_head": "BEiT's lm_head: the pre-training classifier over the visual tokenizer's codes",
    "cls_pt_layers": "BEiT v2's cls_pt_layers: the blocks of its pre-training patch aggregation head",
}
_GAMMA = re.compile(r"^(blocks\.\d+\.)gamma_([12])$")
_OURS_GAMMA = re.compile(r"^(blocks\.\d+\.)ls([12])\.gamma$")


def is_beit(keys: Mapping[str, object] | set[str] | frozenset[str]) -> bool:
    """Keys only a Beit stores: relative position tables, or layer scales named gamma_N beside q/v-only biases
    (an Eva's too, which computes the same)."""
    return any(k.endswith(TABLE) for k in keys) or (any(k.endswith(".attn.q_bias") for k in keys)
                                                     and any(_GAMMA.match(k) for k in keys))


def beit_layout(tensors: Mapping[str, T]) -> tuple[dict[str, T], list[str], dict[str, str]]:
    """A Beit's tensors in our names (the layer scales renamed), notes, and the keys left out with their reasons.
    Tensors of any other model pass unchanged."""
    if not is_beit(tensors):
        return dict(tensors), [], {}
    out: dict[str, T] = {}
    left_out: dict[str, str] = {}
    for key, value in tensors.items():
        head = key.split(".")[0]
        if key.endswith("relative_position_index"):
            left_out[key] = INDEX_BUFFER
        elif head in PRETRAINING:
            left_out[key] = PRETRAINING[head]
        else:
            out[_GAMMA.sub(r"\1ls\2.gamma", key)] = value
    notes = ["timm Beit layout: blocks.N.gamma_1/gamma_2 are the layer scales ls1.gamma/ls2.gamma"]
    if any(k.split(".")[0] in PRETRAINING for k in left_out):
        notes.append("a BEiT pre-training checkpoint: its masked-image-modelling parts were left out")
    return out, notes, left_out


def to_timm_names(state: Mapping[str, T]) -> dict[str, T]:
    """Our tensors of a BEiT under timm's Beit names (the layer scales), for timm's own model."""
    return {_OURS_GAMMA.sub(r"\1gamma_\2", k): v for k, v in state.items()}


def table_grid(shape: tuple[int, ...], key: str, where: str) -> tuple[tuple[int, int], int]:
    """The square patch grid and the head count a (rows, heads) relative position table is for."""
    if len(shape) != 2:
        raise VitConvertError(f"{where}: {key} has shape {shape}, expected (rows, heads)")
    rows, heads = shape
    side = (math.isqrt(max(rows - 3, 0)) + 1) // 2
    if rows < 4 or rel_pos_table_rows((side, side)) != rows:
        raise VitConvertError(f"{where}: {key} has {rows} rows, which no square patch grid has (a g x g grid has "
                              "(2g - 1)^2 + 3: 732 for 14 x 14)")
    return (side, side), heads


def rel_pos_tables(shapes: Mapping[str, tuple[int, ...]], where: str,
                   grid: tuple[int, int] | None) -> tuple[bool, bool, tuple[int, int] | None, int | None]:
    """(per-block tables, a shared table, the grid they are for, their head count) from the keys and shapes; each
    table must be for `grid` (from pos_embed, where there is one) and of one shape with the others."""
    tables = sorted(k for k in shapes if k.endswith(TABLE))
    if not tables:
        return False, False, grid, None
    per_block = [k for k in tables if re.fullmatch(rf"blocks\.\d+\.attn\.{TABLE}", k)]
    unknown = sorted(set(tables) - set(per_block) - {SHARED_TABLE})
    if unknown:
        raise VitConvertError(f"{where}: relative position tables where timm's Beit has none: {', '.join(unknown)}")
    first = SHARED_TABLE if SHARED_TABLE in shapes else per_block[0]
    table, heads = table_grid(tuple(shapes[first]), first, where)
    if other := next((k for k in tables if tuple(shapes[k]) != tuple(shapes[first])), None):
        raise VitConvertError(f"{where}: {other} has shape {tuple(shapes[other])}, but {first} has "
                              f"{tuple(shapes[first])}: the relative position tables of one model are for one grid")
    if grid is not None and grid != table:
        raise VitConvertError(f"{where}: {first} {tuple(shapes[first])} is for a {table[0]}x{table[1]} patch grid, "
                              f"but pos_embed is for {grid[0]}x{grid[1]}")
    blocks = {int(k.split(".")[1]) for k in shapes if re.match(r"blocks\.\d+\.", k)}
    if per_block and len(per_block) != len(blocks):
        have = {int(k.split(".")[1]) for k in per_block}
        missing = sorted(blocks - have)
        raise VitConvertError(f"{where}: blocks {', '.join(map(str, missing[:6]))} have no {TABLE}, "
                              "the others do")
    return bool(per_block), SHARED_TABLE in shapes, table, heads
