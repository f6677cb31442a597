"""The direct (O_DIRECT) writer: the bytes on disk are exactly the bytes written, whatever the sizes and
block boundaries; a header may be rewritten at the end; a file system that refuses O_DIRECT gets a plain
buffered file; and a failed write on the writer's thread fails the whole write, leaving nothing behind.

The expected bytes are the chunks concatenated by Python, never another writer's output."""

from __future__ import annotations

import errno
import os

import numpy as np
import pytest
from safetensors.numpy import load_file

from vitconvert.formats import direct_writer
from vitconvert.formats.safetensors_file import TensorSpec, write_safetensors

BLOCK = 64 << 10  # small blocks, so that little data crosses many block boundaries


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch) -> None:
    monkeypatch.setattr(direct_writer, "BLOCK", BLOCK)


def direct(path, keep: int = 0) -> direct_writer.DirectWriter:
    path.touch()
    writer = direct_writer.open_writer(path, keep)
    if not isinstance(writer, direct_writer.DirectWriter):
        writer.close()
        pytest.skip(f"the file system of {path.parent} refuses O_DIRECT writes")
    return writer


def random_bytes(rng, n: int) -> np.ndarray:
    return rng.integers(0, 256, n, dtype=np.uint8)


@pytest.mark.parametrize("sizes", [
    [100], [4096], [BLOCK], [BLOCK + 1], [BLOCK - 10, 10], [3 * BLOCK], [300, 2 * BLOCK + 123, 5000, 0, 7],
], ids=["under a page", "a page", "a block", "a block and a byte", "a block in two", "three blocks", "mixed"])
@pytest.mark.parametrize("keep", [0, 100, 5000], ids=["keep none", "keep 100", "keep 5000"])
@pytest.mark.parametrize("rewrite", [False, True], ids=["as written", "start rewritten"])
def test_the_file_holds_exactly_the_bytes_written(tmp_path, sizes, keep, rewrite) -> None:
    rng = np.random.default_rng(len(sizes) * 1000 + keep)
    chunks = [random_bytes(rng, n) for n in sizes]
    expected = b"".join(c.tobytes() for c in chunks)
    writer = direct(tmp_path / "out", keep)
    try:
        for chunk in chunks:
            writer.write(chunk)
        if rewrite and keep:
            start = random_bytes(rng, min(keep, len(expected))).tobytes()
            writer.rewrite_start(start)
            expected = start + expected[len(start):]
        writer.finish()
    finally:
        writer.close()
    assert (tmp_path / "out").read_bytes() == expected


def test_a_rewrite_longer_than_the_start_kept_is_refused(tmp_path) -> None:
    writer = direct(tmp_path / "out", 10)
    try:
        writer.write(random_bytes(np.random.default_rng(0), 100))
        with pytest.raises(ValueError, match="longer than the start kept"):
            writer.rewrite_start(b"x" * 11)
    finally:
        writer.close()


def specs(rng) -> list[TensorSpec]:
    """A few tensors of awkward sizes, together several blocks."""
    arrays = {f"t{i}": rng.standard_normal(n).astype(np.float32) for i, n in enumerate([7, 40_000, 33, 70_001, 5])}
    return [TensorSpec(name, a.shape, lambda a=a: a) for name, a in arrays.items()], arrays


def refuse_direct_open(monkeypatch) -> None:
    real = os.open

    def no_direct(path, flags, *args):
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(path, flags, *args)

    monkeypatch.setattr(direct_writer.os, "open", no_direct)


def refuse_direct_writes(monkeypatch) -> None:
    """A file system that opens with O_DIRECT but fails the aligned probe write (as some FUSE mounts do)."""
    def failing(fd, data, offset):
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(direct_writer.os, "pwrite", failing)


def no_direct_flag(monkeypatch) -> None:
    """macOS and Windows: os has no O_DIRECT at all."""
    monkeypatch.delattr(direct_writer.os, "O_DIRECT")


@pytest.mark.parametrize("refuse", [refuse_direct_open, refuse_direct_writes, no_direct_flag],
                         ids=["open refused", "write refused", "no O_DIRECT in os"])
def test_a_file_system_without_o_direct_gets_a_buffered_file_with_the_same_bytes(tmp_path, monkeypatch,
                                                                                   refuse) -> None:
    direct(tmp_path / "probe").close()
    written, arrays = specs(np.random.default_rng(0))
    write_safetensors(tmp_path / "direct.safetensors", written, "float32", {"k": "v"},
                      final_metadata=lambda: {"k": "w"})
    refuse(monkeypatch)
    (tmp_path / "probe").touch()
    assert isinstance(direct_writer.open_writer(tmp_path / "probe"), direct_writer.CachedWriter)
    write_safetensors(tmp_path / "buffered.safetensors", written, "float32", {"k": "v"},
                      final_metadata=lambda: {"k": "w"})
    assert (tmp_path / "buffered.safetensors").read_bytes() == (tmp_path / "direct.safetensors").read_bytes()
    loaded = load_file(tmp_path / "buffered.safetensors")
    assert all(np.array_equal(loaded[k], a) for k, a in arrays.items())


def test_a_header_longer_than_a_block_gets_a_buffered_file(tmp_path) -> None:
    (tmp_path / "out").touch()
    writer = direct_writer.open_writer(tmp_path / "out", keep=BLOCK + 1)
    writer.close()
    assert isinstance(writer, direct_writer.CachedWriter)


def test_a_failed_write_on_the_writers_thread_fails_the_file_and_keeps_the_old_one(tmp_path, monkeypatch) -> None:
    """A full disk met by the third block's write (the probe is the first): the error reaches the caller,
    the old file is untouched and the temporary file is gone."""
    direct(tmp_path / "probe").close()
    (tmp_path / "probe").unlink()
    written, _ = specs(np.random.default_rng(0))
    dst = tmp_path / "out.safetensors"
    dst.write_bytes(b"old")
    real, calls = os.pwrite, []

    def full_disk(fd, data, offset):
        calls.append(offset)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data, offset)

    monkeypatch.setattr(direct_writer.os, "pwrite", full_disk)
    with pytest.raises(OSError, match="No space left on device"):
        write_safetensors(dst, written, "float32", {}, force=True)
    assert dst.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.safetensors"]
