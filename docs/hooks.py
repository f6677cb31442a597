"""mkdocs hook: click's `\\b` paragraphs (kept as written in --help: examples, lists of commands) become
code blocks in the CLI reference, instead of lines that Markdown joins into one paragraph."""

from __future__ import annotations

from collections.abc import Iterator

import click
import mkdocs_click._docs as click_docs

_description = click_docs._make_description


def _make_description(ctx: click.Context, remove_ascii_art: bool = False) -> Iterator[str]:
    verbatim = False
    for line in _description(ctx, remove_ascii_art=remove_ascii_art):
        if line.strip() == "\b":
            verbatim = True
            yield "```text"
            continue
        if verbatim and not line.strip():
            verbatim = False
            yield "```"
        yield line
    if verbatim:
        yield "```"


click_docs._make_description = _make_description
