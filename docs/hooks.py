"""mkdocs hooks, for pages that read well both on GitHub and on the site.

- click's `\\b` paragraphs (kept as written in --help: examples, lists of commands) become code blocks
  in the CLI reference, instead of lines that Markdown joins into one paragraph.
- A pipe inside a code span in a table row is written `\\|` for GitHub, which would otherwise split the
  cell there; Python-Markdown keeps code spans whole but would show the backslash, so it is dropped.
"""

from __future__ import annotations

import re
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


_CODE_SPAN = re.compile(r"`[^`\n]*`")


def on_page_markdown(markdown: str, **_: object) -> str:
    lines = markdown.split("\n")
    for i, line in enumerate(lines):
        if line.startswith("|") and "\\|" in line:
            lines[i] = _CODE_SPAN.sub(lambda m: m.group(0).replace("\\|", "|"), line)
    return "\n".join(lines)
