"""Write the Fashion-MNIST subset under tests/data/fashion-mnist as class-per-folder PNGs.

    apt-get install dataset-fashion-mnist      # Debian's copy of the dataset (MIT licence)
    python tests/data/make_fashion_mnist.py

The first TRAIN images of each class in the training set go to train/CLASS/, the first VAL of each
class in the test set to val/CLASS/ (file order: the subset is the same every time it is made).
28x28 grayscale PNGs, named by their index in the source file. Numpy and Pillow only.
"""

from __future__ import annotations

import gzip
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

SOURCE = Path("/usr/share/datasets/fashion-mnist")
OUT = Path(__file__).resolve().parent / "fashion-mnist"
TRAIN, VAL = 30, 10
# Label i's name (the dataset's README), spelled as a folder name.
CLASSES = ["tshirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle_boot"]


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (big-endian dims after a 4-byte magic whose last byte is the rank) as uint8."""
    data = gzip.decompress(path.read_bytes())
    rank = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(rank)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * rank).reshape(dims)


def write_split(prefix: str, split: str, per_class: int) -> None:
    images = read_idx(SOURCE / f"{prefix}-images-idx3-ubyte.gz")
    labels = read_idx(SOURCE / f"{prefix}-labels-idx1-ubyte.gz")
    for label, name in enumerate(CLASSES):
        folder = OUT / split / name
        folder.mkdir(parents=True)
        for index in np.flatnonzero(labels == label)[:per_class]:
            Image.fromarray(images[index], mode="L").save(folder / f"{index:05d}.png", optimize=True)


def main() -> None:
    if not SOURCE.is_dir():
        sys.exit(f"{SOURCE} not found: apt-get install dataset-fashion-mnist")
    shutil.rmtree(OUT, ignore_errors=True)
    write_split("train", "train", TRAIN)
    write_split("t10k", "val", VAL)


if __name__ == "__main__":
    main()
