"""Where downloaded and converted weights live: $VITCONVERT_CACHE, else the platform's cache dir;
and which weights file a command uses (a path, a cached model name, or $VITCONVERT_WEIGHTS).

Standard library only: vitpredict resolves its weights before it imports torch.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from .errors import VitConvertError

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


WEIGHTS_ENV = "VITCONVERT_WEIGHTS"
HOW_TO_GET = ("convert one with `vitconvert jax2torch IN.npz OUT.safetensors` or "
              "`vitconvert timm2torch TIMM_CHECKPOINT OUT.safetensors`, or download one with "
              "`vitconvert download NAME` (`vitconvert list` shows the names)")


def resolve_weights(weights: str | os.PathLike | None = None, model: str | None = None) -> Path:
    """The weights file to use: `weights`, else cached model `model`, else `$VITCONVERT_WEIGHTS`.

    Only checks that the file is there (the record is read later), so it costs no imports.
    """
    if weights is not None and model is not None:
        raise VitConvertError("give either a weights file or a model name, not both")
    if model is not None:
        if not model or model.startswith(".") or any(sep in model for sep in ("/", "\\", os.sep)):
            raise VitConvertError(f"invalid model name {model!r}: give a name as `vitconvert list` shows it")
        path = cached_weights(model)
        if not path.is_file():
            raise VitConvertError(
                f"model {model!r} is not in the cache ({path}); run `vitconvert download {model}` first")
        return path
    if weights is None:
        env = os.environ.get(WEIGHTS_ENV)
        if not env:
            raise VitConvertError(
                f"no model given: pass --weights FILE or --model NAME, or set ${WEIGHTS_ENV}; "
                f"to get a weights file, {HOW_TO_GET}")
        weights, origin = env, f"${WEIGHTS_ENV}"
    else:
        origin = "weights file"
    path = Path(weights)
    if not path.is_file():
        problem = "is a directory" if path.is_dir() else "does not exist"
        raise VitConvertError(f"{origin} {path} {problem}; to get a weights file, {HOW_TO_GET}")
    return path
