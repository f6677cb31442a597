"""Serving a weights file over HTTP: the ASGI app (`create_app`), its dynamic batcher, and a Ray Serve deployment
of the same app (`vitconvert serve`, `vitconvert serve --ray`)."""

from .app import create_app

__all__ = ["create_app"]
