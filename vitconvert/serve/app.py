"""The HTTP app: one of our weights files behind `POST /predict`, `POST /embed`, `GET /health` and `GET /model`.

`create_app` returns a Starlette (ASGI) app, so it runs on uvicorn (`vitconvert serve`), on Ray Serve
(`vitconvert serve --ray`, serve/ray.py) or mounted in another ASGI app. Its answers are `vitpredict`'s: the
model is a `Predictor`, each image is prepared by `Predictor.transform` and ranked by `Predictor.ranked`, and
an answer is the entry `vitpredict --json` prints for that image (`ImagePredictions.to_dict`). Requests that
arrive together run as one batch (batching.py).

A request's body is the image file itself, or a multipart/form-data form whose field 'image' (or 'file',
or its only field) holds it; multipart is parsed with the standard library's email parser, so no
python-multipart is needed. Every refusal is a 4xx answer `{"error": "one line"}`, and the other requests are
served as before.
"""

from __future__ import annotations

import contextlib
import email.parser
import email.policy
import json
import os
from collections.abc import AsyncIterator, Hashable, Sequence
from typing import Any

import torch
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from ..core.errors import VitConvertError
from ..inference.images import MAX_PIXELS
from ..inference.plan import PredictionPlan, plan_prediction
from ..inference.predictor import PREFIX_ARRAYS, ImagePredictions, Predictor
from ..model.vit import token_parts
from .batching import Batcher

# A body over this many bytes is refused before it is read whole (a photo is a few MB; the pixel limit,
# MAX_PIXELS, refuses a small file that would decode to too many pixels).
MAX_BYTES = 32 * 1024 * 1024
BODY_NAME = "<body>"  # an image's name in answers and errors when the request does not name it (multipart does)
PREDICT = "predict"  # the batcher's key for class probabilities; embeddings' keys say tokens and normalize


class RequestError(Exception):
    """A request refused with `status`; the message is the answer's one line."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def create_app(weights: str | os.PathLike | PredictionPlan, *, max_batch: int = 16, max_wait_ms: float = 5.0,
               classes: str | Sequence[str] | None = None, templates: str | Sequence[str] | None = None,
               device: str = "cpu", dtype: str = "float32",
               img_size: int | str | tuple[int, int] | None = None, labels: str | os.PathLike | None = None,
               max_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS, decode_threads: int = 2) -> Starlette:
    """The app serving `weights` (a file, or `plan_prediction`'s plan of it), its model loaded now.

    `max_batch` requests at most run as one forward, the first of them waiting at most `max_wait_ms` for
    the others; `decode_threads` threads decode images meanwhile. `classes` (and `templates`, default
    imagenet), as `vitconvert zeroshot` takes them: a two-tower file served as the zero-shot classifier
    built from it (refused for a file without a text tower). `device`, `dtype`, `img_size` and `labels`
    are `Predictor`'s.
    A body over `max_bytes`, or an image over `max_pixels`, is refused.
    """
    plan = weights if isinstance(weights, PredictionPlan) else plan_prediction(weights, img_size=img_size,
                                                                              labels=labels)
    with contextlib.ExitStack() as baked:
        if classes is not None:
            check_classes(plan)
            from ..zeroshot.classifier import ZeroShotRequest, zeroshot_classifier_file

            request = ZeroShotRequest(classes, templates or "imagenet")
            plan = plan_prediction(baked.enter_context(zeroshot_classifier_file(plan.path, request)),
                                   img_size=img_size)
        elif templates is not None:
            raise VitConvertError("templates fill in the names of classes; give classes too")
        predictor = Predictor(plan, device=device, dtype=dtype, max_pixels=max_pixels)  # loaded: the file may go
    batcher = Batcher(lambda key, batch: run_forward(predictor, key, batch), max_batch=max_batch,
                      max_wait_ms=max_wait_ms, decode_threads=decode_threads)
    server = _Server(predictor, batcher, max_bytes)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        batcher.start()
        yield
        await batcher.stop()  # uvicorn calls this once the requests in flight are answered

    app = Starlette(routes=[Route("/predict", server.predict, methods=["POST"]),
                            Route("/embed", server.embed, methods=["POST"]),
                            Route("/health", server.health, methods=["GET"]),
                            Route("/model", server.model, methods=["GET"])],
                    exception_handlers={HTTPException: _http_error, RequestError: _request_error,
                                        Exception: _server_error},
                    lifespan=lifespan)
    app.state.predictor, app.state.batcher = predictor, batcher
    return app


def check_classes(plan: PredictionPlan) -> None:
    """Zero-shot classes need a text tower to embed them."""
    if plan.record.text is None:
        raise VitConvertError(f"--classes needs a two-tower file (an image and a text tower, for zero-shot "
                              f"classification); {plan.path} holds an image model only")


def run_forward(predictor: Predictor, key: Hashable, batch: torch.Tensor) -> torch.Tensor:
    """The batch's class probabilities (key PREDICT) or embeddings (key (tokens, normalize)), as vitpredict
    computes them."""
    if key == PREDICT:
        return predictor.batch_probabilities(batch)
    tokens, normalize = key
    return predictor.batch_embeddings(batch, tokens=tokens, normalize=normalize)


class _Server:
    """The routes' work, on one predictor and batcher."""

    def __init__(self, predictor: Predictor, batcher: Batcher, max_bytes: int) -> None:
        self.predictor, self.batcher, self.max_bytes = predictor, batcher, max_bytes

    async def predict(self, request: Request) -> JSONResponse:
        top_k = _int_param(request, "top", 5)
        self._classes()
        name, inputs = await self._image(request)
        probabilities = await self.batcher.submit(PREDICT, inputs)
        return JSONResponse(ImagePredictions(name, self.predictor.ranked(probabilities[None], top_k)[0],
                                            kind=self.predictor.record.probability).to_dict())

    async def embed(self, request: Request) -> JSONResponse:
        tokens, normalize = _flag_param(request, "tokens"), _flag_param(request, "normalize")
        name, inputs = await self._image(request)
        embedding = await self.batcher.submit((tokens, normalize), inputs)
        prefix: dict[str, list] = {}
        if tokens:  # the patch tokens, and each kind of prefix token apart, as vitpredict --embed --tokens writes
            parts = token_parts(embedding[None], self.predictor.config)
            embedding = parts.patch_tokens[0]
            prefix = {name: t[0].tolist() for name, t in zip(PREFIX_ARRAYS, parts[:3], strict=True) if t is not None}
        return JSONResponse({"image": name, "embedding": embedding.tolist(), "shape": list(embedding.shape),
                             "dtype": "float32", "tokens": tokens, "normalized": normalize, **prefix})

    async def health(self, request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "max_batch": self.batcher.max_batch,
                             "max_wait_ms": self.batcher.max_wait * 1000, "batching": self.batcher.stats()})

    async def model(self, request: Request) -> JSONResponse:
        p = self.predictor
        return JSONResponse({"file": str(p.path), "img_size": list(p.preprocess.size), "device": str(p.device),
                             "classifies": _refusal(p.check_top_k) is None, **json.loads(p.record.to_json())})

    def _classes(self) -> None:
        refusal = _refusal(self.predictor.check_top_k)
        if refusal is not None:
            raise RequestError(400, refusal)

    async def _image(self, request: Request) -> tuple[str, torch.Tensor]:
        """The request's image, named, prepared on a decoding thread."""
        body = await self._body(request)
        content_type = request.headers.get("content-type", "")
        try:
            return await self.batcher.decode(_prepare, self.predictor, content_type, body)
        except VitConvertError as e:
            raise RequestError(400, str(e)) from None

    async def _body(self, request: Request) -> bytes:
        """The body, refused (413) once it passes `max_bytes`, before it is all read."""
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            raise RequestError(413, f"request body of {int(declared):,} bytes is over the limit of "
                                    f"{self.max_bytes:,} bytes")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_bytes:
                raise RequestError(413, f"request body over the limit of {self.max_bytes:,} bytes")
            chunks.append(chunk)
        if not size:
            raise RequestError(400, "empty request body: send an image file as the body, or as the field "
                                    "'image' of a multipart/form-data form")
        return b"".join(chunks)


def _prepare(predictor: Predictor, content_type: str, body: bytes) -> tuple[str, torch.Tensor]:
    name, data = _multipart_image(content_type, body) if content_type.startswith("multipart/") else (BODY_NAME, body)
    return name, predictor.transform(data, name)


def _multipart_image(content_type: str, body: bytes) -> tuple[str, bytes]:
    """(file name, bytes) of a form's field 'image' or 'file', or of its only field."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body)
    parts = list(message.iter_parts()) if message.is_multipart() else []
    named = {part.get_param("name", header="content-disposition"): part for part in parts}
    part = named.get("image") or named.get("file") or (parts[0] if len(parts) == 1 else None)
    if part is None:
        raise VitConvertError(f"multipart body has {len(parts)} fields but none named 'image' or 'file'")
    return part.get_filename() or BODY_NAME, part.get_payload(decode=True) or b""


def _refusal(check: Any) -> str | None:
    try:
        check()
    except VitConvertError as e:
        return str(e)
    return None


def _int_param(request: Request, name: str, default: int) -> int:
    value = request.query_params.get(name)
    if value is None:
        return default
    if not value.isdigit() or int(value) < 1:
        raise RequestError(400, f"?{name}= takes a whole number of at least 1, not {value!r}")
    return int(value)


def _flag_param(request: Request, name: str) -> bool:
    value = request.query_params.get(name, "0").lower()
    if value not in ("0", "1", "true", "false", ""):
        raise RequestError(400, f"?{name}= takes 1 or 0 (true or false), not {value!r}")
    return value in ("1", "true", "")


def error(status: int, message: str) -> JSONResponse:
    """The answer to a refused request: one line of JSON."""
    return JSONResponse({"error": " ".join(message.splitlines())}, status_code=status)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    what = {404: f"no route {request.url.path}; the routes are POST /predict, POST /embed, GET /health, GET /model",
            405: f"{request.url.path} does not take {request.method}"}
    response = error(exc.status_code, what.get(exc.status_code, exc.detail))
    if exc.headers:
        response.headers.update(exc.headers)
    return response


async def _request_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestError)
    return error(exc.status, str(exc))


async def _server_error(request: Request, exc: Exception) -> JSONResponse:
    return error(500, f"internal error: {type(exc).__name__}: {exc}")
