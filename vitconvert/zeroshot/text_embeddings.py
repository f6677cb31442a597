"""Text embeddings to an `.npz` of `texts` and `embeddings` (float32, one row per text), as images'
(formats/embeddings.py) are `paths` and `embeddings`: a retrieval script reads both with np.load alone."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import VitConvertError
from ..formats.paths import check_output
from ..formats.safetensors_file import atomic_output
from .classifier import two_tower_record
from .head import TEXT_BATCH


def read_texts(spec: str | os.PathLike) -> list[str]:
    """An existing file's lines (blank ones skipped), else `spec` as the one text."""
    path = Path(spec)
    if path.is_file():
        try:
            texts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as e:
            raise VitConvertError(f"--texts file {path}: cannot read ({getattr(e, 'strerror', None) or e})") from None
        if not texts:
            raise VitConvertError(f"--texts file {path} holds no text")
        return texts
    if not str(spec).strip():
        raise VitConvertError("--texts: the text is empty")
    return [str(spec)]


def embed_texts_to_npz(src: str | os.PathLike, texts: str | os.PathLike, out: str | os.PathLike, *,
                       normalize: bool = False, batch_size: int = TEXT_BATCH, force: bool = False) -> dict[str, Any]:
    """Embed `texts` (read_texts) with `src`'s text tower into `out`; returns a summary (texts, shape, the
    model's logit_scale, logit_bias and probability)."""
    check_output(out, force, suffix=".npz", what="output")
    items = read_texts(texts)
    record = two_tower_record(src)
    import torch  # the text tower from here on
    import torch.nn.functional as F

    from ..text.loading import text_model_from

    model = text_model_from(record, src)
    with torch.inference_mode():
        rows = [model.encode(items[i:i + batch_size]).float() for i in range(0, len(items), batch_size)]
        embeddings = torch.cat(rows)
        if normalize:
            embeddings = F.normalize(embeddings, dim=-1)
    with atomic_output(out, force=True) as tmp, open(tmp, "wb") as f:  # checked above; a file object: no '.npz' added
        np.savez(f, texts=np.array(items, dtype=str), embeddings=embeddings.numpy())
    return {"output": str(out), "texts": len(items), "shape": list(embeddings.shape), "dtype": "float32",
            "normalized": normalize, "logit_scale": float(model.logit_scale), "logit_bias": float(model.logit_bias),
            "probability": model.probability}
