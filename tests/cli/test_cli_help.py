"""What the commands say about themselves: the group's help with no arguments, an Examples block
in every command's --help whose lines are commands that parse, and --debug in every options list."""

from __future__ import annotations

import shlex

import pytest
from helpers.cli import invoke

from vitconvert.catalog.manifest import load_manifest
from vitconvert.cli import cli
from vitconvert.cli.predict import command as vitpredict_command

SUBCOMMANDS = ["jax2torch", "timm2torch", "hf2torch", "torch2torch", "verify", "export", "list", "download",
               "finetune", "serve"]
EVERY = [("vitconvert", name) for name in SUBCOMMANDS] + [("vitpredict", None)]


def help_text(capsys, program: str, sub: str | None) -> str:
    command, args = (cli, [sub, "--help"]) if program == "vitconvert" else (vitpredict_command, ["--help"])
    code, out, err = invoke(capsys, command, *args)
    assert (code, err) == (0, "")
    return out


def examples(text: str) -> list[str]:
    """The indented lines under 'Examples:' up to the next blank line."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "Examples:") + 1
    block = []
    for line in lines[start:]:
        if not line.strip():
            break
        block.append(line.strip())
    return block


def test_the_group_without_arguments_prints_its_help_on_stdout(capsys):
    code, out, err = invoke(capsys, cli)
    # 2, as for a usage error (nothing was done; click >= 8.2 exits 2 here too), but the help whole.
    assert code == 2 and err == ""
    assert out.startswith("Usage: ") and "Commands:\n" in out
    listed = out.split("Commands:\n", 1)[1].split()
    assert all(name in listed for name in SUBCOMMANDS)
    assert out == invoke(capsys, cli, "--help")[1]  # the same text --help prints


def test_errors_stay_one_line(capsys):
    code, out, err = invoke(capsys, cli, "no-such-command")
    assert code == 2 and out == "" and err.count("\n") == 1 and err.startswith("error: No such command")


@pytest.mark.parametrize("program, sub", EVERY, ids=[s or p for p, s in EVERY])
def test_every_help_has_examples_that_parse(capsys, program, sub):
    lines = examples(help_text(capsys, program, sub))
    invocation = [program, sub] if sub else [program]
    own = [line for line in lines if shlex.split(line)[:len(invocation)] == invocation]
    assert own, f"no example runs {' '.join(invocation)}: {lines}"
    for line in lines:
        words = shlex.split(line)
        words = words[:words.index(">")] if ">" in words else words  # a shell redirection, not ours
        if words[0] == "torchrun":  # torch's launcher, its own options, then our command as a module
            words = ["vitconvert", *words[words.index("vitconvert") + 1:]]
        if words[0] == "vitpredict":
            command, args = vitpredict_command, words[1:]
        else:
            assert words[0] == "vitconvert", line
            command, args = cli.commands[words[1]], words[2:]
        command.make_context(words[0], list(args))  # raises a UsageError if the example is wrong
        if words[:2] == ["vitconvert", "download"]:
            load_manifest().find(args[0])  # the checkpoint it names exists


@pytest.mark.parametrize("program, sub", EVERY, ids=[s or p for p, s in EVERY])
def test_every_help_lists_debug(capsys, program, sub):
    options = help_text(capsys, program, sub).split("Options:", 1)[1]
    assert "--debug" in options and "traceback" in options


@pytest.mark.parametrize("where", ["before the command", "after the command", "last"])
def test_debug_works_anywhere_on_the_line(capsys, tmp_path, where):
    empty = tmp_path / "empty.pth"
    empty.touch()
    args = ["timm2torch", str(empty), str(tmp_path / "o.safetensors")]
    at = {"before the command": 0, "after the command": 1, "last": len(args)}[where]
    code, _, err = invoke(capsys, cli, *args[:at], "--debug", *args[at:])
    assert code == 1
    assert "Traceback (most recent call last)" in err
    assert err.splitlines()[-1] == f"error: {empty} is empty (0 bytes), not a checkpoint file"
