"""Embeddings on disk: an `.npz` of `paths` (the images, as strings) and `embeddings` (float32, one
row per path), and any further arrays named by the caller (the patch grid and prefix tokens of
`--tokens`), readable with `np.load` alone (no pickle), written atomically."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..core.errors import VitConvertError
from .safetensors_file import atomic_output


def save_embeddings(dst: str | os.PathLike, paths: Sequence[str | os.PathLike], embeddings: np.ndarray,
                    extra: Mapping[str, np.ndarray] | None = None) -> Path:
    """Write `paths`, `embeddings` and the `extra` arrays to `dst` (replacing it): a temporary file beside
    it, renamed at the end, so a failure leaves an existing `dst` as it was and never a half-written one."""
    embeddings = np.asarray(embeddings, dtype=np.float32)
    if embeddings.ndim < 2 or len(embeddings) != len(paths):
        raise VitConvertError(f"embeddings must be one row per path: {len(paths)} paths, "
                              f"embeddings of shape {embeddings.shape}")
    names = np.array([os.fspath(p) for p in paths], dtype=str)
    with atomic_output(dst, force=True) as tmp, open(tmp, "wb") as f:  # a file object: no '.npz' added
        np.savez(f, **(extra or {}), paths=names, embeddings=embeddings)
    return Path(dst)
