"""The checks of a fine-tuning run's paths that need neither torch nor the data read: `vitconvert finetune`
runs them before it imports torch, so a mistyped path is answered at once, and `finetune` runs them first.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..core.errors import VitConvertError
from ..formats.paths import check_output
from .plot import check_plot


def check_paths(data: str | os.PathLike, out: str | os.PathLike, force: bool,
                plot: str | os.PathLike | None = None) -> tuple[Path, Path | None]:
    """OUT (a .safetensors name we may write) and `plot` (a .png, matplotlib there) checked, and DATA there;
    returns them as paths."""
    out = check_output(out, force, suffix=".safetensors")
    if not Path(data).exists():
        raise VitConvertError(f"{data}: no such folder or CSV file")
    return out, check_plot(plot, force) if plot is not None else None


def is_main_process() -> bool:
    """Rank 0 (or not under torchrun): the process that prints and writes."""
    return int(os.environ.get("RANK", "0")) == 0
