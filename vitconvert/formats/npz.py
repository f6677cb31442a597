"""Reading `.npz` checkpoints lazily and safely with numpy alone.

Shapes come from each member's .npy header, so a layout can be recognised and a config inferred
before any weights are read; arrays are read one at a time, never with pickle. Stored (uncompressed)
members, as `np.savez` writes them, are read straight into their array with one read call: zipfile
and numpy would take the bytes in 256 KiB pieces, copy them twice and run Python for each piece.
Their CRC-32 is checked over those same bytes on a second thread (zlib releases the GIL), while the
caller transforms and writes the array, so it takes the second core rather than the critical path.
`verify()` waits for the last check; a caller commits nothing before it returns.
"""

from __future__ import annotations

import os
import struct
import tokenize
import zipfile
import zlib
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from ..core.errors import VitConvertError
from .dtypes import bfloat16_bits_to_float32
from .paths import check_input

FLOAT_KINDS = {"f"}
# What a truncated or corrupt zip or .npy raises from zipfile, zlib and numpy: bad CRCs and
# structures, unsupported compression or encryption flags (NotImplementedError, RuntimeError),
# undecodable names (UnicodeDecodeError is a ValueError), unparsable .npy headers (numpy tokenizes
# and literal_evals them: SyntaxError, tokenize.TokenError, TypeError).
CORRUPT = (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, SyntaxError,
           tokenize.TokenError, TypeError, NotImplementedError, RuntimeError, zlib.error, struct.error,
           OverflowError)


class NpzReader:
    """Member name (without '.npy') -> shape; `read` returns float32."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = check_input(path, "an .npz file")
        try:
            self._zip = zipfile.ZipFile(self.path)
        except CORRUPT as e:
            raise VitConvertError(f"{self.path}: {_unreadable(self.path)} ({e})") from None
        self._raw = open(self.path, "rb", buffering=0)  # noqa: SIM115 (closed in close())
        self._crc_thread = ThreadPoolExecutor(1, thread_name_prefix="npz-crc")
        self._crc_pending: Future | None = None
        try:
            self._members()
        except BaseException:
            self.close()
            raise

    def _members(self) -> None:
        self.shapes: dict[str, tuple[int, ...]] = {}
        self._dtypes: dict[str, np.dtype] = {}
        # stored members: (the member's first byte in the file, its .npy header's size, Fortran order)
        self._stored: dict[str, tuple[int, int, bool]] = {}
        for info in self._zip.infolist():
            if info.is_dir():
                continue
            if not info.filename.endswith(".npy"):
                raise VitConvertError(f"{self.path}: member {info.filename!r} is not a .npy array")
            key = info.filename[: -len(".npy")]
            if key in self.shapes:  # which of the two would be read depends on the zip reader
                raise VitConvertError(f"{self.path}: array {key!r} is stored twice")
            shape, dtype = self._header(info, key)
            self.shapes[key], self._dtypes[key] = shape, dtype
        if not self.shapes:
            raise VitConvertError(f"{self.path}: the archive holds no arrays")

    def _header(self, info: zipfile.ZipInfo, key: str) -> tuple[tuple[int, ...], np.dtype]:
        try:
            with self._zip.open(info) as f:  # also checks the member's local zip header
                version = np.lib.format.read_magic(f)
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                shape, fortran, dtype = read_header(f)
                header_size = f.tell()
            if info.compress_type == zipfile.ZIP_STORED and not info.flag_bits & 1:  # 1: encrypted
                local = os.pread(self._raw.fileno(), zipfile.sizeFileHeader, info.header_offset)
                fields = struct.unpack(zipfile.structFileHeader, local)
                start = (info.header_offset + zipfile.sizeFileHeader + fields[zipfile._FH_FILENAME_LENGTH]
                         + fields[zipfile._FH_EXTRA_FIELD_LENGTH])
                self._stored[key] = (start, header_size, bool(fortran))
        except CORRUPT as e:
            raise VitConvertError(f"{self.path}: member {info.filename!r} is corrupt ({e})") from None
        if dtype.hasobject:
            raise VitConvertError(
                f"{self.path}: array {info.filename!r} holds Python objects; refusing to unpickle it")
        if not (dtype.kind in FLOAT_KINDS or is_bfloat16(dtype)):
            raise VitConvertError(
                f"{self.path}: array {info.filename!r} has dtype {dtype}, expected floating point weights")
        shape = tuple(int(n) for n in shape)
        if 0 in shape:  # no weight of a ViT is empty, and an empty array costs no bytes to declare
            raise VitConvertError(f"{self.path}: array {info.filename!r} is empty (shape {shape})")
        # numpy allocates what the header declares before reading: a header that promises more
        # than the member holds must not become a huge allocation (or a MemoryError).
        nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
        if header_size + nbytes > info.file_size:
            raise VitConvertError(f"{self.path}: member {info.filename!r} is truncated or corrupt "
                                  f"(its header declares {shape} {dtype}, {nbytes} bytes; it holds "
                                  f"{info.file_size - header_size})")
        return shape, dtype

    def read(self, key: str) -> np.ndarray:
        try:
            if key in self._stored:
                array = self._read_stored(key)
            else:
                with self._zip.open(key + ".npy") as f:
                    array = np.lib.format.read_array(f, allow_pickle=False)
        except CORRUPT as e:
            raise VitConvertError(f"{self.path}: cannot read array {key!r} ({e})") from None
        except MemoryError:
            raise VitConvertError(f"{self.path}: not enough memory to read array {key!r}") from None
        if array.shape != self.shapes[key] or array.dtype != self._dtypes[key]:
            # the member changed after its header was read, or its two headers differ
            raise VitConvertError(f"{self.path}: array {key!r} does not match its header")
        if is_bfloat16(array.dtype):
            return bfloat16_bits_to_float32(array.view("<u2"))
        return array.astype(np.float32, copy=False)

    def _read_stored(self, key: str) -> np.ndarray:
        """A stored member's array: its bytes read into it in one call, then the member's CRC-32 checked."""
        start, header_size, fortran = self._stored[key]
        shape, dtype = self.shapes[key], self._dtypes[key]
        array = np.empty(shape[::-1] if fortran else shape, dtype)
        data = array.reshape(-1).view(np.uint8)
        header = os.pread(self._raw.fileno(), header_size, start)
        self._raw.seek(start + header_size)
        done = 0
        while done < data.size and (n := self._raw.readinto(data[done:])):
            done += n
        if done < data.size:
            raise zipfile.BadZipFile("the member ends before its array")
        array.flags.writeable = False  # its CRC-32 is checked over it while the caller uses it
        self._check_crc_later(key + ".npy", header, data)
        return array.T if fortran else array

    def _check_crc_later(self, member: str, header: bytes, data: np.ndarray) -> None:
        """Queue the member's CRC-32 check, and wait for the one before it: a corrupt member fails
        the read after it (or `verify`), and at most two arrays are held for checking."""
        previous = self._crc_pending
        self._crc_pending = self._crc_thread.submit(self._check_crc, member, header, data)
        if previous is not None:
            previous.result()

    def _check_crc(self, member: str, header: bytes, data: np.ndarray) -> None:
        if zlib.crc32(data, zlib.crc32(header)) != self._zip.getinfo(member).CRC:
            raise VitConvertError(f"{self.path}: cannot read array {member[:-len('.npy')]!r} "
                                  f"(Bad CRC-32 for file {member!r})")

    def verify(self) -> None:
        """Wait for the CRC-32 checks of the arrays read so far; raises for a corrupt one."""
        pending, self._crc_pending = self._crc_pending, None
        if pending is not None:
            pending.result()

    def stored_dtype(self, key: str) -> str:
        return "bfloat16" if is_bfloat16(self._dtypes[key]) else str(self._dtypes[key])

    def close(self) -> None:
        self._crc_thread.shutdown(wait=True, cancel_futures=True)
        self._zip.close()
        self._raw.close()

    def __enter__(self) -> NpzReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# Every zip archive begins with a local file header; its end, the central directory, lists the members.
ZIP_MAGIC = b"PK\x03\x04"


def _unreadable(path: os.PathLike) -> str:
    """Why a file zipfile cannot open is no .npz: cut short (it begins as one, but the central directory at
    its end is missing, as after an interrupted download) or something else."""
    with open(path, "rb") as f:
        if f.read(4) == ZIP_MAGIC:
            return ("truncated or damaged: it begins as a zip archive (an .npz), but the list of its arrays at the "
                    "end is missing; download or copy it again")
    return "not a readable .npz (zip) file"


def is_bfloat16(dtype: np.dtype) -> bool:
    """Files saved from JAX bfloat16 arrays hold raw 2-byte void data ('|V2')."""
    return dtype.kind == "V" and dtype.itemsize == 2 and dtype.names is None
