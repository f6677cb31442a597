"""Where weights files are found: the cache of converted models (one `<NAME>.safetensors` per name),
`$VITCONVERT_WEIGHTS`, or a path given.

`vitconvert download NAME` writes to `cached_weights(NAME)` and `vitpredict --model NAME` reads
from it, so both agree through this one module. Standard library only: it runs before torch is
imported.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from .errors import VitConvertError

CACHE_ENV = "VITCONVERT_CACHE"


def cache_dir() -> Path:
    """`$VITCONVERT_CACHE`, else the platform's user cache directory plus 'vitconvert'.

    Linux and other Unix: `$XDG_CACHE_HOME/vitconvert` (XDG ignores relative values), else
    `~/.cache/vitconvert`; macOS: `~/Library/Caches/vitconvert`; Windows: `%LOCALAPPDATA%\\vitconvert`.
    The directory is not created here: readers must not leave empty directories behind.
    """
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    if sys.platform == "win32":
        local = os.environ.get("LOCALAPPDATA")
        return (Path(local) if local else Path.home() / "AppData" / "Local") / "vitconvert"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "vitconvert"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "vitconvert"


def cached_weights(name: str) -> Path:
    """The cache path of model `name` (whether or not it has been downloaded yet)."""
    # A name is a file name, never a path: '../x' or 'a/b' would read or write outside the cache.
    if not name or name.startswith(".") or any(sep in name for sep in ("/", "\\", os.sep)):
        raise VitConvertError(
            f"invalid model name {name!r}: use a plain name such as vit_base_patch16_224.augreg_in21k_ft_in1k")
    return cache_dir() / f"{name}.safetensors"


WEIGHTS_ENV = "VITCONVERT_WEIGHTS"
HOW_TO_GET = ("convert one with `vitconvert jax2torch IN.npz OUT.safetensors` or `vitconvert timm2torch`, "
              "or download one with `vitconvert download NAME`")


def resolve_weights(weights: str | os.PathLike | None = None, model: str | None = None) -> Path:
    """The weights file to use: `weights`, else cached model `model`, else `$VITCONVERT_WEIGHTS`.

    Only checks that the file is there (the record is read later), so it costs no imports.
    """
    if weights is not None and model is not None:
        raise VitConvertError("give either a weights file or a model name, not both")
    if model is not None:
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
