"""The app on uvicorn, in this process: bound where asked, stopped gracefully by SIGTERM.

On SIGTERM (or Ctrl-C) uvicorn stops accepting connections, answers every request it has accepted, then
runs the app's shutdown (the batcher finishes its queue). uvicorn then raises the signal again, for the
default action; for SIGTERM that action would end the process with status 143 after a clean stop, so here
it is a no-op and the process exits 0, as a service manager expects of a clean stop.
"""

from __future__ import annotations

import signal
import socket
from types import FrameType

import uvicorn
from starlette.types import ASGIApp

from ..core.errors import VitConvertError


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to host:port (port 0: any free one), so that a port in use is one clear error."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)  # from now on connections wait in the backlog until uvicorn takes them
    except OSError as e:
        sock.close()
        raise VitConvertError(f"cannot listen on {host}:{port} ({e.strerror or e})") from None
    return sock


def run_server(app: ASGIApp, sock: socket.socket) -> None:
    """Serve `app` on `sock` (from `listen`) until SIGTERM or Ctrl-C."""
    host, port = sock.getsockname()[:2]
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, lifespan="on",
                            timeout_graceful_shutdown=None)
    previous = signal.signal(signal.SIGTERM, _stopped)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        signal.signal(signal.SIGTERM, previous)
        sock.close()


def _stopped(sig: int, frame: FrameType | None) -> None:
    """uvicorn's re-raised SIGTERM, after its graceful shutdown: nothing left to do."""
