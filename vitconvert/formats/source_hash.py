"""sha256 of a source file, computed on a thread while the conversion reads the same file."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

from ..core.errors import VitConvertError

PLACEHOLDER = "0" * 64  # same length as a digest, so a header can be patched in place
CHUNK = 1 << 20


class FileHash:
    def __init__(self, path: str | Path) -> None:
        self._digest = hashlib.sha256()
        self._error: OSError | None = None
        self._thread = threading.Thread(target=self._run, args=(Path(path),), daemon=True)
        self._thread.start()

    def _run(self, path: Path) -> None:
        try:
            # One buffer, filled again and again: a fresh 4 MiB bytes object per read cost a page fault per 4 KiB.
            # hashlib and readinto release the GIL.
            buffer = memoryview(bytearray(CHUNK))
            with open(path, "rb", buffering=0) as f:
                while n := f.readinto(buffer):
                    self._digest.update(buffer[:n])
        except OSError as e:
            self._error = e

    def hexdigest(self) -> str:
        self._thread.join()
        if self._error:
            raise VitConvertError(f"cannot read {self._error.filename}: {self._error.strerror}")
        return self._digest.hexdigest()
