"""The fuzz tests' tally: convert/test_fuzz.py records how many examples each property ran (conftest prints
them; the numbers go into tests/FUZZING.md)."""

from __future__ import annotations

import pytest

FUZZ_COUNTS = pytest.StashKey[dict]()
