"""Storage dtypes with numpy alone: numpy has no bfloat16, so it travels as raw uint16 bits."""

from __future__ import annotations

import numpy as np

from ..core.errors import VitConvertError

# Our dtype names -> safetensors header names and the numpy array that holds the bytes.
STORAGE = {
    "float32": ("F32", np.dtype("<f4")),
    "float16": ("F16", np.dtype("<f2")),
    "bfloat16": ("BF16", np.dtype("<u2")),
}


def check_dtype(name: str) -> str:
    if name not in STORAGE:
        raise VitConvertError(f"dtype must be one of {', '.join(STORAGE)}, got {name!r}")
    return name


def bfloat16_bits_to_float32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 is the top half of a float32, so widening is exact."""
    return (bits.astype("<u4") << 16).view("<f4")


def float32_to_bfloat16_bits(x: np.ndarray) -> np.ndarray:
    """Round to nearest even, as torch's .to(torch.bfloat16) does; NaN stays NaN."""
    bits = np.ascontiguousarray(x, dtype="<f4").view("<u4")
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype("<u2")
    nan = np.isnan(x)
    if nan.any():
        rounded[nan] = 0x7FC0
    return rounded


def to_storage(x: np.ndarray, dtype: str) -> np.ndarray:
    """A float array as the bytes of `dtype` (bfloat16 as its uint16 bits)."""
    if dtype == "bfloat16":
        return float32_to_bfloat16_bits(x)
    return np.ascontiguousarray(x, dtype=STORAGE[dtype][1])
