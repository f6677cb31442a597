"""`vitconvert serve` as a real process on 127.0.0.1, for the tests that talk to it over HTTP."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = Path("/work/shared/images")  # the sample photos the issue names; tests/data's when it is not there
URL = re.compile(r"serving .* on (http://[\d.]+:\d+) ")


def sample_photos() -> list[Path]:
    folder = SAMPLES if SAMPLES.is_dir() else ROOT / "tests" / "data"
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".png"))


@dataclass
class Server:
    process: subprocess.Popen
    url: str
    stderr: list[str] = field(default_factory=list)  # every line it wrote, as it writes them

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM, then its exit status."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)


def server_env() -> dict[str, str]:
    """The server's environment: this checkout first on the path, one torch thread unless told otherwise."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}


@contextlib.contextmanager
def running_server(weights: Path, *args: str, start_timeout: float = 120) -> Iterator[Server]:
    """`vitconvert serve WEIGHTS ARGS...` started (on a free port unless ARGS has --port), its URL read from
    the line it says at start; killed at the end if still running."""
    port = [] if "--port" in args else ["--port", "0"]
    process = subprocess.Popen([sys.executable, "-m", "vitconvert", "serve", str(weights), *port, *args],
                               stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=server_env())
    lines: list[str] = []
    found = threading.Event()
    url: list[str] = []

    def read() -> None:
        for line in process.stderr:
            lines.append(line)
            if not url and (m := URL.search(line)):
                url.append(m.group(1))
                found.set()
        found.set()  # it ended without saying where

    threading.Thread(target=read, daemon=True).start()
    try:
        if not found.wait(start_timeout) or not url:
            raise AssertionError(f"the server did not start: {''.join(lines)}")
        server = Server(process, url[0], lines)
        wait_healthy(server.url)
        yield server
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def wait_healthy(url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.2)


def as_form(path: Path) -> dict:
    """The photo as the multipart field 'image', named by its path (so the answer names it as vitpredict does)."""
    return {"image": (str(path), path.read_bytes(), "application/octet-stream")}
