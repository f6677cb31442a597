"""Cold start to printed labels for one image: `vitpredict` against the script a timm user writes.

    python -m benchmarks.cold_start [--repeats 5] [--image examples/cat.jpg]

Each run is a fresh process: interpreter start, imports, weights, preprocessing, one forward
pass, the top-5 printed. Both read the same ViT-B/16 weights (random, full size), written once to
a temporary directory as our weights file; safetensors tensors are plain timm state-dict names,
so timm loads the same file with `load_state_dict`. Target: vitpredict at most 0.6x timm's time.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.common import ROOT, interleaved_medians, machine, markdown

# What a timm user writes for the same job (timm's documented inference recipe).
TIMM_SCRIPT = """
import sys

import timm
import torch
from PIL import Image
from safetensors.torch import load_file
from timm.data import ImageNetInfo, create_transform, resolve_data_config

model = timm.create_model("vit_base_patch16_224", pretrained=False)
model.load_state_dict(load_file(sys.argv[1]))
model.eval()
transform = create_transform(**resolve_data_config({}, model=model))
x = transform(Image.open(sys.argv[2]).convert("RGB")).unsqueeze(0)
with torch.inference_mode():
    probs = model(x).softmax(-1)[0]
info = ImageNetInfo()
for p, i in zip(*probs.topk(5)):
    print(f"{p.item() * 100:6.2f}%  {info.index_to_description(i.item())}")
"""


def write_b16(path: Path) -> Path:
    """Full-size ViT-B/16 with random weights and timm's preprocessing for its default tag."""
    import torch

    from vitconvert import Preprocess, VisionTransformer, ViTConfig, save_weights

    torch.manual_seed(0)
    save_weights(VisionTransformer(ViTConfig()).eval(), path, labels="imagenet-1k", force=True,
                 preprocess=Preprocess(size=(224, 224), resize="crop", crop_pct=0.9, interpolation="bicubic"))
    return path


def process(args: list[str]):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}

    def call() -> None:
        subprocess.run(args, check=True, stdout=subprocess.DEVNULL, env=env)
    return call


def run(image: Path, repeats: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        weights = write_b16(Path(tmp) / "vit-b16.safetensors")
        script = Path(tmp) / "timm_predict.py"
        script.write_text(TIMM_SCRIPT)
        return interleaved_medians({
            "vitpredict": process([sys.executable, "-m", "vitconvert.cli.predict", str(image),
                                   "--weights", str(weights)]),
            "timm script": process([sys.executable, str(script), str(weights), str(image)]),
        }, repeats, warmup=1)


def results_table(seconds: dict[str, float]) -> str:
    ratio = seconds["vitpredict"] / seconds["timm script"]
    return markdown([["", "seconds", "vs timm"],
                     ["vitpredict", f"{seconds['vitpredict']:.2f}", f"**{ratio:.2f}x**"],
                     ["timm script", f"{seconds['timm script']:.2f}", "1.00x"]])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--image", type=Path, default=ROOT / "examples" / "cat.jpg")
    args = ap.parse_args()
    seconds = run(args.image, args.repeats)
    ratio = seconds["vitpredict"] / seconds["timm script"]
    print(f"machine: {machine()}")
    print(f"ViT-B/16 (random weights), one image to printed top-5, whole process, "
          f"median of {args.repeats} interleaved runs")
    print(results_table(seconds))
    print(f"target <= 0.60x: {'met' if ratio <= 0.6 else 'NOT met'}")


if __name__ == "__main__":
    main()
