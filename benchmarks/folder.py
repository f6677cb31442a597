"""`vitpredict` over a folder of 200 photos against the model alone, at the same batch size.

    python -m benchmarks.folder [--dtypes bfloat16 float32 float32-compile] [--rounds 1] [--batch 8]

The folder is made from the sample photos (benchmarks/images, tests/data): random crops, sizes from
about 150 to 1000 pixels, flips and quarter turns, mostly JPEG with some PNG, written to a temporary
directory. The weights are a ViT-B/16 with `realistic_random` weights, as our weights file.

Per dtype, each round times, interleaved:
- the model alone: `Predictor.batch_probabilities` on a ready batch, 200 images' worth;
- `Predictor.predict` over the folder, with no worker processes and with two;
- the whole `vitpredict DIR` process (interpreter start, imports, weights, the folder, JSON out),
  with its default workers (`default_workers`: none on a CPU whose cores torch's threads use).
Target: the folder at least 0.8x the model alone.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import PHOTOS, ROOT, machine, markdown, realistic_random

NUM_IMAGES = 200


def make_folder(folder: Path, n: int = NUM_IMAGES, seed: int = 0) -> list[Path]:
    """`n` varied images made from the sample photos, deterministically."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    photos = [Image.open(p).convert("RGB") for p in PHOTOS]
    paths = []
    for i in range(n):
        photo = photos[i % len(photos)]
        w, h = photo.size
        frac = rng.uniform(0.5, 1.0)
        cw, ch = max(16, int(w * frac)), max(16, int(h * rng.uniform(0.5, 1.0)))
        left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        image = photo.crop((left, top, left + cw, top + ch))
        long_side = int(rng.integers(150, 1000))
        scale = long_side / max(image.size)
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                             Image.Resampling.BILINEAR)
        if rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if rng.random() < 0.2:
            image = image.transpose(Image.Transpose.ROTATE_90)
        suffix = ".png" if i % 10 == 9 else ".jpg"
        path = folder / f"img{i:03d}{suffix}"
        image.save(path, **({"quality": 88} if suffix == ".jpg" else {}))
        paths.append(path)
    return paths


def write_weights(path: Path, res: int = 224) -> Path:
    """ViT-B/16 with `realistic_random` weights as our weights file (AugReg preprocessing, ImageNet-1k labels)."""
    import timm

    from vitconvert import Preprocess, ViTConfig, save_weights

    model = realistic_random(timm.create_model("vit_base_patch16_224", pretrained=False, img_size=res))
    save_weights(model.state_dict(), path, config=ViTConfig(img_size=(res, res)), labels="imagenet-1k",
                 preprocess=Preprocess(size=(res, res), resize="crop", crop_pct=0.9, interpolation="bicubic"),
                 force=True)
    return path


def run(dtypes: list[str], rounds: int, batch: int = 8) -> dict:
    import torch

    from vitconvert.inference.batches import default_workers
    from vitconvert.inference.predictor import Predictor

    default = default_workers(NUM_IMAGES, batch, "cpu")
    workers = default or 2  # timed besides none: the default when it starts any, else two
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    rows, top1 = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        paths = make_folder(folder)
        weights = write_weights(Path(tmp) / "b16.safetensors")
        for variant in dtypes:
            dtype, compiled = variant.removesuffix("-compile"), variant.endswith("-compile")
            predictor = Predictor(weights, dtype=dtype, compile=compiled)
            x = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(0))
            predictor.batch_probabilities(x)  # warm-up (and compiling, for -compile)

            def model_alone(predictor=predictor, x=x) -> None:
                for _ in range(-(-NUM_IMAGES // batch)):
                    predictor.batch_probabilities(x)

            def in_process(n: int, predictor=predictor) -> list:
                return predictor.predict(paths, top_k=1, batch_size=batch, workers=n)

            def process(dtype=dtype, compiled=compiled) -> list:
                out = subprocess.run([sys.executable, "-m", "vitconvert.cli.predict", str(folder), "--weights",
                                      str(weights), "--batch-size", str(batch), "--dtype", dtype, "--top", "1",
                                      "--json", *(["--compile"] if compiled else [])],
                                     check=True, capture_output=True, text=True, env=env).stdout
                return json.loads(out)

            times: dict[str, list[float]] = {"model": [], "serial": [], "workers": [], "process": []}
            for _ in range(rounds):
                for name, fn in (("model", model_alone), ("serial", lambda: in_process(0)),
                                 ("workers", lambda: in_process(workers)), ("process", process)):
                    start = time.perf_counter()
                    result = fn()
                    times[name].append(time.perf_counter() - start)
                    if name == "serial":
                        top1[variant] = [r.predictions[0].index for r in result]
                    elif name == "process":
                        assert [e["predictions"][0]["index"] for e in result] == top1[variant], "process != in-process"
            rows.append({"dtype": variant, **{k: NUM_IMAGES / statistics.median(v) for k, v in times.items()}})
            del predictor
    same = None
    if "float32" in top1 and "bfloat16" in top1:
        same = sum(a == b for a, b in zip(top1["float32"], top1["bfloat16"], strict=False))
    return {"rows": rows, "workers": workers, "default": default, "batch": batch, "rounds": rounds,
            "same_top1": same}


def text(result: dict) -> str:
    w, default = result["workers"], result["default"]
    assert default in (0, w), "the default is one of the two measured"
    key = "serial" if default == 0 else "workers"
    lines = [["dtype", "model alone", f"folder, no workers{' (default)' if default == 0 else ''}",
              f"folder, {w} workers{' (default)' if default == w else ''}", "vitpredict process, incl. start",
              "folder (default) / model"]]
    for r in result["rows"]:
        lines.append([r["dtype"], f"{r['model']:.2f}", f"{r['serial']:.2f} ({r['serial'] / r['model']:.2f}x)",
                      f"{r['workers']:.2f} ({r['workers'] / r['model']:.2f}x)",
                      f"{r['process']:.2f} ({r['process'] / r['model']:.2f}x)",
                      f"**{r[key] / r['model']:.2f}x**"])
    out = markdown(lines) + (f"\n\nimages/s over {NUM_IMAGES} images at batch {result['batch']}, ViT-B/16 at 224, "
                             f"median of {result['rounds']} round(s). The whole-process column also pays for "
                             "Python, imports and reading the weights once.")
    if result["same_top1"] is not None:
        out += (f" bfloat16 gives float32's top-1 on {result['same_top1']}/{NUM_IMAGES} of these images "
                "(realistic random weights, see the agreement table for what that shows).")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"],
                    choices=["bfloat16", "float32", "float32-compile"],
                    help="float32-compile: float32 with compile=True (vitpredict --compile)")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args()
    result = run(args.dtypes, args.rounds, args.batch)
    print(f"machine: {machine()}")
    print(text(result))


if __name__ == "__main__":
    main()
