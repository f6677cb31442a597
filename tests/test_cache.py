"""The cache of converted models, and how vitpredict finds its weights file."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from vitconvert.cache import cache_dir, cached_weights, resolve_weights
from vitconvert.errors import VitConvertError


def test_cache_dir_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("VITCONVERT_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    assert cached_weights("vit_base_patch16_224.augreg_in21k_ft_in1k") == \
        tmp_path / "c" / "vit_base_patch16_224.augreg_in21k_ft_in1k.safetensors"
    assert not (tmp_path / "c").exists()  # looking up never creates it


@pytest.mark.skipif(sys.platform in ("win32", "darwin"), reason="XDG layout")
def test_platform_cache_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("VITCONVERT_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_dir() == tmp_path / "vitconvert"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")  # XDG: relative paths are invalid
    assert cache_dir() == Path.home() / ".cache" / "vitconvert"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_dir() == Path.home() / ".cache" / "vitconvert"


@pytest.mark.parametrize("name", ["", "../evil", "a/b", ".hidden"])
def test_model_names_are_file_names(name):
    with pytest.raises(VitConvertError, match="invalid model name"):
        cached_weights(name)


def test_resolve_order(monkeypatch, tmp_path):
    given, env = tmp_path / "given.safetensors", tmp_path / "env.safetensors"
    given.write_bytes(b"x")
    env.write_bytes(b"x")
    monkeypatch.setenv("VITCONVERT_WEIGHTS", str(env))
    assert resolve_weights(given) == given  # an explicit file wins over the environment
    assert resolve_weights() == env
    with pytest.raises(VitConvertError, match="not both"):
        resolve_weights(given, "name")
    with pytest.raises(VitConvertError, match=r"\$VITCONVERT_WEIGHTS .*missing\.safetensors does not exist"):
        monkeypatch.setenv("VITCONVERT_WEIGHTS", str(tmp_path / "missing.safetensors"))
        resolve_weights()
    with pytest.raises(VitConvertError, match=r"weights file .* is a directory"):
        resolve_weights(tmp_path)
