"""`download(name)`: a manifest entry to a verified local file, converted to our weights file.

Standard library HTTP only. A download goes to `<final>.part` and is renamed onto the final name
only once complete and verified; an interrupted one resumes with an HTTP Range request (If-Range
guards against the file having changed on the server). Server errors (5xx, 408, 429), timeouts and
dropped connections are retried with exponential backoff; other HTTP errors are reported at once.

$VITCONVERT_MIRROR replaces the bucket root https://storage.googleapis.com/vit_models of every
manifest URL (same layout below it), e.g. an internal mirror or http://127.0.0.1:8000 in tests.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import re
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..core.cache import cache_dir, cached_weights
from ..core.errors import VitConvertError
from .manifest import CheckpointEntry, Manifest, find

if TYPE_CHECKING:
    from typing_extensions import Self

MIRROR_ENV = "VITCONVERT_MIRROR"
BUCKET = "https://storage.googleapis.com/vit_models"
CHUNK = 1 << 20
MAX_BACKOFF = 60.0
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


def resolve_url(url: str) -> str:
    """The URL to fetch: `url` with the bucket root replaced by $VITCONVERT_MIRROR if set."""
    mirror = os.environ.get(MIRROR_ENV, "").strip()
    if mirror and (url == BUCKET or url.startswith(BUCKET + "/")):
        return mirror.rstrip("/") + url[len(BUCKET):]
    return url


def cached_source(name: str) -> Path:
    """The downloaded, unconverted checkpoint of entry `name` in the cache."""
    return cache_dir() / f"{name}.npz"


def download(name: str, out: str | os.PathLike | None = None, convert: bool = True,
             force: bool = False, progress: bool = True, *,
             manifest: Manifest | str | os.PathLike | None = None, retries: int = 4,
             backoff: float = 1.0, timeout: float = 60.0) -> Path:
    """Fetch the manifest checkpoint `name` and (by default) convert it to our weights file.

    convert=True: the source goes to the cache, the weights file to `out` or
    `cache_dir()/<name>.safetensors`; returns the weights file. convert=False: the source goes to
    `out` or `cache_dir()/<name>.npz`; returns it. Files already in the cache are reused unless
    `force`; an existing `out` is replaced only with `force`. `progress` shows a progress bar when
    stderr is a terminal. retries / backoff (seconds, doubled each time) / timeout (seconds per
    network operation) tune the HTTP client.
    """
    entry = find(name, manifest)
    out = Path(out) if out is not None else None
    log = _Log(progress)
    if convert:
        dst = out if out is not None else cached_weights(entry.name)
        if out is None and dst.is_file() and not force:
            log.say(f"{entry.name}: already converted")
            return dst
        _check_output(dst, force, explicit=out is not None)
        src = cached_source(entry.name)
        if not src.is_file() or force:
            fetch(entry, src, force=force, log=log, retries=retries, backoff=backoff, timeout=timeout)
        else:
            log.say(f"{entry.name}: using the cached download {src}")
        return convert_entry(entry, src, dst, force=force, log=log)
    dst = out if out is not None else cached_source(entry.name)
    if out is None and dst.is_file() and not force:
        log.say(f"{entry.name}: already downloaded")
        return dst
    _check_output(dst, force, explicit=out is not None)
    return fetch(entry, dst, force=force, log=log, retries=retries, backoff=backoff, timeout=timeout)


def convert_entry(entry: CheckpointEntry, src: Path, dst: Path, *, force: bool = False,
                  log: _Log | None = None) -> Path:
    """Convert the downloaded `src` of `entry` to our weights file `dst` (atomically), with the
    manifest's preprocessing and label set, and check that it is the architecture the manifest says."""
    from ..convert.jax import convert_jax
    from ..formats.safetensors_file import atomic_output

    log = log or _Log(False)
    log.say(f"{entry.name}: converting to {dst}")
    # The final name appears only once the file is known to hold the manifest's architecture.
    with atomic_output(dst, force=force) as tmp:
        got = convert_jax(src, tmp, force=True, gelu="tanh", dtype="float32",
                          preprocess=entry.preprocess, labels=entry.labels).config
        if got != entry.config:
            want, have = entry.config.to_dict(), got.to_dict()
            diff = ", ".join(f"{k}: manifest {want[k]!r}, file {have[k]!r}" for k in want if want[k] != have[k])
            raise VitConvertError(f"{src} does not hold {entry.name}: {diff}")
    return dst


def fetch(entry: CheckpointEntry, dst: Path, *, force: bool = False, log: _Log | None = None,
          retries: int = 4, backoff: float = 1.0, timeout: float = 60.0) -> Path:
    """Download `entry` to `dst` through `dst.part`, verify size / sha256 where the manifest
    knows them, then rename onto `dst`. On a mismatch nothing is left behind."""
    log = log or _Log(False)
    url = resolve_url(entry.url)
    dst.parent.mkdir(parents=True, exist_ok=True)
    part = dst.with_name(dst.name + ".part")
    meta = dst.with_name(dst.name + ".part.json")
    with _lock(dst.with_name(dst.name + ".lock"), entry.name):
        if force:
            _remove(part, meta)
        _download(url, entry.url, part, meta, expected_size=entry.size_bytes, log=log,
                  label=entry.name, retries=retries, backoff=backoff, timeout=timeout)
        _verify(entry, part, meta, dst)
        os.replace(part, dst)
        _remove(meta)
    log.say(f"{entry.name}: saved {dst}")
    return dst


# ---- HTTP -------------------------------------------------------------------------------------


class _Retry(Exception):
    """A failure worth another attempt (the partial file is kept for resuming)."""


@dataclass
class _Resume:
    """Beside a .part file: which file it is part of, and the server's version of it."""

    url: str  # the manifest URL (a mirror serving the same file may resume it)
    validator: str | None  # ETag or Last-Modified of the first response, for If-Range

    @classmethod
    def read(cls, path: Path) -> _Resume | None:
        try:
            d = json.loads(path.read_text())
            return cls(url=d["url"], validator=d.get("validator"))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def write(self, path: Path) -> None:
        path.write_text(json.dumps({"url": self.url, "validator": self.validator}))


def _download(url: str, ident: str, part: Path, meta: Path, *, expected_size: int | None, log: _Log,
              label: str, retries: int, backoff: float, timeout: float) -> None:
    resume = _Resume.read(meta)
    if part.exists() and (resume is None or resume.url != ident):
        _remove(part)  # a leftover we cannot vouch for: start over
        resume = None
    failures = 0
    while True:
        before = part.stat().st_size if part.exists() else 0
        try:
            _attempt(url, ident, part, meta, resume, expected_size=expected_size, log=log,
                     label=label, timeout=timeout)
            return
        except _Retry as e:
            resume = _Resume.read(meta)
            now = part.stat().st_size if part.exists() else 0
            failures = 1 if now > before else failures + 1  # progress resets the count
            if failures > retries:
                raise VitConvertError(
                    f"download of {label} from {url} failed after {failures} attempts in a row: {e}"
                    + (f" ({now} bytes kept in {part}; run again to resume)" if now else "")) from None
            delay = min(backoff * 2 ** (failures - 1), MAX_BACKOFF)
            log.say(f"{label}: {e}; retrying in {delay:g}s ({failures}/{retries})")
            time.sleep(delay)


def _attempt(url: str, ident: str, part: Path, meta: Path, resume: _Resume | None, *,
             expected_size: int | None, log: _Log, label: str, timeout: float) -> None:
    from .. import __version__

    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": f"vitconvert/{__version__}", "Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
        if resume is not None and resume.validator:
            headers["If-Range"] = resume.validator
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as e:
        e.close()
        if e.code == 416 and have:  # nothing left to send: complete, or our part file is wrong
            total = _total_from_range(e.headers.get("Content-Range"))
            if total == have:
                return
            _remove(part)
            raise _Retry(f"server refused the resume at byte {have}; starting over") from None
        if e.code >= 500 or e.code in (408, 429):
            raise _Retry(f"HTTP {e.code} {e.reason}") from None
        hint = " (the file is not there; is the manifest or $VITCONVERT_MIRROR right?)" if e.code == 404 else ""
        raise VitConvertError(f"download of {label} from {url} failed: HTTP {e.code} {e.reason}{hint}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:  # incl. timeouts
        reason = e.reason if isinstance(e, urllib.error.URLError) else e
        raise _Retry(f"cannot connect: {reason}") from None
    except ValueError as e:  # urllib: "unknown url type" and the like
        raise VitConvertError(f"download of {label}: bad URL {url!r} ({e})") from None

    with resp, _Bar(log, label) as bar:
        status = resp.status
        if status == 206:
            m = _CONTENT_RANGE.fullmatch((resp.headers.get("Content-Range") or "").strip())
            if not m or int(m.group(1)) != have:
                _remove(part)
                raise _Retry("server answered the resume with an unexpected range; starting over")
            total = None if m.group(3) == "*" else int(m.group(3))
            mode = "ab"
        elif status == 200:
            if have:
                log.say(f"{label}: the server sent the whole file again; starting over")
            have = 0
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            mode = "wb"
            validator = resp.headers.get("ETag") or resp.headers.get("Last-Modified")
            _Resume(url=ident, validator=validator).write(meta)
        else:
            raise VitConvertError(f"download of {label} from {url}: unexpected HTTP {status}")
        if expected_size is not None and total is not None and total != expected_size:
            _remove(part, meta)
            raise VitConvertError(
                f"download of {label} from {url}: the server offers {total} bytes but the manifest "
                f"says {expected_size}; refusing it")
        done = have
        bar.start(done, total)
        with open(part, mode) as f:
            try:
                while chunk := resp.read(CHUNK):
                    f.write(chunk)
                    done += len(chunk)
                    bar.update(done)
            except (OSError, http.client.HTTPException) as e:  # timeouts, resets, IncompleteRead
                raise _Retry(f"connection lost after {done} bytes ({type(e).__name__}: {e})") from None
        if total is not None and done < total:
            raise _Retry(f"connection closed after {done} of {total} bytes")


def _total_from_range(value: str | None) -> int | None:
    m = re.fullmatch(r"bytes\s+\*/(\d+)", (value or "").strip())
    return int(m.group(1)) if m else None


def _verify(entry: CheckpointEntry, part: Path, meta: Path, dst: Path) -> None:
    size = part.stat().st_size
    if entry.size_bytes is not None and size != entry.size_bytes:
        _remove(part, meta)
        raise VitConvertError(
            f"{entry.name}: downloaded {size} bytes but the manifest says {entry.size_bytes}; "
            f"refused and removed (nothing saved as {dst})")
    if entry.sha256 is not None:
        digest = hashlib.sha256()
        with open(part, "rb") as f:
            while chunk := f.read(CHUNK * 4):
                digest.update(chunk)
        if digest.hexdigest() != entry.sha256:
            _remove(part, meta)
            raise VitConvertError(
                f"{entry.name}: sha256 mismatch (manifest {entry.sha256}, download "
                f"{digest.hexdigest()}); refused and removed (nothing saved as {dst})")


# ---- files ------------------------------------------------------------------------------------


def _check_output(dst: Path, force: bool, explicit: bool) -> None:
    if dst.is_dir():
        raise VitConvertError(f"output {dst} is a directory; give a file name")
    if explicit:
        if dst.exists() and not force:
            raise VitConvertError(f"output {dst} exists; pass --force (force=True) to replace it")
        if not dst.parent.is_dir():
            raise VitConvertError(f"output directory {dst.parent} does not exist")


def _remove(*paths: Path) -> None:
    for p in paths:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


@contextlib.contextmanager
def _lock(path: Path, label: str) -> Iterator[None]:
    """One download per destination at a time (POSIX advisory lock; no-op elsewhere)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise VitConvertError(
                f"another vitconvert is downloading {label} (lock {path}); wait for it") from None
        try:
            yield
        finally:
            _remove(path)


# ---- progress ---------------------------------------------------------------------------------


class _Log:
    """Status lines on stderr when enabled; the bar only on a terminal."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.tty = enabled and sys.stderr.isatty()

    def say(self, text: str) -> None:
        if self.enabled:
            print(text, file=sys.stderr, flush=True)


class _Bar:
    def __init__(self, log: _Log, label: str) -> None:
        self.log, self.label = log, label
        self.total: int | None = None
        self.t0 = self.last = 0.0
        self.start_bytes = 0
        self.drawn = False
        self.done = 0

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.drawn:
            self.update(self.done, force=True)  # the last state, not the last throttled one
            sys.stderr.write("\n")
            sys.stderr.flush()

    def start(self, done: int, total: int | None) -> None:
        self.total, self.start_bytes = total, done
        self.t0 = time.monotonic()
        if self.log.enabled and not self.log.tty:
            size = f" ({_mib(total)} MiB)" if total else ""
            self.log.say(f"{self.label}: downloading{size}" + (f", resuming at {_mib(done)} MiB" if done else ""))
        self.update(done, force=True)

    def update(self, done: int, force: bool = False) -> None:
        self.done = done
        if not self.log.tty:
            return
        now = time.monotonic()
        if not force and now - self.last < 0.1 and done != self.total:
            return
        self.last = now
        rate = (done - self.start_bytes) / max(now - self.t0, 1e-6) / 2**20
        if self.total:
            width = 30
            filled = int(width * done / self.total)
            text = (f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] {_mib(done)}/"
                    f"{_mib(self.total)} MiB {100 * done / self.total:5.1f}% {rate:6.1f} MiB/s")
        else:
            text = f"\r{self.label} {_mib(done)} MiB {rate:6.1f} MiB/s"
        sys.stderr.write(text)
        sys.stderr.flush()
        self.drawn = True


def _mib(n: int | None) -> str:
    return f"{(n or 0) / 2**20:.1f}"
