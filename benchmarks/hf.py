"""transformers' checkpoints in and out, whole process: `vitconvert hf2torch` and `vitconvert export --to hf`
on a ViT-B/16, beside transformers' own round trip (`from_pretrained` + `save_pretrained`); wall time and
peak RSS. Needs transformers (the `hf` extra).

    python -m benchmarks.hf [--repeats 3]

The checkpoint is transformers' ViTForImageClassification with its default config (ViT-B/16 at 224, 1000
classes) and random weights, written once by save_pretrained into a temporary folder; every run is a fresh
process, measured by the same launcher as the conversion section.
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
import sys, transformers
transformers.ViTForImageClassification(transformers.ViTConfig(num_labels=1000)).save_pretrained(sys.argv[1])
"""
ROUND_TRIP = """
import sys, transformers
transformers.AutoModelForImageClassification.from_pretrained(sys.argv[1]).save_pretrained(sys.argv[2])
"""


def run(repeats: int) -> list[dict]:
    vitconvert = [sys.executable, "-m", "vitconvert"]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        hf, ours = folder / "hf", folder / "ours.safetensors"
        subprocess.run([sys.executable, "-c", MAKE, str(hf)], check=True, capture_output=True)
        subprocess.run([*vitconvert, "hf2torch", str(hf), str(ours), "--quiet"], check=True)  # export's input
        paths = {
            "vitconvert hf2torch": [*vitconvert, "hf2torch", str(hf), str(folder / "o.safetensors"), "--force",
                                    "--quiet"],
            "vitconvert export --to hf": [*vitconvert, "export", str(ours), "--to", "hf", str(folder / "out"),
                                          "--force"],
            "transformers from_pretrained + save_pretrained": [sys.executable, "-c", ROUND_TRIP, str(hf),
                                                               str(folder / "saved")],
        }
        runs: dict[str, list[tuple[float, float]]] = {k: [] for k in paths}
        for _ in range(repeats):  # interleaved, so drift in the machine's load hits each alike
            for label, cmd in paths.items():
                runs[label].append(measure(cmd))
        size = (hf / "model.safetensors").stat().st_size / 1e6
    return [{"path": label, "checkpoint_mb": size, "seconds": statistics.median(v[0] for v in values),
             "mib": max(v[1] for v in values)} for label, values in runs.items()]


def results_table(rows: list[dict]) -> str:
    reference = rows[-1]
    lines = [["path", "wall", "peak RSS", "RSS vs transformers"]]
    for r in rows:
        lines.append([r["path"], f"{r['seconds']:.2f} s", f"{r['mib']:.0f} MiB",
                      f"**{r['mib'] / reference['mib']:.2f}x**"])
    return markdown(lines)


def text(rows: list[dict], repeats: int) -> str:
    return (f"ViT-B/16 (transformers' ViTForImageClassification, default config, random weights; model.safetensors "
            f"{rows[0]['checkpoint_mb']:.0f} MB), whole process; median wall time of {repeats} interleaved run(s), "
            "largest peak RSS. hf2torch reads the safetensors file with numpy a tensor at a time; export reads our "
            "file the same way; transformers builds the model, loads it and writes it back.\n\n" + results_table(rows))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    print(f"machine: {machine()}")
    print(text(run(args.repeats), args.repeats))


if __name__ == "__main__":
    main()
