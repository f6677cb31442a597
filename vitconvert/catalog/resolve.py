"""Which weights file a command uses: a path, a cached model name, or $VITCONVERT_WEIGHTS.

Standard library only: vitpredict resolves its weights before it imports torch.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..core.errors import VitConvertError
from .cache import cached_weights
from .manifest import find

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
            raise VitConvertError(f"model {model!r} is not in the cache ({path}); {_how_to_download(model)}")
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


def _how_to_download(model: str) -> str:
    """The download command for a name the manifest knows; for one it does not, the closest names it does
    (advising `vitconvert download` of a mistyped name would only fail again)."""
    try:
        entry = find(model)
    except VitConvertError as e:  # "no checkpoint named ...; did you mean A, B? (see 'vitconvert list')"
        _, _, hint = str(e).partition("; ")
        return f"nor is it a name `vitconvert download` knows; {hint or 'see `vitconvert list`'}"
    return f"run `vitconvert download {entry.name}` first"
