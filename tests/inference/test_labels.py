"""Class names come from timm's bundled files (without importing timm) or from a file of ours."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vitconvert.core.errors import VitConvertError
from vitconvert.inference.labels import builtin_labels, read_label_file, resolve_labels

ROOT = Path(__file__).resolve().parents[2]


def test_imagenet_1k_names_are_timm_lemmas():
    names = builtin_labels("imagenet-1k")
    assert len(names) == 1000
    assert names[0] == "tench, Tinca tinca"
    assert names[281] == "tabby, tabby cat"
    assert names[999] == "toilet tissue, toilet paper, bathroom tissue"


def test_imagenet_1k_names_agree_with_timm_imagenet_info():
    from timm.data import ImageNetInfo

    info = ImageNetInfo("imagenet-1k")
    assert builtin_labels("imagenet-1k") == [info.index_to_description(i) for i in range(1000)]


def test_imagenet_21k_names_follow_google_ordering():
    from timm.data import ImageNetInfo

    names = builtin_labels("imagenet-21k")
    assert len(names) == 21843
    info = ImageNetInfo("imagenet-21k-goog")
    assert [names[i] for i in (0, 1, 9000, 21842)] == [info.index_to_description(i) for i in (0, 1, 9000, 21842)]


def test_defaults_follow_the_class_count():
    assert resolve_labels(None, 1000)[281] == "tabby, tabby cat"
    assert len(resolve_labels(None, 21843)) == 21843
    assert resolve_labels(None, 10) is None  # indices
    # The record's own label set is used, but never for a head of another size.
    assert resolve_labels(None, 10, record_labels="imagenet-1k") is None
    # Class names stored in the record are the names; names given by the caller come first.
    assert resolve_labels(None, 2, record_labels=("cat", "dog")) == ["cat", "dog"]
    assert resolve_labels(["a", "b"], 2, record_labels=("cat", "dog")) == ["a", "b"]
    # A model without classes (a headless backbone) has no names.
    assert resolve_labels(None, 0) is None


def test_label_file_one_name_a_line(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_text("cat\ndog, puppy\n  bird \n\n", encoding="utf-8")
    assert read_label_file(path) == ["cat", "dog, puppy", "bird"]
    assert resolve_labels(path, 3) == ["cat", "dog, puppy", "bird"]
    assert resolve_labels(["a", "b"], 2) == ["a", "b"]


def test_label_count_must_match(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_text("cat\ndog\n")
    with pytest.raises(VitConvertError, match=r"labels file .*labels\.txt has 2 names but the model has 3 classes"):
        resolve_labels(path, 3)
    with pytest.raises(VitConvertError, match="imagenet-1k has 1000 classes but the model has 10"):
        resolve_labels("imagenet-1k", 10)
    with pytest.raises(VitConvertError, match="no such file"):
        resolve_labels(tmp_path / "missing.txt", 3)


def test_timm_is_located_not_imported():
    # find_spec on a top-level package reads no code of it; importing timm would cost seconds.
    code = ("import sys; from vitconvert.inference.labels import builtin_labels; "
            "n = builtin_labels('imagenet-1k'); print(len(n), 'timm' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}).stdout
    assert out.split() == ["1000", "False"]
