"""Writing safetensors one tensor at a time, and replacing the output file atomically.

The header needs every shape before the first byte of data, so a writer is given `TensorSpec`s
(name, shape, dtype, and a function that makes the array) and calls each function only when its
turn comes: at most one converted tensor is in memory at once. The bytes reach the disk through
`direct_writer` (O_DIRECT where the file system allows it).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.errors import VitConvertError
from .direct_writer import open_writer
from .dtypes import STORAGE, bfloat16_bits_to_float32, to_storage
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


@contextlib.contextmanager
def atomic_directory(dst: str | os.PathLike, force: bool = False,
                     replaceable: Callable[[str], bool] = lambda name: False) -> Iterator[Path]:
    """A new directory beside `dst` to write into, renamed onto `dst` only if the block finishes.

    `dst` may exist empty; holding files, it is replaced only with `force`, and only if it holds
    nothing but regular files whose names `replaceable` accepts (what an earlier run wrote): `--force` with a
    mistyped path must not delete somebody's folder. On any failure the new directory is removed
    and an existing `dst` is untouched.
    """
    dst = Path(dst)
    if dst.exists() and not dst.is_dir():
        raise VitConvertError(f"output {dst} exists and is not a directory")
    if not dst.parent.is_dir():
        raise VitConvertError(f"output directory {dst.parent} does not exist")
    present = sorted(dst.iterdir()) if dst.is_dir() else []
    # Files this writer did not write first: --force would not replace them either, so say what will work.
    foreign = [p.name for p in present if not replaceable(p.name) or p.is_symlink() or not p.is_file()]
    if foreign:
        raise VitConvertError(f"output directory {dst} holds other files than the ones written here "
                              f"({', '.join(foreign[:5])}{', ...' if len(foreign) > 5 else ''}), which even "
                              "--force (force=True) does not replace; give a new or an empty directory")
    if present and not force:
        raise VitConvertError(f"output directory {dst} holds an earlier run's output; pass --force (force=True) "
                              "to replace it")
    token = secrets.token_hex(4)
    tmp = dst.with_name(f".{dst.name}.{token}.part")
    try:
        tmp.mkdir()
    except OSError as e:
        raise VitConvertError(f"cannot write in {dst.parent}: {e.strerror or e}") from None
    try:
        yield tmp
        if dst.exists():  # rename(2) cannot replace a directory that holds files: move it aside first
            old = dst.with_name(f".{dst.name}.{token}.old")
            os.rename(dst, old)
            os.rename(tmp, dst)
            shutil.rmtree(old)
        else:
            os.rename(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _create_beside(dst: Path) -> Path:
    """A new, empty, uniquely named hidden file in dst's directory. Created with mode 0o666 so that
    the kernel applies the umask, as it does for any other file a program writes (mkstemp would
    force 0o600, and reading the umask to correct that afterwards is not thread-safe)."""
    for _ in range(100):
        # It keeps dst's suffix, so that whatever checks a name (a converter wants .safetensors) takes it too.
        tmp = dst.with_name(f".{dst.name}.{secrets.token_hex(4)}.part{dst.suffix}")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(errno.EEXIST, "no unused temporary file name", str(dst.parent))


def write_safetensors(dst: str | os.PathLike, specs: Sequence[TensorSpec], dtype: str,
                      metadata: dict[str, str], force: bool = False,
                      progress: Callable[[int], None] | None = None,
                      final_metadata: Callable[[], dict[str, str]] | None = None,
                      before_commit: Callable[[], None] | None = None) -> None:
    """Stream `specs` into `dst` atomically; `progress` is told the bytes written after each tensor.

    `before_commit`, if given, is called after the last tensor is written; if it raises, nothing is
    written (e.g. the source's checksums, checked alongside the conversion).
    `final_metadata`, if given, is called after the data is written and replaces `metadata` in the
    header; it must serialise to the same length (e.g. a hash filled into a placeholder).
    """
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise VitConvertError(f"duplicate tensor names: {sorted({n for n in names if names.count(n) > 1})}")
    header = header_bytes(specs, dtype, metadata)
    with atomic_output(dst, force) as tmp, contextlib.closing(open_writer(tmp, keep=len(header))) as out:
        out.write(np.frombuffer(header, np.uint8))
        for spec in specs:
            array = spec.make()
            if tuple(array.shape) != tuple(spec.shape):
                raise VitConvertError(
                    f"tensor {spec.name}: planned shape {spec.shape}, produced {tuple(array.shape)}")
            data = to_storage(array, dtype)
            out.write(data.reshape(-1).view(np.uint8))  # bytes without a copy; also for empty tensors
            if progress:
                progress(data.nbytes)
            del array, data
        if before_commit:
            before_commit()
        if final_metadata:
            final = header_bytes(specs, dtype, final_metadata())
            if len(final) != len(header):
                raise ValueError("final metadata must keep the header's length")
            out.rewrite_start(final)
        out.finish()


@dataclass(frozen=True)
class Header:
    """A safetensors file's header: its string metadata and each tensor's dtype name and shape."""

    metadata: dict[str, str]
    tensors: dict[str, tuple[str, tuple[int, ...]]]


def read_header(path: str | os.PathLike) -> Header:
    """The header of a safetensors file, read and validated by the safetensors library itself
    (offsets, sizes, alignment, metadata types), without reading the tensors or importing torch."""
    from safetensors import SafetensorError, safe_open

    path = check_input(path, "a safetensors file")
    try:
        with safe_open(path, framework="numpy") as f:
            metadata = f.metadata() or {}
            tensors = {}
            for name in f.keys():  # noqa: SIM118 (safe_open has keys() and no __iter__)
                view = f.get_slice(name)
                tensors[name] = (view.get_dtype(), tuple(view.get_shape()))
    except SafetensorError as e:
        raise VitConvertError(f"{path}: not a safetensors file ({e})") from None
    except OSError as e:
        raise VitConvertError(f"cannot read {path}: {e.strerror or e}") from None
    return Header(metadata, tensors)


# safetensors dtype names of floating point tensors -> the numpy dtype of their bytes (bfloat16: its bits).
FLOAT_STORAGE = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "F64": np.dtype("<f8"), "BF16": np.dtype("<u2")}


class SafetensorsReader:
    """A safetensors file's tensors, read one at a time as float32 numpy arrays: the converters' reader
    (no torch; numpy has no bfloat16, so BF16 tensors are read as their bits and widened, exactly).

    `shapes` maps each name to its shape, `dtypes` to its safetensors dtype name ('F32', 'BF16', ...).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = check_input(path, "a safetensors file")
        header = read_header(self.path)  # the safetensors library validates offsets, sizes and types
        self.metadata = header.metadata
        self.shapes = {name: shape for name, (_, shape) in header.tensors.items()}
        self.dtypes = {name: dtype for name, (dtype, _) in header.tensors.items()}
        with open(self.path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            entries = json.loads(f.read(size))
        self._offsets = {name: 8 + size + entries[name]["data_offsets"][0] for name in self.shapes}

    def check_weights(self, keys: Iterable[str], where: str) -> None:
        """Floating point tensors only, among `keys`: an integer one (an index buffer an older save kept beside
        the weights, which a converter leaves out) would read as nonsense."""
        for name in keys:
            if self.dtypes[name] not in FLOAT_STORAGE:
                raise VitConvertError(f"{where}: tensor {name} has dtype {self.dtypes[name]}; expected floating point "
                                      "weights")

    def read(self, key: str) -> np.ndarray:
        self.check_weights([key], str(self.path))
        stored = FLOAT_STORAGE[self.dtypes[key]]
        count = int(np.prod(self.shapes[key], dtype=np.int64))
        try:
            array = np.fromfile(self.path, stored, count, offset=self._offsets[key]).reshape(self.shapes[key])
        except (OSError, ValueError) as e:  # the file changed since its header was read
            raise VitConvertError(f"{self.path}: cannot read tensor {key} ({e})") from None
        if self.dtypes[key] == "BF16":
            return bfloat16_bits_to_float32(array)
        return array.astype(np.float32, copy=False)


def read_tensors(path: str | os.PathLike, framework: str = "pt") -> dict:
    """Every tensor of a safetensors file, as `framework` arrays ('pt' gives torch tensors; only then
    is torch imported, by the safetensors library)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework=framework) as f:
            return {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 (no __iter__)
    except (SafetensorError, OSError) as e:
        raise VitConvertError(f"{path}: cannot read tensors ({e})") from None
