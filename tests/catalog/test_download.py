"""`vitconvert.download` / `vitconvert download` against a local HTTP server (127.0.0.1 only)."""

from __future__ import annotations

import json

import pytest
from helpers.cli import vitconvert_cli
from helpers.manifest import (
    TINY_CONFIG,
    TINY_NAME,
    TINY_PATH,
    TINY_URL,
    FileServer,
    tiny_entry,
    tiny_npz_bytes,
    write_manifest,
)

import vitconvert
from vitconvert.catalog.cache import cache_dir, cached_weights
from vitconvert.catalog.download import cached_source, download, resolve_url
from vitconvert.catalog.manifest import load_manifest
from vitconvert.core.config import ViTConfig
from vitconvert.core.errors import VitConvertError

DATA = tiny_npz_bytes()
FAST = {"retries": 2, "backoff": 0.0, "timeout": 5.0}


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A private cache; $VITCONVERT_MIRROR is set per test once the server has a port."""
    monkeypatch.setenv("VITCONVERT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("VITCONVERT_MIRROR", raising=False)
    return tmp_path


def serve(monkeypatch, **kw) -> FileServer:
    server = FileServer({TINY_PATH: DATA}, **kw)
    monkeypatch.setenv("VITCONVERT_MIRROR", server.url)
    return server


def manifest(tmp_path, **overrides):
    return write_manifest(tmp_path / "manifest.json", tiny_entry(DATA, **overrides))


def leftovers(directory):
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def test_full_download(env, monkeypatch):
    m = manifest(env)
    with serve(monkeypatch) as server:
        path = download(TINY_NAME, convert=False, manifest=m, **FAST)
    assert path == cached_source(TINY_NAME) == cache_dir() / f"{TINY_NAME}.npz"
    assert path.read_bytes() == DATA
    assert leftovers(cache_dir()) == [path.name]  # no .part, lock or resume record left
    assert len(server.requests) == 1 and "Range" not in server.requests[0]
    with serve(monkeypatch) as server:  # cached: no second request
        assert download(TINY_NAME, convert=False, manifest=m, **FAST) == path
    assert server.requests == []


def test_interrupted_download_resumes_with_range(env, monkeypatch):
    m = manifest(env)
    with serve(monkeypatch, mode="drop_once") as server:
        path = download(TINY_NAME, convert=False, manifest=m, **FAST)
    assert path.read_bytes() == DATA
    first, second = server.requests
    assert "Range" not in first
    assert second["Range"] == f"bytes={len(DATA) // 2}-"
    assert second["If-Range"].startswith('"')  # the ETag of the first response


def test_resume_after_the_process_died(env, monkeypatch):
    """A .part left by an earlier run is continued, not restarted."""
    m = manifest(env)
    with serve(monkeypatch, mode="drop_once"), pytest.raises(VitConvertError, match="run again to resume"):
        download(TINY_NAME, convert=False, manifest=m, **{**FAST, "retries": 0})
    part = cache_dir() / f"{TINY_NAME}.npz.part"
    assert part.stat().st_size == len(DATA) // 2
    assert not cached_source(TINY_NAME).exists()
    with serve(monkeypatch) as server:
        path = download(TINY_NAME, convert=False, manifest=m, **FAST)
    assert path.read_bytes() == DATA
    assert server.requests[0]["Range"] == f"bytes={len(DATA) // 2}-"


def test_server_ignoring_range_restarts_cleanly(env, monkeypatch):
    m = manifest(env)
    with serve(monkeypatch, mode="drop_once"), pytest.raises(VitConvertError):
        download(TINY_NAME, convert=False, manifest=m, **{**FAST, "retries": 0})
    with serve(monkeypatch, mode="ignore_range") as server:
        path = download(TINY_NAME, convert=False, manifest=m, **FAST)
    assert path.read_bytes() == DATA
    assert "Range" in server.requests[0]  # asked to resume, got the whole file, used it whole


def test_timeout_is_retried(env, monkeypatch):
    m = manifest(env)
    with serve(monkeypatch, mode="stall_once", stall=1.0) as server:
        path = download(TINY_NAME, convert=False, manifest=m, **{**FAST, "timeout": 0.2})
    assert path.read_bytes() == DATA
    assert len(server.requests) == 2


@pytest.mark.parametrize("field, value, message", [
    ("sha256", "0" * 64, "sha256 mismatch"),
    ("size_bytes", len(DATA) + 1, "manifest says"),
])
def test_checksum_or_size_mismatch_is_refused(env, monkeypatch, field, value, message):
    m = manifest(env, **{field: value})
    with serve(monkeypatch), pytest.raises(VitConvertError, match=message) as e:
        download(TINY_NAME, convert=False, manifest=m, **FAST)
    assert "refus" in str(e.value)
    assert leftovers(cache_dir()) == []  # neither the final name nor a partial file


def test_unknown_checksums_are_accepted(env, monkeypatch):
    m = manifest(env, sha256=None, size_bytes=None)
    with serve(monkeypatch):
        assert download(TINY_NAME, convert=False, manifest=m, **FAST).read_bytes() == DATA


def test_server_error_is_retried_then_reported(env, monkeypatch):
    m = manifest(env)
    with serve(monkeypatch, mode="error500") as server, pytest.raises(
            VitConvertError, match=r"failed after 3 attempts in a row: HTTP 500") as e:
        download(TINY_NAME, convert=False, manifest=m, **FAST)
    assert len(server.requests) == 3  # 1 + retries
    assert "127.0.0.1" in str(e.value)
    assert leftovers(cache_dir()) == []


def test_not_found_is_not_retried(env, monkeypatch):
    m = manifest(env, url="https://storage.googleapis.com/vit_models/test/missing.npz")
    with serve(monkeypatch) as server, pytest.raises(VitConvertError, match="HTTP 404"):
        download(TINY_NAME, convert=False, manifest=m, **FAST)
    assert len(server.requests) == 1


def test_connection_refused_is_reported(env, monkeypatch):
    m = manifest(env)
    server = FileServer({})
    port_url = server.url
    server.httpd.server_close()  # nothing listens there now
    monkeypatch.setenv("VITCONVERT_MIRROR", port_url)
    with pytest.raises(VitConvertError, match="cannot connect"):
        download(TINY_NAME, convert=False, manifest=m, **{**FAST, "retries": 1})


def test_out_and_force(env, monkeypatch):
    m = manifest(env)
    out = env / "mine.npz"
    out.write_bytes(b"keep me")
    with serve(monkeypatch):
        with pytest.raises(VitConvertError, match="exists; pass --force"):
            download(TINY_NAME, out=out, convert=False, manifest=m, **FAST)
        assert out.read_bytes() == b"keep me"
        assert download(TINY_NAME, out=out, convert=False, force=True, manifest=m, **FAST) == out
    assert out.read_bytes() == DATA


def test_unknown_name_suggests_close_names(env):
    with pytest.raises(VitConvertError, match="did you mean augreg-B16-in21k-ft-in1k-384"):
        download("augreg-B16-in21k-ft-in1k-348", convert=False)


def test_an_unresolvable_host_fails_at_once_with_the_way_to_proceed_offline(env, monkeypatch, capsys):
    """No DNS answer means no network (or a wrong host): four retries would only add 16 s of waiting."""
    m = manifest(env)
    monkeypatch.setenv("VITCONVERT_MIRROR", "http://nonexistent.invalid")  # .invalid never resolves (RFC 2606)
    sleeps = []
    monkeypatch.setattr("vitconvert.catalog.download.time.sleep", sleeps.append)
    with pytest.raises(VitConvertError) as e:
        download(TINY_NAME, manifest=m, retries=4, backoff=1.0)
    assert sleeps == []  # no retry
    message = str(e.value)
    assert message.startswith(f"cannot download {TINY_NAME}: cannot resolve the host name 'nonexistent.invalid'")
    assert message.endswith(f"To proceed offline, download {TINY_URL} by other means, then run "
                            f"`vitconvert jax2torch tiny.npz {cached_weights(TINY_NAME)}`")
    assert leftovers(cache_dir()) == []
    # The way it gives works: the manifest's preprocessing is found by the file's published name.
    from vitconvert.formats.weights_file import read_record

    monkeypatch.setenv("VITCONVERT_MANIFEST", str(m))
    (env / "tiny.npz").write_bytes(DATA)
    code, _, err = vitconvert_cli(capsys, "jax2torch", str(env / "tiny.npz"), str(cached_weights(TINY_NAME)), "-q")
    assert code == 0, err
    preprocess = read_record(cached_weights(TINY_NAME)).preprocess
    # tiny_entry's; without the manifest it would be Google's bilinear squash
    assert (preprocess.resize, preprocess.interpolation, preprocess.crop_pct) == ("crop", "bicubic", 0.9)


def test_download_by_the_timm_model_name(env, monkeypatch):
    m = manifest(env, timm_model="vit_test_patch16_32.augreg_in21k")
    with serve(monkeypatch):
        path = download("vit_test_patch16_32.augreg_in21k", convert=False, manifest=m, **FAST)
    assert path == cached_source(TINY_NAME)  # stored under the entry's own name
    assert path.read_bytes() == DATA


def test_progress_and_status_callbacks(env, monkeypatch):
    m = manifest(env)
    progress, status = [], []
    with serve(monkeypatch, mode="drop_once"):
        path = download(TINY_NAME, convert=False, manifest=m, progress=lambda *a: progress.append(a),
                        status=status.append, **FAST)
    half = len(DATA) // 2
    assert progress[0] == (0, len(DATA)) and progress[-1] == (len(DATA), len(DATA))
    assert (half, len(DATA)) in progress  # the resume starts where the dropped connection ended
    assert [d for d, _ in progress] == sorted(d for d, _ in progress)
    size = f"{len(DATA) / 2**20:.1f}"
    assert status == [
        f"{TINY_NAME}: downloading ({size} MiB)",
        f"{TINY_NAME}: connection closed after {half} of {len(DATA)} bytes; retrying in 0s (1/2)",
        f"{TINY_NAME}: downloading ({size} MiB), resuming at {half / 2**20:.1f} MiB",
        f"{TINY_NAME}: saved {path}",
    ]


def test_names_and_timm_models_both_find_their_entry():
    manifest = load_manifest()
    # a row of `vitconvert list`: NAME augreg-B16-in21k-ft-in1k-224, TIMM MODEL as below
    assert manifest.find("vit_base_patch16_224.augreg_in21k_ft_in1k").name == "augreg-B16-in21k-ft-in1k-224"
    for entry in manifest.checkpoints:
        assert manifest.find(entry.name) is entry
        if entry.timm_model:
            assert manifest.find(entry.timm_model) is entry


def test_a_timm_model_shared_by_two_entries_asks_for_a_name(tmp_path):
    shared = {"timm_model": "vit_test_patch16_32.augreg_in21k"}
    m = write_manifest(tmp_path / "m.json", tiny_entry(DATA, **shared), tiny_entry(DATA, name="other", **shared))
    with pytest.raises(VitConvertError, match=f"timm model of 2 checkpoints .*: {TINY_NAME}, other; give one"):
        load_manifest(m).find("vit_test_patch16_32.augreg_in21k")


def test_a_mistyped_timm_model_suggests_the_right_one():
    with pytest.raises(VitConvertError, match=r"did you mean vit_base_patch16_224\.augreg_in21k_ft_in1k\b"):
        load_manifest().find("vit_base_patch16_224.augreg_in21k_ft_in1")


def test_library_api():
    assert vitconvert.download is download
    assert "download" in vitconvert.__all__ and "load_manifest" in vitconvert.__all__


def test_mirror_replaces_the_bucket_root(monkeypatch):
    url = "https://storage.googleapis.com/vit_models/augreg/x.npz"
    monkeypatch.delenv("VITCONVERT_MIRROR", raising=False)
    assert resolve_url(url) == url
    monkeypatch.setenv("VITCONVERT_MIRROR", "http://127.0.0.1:9/mirror/")
    assert resolve_url(url) == "http://127.0.0.1:9/mirror/augreg/x.npz"
    assert resolve_url("https://example.org/x.npz") == "https://example.org/x.npz"


def test_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("VITCONVERT_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    assert cached_weights("n") == tmp_path / "c" / "n.safetensors"
    monkeypatch.delenv("VITCONVERT_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr("sys.platform", "linux")
    assert cache_dir() == tmp_path / "xdg" / "vitconvert"


# ---- the commands -----------------------------------------------------------------------------


def test_cli_download_no_convert(env, monkeypatch, capsys):
    monkeypatch.setenv("VITCONVERT_MANIFEST", str(manifest(env)))
    with serve(monkeypatch):
        code, out, err = vitconvert_cli(capsys, "download", TINY_NAME, "--no-convert", "--quiet")
    assert code == 0, err
    assert out.strip() == str(cached_source(TINY_NAME))
    assert err == ""
    assert cached_source(TINY_NAME).read_bytes() == DATA


def test_cli_download_by_timm_name_with_a_bar_on_a_terminal(env, monkeypatch, capsys):
    monkeypatch.setenv("VITCONVERT_MANIFEST", str(manifest(env, timm_model="vit_test_patch16_32.augreg_in21k")))
    monkeypatch.setattr("sys.stderr.isatty", lambda: True)
    with serve(monkeypatch):
        code, out, err = vitconvert_cli(capsys, "download", "vit_test_patch16_32.augreg_in21k", "--no-convert")
    assert code == 0, err
    assert out == f"{cached_source(TINY_NAME)}\n"
    size = f"{len(DATA) / 2**20:.1f}"
    lines = err.split("\n")
    assert lines[0] == f"{TINY_NAME}: downloading ({size} MiB)"
    assert lines[1].split("\r")[-1].split() == ["downloading", "[" + "#" * 24 + "]", "100%", f"{size}/{size}", "MiB"]
    assert lines[2:] == [f"{TINY_NAME}: saved {cached_source(TINY_NAME)}", ""]


def test_cli_unknown_name(capsys, monkeypatch):
    monkeypatch.delenv("VITCONVERT_MANIFEST", raising=False)
    code, _, err = vitconvert_cli(capsys, "download", "augreg-B16-384", "--no-convert")
    assert code == 1
    assert err.startswith("error: no checkpoint named 'augreg-B16-384'")
    assert "did you mean" in err and "augreg-B16-in21k-ft-in1k-384" in err


def test_cli_list_json_parses_and_filter_filters(capsys, monkeypatch):
    monkeypatch.delenv("VITCONVERT_MANIFEST", raising=False)
    code, out, _ = vitconvert_cli(capsys, "list", "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["schema_version"] == 1 and len(doc["checkpoints"]) > 40
    code, out, _ = vitconvert_cli(capsys, "list", "--json", "--filter", "R50L32 384")
    names = [e["name"] for e in json.loads(out)["checkpoints"]]
    assert names and all("R50L32" in n and "384" in n for n in names)
    code, out, _ = vitconvert_cli(capsys, "list", "--filter", "vit_base_patch16_384.augreg_in21k")
    lines = out.strip().splitlines()
    assert lines[0].split()[:3] == ["NAME", "ARCH", "RES"]
    assert [ln.split()[0] for ln in lines[1:]] == ["augreg-B16-in21k-ft-in1k-384-timm"]
    code, out, err = vitconvert_cli(capsys, "list", "--filter", "no-such-thing")
    assert code == 0 and out == "" and "no checkpoint matches" in err


# ---- the conversion step (needs the JAX converter, merged separately) --------------------------


def test_download_and_convert(env, monkeypatch):
    from vitconvert.formats.weights_file import read_record

    m = manifest(env)
    with serve(monkeypatch):
        path = download(TINY_NAME, manifest=m, **FAST)
    assert path == cached_weights(TINY_NAME)
    record = read_record(path)
    assert record.config == ViTConfig.from_dict(TINY_CONFIG)
    assert record.preprocess.resize == "crop" and record.preprocess.crop_pct == 0.9
    assert record.labels is None
    assert sorted(leftovers(cache_dir())) == sorted([f"{TINY_NAME}.npz", f"{TINY_NAME}.safetensors"])


# What the file cannot show comes from the entry: how its positions are resized (FlexiViT's files), and the
# published image size where the stored grid fixes only the patches (So400m/14 at 384: 27 x 14 = 378).
# The tiny file stores a 2x2 grid of 16 px patches (32 px); 40 px has the same grid (2 x 16 + 8 unread px).
ENTRY_KNOWS = {
    "pos_resize flexivit": ({"pos_resize": "flexivit"}, 32, "position embeddings resized 'flexivit' at other "
                            f"sizes, as the published checkpoint '{TINY_NAME}' is run"),
    "a size the patches do not tile": (
        {"img_size": [40, 40]}, 40, "image size 40x40 as published; the stored 2x2 position grid alone would say "
        "32x32 (the patch embedding never reads the last 8 px)"),
}


@pytest.mark.parametrize("case", list(ENTRY_KNOWS))
def test_download_records_what_only_the_entry_knows(env, monkeypatch, case):
    from vitconvert.formats.weights_file import read_record

    change, size, note = ENTRY_KNOWS[case]
    config = {**TINY_CONFIG, **change}
    pre = {"size": [size, size], "resize": "crop", "crop_pct": 0.9, "interpolation": "bicubic",
           "mean": [0.5] * 3, "std": [0.5] * 3}
    m = manifest(env, config=config, train_resolution=size, preprocess=pre)
    with serve(monkeypatch):
        path = download(TINY_NAME, manifest=m, **FAST)
    record = read_record(path)
    assert record.config == ViTConfig.from_dict(config)  # download's own check passed, and this is what it wrote
    assert note in record.notes


def test_download_refuses_a_file_whose_grid_is_not_the_entrys(env, monkeypatch):
    # 48 px is a 3x3 grid: the file's 2x2 is another model, whatever the entry calls its size.
    pre = {"size": [48, 48], "resize": "crop", "crop_pct": 0.9, "interpolation": "bicubic",
           "mean": [0.5] * 3, "std": [0.5] * 3}
    m = manifest(env, config={**TINY_CONFIG, "img_size": [48, 48]}, train_resolution=48, preprocess=pre)
    with serve(monkeypatch), pytest.raises(VitConvertError, match=r"img_size: manifest \[48, 48\], file \[32, 32\]"):
        download(TINY_NAME, manifest=m, **FAST)
    assert not cached_weights(TINY_NAME).exists()
