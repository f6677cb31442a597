"""Test helpers for the manifest and download tests: a tiny vit_jax .npz, a one-entry manifest, and
a local HTTP server (127.0.0.1 only) that supports Range and can misbehave on request."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import re
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from typing_extensions import Self

TINY_NAME = "tiny-test-B16"
TINY_URL = "https://storage.googleapis.com/vit_models/test/tiny.npz"
TINY_PATH = "/test/tiny.npz"  # what the server sees once $VITCONVERT_MIRROR replaces the bucket
# A one-block ViT: 32 px, patch 16 (2x2 grid), width 8, 2 heads, MLP 16, 10 classes.
TINY_CONFIG = {
    "img_size": [32, 32], "patch_size": 16, "in_chans": 3, "embed_dim": 8, "depth": 1,
    "num_heads": 2, "mlp_dim": 16, "num_classes": 10, "pool": "token", "fc_norm": False,
    "representation_size": None, "distilled": False, "qkv_bias": True, "ln_eps": 1e-06,
    "act": "gelu_tanh", "no_embed_class": False, "hybrid_layers": None,
}


def tiny_npz_bytes(seed: int = 0) -> bytes:
    """Random arrays with the published vit_jax key layout (old module numbering)."""
    rng = np.random.default_rng(seed)
    D, H, M, K, p, n = 8, 2, 16, 10, 16, 5

    def a(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape).astype(np.float32)

    blk = "Transformer/encoderblock_0/"
    att = blk + "MultiHeadDotProductAttention_1/"
    arrays = {
        "embedding/kernel": a(p, p, 3, D), "embedding/bias": a(D),
        "cls": a(1, 1, D), "Transformer/posembed_input/pos_embedding": a(1, n, D),
        blk + "LayerNorm_0/scale": a(D), blk + "LayerNorm_0/bias": a(D),
        **{att + f"{q}/kernel": a(D, H, D // H) for q in ("query", "key", "value")},
        **{att + f"{q}/bias": a(H, D // H) for q in ("query", "key", "value")},
        att + "out/kernel": a(H, D // H, D), att + "out/bias": a(D),
        blk + "LayerNorm_2/scale": a(D), blk + "LayerNorm_2/bias": a(D),
        blk + "MlpBlock_3/Dense_0/kernel": a(D, M), blk + "MlpBlock_3/Dense_0/bias": a(M),
        blk + "MlpBlock_3/Dense_1/kernel": a(M, D), blk + "MlpBlock_3/Dense_1/bias": a(D),
        "Transformer/encoder_norm/scale": a(D), "Transformer/encoder_norm/bias": a(D),
        "head/kernel": a(D, K), "head/bias": a(K),
    }
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def tiny_entry(data: bytes, **overrides: object) -> dict:
    entry = {
        "name": TINY_NAME, "url": TINY_URL, "format": "jax-npz/vit_jax", "family": "augreg",
        "arch": "B/16", "config": dict(TINY_CONFIG), "train_resolution": 32, "num_classes": 10,
        "labels": None,
        "preprocess": {"size": [32, 32], "resize": "crop", "crop_pct": 0.9, "interpolation": "bicubic",
                       "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
        "preprocess_source": "google", "act": "gelu_tanh", "head_is_zero": False, "timm_model": None,
        "top1": None, "top1_source": None, "upstream": None,
        "size_bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(), "notes": ["test"],
    }
    entry.update(overrides)
    return entry


def write_manifest(path: Path, *entries: dict) -> Path:
    path.write_text(json.dumps({"schema_version": 1, "checkpoints": list(entries)}))
    return path


class FileServer:
    """Serves `files` (URL path -> bytes) on 127.0.0.1 with Range, ETag and If-Range support.

    mode: 'ok'; 'drop_once' (the first response sends half the body, then closes the connection);
    'error500' (every request fails); 'ignore_range' (always the whole file, status 200);
    'stall_once' (the first request waits `stall` seconds before answering).
    """

    def __init__(self, files: dict[str, bytes], mode: str = "ok", stall: float = 1.0) -> None:
        self.files, self.mode, self.stall = files, mode, stall
        self.requests: list[dict[str, str]] = []
        self._first = True
        self._lock = threading.Lock()
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                owner._handle(self)

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: object, client_address: object) -> None:
                pass  # a client that hung up on purpose (timeouts) is not news

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02},
                                       daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _handle(self, h: http.server.BaseHTTPRequestHandler) -> None:
        with self._lock:
            self.requests.append({"path": h.path, **{k: v for k, v in h.headers.items()}})
            first, self._first = self._first, False
        if self.mode == "error500":
            h.send_error(500, "Internal Server Error")
            return
        if self.mode == "stall_once" and first:
            time.sleep(self.stall)
        data = self.files.get(h.path)
        if data is None:
            h.send_error(404, "Not Found")
            return
        etag = '"' + hashlib.sha1(data).hexdigest() + '"'
        start = 0
        m = re.fullmatch(r"bytes=(\d+)-", h.headers.get("Range") or "")
        if_range = h.headers.get("If-Range")
        if m and self.mode != "ignore_range" and (if_range is None or if_range == etag):
            start = int(m.group(1))
            if start >= len(data):
                h.send_response(416)
                h.send_header("Content-Range", f"bytes */{len(data)}")
                h.send_header("Content-Length", "0")
                h.end_headers()
                return
            h.send_response(206)
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            h.send_response(200)
        h.send_header("Content-Length", str(len(data) - start))
        h.send_header("ETag", etag)
        h.end_headers()
        body = data[start:]
        if self.mode == "drop_once" and first:
            h.wfile.write(body[: len(body) // 2])
            h.wfile.flush()
            h.close_connection = True
            return
        h.wfile.write(body)
