"""Checkpoints to resume a run from: one file, `last.pt`, replaced whole at each epoch's end.

It holds the model, the optimiser, the scheduler, the gradient scaler, the step, the history and the
random number generators' states, and a fingerprint of what decides the result (parent weights, data,
recipe, seed). A run resumed from it continues with the same images in the same order, so on the CPU
it ends with the same weights as a run never interrupted. Written beside its name and renamed
(`atomic_output`): an interruption or a full disk leaves the previous checkpoint as it was. Read with
`torch.load(weights_only=True)`: a checkpoint cannot run code.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..core.errors import VitConvertError
from ..formats.safetensors_file import atomic_output

NAME = "last.pt"
FORMAT = "vitconvert-finetune-checkpoint"
VERSION = 1


def prepare(folder: str | os.PathLike, resume: bool, force: bool) -> Path:
    """The checkpoint's path in `folder` (created if missing), after checking that this run may use it:
    resuming needs a checkpoint there; a new run does not overwrite one unless forced."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise VitConvertError(f"checkpoint folder {folder} is a file")
    path = folder / NAME
    if resume and not path.is_file():
        raise VitConvertError(f"{folder}: no checkpoint ({NAME}) to resume from")
    if not resume and path.exists() and not force:
        raise VitConvertError(f"{folder} holds a checkpoint ({NAME}) of an earlier run: pass --resume to "
                              "continue it, or --force to start over")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise VitConvertError(f"cannot create checkpoint folder {folder}: {e.strerror or e}") from None
    return path


def save(path: Path, state: dict[str, Any]) -> None:
    with atomic_output(path, force=True) as tmp, open(tmp, "wb") as f:
        torch.save({"format": FORMAT, "version": VERSION, **state}, f)
        f.flush()
        os.fsync(f.fileno())


def load(path: Path, fingerprint: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint's state, after checking that it was written by a run with this `fingerprint`."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file fails in pickle, zipfile or torch, each its own way
        raise VitConvertError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise VitConvertError(f"{path}: not a vitconvert finetune checkpoint")
    if state.get("version") != VERSION:
        raise VitConvertError(f"{path}: checkpoint version {state.get('version')!r} is not {VERSION}")
    saved = state["fingerprint"]
    differ = [f"{k} {saved.get(k)!r} (checkpoint) vs {v!r} (now)" for k, v in fingerprint.items() if saved.get(k) != v]
    if differ:
        raise VitConvertError(f"{path} is from another run: {'; '.join(differ)}; resume with the same "
                              "weights, data and options, or pass --force without --resume to start over")
    return state


def rng_states() -> dict[str, Any]:
    """torch's generators (CPU, and each GPU's), for the checkpoint."""
    states: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["cpu"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
