"""Sharded transformers checkpoints, whole process: `vitconvert hf2torch` of a ViT-B/16 saved in shards (safetensors,
and the same shards as pickled .bin files) against the same model in one model.safetensors; peak RSS beside the
checkpoint's size. Needs transformers (the `hf` extra).

    python -m benchmarks.sharded [--repeats 3] [--shard-size 100MB]

The checkpoint is transformers' ViTModel (default config: ViT-B/16 at 224, with its pooler) with random weights,
written by save_pretrained once whole and once with max_shard_size; the .bin shards are the safetensors ones
re-saved with torch.save under pytorch_model.bin.index.json, as transformers before 5 wrote them. Every run is
a fresh process, measured by the conversion section's launcher; the floors are processes that import what the
conversions import (numpy and safetensors; torch too for the pickles) and convert nothing.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.common import machine, markdown
from benchmarks.conversion import measure

MAKE = """
import json, sys, torch, transformers
from pathlib import Path
from safetensors.torch import load_file
model = transformers.ViTModel(transformers.ViTConfig())
model.save_pretrained(sys.argv[1])
model.save_pretrained(sys.argv[2], max_shard_size=sys.argv[4])
src, dst = Path(sys.argv[2]), Path(sys.argv[3])
dst.mkdir()
(dst / "config.json").write_text((src / "config.json").read_text())
index = json.loads((src / "model.safetensors.index.json").read_text())
names = {s: s.replace("model-", "pytorch_model-").replace(".safetensors", ".bin")
         for s in set(index["weight_map"].values())}
for shard, name in names.items():
    torch.save(load_file(src / shard), dst / name)
index["weight_map"] = {k: names[v] for k, v in index["weight_map"].items()}
(dst / "pytorch_model.bin.index.json").write_text(json.dumps(index))
"""
# What the conversions import before reading a tensor: numpy alone for safetensors, torch too for pickles.
FLOORS = {"floor: imports, no torch": "import numpy, safetensors, vitconvert.cli, vitconvert.conversion.hf",
          "floor: imports with torch": "import numpy, safetensors, torch, vitconvert.cli, vitconvert.conversion.hf"}
FLOOR_OF = {"one model.safetensors": "floor: imports, no torch", "safetensors shards": "floor: imports, no torch",
            ".bin shards": "floor: imports with torch"}
# ViT-B/16's largest tensor: an MLP kernel, 3072 x 768 float32.
LARGEST_TENSOR_MIB = 3072 * 768 * 4 / 2 ** 20


def _size(folder: Path, pattern: str) -> tuple[int, float]:
    files = list(folder.glob(pattern))
    return len(files), sum(f.stat().st_size for f in files) / 2 ** 20


def run(repeats: int, shard_size: str) -> list[dict]:
    vitconvert = [sys.executable, "-m", "vitconvert", "hf2torch"]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        whole, shards, bins = folder / "whole", folder / "shards", folder / "bins"
        subprocess.run([sys.executable, "-c", MAKE, str(whole), str(shards), str(bins), shard_size], check=True,
                       capture_output=True)
        sources = {"one model.safetensors": (whole, "model.safetensors"),
                   "safetensors shards": (shards, "model-*.safetensors"),
                   ".bin shards": (bins, "pytorch_model-*.bin")}
        paths = {label: [*vitconvert, str(src), str(folder / "o.safetensors"), "--force", "--quiet"]
                 for label, (src, _) in sources.items()}
        paths |= {label: [sys.executable, "-c", code] for label, code in FLOORS.items()}
        runs: dict[str, list[tuple[float, float]]] = {k: [] for k in paths}
        for _ in range(repeats):  # interleaved, so drift in the machine's load hits each alike
            for label, cmd in paths.items():
                runs[label].append(measure(cmd))
        sizes = {label: _size(src, pattern) for label, (src, pattern) in sources.items()}
    return [{"path": label, "files": sizes.get(label, (0, 0.0))[0], "mib_on_disk": sizes.get(label, (0, 0.0))[1],
             "seconds": statistics.median(v[0] for v in values), "rss": max(v[1] for v in values)}
            for label, values in runs.items()]


def results_table(rows: list[dict]) -> str:
    rss = {r["path"]: r["rss"] for r in rows}
    lines = [["source", "files", "on disk", "wall", "peak RSS", "above its floor", "vs checkpoint size"]]
    for r in rows:
        floor = FLOOR_OF.get(r["path"])
        above = r["rss"] - rss[floor] if floor else None
        lines.append([r["path"], str(r["files"]) if floor else "-", f"{r['mib_on_disk']:.0f} MiB" if floor else "-",
                      f"{r['seconds']:.2f} s", f"{r['rss']:.0f} MiB", f"{above:.0f} MiB" if floor else "-",
                      f"**{above / r['mib_on_disk']:.2f}x**" if floor else "-"])
    return markdown(lines)


def text(rows: list[dict], repeats: int, shard_size: str) -> str:
    return (f"ViT-B/16 (transformers' ViTModel, default config, random weights) converted by `vitconvert hf2torch`, "
            f"whole process; shards of at most {shard_size} (save_pretrained's max_shard_size); median wall time of "
            f"{repeats} interleaved run(s), largest peak RSS. safetensors shards are read a tensor at a time with "
            "numpy; .bin shards are memory-mapped by torch.load(weights_only=True, mmap=True), one shard open at a "
            f"time. The largest tensor is {LARGEST_TENSOR_MIB:.0f} MiB; a floor is a process that imports what the "
            "conversion imports and converts nothing.\n\n" + results_table(rows))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--shard-size", default="100MB")
    args = ap.parse_args()
    print(f"machine: {machine()}")
    print(text(run(args.repeats, args.shard_size), args.repeats, args.shard_size))


if __name__ == "__main__":
    main()
