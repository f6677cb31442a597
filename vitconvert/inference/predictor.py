"""`Predictor`: one of our weights files to top-k class predictions, embeddings and attention maps
for images.

Everything comes from the file's record: architecture, the preprocessing the model was trained
with, the class names. Another input size resamples the position embeddings (see posembed.py) and
runs the same preprocessing at that size.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..core.config import ViTConfig
from ..core.errors import VitConvertError
from ..model.loading import model_from
from ..model.optimize import compiled_for_static_shapes
from ..model.vit import token_parts
from .attention import overlay, rollout
from .batches import Batch, ImageInput, batches, prepare
from .images import MAX_PIXELS, load_rgb
from .plan import PredictionPlan, check_attention, plan_prediction
from .runtime import inference_dtype, input_dtype, run_compiled
from .transform import crop_geometry

OnError = Literal["raise", "report"]  # what iter_predict does with an image it cannot read


@dataclass(frozen=True)
class Prediction:
    rank: int  # 1 = most probable
    index: int  # class index in the model's head
    label: str | None  # None when the model's classes have no names
    probability: float  # a fraction in [0, 1]: softmax, or sigmoid where the record says so (SigLIP)


@dataclass(frozen=True)
class ImagePredictions:
    image: str
    predictions: tuple[Prediction, ...]
    error: str | None = None  # why the image could not be classified (then no predictions)
    kind: str = "softmax"  # how the probabilities were made: softmax, or sigmoid (SigLIP's zero-shot heads)

    def to_dict(self) -> dict:
        if self.error is not None:
            return {"image": self.image, "error": self.error}
        # The kind only where it is not every classifier's softmax, so that their output stays as it was.
        return {"image": self.image, "predictions": [asdict(p) for p in self.predictions],
                **({"probabilities": self.kind} if self.kind != "softmax" else {})}


# With tokens, the prefix tokens each kind apart (as `vitpredict --embed --tokens` names its arrays), those the
# model has: the class token (D,), the register/storage tokens (R, D), DeiT's distillation token (D,).
PREFIX_ARRAYS = ("class_tokens", "register_tokens", "dist_tokens")


@dataclass(frozen=True)
class ImageEmbedding:
    image: str
    embedding: np.ndarray | None  # float32, (D,) pooled or (h * w, D) patch tokens; None when the image failed
    error: str | None = None  # why the image could not be embedded
    prefix: dict[str, np.ndarray] = field(default_factory=dict)  # with tokens: PREFIX_ARRAYS the model has


class Predictor:
    """Classify or embed images with one of our weights files.

    >>> p = Predictor("vit-b16.safetensors")            # or model="NAME" for a cached download
    >>> p.predict(["cat.jpg"], top_k=3)[0].predictions[0].label
    'tabby, tabby cat'
    >>> p.embed(["cat.jpg", "dog.jpg"]).shape           # pooled features, any model, with or without a head
    (2, 768)

    `img_size` (R, 'R', 'HxW' or (H, W)) runs the model at another resolution, `patch_size` (P or
    'HxW') at another patch size (FlexiViT's PI-resize of the kernel; see `load_model`). `labels` overrides the
    class names: 'imagenet-1k', 'imagenet-21k', a file with one name a line, or a list (default: the
    file's own). A model without classes (num_classes 0) or with an all-zero head embeds but does not
    classify: `predict` refuses it, saying so. `weights` may instead be a `PredictionPlan`
    (`plan_prediction`'s: the record read and the request checked without torch); then the options it
    decided (`model`, `img_size`, `patch_size`, `labels`) are not given again.

    Speed (docs/speed.md): `dtype` 'bfloat16' (CPUs where it is faster, GPUs) or 'float16'
    (GPUs) runs the model in that precision, 'int8' its linear layers in int8 (CPU), probabilities
    still computed in float32; `compile=True` runs the fastest float32 path of `load_model(...,
    compile=True)` (on a GPU it compiles on the first batch of each size). `workers`
    in `predict`/`iter_predict` decodes and resizes images in that many processes ahead of the model.
    """

    def __init__(self, weights: str | os.PathLike | PredictionPlan | None = None, *, model: str | None = None,
                 img_size: int | str | tuple[int, int] | None = None, device: str | torch.device = "cpu",
                 labels: str | os.PathLike | Sequence[str] | None = None,
                 max_pixels: int = MAX_PIXELS, dtype: str | torch.dtype | None = "float32",
                 compile: bool = False, patch_size: int | str | tuple[int, int] | None = None) -> None:
        if isinstance(weights, PredictionPlan):
            if any(v is not None for v in (model, img_size, labels, patch_size)):
                raise VitConvertError("a PredictionPlan has decided model, img_size, patch_size and labels already")
            plan = weights
        else:  # the header alone answers everything that can be refused, before the tensors are read
            plan = plan_prediction(weights, model=model, img_size=img_size, patch_size=patch_size, labels=labels)
        self.path, self.record, self.labels = plan.path, plan.record, plan.labels
        self._plan = plan
        self.device = check_device(device)
        self.dtype = inference_dtype(dtype, self.device)
        self.preprocess = plan.record.preprocess.at_size(plan.img_size)
        self.max_pixels = max_pixels
        self.model = model_from(plan.record, self.path, img_size=plan.img_size, device=self.device,
                                dtype=self.dtype, compile=compile, patch_size=plan.patch_size)
        # Batches launched before the oldest one's outputs are read: on a GPU one, so that the GPU runs a
        # batch while the CPU turns the previous one's outputs into results; on the CPU nothing runs
        # in between, and results come a batch sooner.
        self._batches_ahead = 1 if self.device.type == "cuda" else 0
        self._static_shapes = compiled_for_static_shapes(self.model)

    @property
    def config(self) -> ViTConfig:
        return self.model.config

    def label(self, index: int) -> str | None:
        return self.labels[index] if self.labels is not None else None

    def transform(self, image: ImageInput | bytes, name: str | None = None) -> torch.Tensor:
        """The model's input for one image (or an image file's bytes, named `name` in errors): (3, H, W)
        float32, preprocessed as the weights file says."""
        return prepare(image, self.preprocess, self.max_pixels, name)

    def probabilities(self, images: Sequence[ImageInput]) -> torch.Tensor:
        """Softmax over the classes (a sigmoid of each, where the record says so), (len(images), num_classes),
        float32 on the CPU."""
        return self.batch_probabilities(torch.stack([self.transform(image) for image in _as_list(images)]))

    def check_top_k(self) -> None:
        """Raise a VitConvertError if this model has no meaningful classes to rank (none, or an
        all-zero head); the message points to `embed`."""
        self._plan.check_classes()

    def batch_probabilities(self, batch: torch.Tensor) -> torch.Tensor:
        """Softmax over the classes for a prepared (B, 3, H, W) batch, float32 on the CPU."""
        self.check_top_k()
        return self._launch_probabilities(batch).landed()

    def batch_embeddings(self, batch: torch.Tensor, tokens: bool = False, normalize: bool = False) -> torch.Tensor:
        """Features of a prepared (B, 3, H, W) batch, float32 on the CPU.

        (B, D): the pooled features the head reads, before any representation layer (timm's
        `forward_head(x, pre_logits=True)`; a distilled model averages its two tokens); where the head is
        an embedding projection (`record.head_is_embedding`: LiT's image tower), its output, the image
        embedding. `tokens`: (B, T, D), every token after the final norm (timm's `forward_features`:
        [class, registers, patches]; `embed` splits them). `normalize`: each vector (each token's, with
        `tokens`) scaled to unit length.
        """
        return self._launch_embeddings(batch, tokens, normalize).landed()

    @torch.inference_mode()
    def _launch_probabilities(self, batch: torch.Tensor, pad_to: int | None = None) -> InFlight:
        logits = self._run("forward", batch, pad_to).float()
        return InFlight.to_cpu(logits.sigmoid() if self.record.probability == "sigmoid" else logits.softmax(dim=-1))

    @torch.inference_mode()
    def _launch_embeddings(self, batch: torch.Tensor, tokens: bool, normalize: bool,
                           pad_to: int | None = None) -> InFlight:
        pooled = "forward" if self.record.head_is_embedding else "forward_pooled"
        features = self._run("forward_features" if tokens else pooled, batch, pad_to).float()
        return InFlight.to_cpu(F.normalize(features, dim=-1) if normalize else features)

    def _run(self, method: str, batch: torch.Tensor, pad_to: int | None = None) -> torch.Tensor:
        """The (prepared, with compile=True) model's `method` on `batch`, on the model's device and dtype.

        A model that torch.compile prepared for static shapes compiles again for each new batch size, which
        costs seconds (docs/speed.md): a batch shorter than `pad_to` (a folder's last, or one with unreadable
        images) runs padded to it with copies of its last image, whose outputs are dropped."""
        batch = batch.to(self.device, input_dtype(self.dtype), non_blocking=True)
        rows = batch.shape[0]
        if pad_to is not None and rows < pad_to and self._static_shapes:
            batch = torch.cat([batch, batch[-1:].expand(pad_to - rows, *batch.shape[1:])])
        return run_compiled(getattr(self.model, method), batch)[:rows]

    def iter_predict(self, images: Sequence[ImageInput], top_k: int = 5, batch_size: int = 32,
                     workers: int = 0, errors: OnError = "raise") -> Iterator[ImagePredictions]:
        """Predictions one image at a time, computed `batch_size` images at once, in input order.

        `workers` > 0 decodes and resizes the images in that many processes, prefetching up to two
        batches each, while the model runs; the results are the same as with `workers=0`.
        An image that cannot be read or decoded raises its VitConvertError once the images before it
        are yielded (errors='raise'), or is yielded as a result with `error` set and no predictions
        (errors='report'); either way the other images of its batch are classified.
        """
        check_top_k_value(top_k)
        self.check_top_k()

        def launch(inputs: torch.Tensor) -> InFlight:
            return self._launch_probabilities(inputs, batch_size)

        def ranked(probabilities: torch.Tensor) -> list[tuple[Prediction, ...]]:
            return self.ranked(probabilities, top_k)

        for name, row, error in self._per_image(images, batch_size, workers, errors, launch, ranked):
            yield ImagePredictions(name, () if error is not None else row, error=error, kind=self.record.probability)

    def ranked(self, probabilities: torch.Tensor, top_k: int) -> list[tuple[Prediction, ...]]:
        """The `top_k` most probable classes of each row of (B, num_classes) `probabilities`, named."""
        values, indices = probabilities.topk(min(top_k, self.config.num_classes), dim=-1)
        return [tuple(Prediction(rank, index, self.label(index), prob)
                      for rank, (prob, index) in enumerate(zip(probs, classes, strict=True), start=1))
                for probs, classes in zip(values.tolist(), indices.tolist(), strict=True)]

    def predict(self, images: Sequence[ImageInput], top_k: int = 5, batch_size: int = 32,
                workers: int = 0, errors: OnError = "raise") -> list[ImagePredictions]:
        return list(self.iter_predict(images, top_k, batch_size, workers, errors))

    def iter_embed(self, images: Sequence[ImageInput], tokens: bool = False, normalize: bool = False,
                   batch_size: int = 32, workers: int = 0, errors: OnError = "raise") -> Iterator[ImageEmbedding]:
        """`embed`, one image at a time, with `iter_predict`'s batching, workers and errors; with `tokens`
        each result's `prefix` holds its prefix tokens."""
        def launch(inputs: torch.Tensor) -> InFlight:
            return self._launch_embeddings(inputs, tokens, normalize, batch_size)

        def rows(features: torch.Tensor) -> Iterable[tuple[np.ndarray, dict[str, np.ndarray]]]:
            if not tokens:
                return ((row, {}) for row in features.numpy())
            parts = token_parts(features, self.config)
            prefix = {name: t.numpy() for name, t in zip(PREFIX_ARRAYS, parts[:3], strict=True) if t is not None}
            return ((patches, {name: t[i] for name, t in prefix.items()})
                    for i, patches in enumerate(parts.patch_tokens.numpy()))

        for name, row, error in self._per_image(images, batch_size, workers, errors, launch, rows):
            yield ImageEmbedding(name, None, error) if row is None else ImageEmbedding(name, row[0], error, row[1])

    def embed(self, images: Sequence[ImageInput], tokens: bool = False, normalize: bool = False,
              batch_size: int = 32, workers: int = 0) -> np.ndarray:
        """One float32 vector per image, (len(images), D): the pooled features the head reads (see
        `batch_embeddings`), for any model, with or without a head. `tokens`: the patch tokens after the
        final norm instead (DINO's `x_norm_patchtokens`), (len(images), h * w, D), row by row over the
        `grid` (`embed_tokens` gives the prefix tokens too). `normalize`: unit length. Computed with the
        file's preprocessing at this predictor's size; an image that cannot be read raises its
        VitConvertError."""
        if tokens:
            return self.embed_tokens(images, normalize, batch_size, workers)["embeddings"]
        return _stacked([r.embedding for r in self.iter_embed(images, False, normalize, batch_size, workers)])

    def embed_tokens(self, images: Sequence[ImageInput], normalize: bool = False, batch_size: int = 32,
                     workers: int = 0) -> dict[str, np.ndarray]:
        """Every token after the final norm, split by kind, float32, as `vitpredict --embed --tokens`
        writes them: 'embeddings', the patch tokens (len(images), h * w, D); 'grid', (h, w); and those of
        PREFIX_ARRAYS the model has: 'class_tokens' (len(images), D), 'register_tokens' (len(images), R, D)
        (registers, DINOv3's storage tokens), 'dist_tokens' (len(images), D)."""
        results = list(self.iter_embed(images, True, normalize, batch_size, workers))
        arrays = {"embeddings": _stacked([r.embedding for r in results]), "grid": np.array(self.grid)}
        return arrays | {name: np.stack([r.prefix[name] for r in results]) for name in results[0].prefix}

    @property
    def grid(self) -> tuple[int, int]:
        """The patch grid (rows, columns) of this predictor's input size."""
        return self.config.grid_size

    def _per_image(self, images: Sequence[ImageInput], batch_size: int, workers: int, errors: OnError,
                   launch: Callable[[torch.Tensor], InFlight], rows: Callable[[torch.Tensor], Iterable[Any]],
                   ) -> Iterator[tuple[str, Any, str | None]]:
        """(name, output, None) for each image in input order, `launch` running the model on `batch_size`
        of them at once and `rows` splitting its landed outputs, or (name, None, message) for one that
        cannot be prepared (errors='report'). On a GPU the next batch is launched before a batch's
        outputs are read, so the GPU computes while the CPU formats and feeds it."""
        images = _as_list(images)
        if batch_size < 1 or workers < 0:
            raise VitConvertError(f"batch_size must be at least 1 and workers at least 0, "
                                  f"got {batch_size} and {workers}")
        if errors not in ("raise", "report"):
            raise VitConvertError(f"errors must be 'raise' or 'report', got {errors!r}")
        pin = self.device.type == "cuda"
        prepared = batches(images, self.preprocess, self.max_pixels, batch_size, workers, pin_memory=pin)
        launched: deque[tuple[int, Batch, InFlight | None]] = deque()
        for start, batch in zip(range(0, len(images), batch_size), prepared, strict=False):
            launched.append((start, batch, launch(batch.inputs) if batch.inputs is not None else None))
            if len(launched) > self._batches_ahead:
                yield from _batch_rows(images, batch_size, errors, rows, *launched.popleft())
        while launched:
            yield from _batch_rows(images, batch_size, errors, rows, *launched.popleft())

    @torch.inference_mode()
    def attention_rollout(self, images: Sequence[ImageInput]) -> torch.Tensor:
        """(len(images), grid_h, grid_w): the class token's rolled-out attention over the patches."""
        check_attention(self.config)
        batch = torch.stack([self.transform(image) for image in _as_list(images)])
        batch = batch.to(self.device, input_dtype(self.dtype))
        maps = self.model.attention_maps(batch)
        return rollout(maps, self.config.num_prefix_tokens, self.config.grid_size).cpu()

    def attention_map(self, image: ImageInput) -> Image.Image:
        """The rollout as a heat map over the (upright, RGB) image, at the image's own size."""
        check_attention(self.config)
        rgb = load_rgb(image, self.max_pixels)
        heat = self.attention_rollout([rgb])[0]
        size = (rgb.height, rgb.width)
        return overlay(rgb, heat.numpy(), crop_geometry(size, self.preprocess).box_in(size))


class InFlight(NamedTuple):
    """A batch's outputs on their way to the CPU: from a GPU copied without waiting, into pinned memory,
    with an event that marks the end of the copy (and of the computation before it)."""

    host: torch.Tensor
    done: torch.cuda.Event | None

    @classmethod
    def to_cpu(cls, outputs: torch.Tensor) -> InFlight:
        if outputs.device.type != "cuda":
            return cls(outputs.cpu(), None)
        host = outputs.to("cpu", non_blocking=True)  # into pinned memory: the copy is asynchronous
        done = torch.cuda.Event()
        done.record()
        return cls(host, done)

    def landed(self) -> torch.Tensor:
        """The outputs, once they are on the CPU."""
        if self.done is not None:
            self.done.synchronize()
        return self.host


def _batch_rows(images: list[ImageInput], batch_size: int, errors: OnError,
                rows: Callable[[torch.Tensor], Iterable[Any]], start: int, batch: Batch,
                outputs: InFlight | None) -> Iterator[tuple[str, Any, str | None]]:
    """`Predictor._per_image`'s rows for the batch of images from `start`."""
    landed = iter(rows(outputs.landed())) if outputs is not None else iter(())
    for offset, image in enumerate(images[start:start + batch_size]):
        name = _name(image, start + offset)
        if offset in batch.failed:
            if errors == "raise":
                raise VitConvertError(batch.failed[offset])
            yield name, None, batch.failed[offset]
        else:
            yield name, next(landed), None


def check_top_k_value(top_k: int) -> None:
    if top_k < 1:
        raise VitConvertError(f"top_k must be at least 1, got {top_k}")


def check_device(device: str | torch.device) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as e:
        raise VitConvertError(f"unknown device {str(device)!r} ({e})") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (dev.index or 0) >= count:
            raise VitConvertError(f"device {dev}: CUDA is not available here ({count} GPU(s) found)")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise VitConvertError(f"device {dev}: Apple MPS is not available here")
    return dev


def _stacked(rows: list[np.ndarray]) -> np.ndarray:
    if not rows:
        raise VitConvertError("embed: no images given")
    return np.stack(rows)


def _as_list(images: ImageInput | Sequence[ImageInput]) -> list[ImageInput]:
    if isinstance(images, (str, os.PathLike, Image.Image)):
        return [images]
    return list(images)


def _name(image: ImageInput, position: int) -> str:
    if isinstance(image, Image.Image):
        return getattr(image, "filename", "") or f"<image {position}>"
    return os.fspath(image)
