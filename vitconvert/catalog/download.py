"""`download(name)`: a manifest entry to a verified local file, converted to our weights file.

Standard library HTTP only. A download goes to `<final>.part` and is renamed onto the final name
only once complete and verified; an interrupted one resumes with an HTTP Range request (If-Range
guards against the file having changed on the server). Server errors (5xx, 408, 429), timeouts and
dropped connections are retried with exponential backoff; other HTTP errors are reported at once, and
so is a host name that does not resolve (offline: retrying would only add waiting), with the way to
proceed without the network.

Progress goes to the caller's callbacks (`progress(done, total)`, `status(line)`); the library prints
nothing itself.

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
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..core.config import ViTConfig
from ..core.errors import VitConvertError
from ..formats.paths import check_output
from .cache import cache_dir, cached_weights
from .manifest import CheckpointEntry, Manifest, find

Progress = Callable[[int, int | None], None]  # (bytes done, total bytes or None if the server did not say)
Status = Callable[[str], None]  # one line of news: starting, resuming, retrying, saved, converting

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
             force: bool = False, *, progress: Progress | None = None, status: Status | None = None,
             manifest: Manifest | str | os.PathLike | None = None, retries: int = 4,
             backoff: float = 1.0, timeout: float = 60.0) -> Path:
    """Fetch the manifest checkpoint `name` and (by default) convert it to our weights file.

    `name` is an entry's name or its timm model (`vitconvert list` shows both). convert=True: the
    source goes to the cache, the weights file to `out` or `cache_dir()/<name>.safetensors`; returns
    the weights file. convert=False: the source goes to `out` or `cache_dir()/<name>.npz`; returns
    it. Files already in the cache are reused unless `force`; an existing `out` is replaced only with
    `force`. `progress(done, total)` is called as bytes arrive, `status(line)` with each step's news.
    retries / backoff (seconds, doubled each time) / timeout (seconds per network operation) tune
    the HTTP client.
    """
    entry = find(name, manifest)
    say = status or _silent
    dst = Path(out) if out is not None else (cached_weights if convert else cached_source)(entry.name)
    if out is None:
        if dst.is_file() and not force:
            say(f"{entry.name}: already {'converted' if convert else 'downloaded'}")
            return dst
        dst.parent.mkdir(parents=True, exist_ok=True)
    # Before any byte is fetched. A file in the cache gets this far only with `force`.
    check_output(dst, force or out is None)
    src = cached_source(entry.name) if convert else dst
    if convert and src.is_file() and not force:
        say(f"{entry.name}: using the cached download {src}")
    else:
        try:
            fetch(entry, src, force=force, progress=progress, status=status, retries=retries,
                  backoff=backoff, timeout=timeout)
        except _Unresolvable as e:
            weights = dst if convert else cached_weights(entry.name)
            raise VitConvertError(
                f"cannot download {entry.name}: {e}. To proceed offline, download {entry.url} by other "
                f"means, then run `vitconvert jax2torch {entry.filename} {weights}`") from None
    return convert_entry(entry, src, dst, force=force, status=status) if convert else dst


def convert_entry(entry: CheckpointEntry, src: Path, dst: Path, *, force: bool = False,
                  status: Status | None = None) -> Path:
    """Convert the downloaded `src` of `entry` to our weights file `dst` (atomically), with the
    manifest's preprocessing and label set, and check that it is the architecture the manifest says."""
    from ..conversion.pipeline import convert
    from ..formats.safetensors_file import atomic_output

    (status or _silent)(f"{entry.name}: converting to {dst}")
    # The final name appears only once the file is known to hold the manifest's architecture.
    with atomic_output(dst, force=force) as tmp:
        # The entry as the catalog: the converter takes from it what the file cannot show (how its positions
        # are resized, the authors' image size) and names it in the record; no other entry that shares the
        # file name can answer instead.
        got = convert(src, tmp, source="jax", force=True, gelu="tanh", dtype="float32", preprocess=entry.preprocess,
                      labels=entry.labels, catalog=_Downloaded(entry)).config
        if got != entry.config:
            want, have = entry.config.to_dict(), got.to_dict()
            diff = ", ".join(f"{k}: manifest {want[k]!r}, file {have[k]!r}" for k in want if want[k] != have[k])
            raise VitConvertError(f"{src} does not hold {entry.name}: {diff}")
    return dst


@dataclass(frozen=True)
class _Downloaded:
    """The catalog of a download: whatever its local name (the cache names it after the entry), the file
    is the entry's published file."""

    entry: CheckpointEntry

    def match_file(self, filename: str, config: ViTConfig) -> CheckpointEntry | None:
        return Manifest((self.entry,)).match_file(self.entry.filename, config)

    def published_img_size(self, filename: str, config: ViTConfig) -> tuple[int, int] | None:
        return Manifest((self.entry,)).published_img_size(self.entry.filename, config)


def fetch(entry: CheckpointEntry, dst: Path, *, force: bool = False, progress: Progress | None = None,
          status: Status | None = None, retries: int = 4, backoff: float = 1.0,
          timeout: float = 60.0) -> Path:
    """Download `entry` to `dst` through `dst.part`, verify size / sha256 where the manifest
    knows them, then rename onto `dst`. On a mismatch nothing is left behind."""
    say = status or _silent
    url = resolve_url(entry.url)
    dst.parent.mkdir(parents=True, exist_ok=True)
    part = dst.with_name(dst.name + ".part")
    meta = dst.with_name(dst.name + ".part.json")
    with _lock(dst.with_name(dst.name + ".lock"), entry.name):
        if force:
            _remove(part, meta)
        _download(url, entry.url, part, meta, expected_size=entry.size_bytes, progress=progress or _silent,
                  say=say, label=entry.name, retries=retries, backoff=backoff, timeout=timeout)
        _verify(entry, part, meta, dst)
        os.replace(part, dst)
        _remove(meta)
    say(f"{entry.name}: saved {dst}")
    return dst


# ---- HTTP -------------------------------------------------------------------------------------


class _Retry(Exception):
    """A failure worth another attempt (the partial file is kept for resuming)."""


class _Unresolvable(VitConvertError):
    """The host name does not resolve: offline, or a wrong host. Not worth another attempt."""


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


def _download(url: str, ident: str, part: Path, meta: Path, *, expected_size: int | None,
              progress: Progress, say: Status, label: str, retries: int, backoff: float,
              timeout: float) -> None:
    resume = _Resume.read(meta)
    if part.exists() and (resume is None or resume.url != ident):
        _remove(part)  # a leftover we cannot vouch for: start over
        resume = None
    failures = 0
    while True:
        before = part.stat().st_size if part.exists() else 0
        try:
            _attempt(url, ident, part, meta, resume, expected_size=expected_size, progress=progress,
                     say=say, label=label, timeout=timeout)
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
            say(f"{label}: {e}; retrying in {delay:g}s ({failures}/{retries})")
            time.sleep(delay)


def _attempt(url: str, ident: str, part: Path, meta: Path, resume: _Resume | None, *,
             expected_size: int | None, progress: Progress, say: Status, label: str,
             timeout: float) -> None:
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
        if isinstance(reason, socket.gaierror):
            host = urllib.parse.urlsplit(url).hostname
            raise _Unresolvable(f"cannot resolve the host name {host!r} ({reason.strerror or reason}): "
                                f"no network, or a wrong host in the URL or ${MIRROR_ENV}") from None
        raise _Retry(f"cannot connect: {reason}") from None
    except ValueError as e:  # urllib: "unknown url type" and the like
        raise VitConvertError(f"download of {label}: bad URL {url!r} ({e})") from None

    with resp:
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
                say(f"{label}: the server sent the whole file again; starting over")
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
        size = f" ({total / 2**20:.1f} MiB)" if total else ""
        say(f"{label}: downloading{size}" + (f", resuming at {done / 2**20:.1f} MiB" if done else ""))
        progress(done, total)
        with open(part, mode) as f:
            try:
                while chunk := resp.read(CHUNK):
                    f.write(chunk)
                    done += len(chunk)
                    progress(done, total)
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


def _silent(*args: object) -> None:
    """A progress or status callback that reports nothing."""
