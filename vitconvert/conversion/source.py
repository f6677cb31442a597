"""What a source format is to the one conversion pipeline (`pipeline.convert`), and the registry of them.

A format says whether a file is its own (`detect`, from the magic bytes and the key names alone), opens it
as a lazy tensor reader (`open`: shapes, and `read(key)` one tensor at a time) and plans the conversion
(`plan`): our config, the mapping rules and their bindings, the record's notes, source format, default
preprocessing and labels, and the source keys it leaves out on purpose, each with its reason. Everything
else (checking the output path and dtype, the key accounting, the head check, the record, the write) is
the pipeline's, once. Adding a format is one module defining a `SourceFormat` and a line in `FORMATS`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ..core.config import ViTConfig
from ..core.errors import VitConvertError
from ..formats.file_kind import FileKind
from ..formats.weights_file import Labels, Preprocess, TextTower
from .mapping import ArrayReader, Rule

if TYPE_CHECKING:  # torch: imported for pickles only
    from ..formats.state_dict import Checkpoint

# The formats, by their --from name: the module that defines each and its SourceFormat's name there. Imported
# on use; none of these modules imports torch until a pickle is read.
FORMATS: dict[str, str] = {
    "jax": "jax:JAX",
    "timm": "timm:TIMM",
    "timm-eva": "timm_eva:TIMM_EVA",
    "hf": "hf:HF",
    "dinov3": "dinov3:DINOV3",
    "hf-dinov3": "hf_dinov3:HF_DINOV3",
    "lucidrains": "tutorial_vits:LUCIDRAINS",
    "jeonsworld": "tutorial_vits:JEONSWORLD",
    "torch-encoder": "tutorial_vits:TORCH_ENCODER",
    "open_clip": "open_clip:OPEN_CLIP",
    "hf-towers": "hf_towers:HF_TOWERS",
    "torchvision": "torchvision:TORCHVISION",
}


@dataclass(frozen=True)
class Probe:
    """What detection looks at, gathered once for every format: the file's kind from its first bytes, and its
    tensor names where they can be listed (an .npz's members, a safetensors header, a state dict's keys)."""

    path: Path
    kind: FileKind
    keys: frozenset[str] = frozenset()
    wrapper: tuple[str, ...] = ()  # a state dict's wrappers ('teacher', 'model', ...), outermost first
    # A pickle's tensors can only be listed by reading it whole: read once, here, and opened from here.
    state_dict: Checkpoint | None = None


@dataclass(frozen=True)
class Detection:
    """A format's claim on a file: how sure (1.0: its own marks, such as its layout's key names; less: a key
    prefix alone) and why, in words for messages."""

    confidence: float
    reason: str


@dataclass(frozen=True)
class Option:
    """An option a format takes beyond the shared ones: its Python name, its command-line flag, what it does."""

    name: str
    flag: str
    help: str


@dataclass(frozen=True)
class Request:
    """What the caller asked for that a plan may depend on: the format's options, and the shared choices
    (given or None), so that a plan says in its notes where it supplied a default."""

    options: Mapping[str, Any]
    labels: str | Sequence[str] | None = None
    preprocess: Preprocess | None = None
    pos_resize: str | None = None


@dataclass(frozen=True)
class Plan:
    """What a source's tensors convert into."""

    config: ViTConfig
    rules: list[Rule]
    bindings: Mapping[str, Sequence[Mapping[str, object]]]
    source_format: str  # the record's source.format, e.g. 'jax-npz/vit_jax'
    preprocess: Preprocess  # the format's, where the caller gives none
    labels: Labels  # the format's, where the caller gives none
    notes: list[str] = field(default_factory=list)
    # Source keys deliberately not converted -> why (DINO's projection head, a two-tower file's text tower, ...).
    left_out: dict[str, str] = field(default_factory=dict)
    head_is_embedding: bool = False
    # A two-tower source's text tower (its tensors are among `rules`, named text.*); None: an image model.
    text: TextTower | None = None


class Reader(ArrayReader, Protocol):
    """A source's tensors (`shapes`, `read`), and `path`: the file the record names and hashes."""

    path: Path


@dataclass(frozen=True)
class SourceFormat:
    """A source format, as the pipeline sees it: `name` (the --from value), `summary` (one line for --help),
    `detect` (is a probed file this format's, and how sure), `open` (the file as a lazy reader), `plan`
    (what its tensors convert into), its own `options`, an `example` command line for --help, and what
    detection `looks_for`, said when no format recognises a file."""

    name: str  # the --from value
    summary: str  # one line, for --help
    detect: Callable[[Probe], Detection | None]
    open: Callable[[Probe], Reader]  # the probed file as a lazy reader (a pickle: the probe's state dict)
    plan: Callable[[Reader, Request], Plan]
    options: tuple[Option, ...] = ()
    example: str = ""  # a `vitconvert convert` line for --help
    # What detection looks for, in words: said when no format recognises a file.
    looks_for: str = ""

    def check_options(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """`given`, checked to name only options this format takes."""
        known = {o.name for o in self.options}
        if unknown := sorted(set(given) - known):
            takes = f"it takes {', '.join(o.name for o in self.options)}" if self.options else "it takes none"
            raise OptionError(f"option {', '.join(unknown)} does not apply to --from {self.name} ({takes})",
                              unknown, self)
        return dict(given)


class OptionError(VitConvertError):
    """A format option given to a format that does not take it (a usage error on the command line)."""

    def __init__(self, message: str, names: Collection[str], fmt: SourceFormat) -> None:
        super().__init__(message)
        self.names, self.format = tuple(names), fmt


def source_format(name: str) -> SourceFormat:
    """The format registered as `name`."""
    if name not in FORMATS:
        raise VitConvertError(f"unknown source format {name!r}; the formats are: {', '.join(FORMATS)}")
    module, attr = FORMATS[name].split(":")
    return getattr(importlib.import_module(f".{module}", __package__), attr)


def all_formats() -> list[SourceFormat]:
    return [source_format(name) for name in FORMATS]
