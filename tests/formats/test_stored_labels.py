"""Class names stored in the weights file: given at conversion (`--labels FILE`, `labels=[...]`),
printed by vitpredict without further flags."""

from __future__ import annotations

import json
import re

import pytest
import torch
from helpers import published_layouts as pl
from helpers.cli import vitconvert_cli
from helpers.timm_reference import timm_vit

from vitconvert import VitConvertError, convert_jax, convert_timm, read_record

NAMES = ["snow leopard", "red panda, lesser panda", "axolotl"]


@pytest.fixture
def three_class_pth(tmp_path):
    """A timm ViT-Ti/16 state dict (1 block) with a 3-class head."""
    path = tmp_path / "three.pth"
    torch.save(timm_vit("vit_tiny_patch16_224", depth=1, num_classes=3).state_dict(), path)
    return path


def test_a_file_converted_with_labels_prints_those_names(capsys, vitpredict, three_class_pth, tmp_path, cat_jpg):
    (tmp_path / "names.txt").write_text("\n".join(NAMES) + "\n", encoding="utf-8")
    dst = tmp_path / "three.safetensors"
    code, out, _ = vitconvert_cli(capsys, "timm2torch", three_class_pth, dst, "--labels", tmp_path / "names.txt")
    assert code == 0 and "  labels      3 class names (snow leopard, red panda, lesser panda, axolotl)" in out
    result = vitpredict(cat_jpg, "--weights", dst, "--json")
    assert result.code == 0
    predictions = result.json()[0]["predictions"]
    assert sorted(p["index"] for p in predictions) == [0, 1, 2]
    assert [p["label"] for p in predictions] == [NAMES[p["index"]] for p in predictions]
    table = vitpredict(cat_jpg, "--weights", dst).out.splitlines()[2:5]
    assert [row.split(None, 2)[2] for row in table] == [p["label"] for p in predictions]
    # --labels at prediction time still overrides what the file says.
    (tmp_path / "other.txt").write_text("a\nb\nc\n")
    other = vitpredict(cat_jpg, "--weights", dst, "--json", "--labels", tmp_path / "other.txt").json()
    assert [p["label"] for p in other[0]["predictions"]] == ["abc"[p["index"]] for p in predictions]


def test_jax2torch_records_labels_from_a_file(capsys, tmp_path):
    pl.write_npz(pl.random_timm_vit("tiny"), tmp_path / "tiny.npz", "vit_jax")  # 10 classes
    names = [f"class {i}" for i in range(10)]
    (tmp_path / "names.txt").write_text("\n".join(names))
    code, out, _ = vitconvert_cli(capsys, "jax2torch", tmp_path / "tiny.npz", tmp_path / "t.safetensors",
                               "--labels", tmp_path / "names.txt", "--json")
    assert code == 0 and json.loads(out)["record"]["labels"] == names
    assert read_record(tmp_path / "t.safetensors").labels == tuple(names)


@pytest.mark.parametrize("labels, message", [
    ("imagenet-1k", r"labels 'imagenet-1k' has 1000 classes but the model has 10"),
    ("names.txt", r"labels: 3 class names but the model has 10 classes"),
    ("missing.txt", r"labels file .*missing\.txt: no such file"),
])
def test_labels_that_do_not_fit_are_refused_and_nothing_is_written(capsys, tmp_path, labels, message):
    pl.write_npz(pl.random_timm_vit("tiny"), tmp_path / "tiny.npz", "vit_jax")
    (tmp_path / "names.txt").write_text("\n".join(NAMES))
    arg = labels if labels.startswith("imagenet") else tmp_path / labels
    code, _, err = vitconvert_cli(capsys, "jax2torch", tmp_path / "tiny.npz", tmp_path / "t.safetensors",
                                  "--labels", arg)
    assert code == 1 and err.startswith("error: ")
    assert re.search(message, err), err
    assert not (tmp_path / "t.safetensors").exists()


def test_the_library_converters_take_a_list(tmp_path, three_class_pth):
    assert convert_timm(three_class_pth, tmp_path / "t.safetensors", labels=NAMES).labels == tuple(NAMES)
    assert read_record(tmp_path / "t.safetensors").labels == tuple(NAMES)
    with pytest.raises(VitConvertError, match="labels: 2 class names but the model has 3 classes"):
        convert_timm(three_class_pth, tmp_path / "u.safetensors", labels=NAMES[:2])
    assert not (tmp_path / "u.safetensors").exists()
    pl.write_npz(pl.random_timm_vit("tiny"), tmp_path / "tiny.npz", "vit_jax")
    names = [str(i) for i in range(10)]
    assert convert_jax(tmp_path / "tiny.npz", tmp_path / "j.safetensors", labels=names).labels == tuple(names)


def test_a_published_file_keeps_its_preprocessing_when_given_labels(tmp_path):
    from helpers.manifest import TINY_CONFIG, tiny_entry, tiny_npz_bytes, write_manifest

    from vitconvert import load_manifest

    data = tiny_npz_bytes()
    manifest = load_manifest(write_manifest(tmp_path / "m.json", tiny_entry(data)))
    (tmp_path / "tiny.npz").write_bytes(data)  # the published file name
    names = [f"n{i}" for i in range(TINY_CONFIG["num_classes"])]
    record = convert_jax(tmp_path / "tiny.npz", tmp_path / "t.safetensors", catalog=manifest, labels=names)
    assert record.labels == tuple(names)
    assert (record.preprocess.resize, record.preprocess.crop_pct, record.preprocess.interpolation) == (
        "crop", 0.9, "bicubic")
    assert any(note.startswith("preprocessing of the published checkpoint 'tiny-test-B16'") for note in record.notes)

