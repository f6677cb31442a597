"""Images to predictions on Ray Data: decoding and preprocessing as CPU tasks, the model in an actor pool.

The stages are the serial path's own functions (`load_rgb`, `to_tensor`, `Predictor.batch_probabilities`),
so a row here equals `vitpredict --json` for that image up to the rounding of a differently composed
batch. A file that cannot be read or decoded becomes a row with an `error` and empty results instead of
failing the job.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..core.errors import VitConvertError
from ..formats.safetensors_file import atomic_directory
from ..formats.weights_file import Preprocess
from ..inference.images import MAX_PIXELS, load_rgb
from ..inference.plan import PredictionPlan, plan_prediction

if TYPE_CHECKING:
    import ray.data

RESULT_COLUMNS = ("path", "index", "label", "probability", "error")


def predict_dataset(images: ray.data.Dataset | Sequence[str | os.PathLike], weights: str | os.PathLike | None = None,
                    *, model: str | None = None, top_k: int = 5, embed: bool = False,
                    img_size: int | str | tuple[int, int] | None = None, batch_size: int = 32,
                    replicas: int = 1, cpus_per_replica: float = 1, num_gpus: float = 0, dtype: str = "float32",
                    max_pixels: int = MAX_PIXELS) -> ray.data.Dataset:
    """Predictions for every image, as a Ray Dataset (lazy: nothing runs until it is consumed or written).

    images: paths or URIs (read with `ray.data.read_binary_files`), or a Dataset with a `path` column and
    either `bytes` (the encoded file, as `read_binary_files(..., include_paths=True)` gives) or `image`
    (decoded HxWxC uint8, as `ray.data.read_images(..., include_paths=True)` gives).
    Returns rows with `path`, `index`, `label`, `probability` (lists of `top_k`, best first), `error`
    ('' when the image was classified, else why it could not be: then the lists are empty) and, with
    `embed`, `embedding` (the pooled features, float32). A model without classes to rank (a backbone,
    a zero head) needs `embed`; its top-k lists stay empty.
    replicas: model copies in the actor pool; cpus_per_replica: the CPUs Ray reserves for each (and the
    torch threads it runs, at least one); num_gpus: GPUs per replica (then the model runs on cuda). The
    replicas must leave a CPU for the tasks that read and decode, or those would never be scheduled.
    """
    import ray.data

    # The record read once, on the driver: a bad file or size is refused before any worker starts, and the
    # replicas load from the plan.
    plan = plan_prediction(weights, model=model, img_size=img_size)
    if top_k < 1 or batch_size < 1 or replicas < 1:
        raise VitConvertError(f"top_k, batch_size and replicas must be at least 1, got {top_k}, {batch_size}, "
                              f"{replicas}")
    try:
        plan.check_classes()
        classify = True
    except VitConvertError:
        if not embed:
            raise
        classify = False
    cpus = ray.cluster_resources().get("CPU", 0)
    if replicas * cpus_per_replica + 1 > cpus:
        raise VitConvertError(
            f"{replicas} replica(s) of {cpus_per_replica:g} CPU each leave no CPU for reading and decoding on this "
            f"Ray ({cpus:g} CPUs): use fewer replicas or fewer CPUs each (--cpus-per-replica)")
    if not isinstance(images, ray.data.Dataset):
        paths = [os.fspath(p) for p in images]
        if not paths:
            raise VitConvertError("no images given")
        images = ray.data.read_binary_files(paths, include_paths=True)
    preprocess = plan.record.preprocess.at_size(plan.img_size)
    pixels = images.map_batches(_prepare, fn_kwargs={"preprocess": preprocess, "max_pixels": max_pixels},
                                batch_format="numpy", batch_size=batch_size)
    return pixels.map_batches(
        _Replica, fn_constructor_kwargs={"plan": plan, "top_k": top_k if classify else 0,
                                         "embed": embed, "threads": max(1, round(cpus_per_replica)),
                                         "device": "cuda" if num_gpus else "cpu", "dtype": dtype},
        batch_format="numpy", batch_size=batch_size, compute=ray.data.ActorPoolStrategy(size=replicas),
        num_cpus=cpus_per_replica, num_gpus=num_gpus or None)


def _prepare(batch: dict[str, np.ndarray], preprocess: Preprocess, max_pixels: int) -> dict[str, np.ndarray]:
    """Decoded, preprocessed pixels (B, 3, H, W) float32 per row; a failed row gets zeros and its error."""
    from ..inference.transform import to_tensor

    paths = [str(p) for p in batch["path"]]
    sources = batch["bytes"] if "bytes" in batch else batch["image"]
    height, width = preprocess.size
    pixels = np.zeros((len(paths), 3, height, width), np.float32)
    errors = [""] * len(paths)  # a string in every row: Arrow keeps one column type across blocks
    for i, (name, source) in enumerate(zip(paths, sources, strict=False)):
        try:
            image = _as_image(source, name, max_pixels)
            pixels[i] = to_tensor(image, preprocess).numpy()
        except VitConvertError as e:
            errors[i] = str(e)
    return {"path": np.array(paths), "pixels": pixels, "error": np.array(errors)}


def _as_image(source: Any, name: str, max_pixels: int):
    from PIL import Image

    if isinstance(source, np.ndarray) and source.dtype == np.uint8 and source.ndim in (2, 3):
        return load_rgb(Image.fromarray(source))
    return load_rgb(bytes(source), max_pixels, name=name)


class _Replica:
    """One model per actor, loaded once; runs the batches Ray hands it."""

    def __init__(self, plan: PredictionPlan, top_k: int, embed: bool, threads: int, device: str, dtype: str) -> None:
        import torch

        from ..inference.predictor import Predictor

        torch.set_num_threads(threads)  # as many as Ray reserved: replicas must not fight over cores
        self.predictor = Predictor(plan, device=device, dtype=dtype)
        self.top_k, self.embed = top_k, embed

    def __call__(self, batch: dict[str, np.ndarray]):
        import pyarrow as pa
        import torch

        ok = np.array([not e for e in batch["error"]], dtype=bool)
        n, k = len(ok), min(self.top_k, self.predictor.config.num_classes)  # top_k 0: embeddings only
        index: list[list[int]] = [[] for _ in range(n)]
        probability: list[list[float]] = [[] for _ in range(n)]
        embedding: list[np.ndarray | list] = [[] for _ in range(n)]
        if ok.any():
            inputs = torch.from_numpy(np.ascontiguousarray(batch["pixels"][ok]))
            if k:
                values, indices = self.predictor.batch_probabilities(inputs).topk(k, dim=-1)
            features = self.predictor.batch_embeddings(inputs).numpy() if self.embed else None
            for j, i in enumerate(np.flatnonzero(ok)):
                if k:
                    index[i], probability[i] = indices[j].tolist(), values[j].tolist()
                if features is not None:
                    embedding[i] = features[j]
        # Explicit Arrow types: every block has the same schema, whether or not some of its rows failed.
        columns = {
            "path": pa.array([str(p) for p in batch["path"]], pa.string()),
            "index": pa.array(index, pa.list_(pa.int64())),
            "label": pa.array([[self.predictor.label(c) for c in row] for row in index], pa.list_(pa.string())),
            "probability": pa.array(probability, pa.list_(pa.float32())),
            "error": pa.array([str(e) for e in batch["error"]], pa.string()),
        }
        if self.embed:
            columns["embedding"] = pa.array(embedding, pa.list_(pa.float32()))
        return pa.table(columns)


def write_predictions(dataset: ray.data.Dataset, out: str | os.PathLike, force: bool = False) -> dict[str, int]:
    """Write `dataset` as Parquet to the directory `out` (one file per block, read back as one table by
    pandas or pyarrow), atomically: into a new directory beside it, renamed when complete. With
    `force`, an existing `out` is replaced only if it holds nothing but Parquet files (an earlier
    run's): a mistyped path must not delete somebody's folder.
    Returns {'images': rows, 'errors': rows with an error, 'failed': [{'image', 'error'} of each]}."""
    import pyarrow.parquet as pq

    out = Path(out)
    if out.exists() and not force:
        raise VitConvertError(f"output {out} exists; pass --force (force=True) to replace it")
    with atomic_directory(out, force, replaceable=lambda name: name.endswith(".parquet")) as tmp:
        dataset.write_parquet(str(tmp))
        table = pq.read_table(tmp, columns=["path", "error"]).to_pydict()
    failed = sorted(({"image": p, "error": e} for p, e in zip(table["path"], table["error"], strict=False) if e),
                    key=lambda f: f["image"])  # the blocks come back in no particular order
    return {"images": len(table["path"]), "errors": len(failed), "failed": failed}


@contextlib.contextmanager
def quiet_ray(quiet: bool = True) -> Iterator[None]:
    """Ray and Ray Data without their INFO and WARNING lines and progress bars on this process's stderr
    (`quiet`); the loggers' levels and Ray Data's setting are restored after. (Ray's C++ core logs on its
    own: RAY_BACKEND_LOG_LEVEL would quiet it, but announces itself in a line of its own.)"""
    if not quiet:
        yield
        return
    import ray.data

    loggers = [logging.getLogger(name) for name in ("ray", "ray.data", "ray.train", "ray.tune")]
    levels = [logger.level for logger in loggers]
    context = ray.data.DataContext.get_current()
    bars = context.enable_progress_bars
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    context.enable_progress_bars = False
    try:
        yield
    finally:
        context.enable_progress_bars = bars
        for logger, level in zip(loggers, levels, strict=False):
            logger.setLevel(level)
