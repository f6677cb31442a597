"""Class names: ImageNet-1k / ImageNet-21k from the files timm ships, one name a line from a file,
or the names the weights file stores; and whether a model has classes worth ranking at all.

timm is only located, never imported: `find_spec` on a top-level package finds its directory
without running its `__init__`, which would pull in torchvision and huggingface_hub (seconds).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path

from ..core.errors import VitConvertError
from ..formats.weights_file import label_set_for

# Label set -> (synset list in class order, number of classes). The 21k heads of the Google
# checkpoints use Google's ordering of the fall-2011 release, which timm calls 'imagenet21k_goog'.
BUILTIN = {
    "imagenet-1k": ("imagenet_synsets.txt", 1000),
    "imagenet-21k": ("imagenet21k_goog_synsets.txt", 21843),
}
LEMMAS = "imagenet_synset_to_lemma.txt"


def timm_info_dir() -> Path:
    spec = importlib.util.find_spec("timm")
    if spec is None or not spec.submodule_search_locations:
        raise VitConvertError(
            "ImageNet class names come from timm's package data, but timm is not installed; "
            "install timm or pass --labels FILE (one class name a line)")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "_info"


def builtin_labels(name: str) -> list[str]:
    """Names in class order, e.g. 'tabby, tabby cat' for ImageNet-1k class 281."""
    synsets_file, _ = BUILTIN[name]
    info = timm_info_dir()
    try:
        synsets = (info / synsets_file).read_text().split()
        lemmas = dict(line.split("\t", 1) for line in (info / LEMMAS).read_text().splitlines() if "\t" in line)
    except OSError as e:
        raise VitConvertError(f"cannot read timm's label files in {info}: {e.strerror or e}") from None
    return [lemmas.get(s, s) for s in synsets]


def read_label_file(path: str | os.PathLike) -> list[str]:
    """One name a line; trailing blank lines (a final newline, say) are not classes."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise VitConvertError(f"labels file {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise VitConvertError(f"labels file {path}: cannot read ({getattr(e, 'strerror', None) or e})") from None
    while lines and not lines[-1].strip():
        lines.pop()
    return [line.strip() for line in lines]


def resolve_labels(labels: str | os.PathLike | Sequence[str] | None, num_classes: int,
                   record_labels: str | Sequence[str] | None = None) -> list[str] | None:
    """The names for a model's classes, or None to show class indices.

    `labels`: 'imagenet-1k', 'imagenet-21k', a file, a list of names, or None for the weights
    file's own labels (its class names or label set; else the ImageNet set of that size, else indices).
    """
    if labels is None and record_labels is not None and not isinstance(record_labels, str):
        return list(record_labels)  # the record checked that they name every class
    if labels is None:
        name = record_labels or label_set_for(num_classes)
        if name not in BUILTIN or BUILTIN[name][1] != num_classes:
            return None
        return builtin_labels(name)
    if isinstance(labels, (str, os.PathLike)):
        if str(labels) in BUILTIN:
            name = str(labels)
            if BUILTIN[name][1] != num_classes:
                raise VitConvertError(
                    f"--labels {name} has {BUILTIN[name][1]} classes but the model has {num_classes}")
            return builtin_labels(name)
        names, where = read_label_file(labels), f"labels file {labels}"
    else:
        names, where = [str(n) for n in labels], "the label list"
    if len(names) != num_classes:
        raise VitConvertError(f"{where} has {len(names)} names but the model has {num_classes} classes")
    return names


EMBED_HINT = "for its features use `vitpredict IMAGE... --embed OUT.npz` (Predictor.embed)"


def check_top_k(num_classes: int, head_is_zero: bool, where: str, head_is_embedding: bool = False) -> None:
    """Refuse a top-k that would mean nothing, saying what the model is good for instead; from the
    record alone, so before any tensor is read."""
    if head_is_embedding:
        raise VitConvertError(
            f"{where}: this model's head projects into an image-text embedding ({num_classes} wide: the image "
            f"tower of a two-tower model such as LiT), it is not a classifier, so there are no classes to rank; "
            f"for the image embedding use `vitpredict IMAGE... --embed OUT.npz` (Predictor.embed)")
    if num_classes == 0:
        raise VitConvertError(
            f"{where}: this model has no classification head (num_classes 0: a backbone such as DINO's), "
            f"so there are no classes to rank; {EMBED_HINT}")
    if head_is_zero:
        raise VitConvertError(
            f"{where}: the classification head of this model is all zeros: it was published for "
            "fine-tuning only (like the 2020 ImageNet-21k ViT checkpoints), so every class gets the "
            "same probability and a top-k would be meaningless. Use a fine-tuned checkpoint instead "
            f"(e.g. an imagenet21k+imagenet2012 or AugReg '..._ft_in1k' file), or {EMBED_HINT}")
