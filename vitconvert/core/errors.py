"""The one exception type users see: a clear, one-line message about their input."""

from __future__ import annotations

from collections.abc import Iterable


class VitConvertError(Exception):
    """Bad input or an impossible request; the message says what and, where it can, what to do."""


class VitConvertWarning(UserWarning):
    """Allowed but probably not what the user wants (e.g. a dtype this device only emulates, slowly)."""


def name_list(names: Iterable[str], limit: int = 12) -> str:
    """Sorted names, cut after `limit` with a count, so an error stays one readable line."""
    names = sorted(names)
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
