"""formats/state_dict.py's reading of pickles: a zip-format .pth is memory-mapped and its tensors' pages are
released once read (so a conversion holds about one tensor), without changing a value, and never in memory
that is not the file's; an old-style pickle larger than the free memory is refused before it is read."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from vitconvert import VitConvertError
from vitconvert.formats import memory
from vitconvert.formats.state_dict import TensorReader, read_state_dict


@pytest.fixture
def state() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {"big": torch.randn(256, 1024, generator=gen), "small": torch.randn(7, generator=gen),
            "half": torch.randn(64, 512, generator=gen).to(torch.bfloat16)}


def test_a_zip_pth_is_mapped_and_reads_the_same_values_twice(tmp_path, state):
    torch.save(state, tmp_path / "m.pth")
    checkpoint = read_state_dict(tmp_path / "m.pth")
    assert checkpoint.mapped  # where this process maps the file
    reader = TensorReader(checkpoint.tensors, tmp_path / "m.pth", checkpoint.mapped)
    for key, tensor in state.items():
        first = reader.read(key)
        assert np.array_equal(first, tensor.float().numpy())
        assert np.array_equal(reader.read(key), first)  # the released pages come back from the file


def test_pages_outside_the_files_mapping_are_never_released(tmp_path, state):
    torch.save(state, tmp_path / "m.pth")
    mapped = read_state_dict(tmp_path / "m.pth").mapped
    own = {k: v.clone() for k, v in state.items()}  # anonymous memory: DONTNEED would zero it
    reader = TensorReader(own, None, mapped)
    for key, tensor in state.items():
        assert np.array_equal(reader.read(key), tensor.float().numpy())
        assert torch.equal(own[key], tensor)


def test_an_old_style_pickle_larger_than_the_free_memory_is_refused_before_reading(tmp_path, state, monkeypatch):
    torch.save(state, tmp_path / "old.pth", _use_new_zipfile_serialization=False)
    monkeypatch.setattr(memory, "available_memory", lambda: 1000)
    monkeypatch.setattr(pickle, "load", lambda *a, **k: pytest.fail("read"))
    with pytest.raises(VitConvertError, match=r"^reading .*old\.pth \(a pickle that is not zip-format is read "
                                              r"whole\) needs about 1\.\d MiB of memory and 1000 bytes is available"):
        read_state_dict(tmp_path / "old.pth")
