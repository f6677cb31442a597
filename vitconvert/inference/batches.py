"""Batches of model inputs, decoded and resized in worker processes ahead of the model.

A `torch.utils.data.DataLoader` over the images, in input order, with bounded prefetch (two batches
per worker). Each input goes through the same `prepare` as the single-process path, so the batches
are bit-identical to it. A bad image does not kill the worker: its `VitConvertError` message travels
back as a value and is raised again, unchanged, when the batch holding it is reached, so the error
names the file and comes after the predictions for the batches before it, as in the serial path.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from ..core.errors import VitConvertError
from .images import load_rgb
from .transform import to_tensor
from ..formats.weights_file import Preprocess

ImageInput = str | os.PathLike | Image.Image


def prepare(image: ImageInput, preprocess: Preprocess, max_pixels: int) -> torch.Tensor:
    """One image to the model's (3, H, W) float32 input."""
    return to_tensor(load_rgb(image, max_pixels), preprocess)


def default_workers(num_images: int, batch_size: int, device: str | torch.device = "cpu") -> int:
    """Worker processes worth starting: none for a single batch (nothing to overlap). With the model
    on a GPU, up to two. With the model on the CPU, only on cores torch's threads leave idle: there,
    workers take cores from the matrix products, and on a machine whose cores torch uses they cost
    more than decoding in between batches does (2 cores, ViT-B/16 bfloat16 over 200 photos: 0.83x
    the model's images/s with 2 workers, 0.87x with none; benchmarks/RESULTS.md)."""
    if num_images <= batch_size:
        return 0
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    if torch.device(device).type == "cpu":
        return max(0, min(2, cores - torch.get_num_threads()))
    return min(2, cores)


@dataclass(frozen=True)
class _Failed:
    message: str


class _Images(torch.utils.data.Dataset):
    def __init__(self, images: Sequence[ImageInput], preprocess: Preprocess, max_pixels: int) -> None:
        self.images, self.preprocess, self.max_pixels = images, preprocess, max_pixels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor | _Failed:
        try:
            return prepare(self.images[i], self.preprocess, self.max_pixels)
        except VitConvertError as e:
            return _Failed(str(e))


def _collate(items: list[torch.Tensor | _Failed]) -> torch.Tensor | _Failed:
    return next((item for item in items if isinstance(item, _Failed)), None) or torch.stack(items)


def batches(images: Sequence[ImageInput], preprocess: Preprocess, max_pixels: int, batch_size: int,
            workers: int = 0, pin_memory: bool = False) -> Iterator[torch.Tensor]:
    """(B, 3, H, W) float32 batches of `images`, in order; `workers` > 0 prepares them in that many
    processes while the caller runs the model on the previous ones."""
    if workers <= 0 or len(images) <= batch_size:
        for start in range(0, len(images), batch_size):
            yield torch.stack([prepare(image, preprocess, max_pixels) for image in images[start:start + batch_size]])
        return
    loader = torch.utils.data.DataLoader(
        _Images(images, preprocess, max_pixels), batch_size=batch_size, shuffle=False,
        num_workers=min(workers, -(-len(images) // batch_size)), collate_fn=_collate,
        pin_memory=pin_memory, prefetch_factor=2)
    for batch in loader:
        if isinstance(batch, _Failed):
            raise VitConvertError(batch.message)
        yield batch
