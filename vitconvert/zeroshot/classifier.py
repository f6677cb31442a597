"""A two-tower file's image tower with a zero-shot head: an ordinary classifier file (the class names its
labels), so vitpredict, the exports, Ray Data and finetune read it as any other.

The image tower's output is its image embedding: its embedding projection (`head`, `head_is_embedding`)
becomes the representation layer (`pre_logits.fc`, no activation), or, where the tower has none, the
pooled features are the embedding. The config's `head_norm: 'l2'` scales that embedding to unit length,
and the zero-shot head (head.py) reads it: the logits are the source's
`normalize(img) @ normalize(txt).T * logit_scale + logit_bias`.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.config import ViTConfig
from ..core.errors import VitConvertError
from ..formats.paths import check_output
from ..formats.safetensors_file import SafetensorsReader, TensorSpec
from ..formats.weights_file import TEXT_PREFIX, Source, WeightsRecord, read_record, write_weights
from .head import TEXT_BATCH, ZeroShotHead, build_head
from .prompts import resolve_classes, resolve_templates


@dataclass(frozen=True)
class ZeroShotRequest:
    """What to classify into: class names and templates as resolve_classes/resolve_templates take them,
    with the names of the shipped sets kept for the record's note."""

    classes: str | os.PathLike | Sequence[str]
    templates: str | os.PathLike | Sequence[str] = "imagenet"

    def resolved(self) -> tuple[list[str], list[str]]:
        return resolve_classes(self.classes), resolve_templates(self.templates)

    def describe(self, n_classes: int, n_templates: int) -> str:
        def name(spec: object, n: int, what: str) -> str:
            return f"{n} {what}" + (f" ({spec})" if isinstance(spec, str) and "," not in spec and "{" not in spec
                                    else "")
        return f"{name(self.classes, n_classes, 'classes')} x {name(self.templates, n_templates, 'templates')}"


def two_tower_record(path: str | os.PathLike) -> WeightsRecord:
    """`path`'s record, refused unless it holds a text tower to build a head with."""
    record = read_record(path)
    if record.text is None:
        raise VitConvertError(f"{path}: this file holds no text tower, so it cannot name classes by text; convert "
                              f"the two-tower checkpoint (CLIP, SigLIP, LiT) without --image-only")
    return record


def canonicalizes(record: WeightsRecord) -> bool:
    """Whether the source's zero-shot evaluation canonicalizes class names and templates: big_vision's does
    (its discriminative_classifier evaluator, canonicalize=True by default); OpenCLIP's and transformers'
    fill the templates as given (their tokenizers apply their own cleaning)."""
    return "big_vision" in record.source.format


def classifier_config(image: ViTConfig, embedding_head: bool, num_classes: int) -> ViTConfig:
    """The image tower's config with a zero-shot head of `num_classes` on its unit image embedding."""
    if image.representation_size:
        raise VitConvertError("this image tower already has a representation layer before its head; a zero-shot "
                              "head needs the embedding to come from the projection alone")
    if embedding_head:
        return image.replace(representation_size=image.num_classes, pre_logits_act="none", num_classes=num_classes,
                             head_norm="l2")
    if image.num_classes:
        raise VitConvertError("this image tower's head is a classifier, not an embedding projection; a zero-shot "
                              "head reads the image embedding")
    return image.replace(num_classes=num_classes, head_norm="l2")


def classifier_tensors(tensors: Mapping[str, Callable[[], np.ndarray]], shapes: Mapping[str, tuple[int, ...]],
                       embedding_head: bool, head: ZeroShotHead) -> list[TensorSpec]:
    """The image tower's tensors (the text tower's left out), its projection renamed to the representation
    layer, and the zero-shot head."""
    renamed = {"head.weight": "pre_logits.fc.weight", "head.bias": "pre_logits.fc.bias"} if embedding_head else {}
    specs = [TensorSpec(renamed.get(name, name), shapes[name], make) for name, make in tensors.items()
             if not name.startswith(TEXT_PREFIX)]
    weight, bias = head.weight.numpy(), head.bias.numpy()
    return [*specs, TensorSpec("head.weight", weight.shape, lambda: weight),
            TensorSpec("head.bias", bias.shape, lambda: bias)]


def zeroshot_record(src: WeightsRecord, path: str | os.PathLike, config: ViTConfig, head: ZeroShotHead,
                    request: ZeroShotRequest) -> WeightsRecord:
    """The classifier's record: the image tower's preprocessing, the class names as its labels, the
    probability the source defines, and what the head was built from."""
    note = (f"zero-shot head from {Path(path).name} ({src.source.format}): "
            f"{request.describe(len(head.classes), len(head.templates))}, {head.probability} probabilities")
    return WeightsRecord(config=config, preprocess=src.preprocess,
                         source=Source(format="vitconvert-zeroshot", file=str(path)), labels=head.classes,
                         notes=(*src.notes, note), probability=head.probability)


def build_zeroshot_classifier(src: str | os.PathLike, dst: str | os.PathLike, request: ZeroShotRequest, *,
                              force: bool = False, dtype: str = "float32", batch_size: int = TEXT_BATCH,
                              progress: Callable[[int, int], None] | None = None) -> WeightsRecord:
    """Write `dst`: the two-tower file `src`'s image tower with the zero-shot head of `request`; returns
    its record. Everything that can be refused (the output, the classes, the templates, a file without a
    text tower) is, before the text tower is loaded; the write is atomic."""
    from ..text.loading import text_model_from  # torch from here on

    check_output(dst, force, suffix=".safetensors")
    classes, templates = request.resolved()
    record = two_tower_record(src)
    embedding_head = record.head_is_embedding
    config = classifier_config(record.config, embedding_head, len(classes))
    text = text_model_from(record, src)
    head = build_head(text, classes, templates, canonicalize=canonicalizes(record), batch_size=batch_size,
                      progress=progress)
    reader = SafetensorsReader(src)
    specs = classifier_tensors({name: (lambda name=name: reader.read(name)) for name in reader.shapes},
                               reader.shapes, embedding_head, head)
    return write_weights(dst, specs, zeroshot_record(record, src, config, head, request), source_path=src,
                         dtype=dtype, force=force)


@contextlib.contextmanager
def zeroshot_classifier_file(src: str | os.PathLike, request: ZeroShotRequest, *,
                             progress: Callable[[int, int], None] | None = None) -> Iterator[Path]:
    """The zero-shot classifier of the two-tower file `src` (the file `vitconvert zeroshot` writes), in a
    temporary directory removed on exit: how vitpredict and serve classify by class names on the fly."""
    with tempfile.TemporaryDirectory(prefix="vitconvert-zeroshot-") as tmp:
        out = Path(tmp) / "zeroshot.safetensors"
        build_zeroshot_classifier(src, out, request, progress=progress)
        yield out
