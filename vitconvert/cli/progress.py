"""Progress on stderr: one bar (images classified, bytes converted or downloaded), drawn only on a
terminal and not with --quiet, and status lines that do not run into it."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator

import click

WIDTH = 24  # with the label, percent, counts and eta, a bar line stays within 80 columns
REDRAW = 0.1  # seconds between redraws, so a fast stream of updates does not flood the terminal


class Progress:
    """`update(done, total)` draws the bar, or is None when no bar is shown (not a terminal, or
    quiet); `echo(line)` prints a status line on stderr, below the bar's line if one is drawn.
    `in_bytes` counts in MiB; `suffix`, set by the caller, follows the counts (e.g. a running loss)."""

    def __init__(self, label: str, show_bar: bool, in_bytes: bool) -> None:
        self.label, self.in_bytes = label, in_bytes
        self.suffix = ""
        self.update: Callable[[int, int | None], None] | None = self._update if show_bar else None
        self._line = ""  # the bar as last drawn; "" while no bar line is open
        self._drawn_at = 0.0
        self._since: tuple[float, int] | None = None  # time and count the rate is measured from

    def echo(self, line: str) -> None:
        self._end_line()
        self._since = None  # after news (a retry, a pause) the rate starts again
        click.echo(line, err=True)

    def close(self) -> None:
        self._end_line()

    def _update(self, done: int, total: int | None) -> None:
        if not total:  # nothing to measure the bar against
            return
        now = time.monotonic()
        if self._since is None:
            self._since = (now, done)
        if done < total and now - self._drawn_at < REDRAW:
            return
        self._drawn_at = now
        fraction = min(done / total, 1.0)
        count = f"{_mib(done)}/{_mib(total)} MiB" if self.in_bytes else f"{done}/{total}"
        line = f"{self.label} [{'#' * int(WIDTH * fraction):.<{WIDTH}}] {fraction:4.0%} {count}"
        start, first = self._since
        if done < total and done > first and now > start:
            line += f" eta {_duration((total - done) * (now - start) / (done - first))}"
        if self.suffix:
            line += f" {self.suffix}"
        sys.stderr.write("\r" + line.ljust(len(self._line)))
        sys.stderr.flush()
        self._line = line

    def _end_line(self) -> None:
        if self._line:
            sys.stderr.write("\n")
            sys.stderr.flush()
            self._line = ""


@contextlib.contextmanager
def progress_bar(label: str, quiet: bool, in_bytes: bool = False) -> Iterator[Progress]:
    progress = Progress(label, show_bar=not quiet and sys.stderr.isatty(), in_bytes=in_bytes)
    try:
        yield progress
    finally:
        progress.close()


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f}"


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds + 0.5), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
