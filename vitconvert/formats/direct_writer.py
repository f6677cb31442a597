"""Writing a large new file straight to the disk (O_DIRECT), bypassing the page cache.

A buffered write copies every byte into freshly allocated page cache, which fsync then writes out:
that copy was the largest single cost of a conversion in a profile. Through O_DIRECT, bytes go from a
few reused, aligned staging blocks to the disk by DMA, on a second thread while the caller makes the
next tensor, and nothing is left for fsync but the metadata, in less time and CPU than the buffered
write (the timings, with their machine: benchmarks/RESULTS.md, "One-off timings"; docs/speed.md).
Where the file system refuses O_DIRECT
(tmpfs, some FUSE mounts), `open_writer` returns a buffered writer with the same interface.

O_DIRECT needs aligned memory, lengths and offsets: blocks are written whole, the last one padded
and the file truncated to its length afterwards. The first `keep` bytes (a header to be rewritten at
the end) are written last.
"""

from __future__ import annotations

import errno
import os
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

BLOCK = 8 << 20  # bytes per disk write: two staging blocks of this size are the writer's memory
PAGE = 4096  # the alignment O_DIRECT needs on the usual 512 B and 4 KiB sector disks


class CachedWriter:
    """A plain buffered file with the writer interface, for file systems that refuse O_DIRECT."""

    def __init__(self, path: Path) -> None:
        self._f = open(path, "wb")  # noqa: SIM115 (closed in close())

    def write(self, data: np.ndarray) -> None:
        self._f.write(data)

    def rewrite_start(self, data: bytes) -> None:
        end = self._f.tell()
        self._f.seek(0)
        self._f.write(data)
        self._f.seek(end)

    def finish(self) -> None:
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()


class DirectWriter:
    """Appends bytes through reused aligned blocks; each full block goes to the disk on a thread."""

    def __init__(self, fd: int, keep: int, align: int) -> None:
        self._fd, self._align = fd, align
        self._blocks = [_aligned(BLOCK, align), _aligned(BLOCK, align)]
        self._fill = 0  # bytes in the current block, self._blocks[0]
        self._offset = 0  # where the current block starts in the file
        self._rewritable = keep
        self._keep = -(-keep // align) * align  # the start written last, whole aligned pages
        self._kept: np.ndarray | None = None  # the start, once its block has gone
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="direct-write")
        self._pending: Future[None] | None = None
        if self._keep > BLOCK:
            raise ValueError("the start to keep must fit in one block")

    def write(self, data: np.ndarray) -> None:
        """Append `data`, a contiguous uint8 array."""
        while data.size:
            n = min(data.size, BLOCK - self._fill)
            self._blocks[0][self._fill:self._fill + n] = data[:n]
            self._fill += n
            data = data[n:]
            if self._fill == BLOCK:
                self._send(BLOCK)

    def rewrite_start(self, data: bytes) -> None:
        if len(data) > self._rewritable:
            raise ValueError("the rewritten start is longer than the start kept")
        start = self._kept if self._kept is not None else self._blocks[0]
        start[:len(data)] = np.frombuffer(data, np.uint8)

    def finish(self) -> None:
        """Write what is left (the tail padded to a page), the kept start last, and wait for the disk."""
        size = self._offset + self._fill
        self._send(-(-self._fill // self._align) * self._align, last=True)
        self._wait()
        if self._kept is not None:
            _pwrite_all(self._fd, self._kept, 0)
        os.ftruncate(self._fd, size)  # drop the tail's padding
        os.fsync(self._fd)

    def close(self) -> None:
        self._thread.shutdown(wait=True)  # before the descriptor is closed under it
        os.close(self._fd)

    def _send(self, length: int, last: bool = False) -> None:
        block, start = self._blocks[0], 0
        if self._offset == 0 and self._keep and not last:
            # The file's first block goes now but for its start (a header to be rewritten), which
            # waits in a copy until the end; a file of one block is written whole at the end.
            self._kept = _aligned(self._keep, self._align)
            self._kept[:] = block[:self._keep]
            start = self._keep
        self._wait()  # the other block's write, so that it can be refilled
        if length > start:
            self._pending = self._thread.submit(_pwrite_all, self._fd, block[start:length], self._offset + start)
        self._blocks.reverse()
        self._offset += self._fill
        self._fill = 0

    def _wait(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()  # the write's OSError (a full disk) is the caller's


def open_writer(path: Path, keep: int = 0) -> CachedWriter | DirectWriter:
    """A writer for the new, empty file `path`: direct where the file system allows it. `keep`: how many
    leading bytes `rewrite_start` may replace."""
    align = PAGE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_DIRECT)  # AttributeError: no O_DIRECT (macOS, Windows)
    except (AttributeError, OSError):
        return CachedWriter(path)
    try:
        align = max(PAGE, os.fstat(fd).st_blksize)
        if BLOCK % align or keep > BLOCK:
            raise OSError(errno.EINVAL, "unsupported alignment")
        _pwrite_all(fd, _aligned(align, align), 0)  # some file systems accept the flag but not the write
        os.ftruncate(fd, 0)
    except OSError:
        os.close(fd)
        return CachedWriter(path)
    return DirectWriter(fd, keep, align)


def _aligned(size: int, align: int) -> np.ndarray:
    raw = np.zeros(size + align, np.uint8)
    skip = -raw.ctypes.data % align
    return raw[skip:skip + size]


def _pwrite_all(fd: int, data: np.ndarray, offset: int) -> None:
    done = 0
    while done < data.size:
        done += os.pwrite(fd, data[done:], offset + done)
