"""Our commands run in this process through their error contract (`vitconvert.cli.errors.run`), as a user
meets them: the exit status and what went to stdout and stderr."""

from __future__ import annotations

import json
from typing import NamedTuple

import click
import pytest

from vitconvert.cli import cli
from vitconvert.cli.errors import run


class Result(NamedTuple):
    """A finished command; unpacks as (code, out, err)."""

    code: int
    out: str
    err: str

    def json(self) -> list[dict]:
        return json.loads(self.out)


def invoke(capsys: pytest.CaptureFixture[str], command: click.Command, *args: object) -> Result:
    """Run `command ARGS...`; what was printed before it is not part of its output."""
    capsys.readouterr()
    try:
        run(command, [str(a) for a in args])
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    captured = capsys.readouterr()
    return Result(code, captured.out, captured.err)


def vitconvert_cli(capsys: pytest.CaptureFixture[str], *args: object) -> Result:
    """`vitconvert ARGS...` (the `vitconvert` fixture is this with capsys bound)."""
    return invoke(capsys, cli, *args)


def cli_error(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str]:
    """`vitconvert ARGS...` where it must fail: (exit status, stderr)."""
    code, _, err = vitconvert_cli(capsys, *args)
    return code, err
