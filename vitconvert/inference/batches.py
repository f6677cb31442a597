"""Batches of model inputs, decoded and resized in worker processes ahead of the model.

A `torch.utils.data.DataLoader` over the images, in input order, with bounded prefetch (two batches
per worker). Each input goes through the same `prepare` as the single-process path, so the batches
are bit-identical to it. An image that cannot be read or decoded does not cost the rest of its
batch: each `Batch` holds the inputs of the images that prepared, and the `VitConvertError`
messages of those that did not, by position. A bad image does not kill a worker either: its
message travels back as a value.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import torch
from PIL import Image

from ..core.errors import VitConvertError
from ..formats.weights_file import Preprocess
from .images import load_rgb
from .transform import to_tensor

ImageInput = str | os.PathLike | Image.Image


def prepare(image: ImageInput | bytes, preprocess: Preprocess, max_pixels: int,
            name: str | None = None) -> torch.Tensor:
    """One image (or an image file's bytes, named `name` in errors) to the model's (3, H, W) float32 input."""
    return to_tensor(load_rgb(image, max_pixels, name), preprocess)


def default_workers(num_images: int, batch_size: int, device: str | torch.device = "cpu") -> int:
    """Worker processes worth starting: none for a single batch (nothing to overlap). With the model
    on a GPU, every core but the one feeding it (at least two): decoding, a few hundred photos a second
    per core, is what limits a GPU. With the model on the CPU, only on cores torch's threads leave idle
    (up to two): there, workers take cores from the matrix products, and on a machine whose cores torch
    uses they cost more than decoding in between batches does (measured: benchmarks/RESULTS.md, "A
    folder of 200 images"; docs/speed.md). The loader starts no more workers than there are batches."""
    if num_images <= batch_size:
        return 0
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    if torch.device(device).type == "cpu":
        return max(0, min(2, cores - torch.get_num_threads()))
    return min(cores, max(2, cores - 1))


class Batch(NamedTuple):
    """`batch_size` consecutive images: the inputs of those that prepared, stacked in input order
    (None if none did), and the error message of each that did not, by its position in the batch.
    A NamedTuple so that the DataLoader's pin_memory pins the tensor inside it."""

    inputs: torch.Tensor | None  # (number prepared, 3, H, W) float32
    failed: dict[int, str]


def _batch(items: Sequence[torch.Tensor | str]) -> Batch:
    failed = {i: item for i, item in enumerate(items) if isinstance(item, str)}
    good = [item for item in items if isinstance(item, torch.Tensor)]
    return Batch(torch.stack(good) if good else None, failed)


def _prepare_or_message(image: ImageInput, preprocess: Preprocess, max_pixels: int) -> torch.Tensor | str:
    try:
        return prepare(image, preprocess, max_pixels)
    except VitConvertError as e:
        return str(e)


class _Images(torch.utils.data.Dataset):
    def __init__(self, images: Sequence[ImageInput], preprocess: Preprocess, max_pixels: int) -> None:
        self.images, self.preprocess, self.max_pixels = images, preprocess, max_pixels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor | str:
        return _prepare_or_message(self.images[i], self.preprocess, self.max_pixels)


def batches(images: Sequence[ImageInput], preprocess: Preprocess, max_pixels: int, batch_size: int,
            workers: int = 0, pin_memory: bool = False) -> Iterator[Batch]:
    """A `Batch` for each `batch_size` consecutive `images`, in order; `workers` > 0 prepares them in
    that many processes while the caller runs the model on the previous ones."""
    if workers <= 0 or len(images) <= batch_size:
        for start in range(0, len(images), batch_size):
            yield _batch([_prepare_or_message(image, preprocess, max_pixels)
                          for image in images[start:start + batch_size]])
        return
    yield from torch.utils.data.DataLoader(
        _Images(images, preprocess, max_pixels), batch_size=batch_size, shuffle=False,
        num_workers=min(workers, -(-len(images) // batch_size)), collate_fn=_batch,
        pin_memory=pin_memory, prefetch_factor=2)
