"""Writes a ViT with RANDOM weights in Google's published vit_jax layout (.npz), e.g. the bundled
examples/vit-tiny-random.npz, which lets the quick start run on a fresh machine without downloading
anything. Its predictions are noise; for real ones convert a published checkpoint (see the README).
numpy only; the same options give the same arrays.

    python examples/make_random_checkpoint.py examples/vit-tiny-random.npz --force   # the bundled file
    python examples/make_random_checkpoint.py vit-b16-random.npz --size B/16
    python examples/make_random_checkpoint.py small.npz --width 128 --depth 4 --heads 4 --classes 10 --seed 1
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

# name: (width, depth, heads, mlp, patch), the published ViT sizes; 'tiny' is the bundled example's
SIZES = {
    "tiny": (64, 2, 2, 256, 16),
    "Ti/16": (192, 12, 3, 768, 16),
    "S/16": (384, 12, 6, 1536, 16),
    "B/16": (768, 12, 12, 3072, 16),
    "B/32": (768, 12, 12, 3072, 32),
    "L/16": (1024, 24, 16, 4096, 16),
}


def checkpoint(width: int = 64, depth: int = 2, heads: int = 2, mlp: int = 256, patch: int = 16, size: int = 224,
               classes: int = 1000, seed: int = 0) -> dict[str, np.ndarray]:
    """Random float32 arrays under the vit_jax keys."""
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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path, metavar="OUT.npz", help="the file to write")
    ap.add_argument("--size", choices=SIZES, default="tiny",
                    help="a published ViT size (width, depth, heads, MLP, patch); default tiny: 64, 2, 2, 256, 16")
    for name in ("width", "depth", "heads", "mlp", "patch"):
        ap.add_argument(f"--{name}", type=int, help=f"another {name} than --size's")
    ap.add_argument("--img-size", type=int, default=224, help="input size the position embeddings are for (224)")
    ap.add_argument("--classes", type=int, default=1000, help="classes of the head (1000)")
    ap.add_argument("--seed", type=int, default=0, help="random seed (0)")
    ap.add_argument("--force", action="store_true", help="replace OUT if it exists")
    args = ap.parse_args(argv)
    preset = dict(zip(("width", "depth", "heads", "mlp", "patch"), SIZES[args.size], strict=False))
    for name, value in preset.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.out.suffix != ".npz":
        ap.error(f"OUT must end in .npz (numpy would add it): {args.out}")
    if args.width % args.heads or args.img_size % args.patch:
        ap.error("--width must be a multiple of --heads, and --img-size of --patch")
    if args.out.exists() and not args.force:
        ap.error(f"{args.out} exists; pass --force to replace it")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    arrays = checkpoint(args.width, args.depth, args.heads, args.mlp, args.patch, args.img_size, args.classes,
                        args.seed)
    np.savez(args.out, **arrays)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB)", file=sys.stderr)


if __name__ == "__main__":
    main()
