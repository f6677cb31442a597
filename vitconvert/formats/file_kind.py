"""What a file is, from its first bytes (and, for a safetensors file, its header): the one sniffing every
command shares, so that a checkpoint given where a converted file is expected (or the other way round)
is named for what it is, and `vitconvert convert` knows where to start.

Standard library and numpy only; reads at most the safetensors header, never the weights.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Kind = Literal["vitconvert", "safetensors", "npz", "torch-zip", "pickle", "directory", "missing", "unknown"]

# Our record's key in a safetensors file's __metadata__ (formats/weights_file.py writes it).
OUR_META_KEY = "vitconvert"
# The safetensors header is a little-endian u64 length, then that much JSON. Readers cap it (safetensors:
# 100 MB); a longer one is no safetensors header.
MAX_HEADER = 100_000_000
# Pickle protocols 2-5 start with the PROTO opcode; torch's legacy (pre-1.6) format is a pickle too.
PICKLE_PROTO = 0x80


@dataclass(frozen=True)
class FileKind:
    kind: Kind
    description: str  # for messages: "a NumPy .npz archive", "our weights file (format version 2)", ...


def file_kind(path: str | os.PathLike) -> FileKind:
    """The kind of the file (or directory) at `path`."""
    path = Path(path)
    if path.is_dir():
        return FileKind("directory", "a directory")
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) == 8 and (n := int.from_bytes(head, "little")) <= MAX_HEADER and f.read(1) == b"{":
                return _safetensors(b"{" + f.read(n - 1))
    except FileNotFoundError:
        return FileKind("missing", "a path that does not exist")
    except OSError as e:
        return FileKind("unknown", f"a file that cannot be read ({e.strerror or e})")
    if head[:2] == b"PK":
        return _zip(path)
    if head[:1] == bytes([PICKLE_PROTO]):
        return FileKind("pickle", "a pickled PyTorch checkpoint (.pth/.bin)")
    return FileKind("unknown", "a file that is no checkpoint vitconvert knows (neither safetensors, zip nor pickle)")


def _safetensors(raw: bytes) -> FileKind:
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return FileKind("unknown", "a file with a damaged or truncated safetensors header")
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if isinstance(meta, dict) and OUR_META_KEY in meta:
        try:
            version = json.loads(meta[OUR_META_KEY]).get("version")
        except (TypeError, AttributeError, json.JSONDecodeError):
            version = None
        return FileKind("vitconvert", "a vitconvert weights file" + (f" (format version {version})" if version else ""))
    return FileKind("safetensors", "a safetensors checkpoint (not converted by vitconvert)")


def _zip(path: Path) -> FileKind:
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError):
        return FileKind("unknown", "a damaged or truncated zip archive (an .npz or a PyTorch checkpoint cut short?)")
    if any(n.endswith("data.pkl") for n in names):
        return FileKind("torch-zip", "a PyTorch checkpoint (torch.save's zip format)")
    if names and all(n.endswith(".npy") for n in names):
        return FileKind("npz", "a NumPy .npz archive (a JAX checkpoint?)")
    return FileKind("unknown", "a zip archive that is neither an .npz nor a PyTorch checkpoint")
