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
    "VitConvertError": "core.errors",
    "ViTConfig": "core.config",
    "preset": "core.config",
    "Preprocess": "formats.weights_file",
    "WeightsRecord": "formats.weights_file",
    "read_record": "formats.weights_file",
    "VisionTransformer": "model.vit",
    "load_model": "model.loading",
    "save_weights": "model.loading",
    "load_text_model": "text.loading",
    "resample_pos_embed": "model.posembed",
    "convert": "conversion.pipeline",
    "convert_jax": "conversion.jax",
    "convert_timm": "conversion.timm",
    "convert_torch": "conversion.tutorial_vits",
    "convert_hf": "conversion.hf",
    "verify": "fidelity.verify",
    "download": "catalog.download",
    "load_manifest": "catalog.manifest",
    "Predictor": "inference.predictor",
    "save_embeddings": "formats.embeddings",
    "export_onnx": "export.onnx",
    "export_hf": "export.hf",
    "finetune": "train.finetune",
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
