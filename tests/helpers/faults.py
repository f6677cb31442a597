"""Faults the tests inject: a disk that fills up part-way through a write."""

from __future__ import annotations

import pytest


def disk_full_after(monkeypatch: pytest.MonkeyPatch, tensors: int) -> None:
    """Make the weights writer raise ENOSPC on its `tensors`-th tensor, as a full disk would."""
    import vitconvert.formats.safetensors_file as io

    real, calls = io.to_storage, []

    def write(array, dtype):
        calls.append(1)
        if len(calls) == tensors:
            raise OSError(28, "No space left on device")
        return real(array, dtype)

    monkeypatch.setattr(io, "to_storage", write)
