"""Our weights file: safetensors whose metadata says everything needed to run it.

`__metadata__["vitconvert"]` holds a versioned JSON record (docs/weights-file.md describes it field by field):
the architecture, the preprocessing, the class names (a label set's name or the names themselves),
the head's state and the source; a two-tower model's text tower (`TextTower`), whose tokenizer file
travels in its own metadata key (`TOKENIZER_KEY`), so that the record's JSON stays small.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Literal, get_args

import numpy as np

from ..core.config import ViTConfig
from ..core.errors import VitConvertError, name_list
from ..core.json_types import is_real, is_size
from ..core.param_shapes import check_shapes
from ..core.text_config import PROBABILITIES, Probability, TextConfig, TokenizerConfig, text_param_shapes
from .dtypes import STORAGE, check_dtype
from .file_kind import file_kind
from .safetensors_file import TensorSpec, read_header, write_safetensors
from .source_hash import PLACEHOLDER, FileHash

META_KEY = "vitconvert"
# The embedded tokenizer file of a two-tower model, base64: beside the record, not in it.
TOKENIZER_KEY = "vitconvert.tokenizer"
# Tensors of the text tower are named under this prefix; the image tower's keep timm's names.
TEXT_PREFIX = "text."
# Version 2: `labels` may also be the list of class names. Version 3: the optional `text` section (a two-tower
# model's text tower, its tokenizer, logit scale and bias), `probability` (a zero-shot head's sigmoid), and the
# config's new fields (core/config.py SINCE_ROPE, SINCE_ZEROSHOT: rope, k_bias, kv_heads, head_norm, ...), which a
# reader of version 2 does not know. Versions 1 and 2 are still read.
FORMAT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
LABEL_SETS = {1000: "imagenet-1k", 21843: "imagenet-21k"}
# A label set's name, the class names in class order, or None (class indices).
Labels = str | tuple[str, ...] | None

Resize = Literal["squash", "crop"]
RESIZES: tuple[Resize, ...] = get_args(Resize)
# 'bicubic' and 'bilinear' are Pillow's filters (antialiased when shrinking), as in timm's and
# Hugging Face's transforms; 'bilinear_tf' is TensorFlow's `tf.image.resize` (vit_jax's evaluation):
# bilinear on float pixels, half-pixel centres, no antialiasing.
Interpolation = Literal["bicubic", "bilinear", "bilinear_tf"]
INTERPOLATIONS: tuple[Interpolation, ...] = get_args(Interpolation)


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes the model's input.

    'squash': resize straight to `size`. 'crop': resize the short side to size / crop_pct
    (timm's rule), then center-crop `size`. `interpolation` names the resampler (see
    INTERPOLATIONS). Pixels in [0, 1] are then normalized by mean and std.
    """

    size: tuple[int, int]
    resize: Resize = "squash"
    crop_pct: float = 1.0
    interpolation: Interpolation = "bilinear"
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    def __post_init__(self) -> None:
        # Also read from a file's JSON: wrong types are named here, not met later as a TypeError.
        if not is_size(self.size):
            raise VitConvertError(f"preprocess.size must be (height, width) > 0, got {self.size!r}")
        for name in ("mean", "std"):
            value = getattr(self, name)
            if not (isinstance(value, tuple) and len(value) == 3 and all(is_real(v) for v in value)):
                raise VitConvertError(f"preprocess.{name} must be 3 finite numbers, got {value!r}")
        if not all(v > 0 for v in self.std):
            raise VitConvertError(f"preprocess.std must be positive, got {self.std!r}")
        if not is_real(self.crop_pct):
            raise VitConvertError(f"preprocess.crop_pct must be a number, got {self.crop_pct!r}")
        if self.resize not in RESIZES:
            raise VitConvertError(f"preprocess.resize must be {' or '.join(map(repr, RESIZES))}, got {self.resize!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise VitConvertError(f"preprocess.interpolation must be one of "
                                  f"{', '.join(map(repr, INTERPOLATIONS))}, got {self.interpolation!r}")
        if not 0 < self.crop_pct <= 1:
            raise VitConvertError(f"preprocess.crop_pct must be in (0, 1], got {self.crop_pct}")

    def at_size(self, size: tuple[int, int]) -> Preprocess:
        """The same pipeline for another input size (crop fraction kept)."""
        return replace(self, size=tuple(size))

    @classmethod
    def google(cls, size: tuple[int, int]) -> Preprocess:
        """vit_jax's evaluation: `tf.image.resize` straight to size, then (x - 127.5) / 127.5."""
        return cls(size=tuple(size), interpolation="bilinear_tf")


@dataclass(frozen=True)
class Source:
    format: str  # e.g. 'jax-npz/vit_jax', 'jax-npz/big_vision', 'timm', 'vitconvert-finetune'
    file: str
    sha256: str | None = None
    # A fine-tuned file's training summary (data size, epochs, final validation accuracy, the recipe);
    # written only when there is one, so other records read as before.
    training: dict | None = field(default=None, compare=True, hash=False)

    def __post_init__(self) -> None:
        for name in ("format", "file", "sha256"):
            value = getattr(self, name)
            if not (isinstance(value, str) or name == "sha256" and value is None):
                raise VitConvertError(f"source.{name} must be a string, got {value!r}")
        if not (self.training is None or isinstance(self.training, dict)):
            raise VitConvertError(f"source.training must be a JSON object, got {self.training!r}")

    def to_dict(self) -> dict:
        d = asdict(self)
        if self.training is None:
            del d["training"]
        return d


@dataclass(frozen=True)
class TextTower:
    """A two-tower model's text side: its architecture, its tokenizer (the file's bytes and how to use them),
    and how similarities become logits: `cos(img, txt) * logit_scale + logit_bias`, made probabilities by
    `probability` (softmax over the classes for CLIP, a sigmoid of each for SigLIP)."""

    config: TextConfig
    tokenizer: TokenizerConfig
    tokenizer_file: bytes = field(repr=False)
    logit_scale: float  # exp(t), computed in float32 as the sources compute it
    logit_bias: float = 0.0  # b; 0 where the model has none (CLIP)
    probability: Probability = "softmax"

    def __post_init__(self) -> None:
        for name in ("logit_scale", "logit_bias"):
            if not is_real(value := getattr(self, name)):
                raise VitConvertError(f"text.{name} must be a finite number, got {value!r}")
        if self.logit_scale <= 0:
            raise VitConvertError(f"text.logit_scale must be positive (it is exp(t)), got {self.logit_scale}")
        if self.probability not in PROBABILITIES:
            raise VitConvertError(f"text.probability must be {' or '.join(map(repr, PROBABILITIES))}, "
                                  f"got {self.probability!r}")
        if not isinstance(self.tokenizer_file, bytes) or not self.tokenizer_file:
            raise VitConvertError("text: the tokenizer file is missing")
        digest = hashlib.sha256(self.tokenizer_file).hexdigest()
        if not self.tokenizer.sha256:
            object.__setattr__(self, "tokenizer", replace(self.tokenizer, sha256=digest))
        elif self.tokenizer.sha256 != digest:
            raise VitConvertError("text: the embedded tokenizer file is damaged (its sha256 is not the record's)")
        if self.tokenizer.vocab_size > self.config.vocab_size:
            raise VitConvertError(f"text: the tokenizer's vocabulary ({self.tokenizer.vocab_size} tokens) does not fit "
                                  f"the text tower's ({self.config.vocab_size} token embeddings): not this model's "
                                  "tokenizer")
        if self.tokenizer.context_length > self.config.context_length:
            raise VitConvertError(f"text: the tokenizer makes {self.tokenizer.context_length} ids per text, the text "
                                  f"tower has {self.config.context_length} positions")

    def to_dict(self) -> dict:
        return {"config": self.config.to_dict(), "tokenizer": self.tokenizer.to_dict(),
                "logit_scale": self.logit_scale, "logit_bias": self.logit_bias, "probability": self.probability}

    @classmethod
    def from_dict(cls, d: object, tokenizer_file: str | None) -> TextTower:
        if not isinstance(d, dict):
            raise VitConvertError(f"text must be a JSON object, got {d!r}")
        if tokenizer_file is None:
            raise VitConvertError(f"the text tower's tokenizer ({TOKENIZER_KEY}) is missing from the metadata")
        try:
            data = base64.b64decode(tokenizer_file.encode("ascii"), validate=True)
        except (ValueError, UnicodeEncodeError):
            raise VitConvertError(f"{TOKENIZER_KEY} is not base64: the tokenizer is damaged") from None
        unknown = sorted(set(d) - {"config", "tokenizer", "logit_scale", "logit_bias", "probability"})
        if unknown:
            raise VitConvertError(f"unknown text fields: {', '.join(unknown)}")
        return cls(config=TextConfig.from_dict(d["config"]), tokenizer=TokenizerConfig.from_dict(d["tokenizer"]),
                   tokenizer_file=data, logit_scale=d["logit_scale"], logit_bias=d.get("logit_bias", 0.0),
                   probability=d.get("probability", "softmax"))

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        return text_param_shapes(self.config, TEXT_PREFIX)


def float32_exp(t: float) -> float:
    """exp(t) rounded to float32, as the sources compute their logit scale (`logit_scale.exp()` in float32)."""
    return float(np.exp(np.float32(t)))


@dataclass(frozen=True)
class WeightsRecord:
    config: ViTConfig
    preprocess: Preprocess
    source: Source
    labels: Labels = None  # 'imagenet-1k', 'imagenet-21k', the class names, or None (class indices)
    head_is_zero: bool = False  # published for fine-tuning only: top-k would be meaningless
    notes: tuple[str, ...] = field(default_factory=tuple)
    # The head projects into an embedding (a two-tower image tower's, LiT's img/head): its outputs are the
    # image embedding, not class scores. Written only when true, so other records read as before.
    head_is_embedding: bool = False
    # A two-tower model's text tower (version 3); None: an image model, written as before.
    text: TextTower | None = None
    # How the head's logits become probabilities (core/text_config.py's Probability): softmax (every classifier
    # before, CLIP's zero-shot heads) or sigmoid (SigLIP's zero-shot heads). Written only when sigmoid.
    probability: Probability = "softmax"

    def __post_init__(self) -> None:
        # Checked here, so a file cannot be written, nor read, with names that do not fit its head.
        object.__setattr__(self, "labels", check_labels(self.labels, self.config.num_classes))
        if self.probability not in PROBABILITIES:
            raise VitConvertError(f"probability must be {' or '.join(map(repr, PROBABILITIES))}, "
                                  f"got {self.probability!r}")
        if not isinstance(self.head_is_embedding, bool):
            raise VitConvertError(f"head_is_embedding must be true or false, got {self.head_is_embedding!r}")
        if self.head_is_embedding and (not self.config.num_classes or self.labels is not None):
            raise VitConvertError("head_is_embedding: an embedding head needs a head (num_classes > 0) and has "
                                  "no class names")
        if self.text is not None and self.image_embedding_dim != self.text.config.out_dim:
            raise VitConvertError(f"text: the text embedding has {self.text.config.out_dim} dimensions, the image "
                                  f"embedding {self.image_embedding_dim or 'none (a classifier)'}: the towers do not "
                                  "fit")

    @property
    def image_embedding_dim(self) -> int:
        """The width of the image model's output where it is an embedding (an embedding head's, or a backbone's
        pooled features), else 0 (a classifier)."""
        cfg = self.config
        if self.head_is_embedding:
            return cfg.num_classes
        return 0 if cfg.num_classes else cfg.representation_size or cfg.embed_dim

    def to_json(self) -> str:
        return json.dumps({
            "format": "vitconvert-weights",
            "version": FORMAT_VERSION,
            "config": self.config.to_dict(),
            "preprocess": {**asdict(self.preprocess), "size": list(self.preprocess.size),
                           "mean": list(self.preprocess.mean), "std": list(self.preprocess.std)},
            "labels": list(self.labels) if isinstance(self.labels, tuple) else self.labels,
            "head_is_zero": self.head_is_zero,
            "source": self.source.to_dict(),
            "notes": list(self.notes),
            **({"head_is_embedding": True} if self.head_is_embedding else {}),
            **({"text": self.text.to_dict()} if self.text is not None else {}),
            **({"probability": self.probability} if self.probability != "softmax" else {}),
        }, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, where: str = "weights file", tokenizer_file: str | None = None) -> WeightsRecord:
        """The record of a file's metadata; `tokenizer_file`: its TOKENIZER_KEY entry, where it has one."""
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise VitConvertError(f"{where}: metadata is not valid JSON ({e})") from None
        if not isinstance(d, dict) or d.get("format") != "vitconvert-weights":
            raise VitConvertError(f"{where}: metadata is not a vitconvert weights record")
        version = d.get("version")
        if version not in READABLE_VERSIONS or isinstance(version, bool):
            raise VitConvertError(
                f"{where}: weights record version {version!r} is not supported (this vitconvert reads "
                f"versions {', '.join(map(str, READABLE_VERSIONS))}); upgrade vitconvert or reconvert")
        try:
            pre, source, notes, labels = d["preprocess"], d["source"], d.get("notes", []), d["labels"]
            for name, value in (("preprocess", pre), ("source", source)):
                if not isinstance(value, dict):
                    raise VitConvertError(f"{name} must be a JSON object, got {value!r}")
            # bool("false") is True: only JSON's own true/false may say whether the head is zero.
            if not isinstance(d["head_is_zero"], bool):
                raise VitConvertError(f"head_is_zero must be true or false, got {d['head_is_zero']!r}")
            if not (isinstance(notes, list) and all(isinstance(n, str) for n in notes)):
                raise VitConvertError(f"notes must be a list of strings, got {notes!r}")
            config = ViTConfig.from_dict(d["config"])
            if version == 1:
                labels = _labels_v1(labels, config.num_classes)
            return cls(
                config=config,
                preprocess=Preprocess(**{**pre, **{k: tuple(pre[k]) for k in ("size", "mean", "std")
                                                   if isinstance(pre.get(k), list)}}),
                source=Source(**source),
                labels=labels,
                head_is_zero=d["head_is_zero"],
                notes=tuple(notes),
                head_is_embedding=d.get("head_is_embedding", False),
                text=TextTower.from_dict(d["text"], tokenizer_file) if version >= 3 and "text" in d else None,
                probability=d.get("probability", "softmax"),
            )
        except VitConvertError as e:
            raise VitConvertError(f"{where}: {e}") from None
        except (KeyError, TypeError, ValueError) as e:
            raise VitConvertError(f"{where}: malformed weights record ({type(e).__name__}: {e})") from None

    def metadata(self) -> dict[str, str]:
        if self.text is None:
            return {META_KEY: self.to_json()}
        return {META_KEY: self.to_json(), TOKENIZER_KEY: base64.b64encode(self.text.tokenizer_file).decode("ascii")}

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every tensor the file holds (both towers), by name."""
        from ..core.param_shapes import param_shapes

        return {**param_shapes(self.config), **(self.text.param_shapes() if self.text is not None else {})}


def check_record_shapes(record: WeightsRecord, shapes: dict[str, tuple[int, ...]], where: str) -> None:
    """The tensors are the record's: the image tower's by its config, the text tower's (`text.*`) by its own."""
    image = {k: v for k, v in shapes.items() if not k.startswith(TEXT_PREFIX)}
    check_shapes(record.config, image, where)
    text = {k: tuple(v) for k, v in shapes.items() if k.startswith(TEXT_PREFIX)}
    expected = record.text.param_shapes() if record.text is not None else {}
    if text == expected:
        return
    wrong = sorted(k for k in text.keys() & expected.keys() if text[k] != expected[k])
    extra, missing = sorted(text.keys() - expected.keys()), sorted(expected.keys() - text.keys())
    parts = ([f"inconsistent text-tower shapes: {name_list(wrong)}"] if wrong else []) + (
        [f"tensors the text tower lacks: {name_list(extra)}"] if extra else []) + (
        [f"tensors the text tower needs but the file lacks: {name_list(missing)}"] if missing else [])
    raise VitConvertError(f"{where}: " + "; ".join(parts))


def label_set_for(num_classes: int) -> str | None:
    return LABEL_SETS.get(num_classes)


def check_labels(labels: object, num_classes: int) -> Labels:
    """`labels` as a record holds them (a list of names becomes a tuple), or a VitConvertError saying
    why they cannot name `num_classes` classes."""
    if labels is None:
        return None
    if num_classes == 0:
        raise VitConvertError("labels: this model has no classes (num_classes 0), so it has no class names")
    if isinstance(labels, str):
        if label_set_for(num_classes) == labels:
            return labels
        sizes = {name: n for n, name in LABEL_SETS.items()}
        if labels in sizes:
            raise VitConvertError(f"labels {labels!r} has {sizes[labels]} classes but the model has {num_classes}")
        raise VitConvertError(f"labels {labels!r} is not a label set ({', '.join(sizes)}); "
                              "give the class names themselves as a list")
    if isinstance(labels, (list, tuple)) and all(isinstance(name, str) for name in labels):
        if len(labels) != num_classes:
            raise VitConvertError(f"labels: {len(labels)} class names but the model has {num_classes} classes")
        return tuple(labels)
    shown = repr(labels)
    raise VitConvertError(f"labels must be a label set's name, a list of class names or null, "
                          f"got {shown if len(shown) <= 60 else shown[:57] + '...'}")


def _labels_v1(labels: object, num_classes: int) -> str | None:
    """A version 1 record's labels: a string or null, any string. A name that is not the label set of
    the head's size was shown as class indices, and still is."""
    if not (labels is None or isinstance(labels, str)):
        raise VitConvertError(f"labels must be a string or null, got {labels!r}")
    return labels if label_set_for(num_classes) == labels else None


# What our writer stores; the model is built in one of these (torch cannot load ints into parameters).
FLOAT_DTYPES = {name for name, _ in STORAGE.values()}


def read_record(path: str | os.PathLike) -> WeightsRecord:
    """The record alone: reads the header, not the tensors."""
    try:
        header = read_header(path)
    except VitConvertError:
        if file_kind(path).kind in OTHER_CHECKPOINTS:  # a safetensors file that fails here is damaged: say so
            raise _not_converted(path) from None
        raise
    if META_KEY not in header.metadata:  # a safetensors checkpoint someone else wrote
        raise _not_converted(path)
    record = WeightsRecord.from_json(header.metadata[META_KEY], where=str(path),
                                     tokenizer_file=header.metadata.get(TOKENIZER_KEY))
    dtypes = {dtype for dtype, _ in header.tensors.values()}
    if not dtypes <= FLOAT_DTYPES or len(dtypes) > 1:
        raise VitConvertError(f"{path}: tensors must all have one dtype of {', '.join(sorted(FLOAT_DTYPES))}; "
                              f"found {', '.join(sorted(map(str, dtypes)))}")
    check_record_shapes(record, {k: shape for k, (_, shape) in header.tensors.items()},
                        f"{path}: metadata disagrees with the tensors")
    return record


# What `file_kind` calls the checkpoints other than safetensors that `vitconvert convert` reads.
OTHER_CHECKPOINTS = ("npz", "torch-zip", "pickle")


def _not_converted(path: str | os.PathLike) -> VitConvertError:
    """A checkpoint given where our converted file is expected: what it is, and the command that converts it."""
    return VitConvertError(f"{path} is {file_kind(path).description}, not a vitconvert weights file; convert it "
                           f"first: vitconvert convert {path} OUT.safetensors")


def write_weights(dst: str | os.PathLike, specs: Sequence[TensorSpec], record: WeightsRecord, *,
                  source_path: str | os.PathLike | None, dtype: str = "float32", force: bool = False,
                  allow_nonfinite: bool = False, progress: Callable[[int, int], None] | None = None,
                  before_commit: Callable[[], None] | None = None) -> WeightsRecord:
    """Write converted tensors and `record` to `dst` atomically; returns the final record.

    The sha256 of `source_path`, if given, is computed alongside (the header carries a placeholder
    until the end); NaN or Inf in any tensor stops the write unless `allow_nonfinite`; `before_commit`
    (see `write_safetensors`) may still refuse the file after its tensors are written.
    """
    check_dtype(dtype)
    check_record_shapes(record, {s.name: s.shape for s in specs}, str(source_path or dst))
    file_hash = FileHash(source_path) if source_path is not None else None
    if file_hash:
        record = replace(record, source=replace(record.source, sha256=PLACEHOLDER))
    if not allow_nonfinite:
        specs = [TensorSpec(s.name, s.shape, _finite(s, str(source_path or dst))) for s in specs]
    total = sum(int(np.prod(s.shape)) for s in specs) * STORAGE[dtype][1].itemsize
    done = 0

    def step(nbytes: int) -> None:
        nonlocal done
        done += nbytes
        if progress:
            progress(done, total)

    def final() -> dict[str, str]:
        nonlocal record
        record = replace(record, source=replace(record.source, sha256=file_hash.hexdigest()))
        return record.metadata()

    write_safetensors(dst, specs, dtype, record.metadata(), force=force, progress=step,
                      final_metadata=final if file_hash else None, before_commit=before_commit)
    return record


def _finite(spec: TensorSpec, where: str) -> Callable[[], np.ndarray]:
    def make() -> np.ndarray:
        array = spec.make()
        if not all_finite(array):
            raise VitConvertError(
                f"{where}: tensor {spec.name} holds NaN or Inf values; pass --allow-nonfinite to convert anyway")
        return array
    return make


def all_finite(array: np.ndarray) -> bool:
    """No NaN or Inf: NaN propagates through min and max, and an Inf is one of them. Two reductions
    allocate nothing, where np.isfinite(array).all() writes a fresh boolean array for each tensor (a
    large share of a conversion's page faults)."""
    return array.size == 0 or bool(np.isfinite(array.min()) and np.isfinite(array.max()))
