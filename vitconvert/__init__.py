"""vitconvert: published ViT weights (JAX .npz, timm) to a self-describing safetensors file and an
exact, fast PyTorch model.

Names are imported on first use, so `import vitconvert` stays cheap and the converters never
import torch or timm.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "VitConvertError": "errors",
    "ViTConfig": "config",
    "preset": "config",
    "Preprocess": "weights_file",
    "WeightsRecord": "weights_file",
    "read_record": "weights_file",
    "VisionTransformer": "model",
    "load_model": "loading",
    "resample_pos_embed": "posembed",
    "convert_jax": "jax2torch",
    "convert_timm": "timm2torch",
    "verify": "verify",
    "download": "fetch",
    "load_manifest": "manifest",
    "Predictor": "predict",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'vitconvert' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
