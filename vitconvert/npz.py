"""Reading `.npz` checkpoints lazily and safely with numpy alone.

Shapes come from each member's .npy header, so a layout can be recognised and a config inferred
before any weights are read; arrays are read one at a time, never with pickle.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from .dtypes import bfloat16_bits_to_float32
from .errors import VitConvertError

FLOAT_KINDS = {"f"}


class NpzReader:
    """Member name (without '.npy') -> shape; `read` returns float32."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise VitConvertError(f"{self.path} is a directory, not an .npz file")
        try:
            self._zip = zipfile.ZipFile(self.path)
        except FileNotFoundError:
            raise VitConvertError(f"{self.path}: no such file") from None
        except (zipfile.BadZipFile, OSError, ValueError) as e:
            raise VitConvertError(f"{self.path}: not a readable .npz (zip) file ({e})") from None
        self.shapes: dict[str, tuple[int, ...]] = {}
        self._dtypes: dict[str, np.dtype] = {}
        for info in self._zip.infolist():
            if info.is_dir():
                continue
            if not info.filename.endswith(".npy"):
                raise VitConvertError(f"{self.path}: member {info.filename!r} is not a .npy array")
            key = info.filename[: -len(".npy")]
            shape, dtype = self._header(info)
            self.shapes[key], self._dtypes[key] = shape, dtype
        if not self.shapes:
            raise VitConvertError(f"{self.path}: the archive holds no arrays")

    def _header(self, info: zipfile.ZipInfo) -> tuple[tuple[int, ...], np.dtype]:
        try:
            with self._zip.open(info) as f:
                version = np.lib.format.read_magic(f)
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                shape, _, dtype = read_header(f)
        except (ValueError, OSError, zipfile.BadZipFile, EOFError, SyntaxError) as e:
            raise VitConvertError(f"{self.path}: member {info.filename!r} is corrupt ({e})") from None
        if dtype.hasobject:
            raise VitConvertError(
                f"{self.path}: array {info.filename!r} holds Python objects; refusing to unpickle it")
        if not (dtype.kind in FLOAT_KINDS or is_bfloat16(dtype)):
            raise VitConvertError(
                f"{self.path}: array {info.filename!r} has dtype {dtype}, expected floating point weights")
        return tuple(int(n) for n in shape), dtype

    def read(self, key: str) -> np.ndarray:
        try:
            with self._zip.open(key + ".npy") as f:
                array = np.lib.format.read_array(f, allow_pickle=False)
        except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
            raise VitConvertError(f"{self.path}: cannot read array {key!r} ({e})") from None
        if is_bfloat16(array.dtype):
            return bfloat16_bits_to_float32(array.view("<u2"))
        return array.astype(np.float32, copy=False)

    def stored_dtype(self, key: str) -> str:
        return "bfloat16" if is_bfloat16(self._dtypes[key]) else str(self._dtypes[key])

    def close(self) -> None:
        self._zip.close()

    def __enter__(self) -> NpzReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def is_bfloat16(dtype: np.dtype) -> bool:
    """Files saved from JAX bfloat16 arrays hold raw 2-byte void data ('|V2')."""
    return dtype.kind == "V" and dtype.itemsize == 2 and dtype.names is None
