"""The loss and accuracy curves of a run as a PNG (matplotlib, the `train` extra, imported only here)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ..core.errors import VitConvertError
from ..formats.paths import check_output
from ..formats.safetensors_file import atomic_output


def check_plot(path: str | os.PathLike, force: bool) -> Path:
    """`path` may be written and matplotlib is there: said before training, not after it."""
    path = check_output(path, force, suffix=".png", what="--plot (plot=)")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise VitConvertError("--plot (plot=) needs matplotlib: pip install 'vitconvert[train]'") from None
    return path


def plot_curves(history: Sequence, path: str | os.PathLike, force: bool) -> None:
    """Train and validation loss, and validation top-1, per epoch (`history`: EpochLog items)."""
    from matplotlib.figure import Figure  # not pyplot: no display, no global backend chosen
    from matplotlib.ticker import MaxNLocator

    epochs = [log.epoch for log in history]
    fig = Figure(figsize=(9, 3.5), layout="constrained")
    loss, top1 = fig.subplots(1, 2)
    loss.plot(epochs, [log.train_loss for log in history], "o-", label="train")
    if any(log.val_loss is not None for log in history):
        loss.plot(epochs, [log.val_loss for log in history], "o-", label="validation")
        top1.plot(epochs, [100 * log.val_top1 for log in history], "o-", color="C1")
    else:
        top1.text(0.5, 0.5, "no validation data", ha="center", va="center", transform=top1.transAxes)
    loss.set(xlabel="epoch", ylabel="loss", title="loss")
    loss.legend()
    top1.set(xlabel="epoch", ylabel="top-1 (%)", title="validation top-1")
    for axes in (loss, top1):
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    with atomic_output(path, force) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
