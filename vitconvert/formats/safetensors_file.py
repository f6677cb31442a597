"""Writing safetensors one tensor at a time, and replacing the output file atomically.

The header needs every shape before the first byte of data, so a writer is given `TensorSpec`s
(name, shape, dtype, and a function that makes the array) and calls each function only when its
turn comes: at most one converted tensor is in memory at once.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .dtypes import STORAGE, to_storage
from ..core.errors import VitConvertError
from .paths import check_input, check_output

ALIGN = 8


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    make: Callable[[], np.ndarray]  # float array of `shape`, converted to the file's dtype on write


def header_bytes(specs: Sequence[TensorSpec], dtype: str, metadata: dict[str, str]) -> bytes:
    itemsize = STORAGE[dtype][1].itemsize
    header: dict[str, object] = {"__metadata__": metadata}
    offset = 0
    for spec in specs:
        size = int(np.prod(spec.shape, dtype=np.int64)) * itemsize
        header[spec.name] = {"dtype": STORAGE[dtype][0], "shape": list(spec.shape),
                             "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % ALIGN)  # the format allows space padding; aligned data maps cleanly
    return len(raw).to_bytes(8, "little") + raw


@contextlib.contextmanager
def atomic_output(dst: str | os.PathLike, force: bool = False) -> Iterator[Path]:
    """A temporary path beside `dst`, renamed onto it only if the block finishes.

    On any failure the temporary file is removed and an existing `dst` is untouched. The file gets
    the permissions any new file gets (0o666 less the umask), not tempfile's private 0o600.
    """
    dst = check_output(dst, force)
    try:
        tmp = _create_beside(dst)
    except OSError as e:
        raise VitConvertError(f"cannot write in {dst.parent}: {e.strerror or e}") from None
    try:
        yield tmp
        os.replace(tmp, dst)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _create_beside(dst: Path) -> Path:
    """A new, empty, uniquely named hidden file in dst's directory. Created with mode 0o666 so that
    the kernel applies the umask, as it does for any other file a program writes (mkstemp would
    force 0o600, and reading the umask to correct that afterwards is not thread-safe)."""
    for _ in range(100):
        tmp = dst.with_name(f".{dst.name}.{secrets.token_hex(4)}.part")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(errno.EEXIST, "no unused temporary file name", str(dst.parent))


def write_safetensors(dst: str | os.PathLike, specs: Sequence[TensorSpec], dtype: str,
                      metadata: dict[str, str], force: bool = False,
                      progress: Callable[[int], None] | None = None,
                      final_metadata: Callable[[], dict[str, str]] | None = None) -> None:
    """Stream `specs` into `dst` atomically; `progress` is told the bytes written after each tensor.

    `final_metadata`, if given, is called after the data is written and replaces `metadata` in the
    header; it must serialise to the same length (e.g. a hash filled into a placeholder).
    """
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise VitConvertError(f"duplicate tensor names: {sorted({n for n in names if names.count(n) > 1})}")
    with atomic_output(dst, force) as tmp, open(tmp, "wb") as f:
        header = header_bytes(specs, dtype, metadata)
        f.write(header)
        for spec in specs:
            array = spec.make()
            if tuple(array.shape) != tuple(spec.shape):
                raise VitConvertError(
                    f"tensor {spec.name}: planned shape {spec.shape}, produced {tuple(array.shape)}")
            data = to_storage(array, dtype)
            f.write(data.reshape(-1).view(np.uint8))  # bytes without a copy; also for empty tensors
            if progress:
                progress(data.nbytes)
            del array, data
        if final_metadata:
            final = header_bytes(specs, dtype, final_metadata())
            if len(final) != len(header):
                raise ValueError("final metadata must keep the header's length")
            f.seek(0)
            f.write(final)
        f.flush()
        os.fsync(f.fileno())


MAX_HEADER = 100 * 2**20


def read_header(path: str | os.PathLike) -> dict:
    """The JSON header of a safetensors file, checked against the file's size.

    Every entry is checked for the types the format prescribes, so callers may index it freely.
    """
    path = check_input(path, "a safetensors file")
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            prefix = f.read(8)
            n = int.from_bytes(prefix, "little") if len(prefix) == 8 else -1
            if n < 2 or n > min(MAX_HEADER, size - 8):
                raise VitConvertError(f"{path}: not a safetensors file (bad or truncated header)")
            raw = f.read(n)
    except OSError as e:
        raise VitConvertError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        # Only standard JSON: Python would take NaN/Infinity; RecursionError is a deeply nested header.
        header = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise VitConvertError(f"{path}: not a safetensors file (header is not JSON)") from None
    if not isinstance(header, dict):
        raise VitConvertError(f"{path}: not a safetensors file (header is not a JSON object)")
    meta = header.get("__metadata__", {})
    if not (isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())):
        raise VitConvertError(f"{path}: malformed safetensors header (__metadata__ must map strings to strings)")
    end = 0
    for name, info in header.items():
        if name != "__metadata__":
            end = max(end, _entry_end(info, f"{path}: tensor {name!r} has a malformed header entry"))
    if 8 + n + end > size:
        raise VitConvertError(f"{path}: truncated ({size} bytes, header promises {8 + n + end})")
    return header


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _entry_end(info: object, message: str) -> int:
    """Where a tensor's data ends, once its entry is known to be {dtype: str, shape: [n >= 0],
    data_offsets: [begin <= end]}."""
    def is_count(n: object) -> bool:
        return isinstance(n, int) and not isinstance(n, bool) and n >= 0

    if not (isinstance(info, dict) and isinstance(info.get("dtype"), str)
            and isinstance(shape := info.get("shape"), list) and all(is_count(n) for n in shape)
            and isinstance(offsets := info.get("data_offsets"), list) and len(offsets) == 2
            and all(is_count(n) for n in offsets) and offsets[0] <= offsets[1]):
        raise VitConvertError(message)
    return offsets[1]
