"""sha256 of a source file, computed on a thread while the conversion reads the same file."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

from ..core.errors import VitConvertError

PLACEHOLDER = "0" * 64  # same length as a digest, so a header can be patched in place


class FileHash:
    def __init__(self, path: str | Path) -> None:
        self._digest = hashlib.sha256()
        self._error: OSError | None = None
        self._thread = threading.Thread(target=self._run, args=(Path(path),), daemon=True)
        self._thread.start()

    def _run(self, path: Path) -> None:
        try:
            with open(path, "rb") as f:
                while chunk := f.read(1 << 22):  # hashlib releases the GIL on large chunks
                    self._digest.update(chunk)
        except OSError as e:
            self._error = e

    def hexdigest(self) -> str:
        self._thread.join()
        if self._error:
            raise VitConvertError(f"cannot read {self._error.filename}: {self._error.strerror}")
        return self._digest.hexdigest()
