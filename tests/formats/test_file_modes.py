"""Files we write get the permissions any new file gets: 0o666 less the umask (as `touch`, Pillow's
PNGs or `open(path, 'w')` give), never a temporary file's private 0o600."""

from __future__ import annotations

import os
import stat

import pytest
from helpers.manifest import TINY_NAME, TINY_PATH, FileServer, tiny_entry, tiny_npz_bytes, write_manifest

from vitconvert.catalog.download import download
from vitconvert.conversion.jax import convert_jax

DATA = tiny_npz_bytes()


# umask -> the mode of a new file, written out rather than computed with the formula under test.
@pytest.fixture(params=[(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)],
                ids=["umask 022", "umask 077", "umask 002"])
def expected_mode(request):
    umask, mode = request.param
    old = os.umask(umask)
    try:
        yield mode
    finally:
        os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_a_plain_new_file_has_the_expected_mode(expected_mode, tmp_path):
    """The reference: what the system gives any new file under this umask."""
    (tmp_path / "plain").write_bytes(b"x")
    assert mode(tmp_path / "plain") == expected_mode


@pytest.mark.parametrize("replace", [False, True], ids=["new", "replacing a 0o600 file"])
def test_converted_file(expected_mode, tmp_path, replace):
    src, dst = tmp_path / "tiny.npz", tmp_path / "out.safetensors"
    src.write_bytes(DATA)
    if replace:
        dst.write_bytes(b"old")
        dst.chmod(0o600)
    convert_jax(src, dst, force=replace)
    assert mode(dst) == expected_mode


@pytest.mark.parametrize("convert", [False, True], ids=["npz only", "npz and converted"])
def test_downloaded_files(expected_mode, tmp_path, monkeypatch, convert):
    monkeypatch.setenv("VITCONVERT_CACHE", str(tmp_path / "cache"))
    manifest = write_manifest(tmp_path / "manifest.json", tiny_entry(DATA))
    with FileServer({TINY_PATH: DATA}) as server:
        monkeypatch.setenv("VITCONVERT_MIRROR", server.url)
        path = download(TINY_NAME, convert=convert, manifest=manifest, retries=0)
    written = sorted((tmp_path / "cache").iterdir())
    assert path in written and len(written) == (2 if convert else 1)
    assert {p.name: mode(p) for p in written} == {p.name: expected_mode for p in written}
