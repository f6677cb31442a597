"""Sharded transformers checkpoints: `model.safetensors.index.json` or `pytorch_model.bin.index.json` and the
shards its `weight_map` names, read as one lazy tensor reader, shard by shard.

The index and every shard's list of tensors are checked against each other before anything is converted (a
missing shard, a tensor a shard holds that the index does not list or puts elsewhere, a listed tensor its
shard lacks: each an error naming it). safetensors shards are read a tensor at a time, with numpy (memory
near one tensor); pickled .bin shards with torch's weights-only unpickler, memory-mapped (zip-format files),
one shard open at a time.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import VitConvertError, name_list
from ..formats.safetensors_file import SafetensorsReader
from .mapping import Shape

# The index files save_pretrained writes, and the suffix of the shards each names.
INDEXES = {"model.safetensors.index.json": ".safetensors", "pytorch_model.bin.index.json": ".bin"}


def find_index(folder: Path) -> Path | None:
    """The directory's shard index (the safetensors one first, as transformers prefers it), or None."""
    return next((folder / name for name in INDEXES if (folder / name).is_file()), None)


def _weight_map(index: Path) -> dict[str, str]:
    try:
        value: Any = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise VitConvertError(f"{index}: cannot read it as JSON ({getattr(e, 'strerror', None) or e})") from None
    weight_map = value.get("weight_map") if isinstance(value, dict) else None
    if not (isinstance(weight_map, dict) and weight_map
            and all(isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items())):
        raise VitConvertError(f"{index}: expected a shard index: a JSON object whose weight_map maps tensor names "
                              "to shard file names")
    suffix = INDEXES.get(index.name, "")
    if bad := sorted({v for v in weight_map.values() if Path(v).name != v or not v.endswith(suffix)}):
        raise VitConvertError(f"{index}: weight_map names shards that are not {suffix} files beside it: "
                              f"{name_list(bad)}")
    return weight_map


class ShardedReader:
    """The tensors of a sharded checkpoint, by the index at `path`: `shapes` of all, `read` one at a time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.weight_map = _weight_map(path)
        self.folder = path.parent
        shards = sorted(set(self.weight_map.values()))
        if missing := [s for s in shards if not (self.folder / s).is_file()]:
            raise VitConvertError(f"{path}: the index names {'a shard' if len(missing) == 1 else 'shards'} that "
                                  f"{'is' if len(missing) == 1 else 'are'} not there: {name_list(missing)}")
        self.pickled = path.name.endswith(".bin.index.json")
        self._open: tuple[str, Any] | None = None  # the one shard reader kept open
        self.shapes: dict[str, Shape] = {}
        for shard in shards:
            held = self._reader(shard).shapes
            listed = {k for k, v in self.weight_map.items() if v == shard}
            if extra := sorted(set(held) - listed):
                raise VitConvertError(f"{self.folder / shard}: holds tensors the index does not list there: "
                                      f"{name_list(extra)}")
            if absent := sorted(listed - set(held)):
                raise VitConvertError(f"{self.folder / shard}: lacks tensors the index lists there: "
                                      f"{name_list(absent)}")
            self.shapes.update(held)
        self._open = None  # listing them kept the last one open; reading opens what it needs

    def _reader(self, shard: str) -> Any:
        if self._open is None or self._open[0] != shard:
            self._open = None  # the previous shard's mapping goes before the next is opened
            if self.pickled:
                from ..formats.state_dict import TensorReader, read_state_dict  # torch, for pickles only

                reader = TensorReader(read_state_dict(self.folder / shard).tensors, self.folder / shard)
            else:
                reader = SafetensorsReader(self.folder / shard)
            self._open = (shard, reader)
        return self._open[1]

    def read(self, key: str) -> np.ndarray:
        # A copy: a memory-mapped tensor's array would keep its shard mapped after the shard is closed.
        array = self._reader(self.weight_map[key]).read(key)
        return array.copy() if self.pickled else array

    def check_weights(self, keys: Iterable[str], where: str) -> None:
        """Floating-point dense tensors only (safetensors shards are checked when their headers are read)."""
        if not self.pickled:
            return
        by_shard: dict[str, list[str]] = {}
        for key in keys:
            by_shard.setdefault(self.weight_map[key], []).append(key)
        for shard, held in by_shard.items():
            self._reader(shard).check_weights(held, where)

    def close(self) -> None:
        self._open = None

