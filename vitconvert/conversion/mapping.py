"""The conversion engine: a table of rules from source keys to our tensor names, applied to arrays.

A `Rule` names a target, the source keys it is made from (templates filled from a binding such as
{'i': 3}) and the `Op` that turns the source arrays into the target. `plan_tensors` expands the table
against a reader, checks that every source exists with a shape the op accepts and that no source
key is left over, and returns `TensorSpec`s for the streaming writer: nothing is read until the
writer asks for it. A source written `key[{i}]` is row i of a stacked (scanned) array.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ..core.errors import VitConvertError, name_list
from ..formats.safetensors_file import TensorSpec

Shape = tuple[int, ...]


class ArrayReader(Protocol):
    shapes: Mapping[str, Shape]

    def read(self, key: str) -> np.ndarray: ...


@dataclass(frozen=True)
class Op:
    """An array transform and the same transform on shapes (so a plan needs no data)."""

    name: str
    apply: Callable[..., np.ndarray]
    shape: Callable[..., Shape]


@dataclass(frozen=True)
class Rule:
    target: str
    sources: tuple[str, ...]
    op: Op
    over: str | None = None  # name of the binding list this rule is expanded over (None: once)
    optional: bool = False  # absent sources mean the target is absent too (e.g. pre_logits)


IDENTITY = Op("identity", lambda x: x, lambda s: s)

_INDEXED = re.compile(r"^(?P<key>.*)\[(?P<index>\d+)\]$")


def _split(source: str) -> tuple[str, int | None]:
    m = _INDEXED.match(source)
    return (m["key"], int(m["index"])) if m else (source, None)


class _LastReads:
    """Keeps the few most recent whole arrays: the layers of a scanned array are read once."""

    def __init__(self, reader: ArrayReader, size: int) -> None:
        self.reader, self.size, self.cache = reader, size, OrderedDict()

    def read(self, source: str) -> np.ndarray:
        key, index = _split(source)
        if key not in self.cache:
            self.cache[key] = self.reader.read(key)
            while len(self.cache) > self.size:
                self.cache.popitem(last=False)
        self.cache.move_to_end(key)
        array = self.cache[key]
        return array if index is None else array[index]


def plan_tensors(rules: Iterable[Rule], reader: ArrayReader, bindings: Mapping[str, Sequence[Mapping[str, object]]],
         where: str = "checkpoint", ignore: Iterable[str] = ()) -> list[TensorSpec]:
    """Expand `rules`, check them against `reader.shapes`, and return the writer's specs."""
    rules = list(rules)
    cache = _LastReads(reader, max((len(r.sources) for r in rules), default=1))
    used: set[str] = set(ignore)
    missing: list[str] = []
    problems: list[str] = []
    specs: list[TensorSpec] = []
    for rule in rules:
        for binding in (bindings[rule.over] if rule.over else [{}]):
            target = rule.target.format(**binding)
            sources = tuple(s.format(**binding) for s in rule.sources)
            absent = [s for s in sources if _split(s)[0] not in reader.shapes]
            if absent:
                if not rule.optional or len(absent) < len(sources):
                    missing += absent
                continue
            shapes = []
            for s in sources:
                key, index = _split(s)
                shape = reader.shapes[key]
                if index is not None:
                    if not shape or index >= shape[0]:
                        problems.append(f"{key} {shape} has no layer {index}")
                        continue
                    shape = shape[1:]
                shapes.append(shape)
                used.add(key)
            if len(shapes) != len(sources):
                continue
            try:
                out_shape = rule.op.shape(*shapes)
            except (ValueError, IndexError) as e:
                problems.append(f"{', '.join(sources)} {shapes} cannot become {target} ({rule.op.name}: {e})")
                continue
            specs.append(TensorSpec(target, out_shape,
                                    lambda op=rule.op, srcs=sources: op.apply(*(cache.read(s) for s in srcs))))
    leftover = sorted(set(reader.shapes) - used)
    errors = []
    if missing:
        errors.append(f"missing keys: {name_list(set(missing))}")
    if leftover:
        errors.append(f"keys that nothing maps: {name_list(leftover)}")
    if problems:
        errors.append("inconsistent shapes: " + "; ".join(problems))
    if errors:
        raise VitConvertError(f"{where}: " + "; ".join(errors))
    return specs


def head_is_zero(specs: Iterable[TensorSpec]) -> bool:
    """Whether the planned tensors hold a classifier head (head.weight, head.bias) and it is all zeros: a file
    published for fine-tuning, whose top-k would be meaningless. Reads the head alone."""
    head = [spec for spec in specs if spec.name in ("head.weight", "head.bias")]
    return bool(head) and not any(np.any(spec.make()) for spec in head)


def block_bindings(depth: int) -> dict[str, list[dict[str, object]]]:
    """The binding list 'block' of a table's per-block rules ({i} = 0 .. depth - 1)."""
    return {"block": [{"i": i} for i in range(depth)]}


def source_dims(shapes: Mapping[str, Shape], key: str, rank: int, where: str, leading: int = 0) -> Shape:
    """The shape of source array `key`, which a config is read from, checked to have `rank`
    dimensions after `leading` ones (the layer axis of a scanned layout), which are dropped."""
    shape = shapes[key]
    if len(shape) != rank + leading:
        raise VitConvertError(f"{where}: {key} has shape {shape}, expected {rank + leading} dimensions")
    return shape[leading:]
