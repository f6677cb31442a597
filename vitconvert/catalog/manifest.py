"""The published checkpoints we know by name: `weights_manifest.json` (schema in docs/manifest.md).

The file ships inside the package (`vitconvert/catalog/data/weights_manifest.json`), so an installed
vitconvert finds it without the source tree; it is the one copy to read and edit. `$VITCONVERT_MANIFEST` points at
another file (a private mirror's manifest with checksums filled in, say).
"""

from __future__ import annotations

import difflib
import functools
import json
import os
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from ..core.config import ViTConfig
from ..core.errors import VitConvertError
from ..formats.weights_file import LABEL_SETS, Preprocess

SCHEMA_VERSION = 1
MANIFEST_ENV = "VITCONVERT_MANIFEST"
FAMILIES = ("vit-2020", "augreg", "sam", "big_vision", "flexivit", "lit", "siglip", "siglip2")
# big_vision: the evaluation preprocessing of the authors' big_vision config, as near as Preprocess gets
# (the entry's notes say where it differs).
PREPROCESS_SOURCES = ("timm", "google", "big_vision")

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
_SHA256 = re.compile(r"[0-9a-f]{64}")

# key -> (required, allowed types); None is allowed only where listed.
_FIELDS: dict[str, tuple[type, ...]] = {
    "name": (str,),
    "url": (str,),
    "format": (str,),
    "family": (str,),
    "arch": (str,),
    "config": (dict,),
    "train_resolution": (int,),
    "num_classes": (int,),
    "labels": (str, type(None)),
    "preprocess": (dict,),
    "preprocess_source": (str,),
    "act": (str,),
    "head_is_zero": (bool, type(None)),
    "timm_model": (str, type(None)),
    "top1": (float, int, type(None)),
    "top1_source": (str, type(None)),
    "upstream": (str, type(None)),
    "size_bytes": (int, type(None)),
    "sha256": (str, type(None)),
    "notes": (list,),
    "tokenizer": (str, type(None)),
}
# Fields an entry may leave out (then null): added after the first manifests were written.
_OPTIONAL = ("tokenizer",)


@dataclass(frozen=True)
class CheckpointEntry:
    """One published checkpoint: where it is, what it is, and how to run it."""

    name: str
    url: str
    format: str  # 'jax-npz/vit_jax' or 'jax-npz/big_vision'
    family: str  # one of FAMILIES
    arch: str  # human label, e.g. 'B/16', 'R50+L/32'
    config: ViTConfig
    train_resolution: int
    num_classes: int
    labels: str | None  # 'imagenet-1k', 'imagenet-21k'
    preprocess: Preprocess
    preprocess_source: str  # 'timm' (its pretrained cfg for timm_model), 'google' or 'big_vision'
    act: str
    # None: the authors do not say whether the published head is zeroed (a conversion reads it from the file).
    head_is_zero: bool | None
    timm_model: str | None  # 'vit_base_patch16_384.augreg_in21k_ft_in1k': same weights in timm
    top1: float | None  # ImageNet-1k top-1 in percent
    top1_source: str | None
    upstream: str | None  # name of the entry this one was fine-tuned from
    size_bytes: int | None
    sha256: str | None
    notes: tuple[str, ...] = field(default_factory=tuple)
    # Where the vocabulary of a two-tower file is (a big_vision .npz holds none: `--tokenizer FILE`); None for
    # image models, and for text towers vitconvert does not read (LiT's BERT).
    tokenizer: str | None = None

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    def to_dict(self) -> dict[str, Any]:
        """The manifest's JSON form of this entry (load_manifest reads it back unchanged)."""
        pre = self.preprocess
        return {
            "name": self.name, "url": self.url, "format": self.format, "family": self.family,
            "arch": self.arch, "config": self.config.to_dict(),
            "train_resolution": self.train_resolution, "num_classes": self.num_classes,
            "labels": self.labels,
            "preprocess": {"size": list(pre.size), "resize": pre.resize, "crop_pct": pre.crop_pct,
                           "interpolation": pre.interpolation, "mean": list(pre.mean),
                           "std": list(pre.std)},
            "preprocess_source": self.preprocess_source, "act": self.act,
            "head_is_zero": self.head_is_zero, "timm_model": self.timm_model, "top1": self.top1,
            "top1_source": self.top1_source, "upstream": self.upstream,
            "size_bytes": self.size_bytes, "sha256": self.sha256, "notes": list(self.notes),
            **({"tokenizer": self.tokenizer} if self.tokenizer is not None else {}),
        }


@dataclass(frozen=True)
class Manifest:
    checkpoints: tuple[CheckpointEntry, ...]
    source: str = "weights_manifest.json"
    schema_version: int = SCHEMA_VERSION

    @property
    def names(self) -> list[str]:
        return [e.name for e in self.checkpoints]

    def find(self, name: str) -> CheckpointEntry:
        """The entry called `name` (case-insensitively, if that is unambiguous), else the entry whose
        timm model (with tag) is `name`, as `vitconvert list` shows both."""
        for entry in self.checkpoints:
            if entry.name == name:
                return entry
        folded = [e for e in self.checkpoints if e.name.lower() == name.lower()]
        if len(folded) == 1:
            return folded[0]
        by_timm = [e for e in self.checkpoints if e.timm_model is not None and e.timm_model.lower() == name.lower()]
        if len(by_timm) == 1:
            return by_timm[0]
        if by_timm:
            raise VitConvertError(f"{name!r} is the timm model of {len(by_timm)} checkpoints in {self.source}: "
                                  f"{', '.join(e.name for e in by_timm)}; give one of these names")
        known = self.names + [e.timm_model for e in self.checkpoints if e.timm_model is not None]
        close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
        if not close:  # difflib weighs the whole string; also offer names that contain the text
            close = [n for n in known if name.lower() in n.lower()][:5]
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise VitConvertError(
            f"no checkpoint named {name!r} in {self.source}{hint} (see 'vitconvert list')")

    def match_file(self, filename: str, config: ViTConfig) -> CheckpointEntry | None:
        """The entry for a published file, by name and architecture (the 2020 folders reuse names); the
        activation and the position-embedding resizing are how it is run, which a file does not show.

        None unless every match agrees on preprocessing and labels.
        """
        hits = [e for e in self.checkpoints
                if e.filename == filename and e.config.replace(act=config.act, pos_resize=config.pos_resize) == config]
        if hits and all((e.preprocess, e.labels) == (hits[0].preprocess, hits[0].labels) for e in hits):
            return hits[0]
        return None

    def published_img_size(self, filename: str, config: ViTConfig) -> tuple[int, int] | None:
        """The image size the authors give a published file whose stored position grid fixes only its
        patch grid: the size of the entries for `filename` that are `config` apart from the image size
        (and what match_file sets aside), on the same patch grid; None unless they agree on one.

        SigLIP So400m/14 at 384 stores a 27x27 grid, which a converter reads as 378 px: the patch
        embedding never reads the last 6 px of a 384 px input, and the authors call the model 384.
        """
        sizes = {e.config.img_size for e in self.checkpoints
                 if e.filename == filename and e.config.grid_size == config.grid_size
                 and e.config.replace(act=config.act, pos_resize=config.pos_resize, img_size=config.img_size) == config}
        return sizes.pop() if len(sizes) == 1 else None

    def to_dict(self) -> dict[str, Any]:
        return {"schema_version": self.schema_version,
                "checkpoints": [e.to_dict() for e in self.checkpoints]}


def bundled_path() -> Path:
    """The copy shipped as package data."""
    return Path(str(resources.files("vitconvert.catalog") / "data" / "weights_manifest.json"))


def default_path() -> Path:
    env = os.environ.get(MANIFEST_ENV)
    return Path(env) if env else bundled_path()


def load_manifest(path: str | os.PathLike | None = None) -> Manifest:
    """Read and validate a manifest: `path`, else $VITCONVERT_MANIFEST, else the bundled copy."""
    path = Path(path) if path is not None else default_path()
    return _load_cached(str(path.resolve()), _mtime(path))


def _label(path: str) -> str:
    """How messages name a manifest: the bundled one by its repository name."""
    return "weights_manifest.json" if Path(path) == bundled_path().resolve() else path


def find(name: str, manifest: Manifest | str | os.PathLike | None = None) -> CheckpointEntry:
    """The entry called `name` or whose timm model is `name` (see `Manifest.find`); an unknown name
    raises VitConvertError listing close names."""
    if not isinstance(manifest, Manifest):
        manifest = load_manifest(manifest)
    return manifest.find(name)


def parse_manifest(data: Any, where: str = "manifest") -> Manifest:
    if not isinstance(data, dict):
        raise VitConvertError(f"{where}: expected a JSON object with 'schema_version' and 'checkpoints'")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise VitConvertError(
            f"{where}: manifest schema_version {version!r} is not supported (this vitconvert reads "
            f"version {SCHEMA_VERSION}); upgrade vitconvert")
    extra = sorted(set(data) - {"schema_version", "checkpoints"})
    if extra:
        raise VitConvertError(f"{where}: unknown top-level keys: {', '.join(extra)}")
    items = data.get("checkpoints")
    if not isinstance(items, list):
        raise VitConvertError(f"{where}: 'checkpoints' must be a list")
    entries = tuple(_parse_entry(item, i, where) for i, item in enumerate(items))
    seen: set[str] = set()
    for e in entries:
        if e.name.lower() in seen:
            raise VitConvertError(f"{where}: checkpoint name {e.name!r} appears twice")
        seen.add(e.name.lower())
    names = {e.name for e in entries}
    for e in entries:
        if e.upstream is not None and e.upstream not in names:
            raise VitConvertError(f"{where}: {e.name}: upstream {e.upstream!r} is not in the manifest")
    return Manifest(checkpoints=entries, source=where, schema_version=version)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError as e:
        raise VitConvertError(f"cannot read manifest {path}: {e.strerror}") from None


@functools.lru_cache(maxsize=8)
def _load_cached(path: str, mtime: float) -> Manifest:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise VitConvertError(f"cannot read manifest {path}: {e.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise VitConvertError(f"manifest {path} is not valid JSON ({e})") from None
    return parse_manifest(data, where=_label(path))


def _parse_entry(item: Any, index: int, where: str) -> CheckpointEntry:
    if not isinstance(item, dict):
        raise VitConvertError(f"{where}: checkpoint #{index} is not an object")
    label = f"{where}: checkpoint {item.get('name', f'#{index}')!r}"
    item = {**dict.fromkeys(_OPTIONAL), **item}
    missing = [k for k in _FIELDS if k not in item]
    unknown = sorted(set(item) - set(_FIELDS))
    if missing or unknown:
        parts = ([f"missing {', '.join(missing)}"] if missing else []) + (
            [f"unknown {', '.join(unknown)}"] if unknown else [])
        raise VitConvertError(f"{label}: {'; '.join(parts)}")
    for key, types in _FIELDS.items():
        value = item[key]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise VitConvertError(f"{label}: {key} has the wrong type ({type(value).__name__})")

    problems = []
    name, url = item["name"], item["url"]
    if not _NAME.fullmatch(name):
        problems.append(f"name {name!r} may use letters, digits and . _ + - only")
    if not url.startswith("https://"):
        problems.append(f"url must be https, got {url!r}")
    if item["tokenizer"] is not None and not item["tokenizer"].startswith("https://"):
        problems.append(f"tokenizer must be an https url or null, got {item['tokenizer']!r}")
    if item["family"] not in FAMILIES:
        problems.append(f"family must be one of {', '.join(FAMILIES)}")
    if item["preprocess_source"] not in PREPROCESS_SOURCES:
        problems.append(f"preprocess_source must be one of {', '.join(PREPROCESS_SOURCES)}")
    if problems:
        raise VitConvertError(f"{label}: {'; '.join(problems)}")
    try:
        cfg = ViTConfig.from_dict(item["config"])
        pre = item["preprocess"]
        preprocess = Preprocess(**{**pre, "size": tuple(pre["size"]), "mean": tuple(pre["mean"]),
                                   "std": tuple(pre["std"])})
    except VitConvertError as e:
        raise VitConvertError(f"{label}: {e}") from None
    except (KeyError, TypeError, ValueError) as e:
        raise VitConvertError(f"{label}: malformed preprocess ({type(e).__name__}: {e})") from None
    if item["num_classes"] != cfg.num_classes:
        problems.append(f"num_classes {item['num_classes']} but config.num_classes {cfg.num_classes}")
    if item["act"] != cfg.act:
        problems.append(f"act {item['act']!r} but config.act {cfg.act!r}")
    if cfg.img_size != (item["train_resolution"],) * 2:
        problems.append(f"train_resolution {item['train_resolution']} but config.img_size {cfg.img_size}")
    if preprocess.size != cfg.img_size:
        problems.append(f"preprocess.size {preprocess.size} but config.img_size {cfg.img_size}")
    if item["labels"] is not None and LABEL_SETS.get(cfg.num_classes) != item["labels"]:
        problems.append(f"labels {item['labels']!r} do not fit {cfg.num_classes} classes")
    if item["preprocess_source"] == "timm" and not item["timm_model"]:
        problems.append("preprocess_source 'timm' needs timm_model")
    if item["timm_model"] is not None and "." not in item["timm_model"]:
        problems.append("timm_model must name the pretrained tag (model.tag)")
    top1 = item["top1"]
    if top1 is not None and not (0 < top1 <= 100 and item["top1_source"]):
        problems.append("top1 must be a percentage in (0, 100] with a top1_source")
    if item["sha256"] is not None and not _SHA256.fullmatch(item["sha256"]):
        problems.append("sha256 must be 64 lowercase hex digits or null")
    if item["size_bytes"] is not None and item["size_bytes"] <= 0:
        problems.append("size_bytes must be positive or null")
    if not all(isinstance(n, str) for n in item["notes"]):
        problems.append("notes must be strings")
    if problems:
        raise VitConvertError(f"{label}: {'; '.join(problems)}")
    return CheckpointEntry(
        name=name, url=url, format=item["format"], family=item["family"], arch=item["arch"],
        config=cfg, train_resolution=item["train_resolution"], num_classes=item["num_classes"],
        labels=item["labels"], preprocess=preprocess, preprocess_source=item["preprocess_source"],
        act=item["act"], head_is_zero=item["head_is_zero"], timm_model=item["timm_model"],
        top1=None if top1 is None else float(top1), top1_source=item["top1_source"],
        upstream=item["upstream"], size_bytes=item["size_bytes"], sha256=item["sha256"],
        notes=tuple(item["notes"]), tokenizer=item["tokenizer"],
    )
