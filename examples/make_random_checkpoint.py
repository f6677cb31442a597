"""Writes examples/vit-tiny-random.npz: a small ViT with RANDOM weights in Google's published vit_jax layout.

It lets the quick start run on a fresh machine without downloading anything. Its predictions are
noise; for real ones convert a published checkpoint (see the README). numpy only; deterministic.

    python examples/make_random_checkpoint.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def checkpoint(width: int = 64, depth: int = 2, heads: int = 2, mlp: int = 256, patch: int = 16, size: int = 224,
               classes: int = 1000, seed: int = 0) -> dict[str, np.ndarray]:
    """Random float32 arrays under the vit_jax keys (the benchmarks use it for B/16 and L/16 too)."""
    rng = np.random.default_rng(seed)

    def w(*shape: int, scale: float | None = None) -> np.ndarray:
        scale = scale if scale is not None else shape[0] ** -0.5
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    dh = width // heads
    arrays = {
        "embedding/kernel": w(patch, patch, 3, width, scale=(patch * patch * 3) ** -0.5),
        "embedding/bias": w(width, scale=0.02),
        "cls": w(1, 1, width, scale=0.02),
        "Transformer/posembed_input/pos_embedding": w(1, 1 + (size // patch) ** 2, width, scale=0.02),
        "Transformer/encoder_norm/scale": 1 + w(width, scale=0.1),
        "Transformer/encoder_norm/bias": w(width, scale=0.02),
        "head/kernel": w(width, classes),
        "head/bias": w(classes, scale=0.02),
    }
    for i in range(depth):
        b = f"Transformer/encoderblock_{i}/"
        for ln in ("LayerNorm_0", "LayerNorm_2"):
            arrays[f"{b}{ln}/scale"] = 1 + w(width, scale=0.1)
            arrays[f"{b}{ln}/bias"] = w(width, scale=0.02)
        for n in ("query", "key", "value"):
            arrays[f"{b}MultiHeadDotProductAttention_1/{n}/kernel"] = w(width, heads, dh)
            arrays[f"{b}MultiHeadDotProductAttention_1/{n}/bias"] = w(heads, dh, scale=0.02)
        arrays[f"{b}MultiHeadDotProductAttention_1/out/kernel"] = w(heads, dh, width, scale=width ** -0.5)
        arrays[f"{b}MultiHeadDotProductAttention_1/out/bias"] = w(width, scale=0.02)
        arrays[f"{b}MlpBlock_3/Dense_0/kernel"] = w(width, mlp)
        arrays[f"{b}MlpBlock_3/Dense_0/bias"] = w(mlp, scale=0.02)
        arrays[f"{b}MlpBlock_3/Dense_1/kernel"] = w(mlp, width)
        arrays[f"{b}MlpBlock_3/Dense_1/bias"] = w(width, scale=0.02)
    return arrays


if __name__ == "__main__":
    out = Path(__file__).with_name("vit-tiny-random.npz")
    np.savez(out, **checkpoint())
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
