"""Where downloaded and converted weights live: $VITCONVERT_CACHE, else the platform's cache dir.

Standard library only: vitpredict resolves its weights before it imports torch.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

CACHE_ENV = "VITCONVERT_CACHE"


def cache_dir() -> Path:
    """$VITCONVERT_CACHE, else ~/.cache/vitconvert ($XDG_CACHE_HOME), ~/Library/Caches/vitconvert
    on macOS, %LOCALAPPDATA%\\vitconvert\\Cache on Windows. Not created here."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        return Path(base) / "vitconvert" / "Cache"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "vitconvert"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "vitconvert"


def cached_weights(name: str) -> Path:
    """Our converted weights file for the manifest entry `name`."""
    return cache_dir() / f"{name}.safetensors"
