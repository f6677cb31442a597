"""The reference pages cover every command a user can type (docs/reference/cli.md) and every name
`vitconvert` exports (docs/reference/api.md).

mkdocs-click renders a group's subcommands by itself (a new `vitconvert` subcommand appears without a
change to the page), but it renders only the commands the page names: a new console script, or a command
renamed under its directive, would leave the reference silently short. The strict site build (.ci/run)
catches a directive that no longer imports; these tests catch what it cannot. The same holds for the
API page: mkdocstrings renders the names it is given, so a new export needs its line there.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]
CLI_PAGE = ROOT / "docs" / "reference" / "cli.md"


def console_scripts() -> dict[str, str]:
    """pyproject.toml's [project.scripts]: name -> 'module:function'."""
    text = (ROOT / "pyproject.toml").read_text()
    table = text.split("[project.scripts]", 1)[1].split("\n[", 1)[0]
    return dict(re.findall(r'^([\w-]+)\s*=\s*"([\w.:]+)"', table, re.MULTILINE))


def directives() -> list[dict[str, str]]:
    """Each `::: mkdocs-click` block of the CLI page as its options (module, command, prog_name, ...)."""
    blocks = re.findall(r"^::: mkdocs-click\n((?:    :\w+: .*\n)+)", CLI_PAGE.read_text(), re.MULTILINE)
    return [dict(re.findall(r"^    :(\w+): (.*)$", block, re.MULTILINE)) for block in blocks]


def test_every_console_script_has_its_command_in_the_cli_reference() -> None:
    documented = {d["prog_name"]: d["module"] for d in directives()}
    scripts = console_scripts()
    assert scripts, "no [project.scripts] found in pyproject.toml"
    for name, target in scripts.items():
        assert documented.get(name) == target.split(":")[0], (name, documented)


def test_the_cli_reference_directives_name_click_commands_with_every_subcommand_shown() -> None:
    for d in directives():
        command = getattr(importlib.import_module(d["module"]), d["command"])
        assert isinstance(command, click.Command), d
        if isinstance(command, click.Group):
            assert d.get("list_subcommands") == "true", d
            # mkdocs-click leaves hidden commands out: none of ours may be hidden.
            assert command.commands and not any(c.hidden for c in command.commands.values()), d


def test_every_name_vitconvert_exports_has_its_api_reference() -> None:
    import vitconvert

    page = (ROOT / "docs" / "reference" / "api.md").read_text()
    documented = set(re.findall(r"^::: ([\w.]+)$", page, re.MULTILINE))
    for name, module in vitconvert._EXPORTS.items():
        assert f"vitconvert.{module}.{name}" in documented, name
