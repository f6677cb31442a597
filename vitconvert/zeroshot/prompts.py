"""Class names and prompt templates for zero-shot heads: a shipped set by name, a file (one a line), or a
comma-separated list; checked once (no empty or repeated class name, every template with one `{}`).

The shipped sets are package data (data/README.md says where each comes from). big_vision's evaluation
canonicalizes both before it fills the templates (`canonicalize_text`, as its prompt_engineering.py does).
"""

from __future__ import annotations

import json
import os
import re
import string
from collections import Counter
from functools import cache
from pathlib import Path

from ..core.errors import VitConvertError, name_list

DATA = Path(__file__).with_name("data")
SLOT = "{}"


@cache
def _sets(name: str) -> dict[str, tuple[str, ...]]:
    return {k: tuple(v) for k, v in json.loads((DATA / name).read_text(encoding="utf-8"))["sets"].items()}


def class_sets() -> dict[str, tuple[str, ...]]:
    """The shipped class-name sets: 'imagenet-1k'."""
    return _sets("class_names.json")


def template_sets() -> dict[str, tuple[str, ...]]:
    """The shipped template sets: 'imagenet' (OpenAI's 80), 'imagenet-simple' (their 7), and big_vision's
    'clip_paper' (the 80 and '{}') and 'clip_best' (the 7 and '{}')."""
    return _sets("templates.json")


def _given(spec: str | os.PathLike | list[str] | tuple[str, ...], shipped: dict[str, tuple[str, ...]],
           what: str) -> list[str]:
    """A shipped set's name, an existing file (one item a line, blank lines skipped), a list, or a
    comma-separated list."""
    if isinstance(spec, (list, tuple)):
        return [str(s) for s in spec]
    text = os.fspath(spec)
    if text in shipped:
        return list(shipped[text])
    path = Path(text)
    if path.is_file():
        try:
            return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as e:
            raise VitConvertError(f"{what} file {path}: cannot read ({getattr(e, 'strerror', None) or e})") from None
    if what == "templates":  # a template may hold commas ('a photo of a {}, a type of pet.'): one template
        return [text.strip()]
    return [part.strip() for part in text.split(",")]


def resolve_classes(spec: str | os.PathLike | list[str] | tuple[str, ...]) -> list[str]:
    """The class names `spec` gives ('imagenet-1k', FILE, 'cat,dog' or a list), or a VitConvertError naming the
    empty or repeated ones. A shipped set is its source's list as it is: OpenAI's ImageNet names repeat two
    (classes 657 and 744 are both 'missile', 836 and 837 'sunglasses'), and every CLIP evaluation prompts
    them so."""
    if isinstance(spec, str) and spec in class_sets():
        return list(class_sets()[spec])
    names = _given(spec, class_sets(), "classes")
    if not names:
        raise VitConvertError("--classes: no class names given")
    if empty := [i + 1 for i, n in enumerate(names) if not n.strip()]:
        raise VitConvertError(f"--classes: class {empty[0]} of {len(names)} is an empty name"
                              + (f" ({len(empty)} are)" if len(empty) > 1 else ""))
    if repeated := [n for n, count in Counter(names).items() if count > 1]:
        raise VitConvertError(f"--classes: repeated class name{'s' if len(repeated) > 1 else ''} "
                              f"{name_list(map(repr, repeated), 5)}: each class needs its own name")
    return names


def resolve_templates(spec: str | os.PathLike | list[str] | tuple[str, ...]) -> list[str]:
    """The templates `spec` gives ('imagenet', FILE, one template or a list), each holding '{}' once."""
    templates = _given(spec, template_sets(), "templates")
    if not templates:
        raise VitConvertError("--templates: no templates given")
    for t in templates:
        if t.count(SLOT) != 1:
            raise VitConvertError(f"--templates: {t!r} must hold '{{}}' exactly once, where the class name goes "
                                  f"(e.g. 'a photo of a {{}}.'); it holds it {t.count(SLOT)} times")
    if repeated := [t for t, count in Counter(templates).items() if count > 1]:
        raise VitConvertError(f"--templates: repeated template {repeated[0]!r}")
    return templates


def prompts(classes: list[str], templates: list[str]) -> list[str]:
    """Every class in every template, class-major: class i's prompts are [i * T, (i + 1) * T). Filled by
    substitution, as big_vision does (str.format would read any other brace in a template)."""
    return [t.replace(SLOT, c) for c in classes for t in templates]


def canonicalize_text(text: str, keep: str | None = None) -> str:
    """big_vision's `canonicalize_text` (evaluators/proj/image_text/prompt_engineering.py): underscores to
    spaces, punctuation removed except the exact string `keep`, lower case, whitespace collapsed."""
    text = text.replace("_", " ")
    strip = str.maketrans("", "", string.punctuation)
    text = keep.join(part.translate(strip) for part in text.split(keep)) if keep else text.translate(strip)
    return re.sub(r"\s+", " ", text.lower()).strip()


def canonicalized(classes: list[str], templates: list[str]) -> tuple[list[str], list[str]]:
    """The class names and templates as big_vision's zero-shot evaluator fills them: names canonicalized
    keeping ',', templates keeping '{}' (get_class_names, get_prompt_templates with canonicalize=True)."""
    return ([canonicalize_text(c, ",") for c in classes], [canonicalize_text(t, SLOT) for t in templates])
