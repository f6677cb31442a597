"""Type checks for values read from JSON (a file's record, the manifest), shared by every record
type: JSON has one number type and `True` is an int in Python, so both need saying precisely."""

from __future__ import annotations

import math


def is_int(value: object) -> bool:
    """An int, not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_real(value: object) -> bool:
    """A finite int or float (JSON numbers), not a bool."""
    return is_int(value) or isinstance(value, float) and math.isfinite(value)


def is_size(value: object) -> bool:
    """(height, width) of positive ints."""
    return isinstance(value, tuple) and len(value) == 2 and all(is_int(n) and n > 0 for n in value)
