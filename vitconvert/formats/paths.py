"""Checks on the files a command is given, before any parser sees them.

Each says plainly what is wrong (missing, a directory, unreadable, empty, not a regular file)
instead of letting a parser fail on it with its own, less helpful, message.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ..core.errors import VitConvertError


def check_input(path: str | os.PathLike, kind: str) -> Path:
    """`path` as a readable, non-empty regular file; `kind` names what it should be ('an .npz file')."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise VitConvertError(f"{path}: no such file") from None
    except OSError as e:
        raise VitConvertError(f"cannot read {path}: {e.strerror or e}") from None
    if stat.S_ISDIR(mode):
        raise VitConvertError(f"{path} is a directory, not {kind}")
    if not stat.S_ISREG(mode):  # a FIFO or a device would block or never end
        raise VitConvertError(f"{path} is not a regular file, not {kind}")
    try:
        with open(path, "rb") as f:
            empty = not f.read(1)
    except OSError as e:
        raise VitConvertError(f"cannot read {path}: {e.strerror or e}") from None
    if empty:
        raise VitConvertError(f"{path} is empty (0 bytes), not {kind}")
    return path


def check_output(dst: str | os.PathLike, force: bool, suffix: str | None = None, what: str = "output") -> Path:
    """`dst` as a file name we may write; checked before any input is read, so a mistake costs nothing.

    `suffix` ('.safetensors', '.npz', ...): the one the format written is named with; another (a '.txt',
    none) is refused, so that a file is not written under a name that says it is something else. `what`
    names the output in the messages ('--plot', 'embeddings')."""
    dst = Path(dst)
    if dst.is_dir():
        raise VitConvertError(f"{what} {dst} is a directory; give a file name")
    if suffix is not None and dst.suffix.lower() != suffix:
        raise VitConvertError(f"{what} {dst}: the file written is {suffix[1:]}; give a name ending in {suffix}")
    if dst.exists() and not force:
        raise VitConvertError(f"{what} {dst} exists; pass --force (force=True) to replace it")
    if not dst.parent.is_dir():
        raise VitConvertError(f"{what} directory {dst.parent} does not exist")
    return dst
