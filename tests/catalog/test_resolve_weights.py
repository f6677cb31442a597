"""Which weights file vitpredict uses: --weights, else --model from the cache, else $VITCONVERT_WEIGHTS."""

from __future__ import annotations

import pytest

from vitconvert.catalog.resolve import resolve_weights
from vitconvert.core.errors import VitConvertError


def test_resolve_order(monkeypatch, tmp_path):
    given, env = tmp_path / "given.safetensors", tmp_path / "env.safetensors"
    given.write_bytes(b"x")
    env.write_bytes(b"x")
    monkeypatch.setenv("VITCONVERT_WEIGHTS", str(env))
    assert resolve_weights(given) == given  # an explicit file wins over the environment
    assert resolve_weights() == env
    with pytest.raises(VitConvertError, match="not both"):
        resolve_weights(given, "name")


def test_cached_model(monkeypatch, tmp_path):
    monkeypatch.setenv("VITCONVERT_CACHE", str(tmp_path))
    (tmp_path / "vit-x.safetensors").write_bytes(b"x")
    assert resolve_weights(model="vit-x") == tmp_path / "vit-x.safetensors"
    known = "augreg-B16-in21k-ft-in1k-384"  # in the bundled manifest
    with pytest.raises(VitConvertError,
                       match=rf"'{known}' is not in the cache .*run `vitconvert download {known}` first"):
        resolve_weights(model=known)


def test_a_mistyped_model_name_suggests_the_closest_instead_of_a_download_that_would_fail(monkeypatch, tmp_path):
    import difflib

    from vitconvert.catalog.manifest import load_manifest

    monkeypatch.setenv("VITCONVERT_CACHE", str(tmp_path))
    typo = "augreg-B16-in21k-ft-in1k-38"
    closest = difflib.get_close_matches(typo, load_manifest().names, n=1)[0]  # the reference: difflib itself
    assert closest == "augreg-B16-in21k-ft-in1k-384"
    with pytest.raises(VitConvertError) as e:
        resolve_weights(model=typo)
    message = str(e.value)
    assert "nor is it a name `vitconvert download` knows; did you mean augreg-B16-in21k-ft-in1k-384," in message
    assert "vitconvert download augreg" not in message and f"download {typo}" not in message


@pytest.mark.parametrize("name", ["", "../evil", "a/b", ".hidden"])
def test_model_names_are_file_names_not_paths(name):
    with pytest.raises(VitConvertError, match="invalid model name"):
        resolve_weights(model=name)


def test_missing_files_say_where_they_came_from(monkeypatch, tmp_path):
    monkeypatch.setenv("VITCONVERT_WEIGHTS", str(tmp_path / "missing.safetensors"))
    with pytest.raises(VitConvertError, match=r"^\$VITCONVERT_WEIGHTS .*missing\.safetensors does not exist; "
                                              r"to get a weights file, convert one with"):
        resolve_weights()
    with pytest.raises(VitConvertError, match=r"^weights file .* is a directory"):
        resolve_weights(tmp_path)
