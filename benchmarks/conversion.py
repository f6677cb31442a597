"""Whole-process conversion of a published-layout JAX .npz: `vitconvert jax2torch` against what a timm
user does today (create the timm model, load the npz with timm's loader, save safetensors), and against
the physical floor, `cp` of the same file (issue 17's target: within 3x of it).

    python -m benchmarks.conversion [--models B/16 L/16] [--repeats 3]

Checkpoints are random weights in the vit_jax layout (examples/make_random_checkpoint.py), generated
once into a temporary folder; every run is a fresh process, timed and measured for peak RSS.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.common import ROOT, machine, markdown

ARCH = {  # name (make_random_checkpoint.py's --size): timm model
    "B/16": "vit_base_patch16_224",
    "L/16": "vit_large_patch16_224",
}
TIMM_SCRIPT = """
import sys, timm
from safetensors.torch import save_file
from timm.models.vision_transformer import _load_weights
model = timm.create_model(sys.argv[1], pretrained=False, num_classes=1000)
_load_weights(model, sys.argv[2])
save_file(model.state_dict(), sys.argv[3])
"""


def make_checkpoint(name: str, folder: Path) -> Path:
    """In a child process: a parent holding the arrays would lend its RSS to every process it forks."""
    path = folder / f"{name.replace('/', '_')}.npz"
    subprocess.run([sys.executable, str(ROOT / "examples" / "make_random_checkpoint.py"), str(path), "--size", name],
                   check=True, stderr=subprocess.DEVNULL)
    return path


# Linux charges a child the peak RSS of the process it was forked from (the kernel keeps the
# pre-exec high-water mark), so a benchmark parent holding torch and models would inflate every
# figure. A fresh, small launcher process forks the measured command and reports its rusage.
LAUNCHER = """
import os, subprocess, sys, time
start = time.perf_counter()
proc = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)
_, status, usage = os.wait4(proc.pid, 0)
print(time.perf_counter() - start, usage.ru_maxrss, status)
"""


def measure(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one fresh process."""
    out = subprocess.run([sys.executable, "-c", LAUNCHER, *cmd], capture_output=True, text=True, check=True)
    wall, maxrss_kib, status = out.stdout.split()
    if int(status):
        raise SystemExit(f"failed ({status}): {' '.join(cmd)}")
    return float(wall), int(maxrss_kib) / 1024


def run(names: list[str], repeats: int) -> list[dict]:
    results = []
    vitconvert = [sys.executable, "-m", "vitconvert", "jax2torch"]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name in names:
            npz = make_checkpoint(name, folder)
            out = folder / "out.safetensors"
            paths = {  # each overwrites its output, as a re-run of the same command would
                "vitconvert": vitconvert + [str(npz), str(out), "--force", "--quiet"],
                "timm": [sys.executable, "-c", TIMM_SCRIPT, ARCH[name], str(npz), str(out)],
                "copy": ["cp", str(npz), str(folder / "copy.npz")],
            }
            runs: dict[str, list[tuple[float, float]]] = {k: [] for k in paths}
            for _ in range(repeats):
                for label, cmd in paths.items():
                    runs[label].append(measure(cmd))
            row = {"model": name, "npz_mb": npz.stat().st_size / 1e6}
            for label, values in runs.items():
                row[f"{label}_s"] = statistics.median(v[0] for v in values)
                row[f"{label}_mib"] = max(v[1] for v in values)
            results.append(row)
            npz.unlink()
    return results


def results_table(rows: list[dict]) -> str:
    lines = [["model", "npz", "vitconvert", "timm path", "time ratio", "cp", "vs cp", "vitconvert RSS", "timm RSS",
              "RSS ratio"]]
    for r in rows:
        lines.append([r["model"], f"{r['npz_mb']:.0f} MB", f"{r['vitconvert_s']:.2f} s", f"{r['timm_s']:.2f} s",
                      f"**{r['vitconvert_s'] / r['timm_s']:.2f}x**", f"{r['copy_s']:.2f} s",
                      f"**{r['vitconvert_s'] / r['copy_s']:.1f}x**", f"{r['vitconvert_mib']:.0f} MiB",
                      f"{r['timm_mib']:.0f} MiB", f"**{r['vitconvert_mib'] / r['timm_mib']:.2f}x**"])
    return markdown(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(ARCH), choices=list(ARCH))
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    rows = run(args.models, args.repeats)
    print(f"machine: {machine()}")
    print(f"whole process, median of {args.repeats} runs (wall) and the largest peak RSS")
    print(results_table(rows))


if __name__ == "__main__":
    main()
