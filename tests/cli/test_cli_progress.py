"""The one progress bar (cli/progress.py): converting and downloading in MiB, classifying in images."""

from __future__ import annotations

import pytest

from vitconvert.cli import progress as progress_module
from vitconvert.cli.progress import progress_bar

MIB = 2**20


@pytest.fixture
def terminal(monkeypatch, capsys):
    """Call it to make stderr (capsys's, once the test runs) a terminal; it returns a clock that
    reads what the test sets in clock[0]."""
    clock = [100.0]
    monkeypatch.setattr(progress_module.time, "monotonic", lambda: clock[0])

    def start() -> list[float]:
        monkeypatch.setattr("sys.stderr.isatty", lambda: True)
        return clock

    return start


def drawn(err: str) -> list[str]:
    """The lines a terminal would show: each '\\r' redraws the current line."""
    return [line.split("\r")[-1].rstrip() for line in err.split("\n")]


@pytest.mark.parametrize("tty, quiet", [(False, False), (True, True)], ids=["not a terminal", "quiet"])
def test_no_bar_off_a_terminal_or_when_quiet(monkeypatch, capsys, tty, quiet):
    monkeypatch.setattr("sys.stderr.isatty", lambda: tty)
    with progress_bar("converting", quiet) as progress:
        assert progress.update is None
        progress.echo("a status line")  # still printed: whether to talk is the caller's choice
    assert capsys.readouterr().err == "a status line\n"


def test_bytes_in_mib_with_the_time_left(terminal, capsys):
    clock = terminal()
    with progress_bar("downloading", quiet=False, in_bytes=True) as progress:
        progress.update(1 * MIB, 9 * MIB)  # the rate is measured from here
        clock[0] += 1.0
        progress.update(3 * MIB, 9 * MIB)  # 2 MiB/s, 6 MiB to go: 3 s
    assert drawn(capsys.readouterr().err) == [
        "downloading [########................]  33% 3.0/9.0 MiB eta 0:03", ""]  # 24 * 3/9 = 8 of 24


def test_images_counted_and_redraws_throttled(terminal, capsys):
    terminal()
    with progress_bar("classifying", quiet=False) as progress:
        for done in range(1, 9):
            progress.update(done, 8)  # the clock stands still: only the first and the last are drawn
    err = capsys.readouterr().err
    assert err.count("\r") == 2
    assert drawn(err) == ["classifying [########################] 100% 8/8", ""]


def test_a_status_line_during_a_bar_gets_its_own_line(terminal, capsys):
    clock = terminal()
    with progress_bar("downloading", quiet=False, in_bytes=True) as progress:
        progress.update(2 * MIB, 8 * MIB)
        progress.echo("x: connection lost; retrying in 1s (1/4)")
        clock[0] += 1.0
        progress.update(8 * MIB, 8 * MIB)
    assert drawn(capsys.readouterr().err) == [
        "downloading [######..................]  25% 2.0/8.0 MiB",
        "x: connection lost; retrying in 1s (1/4)",
        "downloading [########################] 100% 8.0/8.0 MiB",
        "",
    ]


def test_an_unknown_total_draws_nothing(terminal, capsys):
    terminal()
    with progress_bar("downloading", quiet=False, in_bytes=True) as progress:
        progress.update(5 * MIB, None)  # the server did not say how much
    assert capsys.readouterr().err == ""
