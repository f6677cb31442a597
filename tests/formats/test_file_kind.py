"""What a file is, from its bytes: each checkpoint kind written by its own library, never by ours."""

from __future__ import annotations

import io
import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from vitconvert.formats.file_kind import file_kind

EXAMPLE_NPZ = Path(__file__).resolve().parents[2] / "examples" / "vit-tiny-random.npz"


def test_each_kind_of_checkpoint_is_named_by_its_own_bytes(tmp_path: Path) -> None:
    np.savez(tmp_path / "a.npz", x=np.zeros(3))
    torch.save({"w": torch.zeros(2)}, tmp_path / "b.pth")
    torch.save({"w": torch.zeros(2)}, tmp_path / "c.pth", _use_new_zipfile_serialization=False)
    save_file({"w": np.zeros(2, np.float32)}, str(tmp_path / "d.safetensors"))
    save_file({"w": np.zeros(2, np.float32)}, str(tmp_path / "e.safetensors"),
              metadata={"vitconvert": json.dumps({"version": 2})})
    (tmp_path / "f.txt").write_text("hello")
    (tmp_path / "g.pkl").write_bytes(pickle.dumps({"a": 1}, protocol=4))
    kinds = {p: file_kind(tmp_path / p).kind for p in ("a.npz", "b.pth", "c.pth", "d.safetensors",
                                                        "e.safetensors", "f.txt", "g.pkl", "missing", ".")}
    assert kinds == {"a.npz": "npz", "b.pth": "torch-zip", "c.pth": "pickle", "d.safetensors": "safetensors",
                     "e.safetensors": "vitconvert", "f.txt": "unknown", "g.pkl": "pickle", "missing": "missing",
                     ".": "directory"}
    assert file_kind(tmp_path / "e.safetensors").description == "a vitconvert weights file (format version 2)"
    assert file_kind(EXAMPLE_NPZ).kind == "npz"


@pytest.mark.parametrize("keep", [10, 100, 1000])
def test_a_truncated_archive_is_called_damaged_or_truncated(tmp_path: Path, keep: int) -> None:
    buf = io.BytesIO()
    np.savez(buf, x=np.zeros(1000))
    (tmp_path / "t.npz").write_bytes(buf.getvalue()[:keep])
    found = file_kind(tmp_path / "t.npz")
    assert found.kind == "unknown" and "truncated" in found.description


def test_a_zip_of_other_files_is_no_checkpoint(tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / "z.zip", "w") as z:
        z.writestr("readme.txt", "hi")
    assert file_kind(tmp_path / "z.zip").kind == "unknown"
