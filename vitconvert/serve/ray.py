"""The same app as a Ray Serve deployment: `replicas` copies of it behind Ray Serve's HTTP proxy.

Each replica builds the app from the weights file (`create_app`, with its own batcher), so a request is
answered exactly as `vitconvert serve` answers it; Ray Serve spreads requests over the replicas. The file is
read on the replica's node: on a cluster it must be at the same path on every node (a shared file system).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from typing import Any

from ..core.errors import VitConvertError


def deployment(weights: str | os.PathLike, *, replicas: int = 1, cpus_per_replica: float = 1.0,
               gpus_per_replica: float = 0.0, **app_options: Any) -> Any:
    """A bound Ray Serve application: `replicas` replicas of `create_app(weights, **app_options)`."""
    from ray import serve

    @serve.ingress()
    class VitServe:
        def __init__(self, weights: str, options: dict[str, Any]) -> None:
            self.weights, self.options = weights, options

        def __serve_build_asgi_app__(self) -> Any:
            from .app import create_app

            return create_app(self.weights, **self.options)

    return serve.deployment(VitServe, name="vitconvert", num_replicas=replicas,
                            ray_actor_options={"num_cpus": cpus_per_replica, "num_gpus": gpus_per_replica}
                            ).bind(os.fspath(weights), app_options)


def serve_on_ray(weights: str | os.PathLike, address: str | None, host: str, port: int, *, replicas: int = 1,
                 cpus_per_replica: float = 1.0, gpus_per_replica: float = 0.0,
                 announce: Callable[[str], None] | None = None,
                 **app_options: Any) -> None:
    """Run the deployment on Ray (`address`: a cluster's, or None for a local Ray started here) with its HTTP
    proxy on host:port, until SIGTERM or Ctrl-C; then take it down (Ray Serve drains the replicas'
    requests) and stop the local Ray, if this started it."""
    try:
        import ray
        from ray import serve
    except ImportError:
        raise VitConvertError("--ray needs Ray Serve: pip install 'vitconvert[serve-ray]'") from None
    logging.getLogger("ray.serve").setLevel(logging.ERROR)  # its INFO lines would bury the one we say
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    stop = threading.Event()
    previous: dict[int, Any] = {}
    try:
        serve.start(http_options={"host": host, "port": port}, logging_config={"log_level": "ERROR"})
        serve.run(deployment(weights, replicas=replicas, cpus_per_replica=cpus_per_replica,
                             gpus_per_replica=gpus_per_replica, **app_options),
                  name="vitconvert", route_prefix="/", blocking=False)
        # After ray.init, which puts its own SIGTERM handler in place (it aborts the process).
        previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
        if announce is not None:
            announce(f"http://{host}:{port}")
        while not stop.wait(0.5):  # a timed wait: the signal handler runs between waits
            pass
        serve.shutdown()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if started:
            ray.shutdown()
