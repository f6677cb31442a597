"""Every benchmark, side by side with timm on the same weights in the same run; results to RESULTS.md.

    python -m benchmarks [--only SECTION ...] [--quick] [--no-write]

Sections (the first four also run alone: `python -m benchmarks.<module>`):
  conversion  jax2torch vs timm's npz loader + save and vs cp of the npz, whole process: wall and peak RSS
  inference   images/s, ours vs timm, float32 and bfloat16, 224 and 384, batch 1 and 8; and the
              top-1 agreement of bfloat16 with float32 on the sample photos
  cold_start  `vitpredict` vs a timm user's script, one image, whole process
  folder      `vitpredict` over 200 images vs the model alone at the same batch size
  rope        RoPE ViT-B/16 (Naver's RoPE-ViT, DINOv3) vs timm's Eva, float32, 224 and 448, batch 1; only when
              named
  peers       ViT-B/16 on the CPU vs timm, ONNX Runtime and OpenVINO, float32; then ours int8 and bfloat16
              (ONNX Runtime and OpenVINO from the `bench` extra); only when named
  compile     the float32 paths compile=True could take (inductor, with freezing, TorchScript, oneDNN) vs
              eager; only when named
  ray         Ray Data on a local Ray vs serial vitpredict over the 200 images, 1 and 2 replicas;
              only when named (needs vitconvert[ray])
  hf          hf2torch and export --to hf on a ViT-B/16 vs transformers' from_pretrained + save_pretrained,
              whole process: wall and peak RSS; only when named (needs vitconvert[hf])
  sharded     hf2torch of a ViT-B/16 in safetensors shards and in .bin shards vs in one file: peak RSS vs the
              checkpoint's size; only when named (needs vitconvert[hf])
  finetune    `vitconvert.finetune` vs a plain timm training loop, and vs our training step without images
              to read: ViT-Ti/16 at 224, float32, CPU; only when named (minutes of training)
  serve       `vitconvert serve` under 16 concurrent HTTP clients vs the model alone and vs a plain
              one-request-one-forward app, ViT-Ti/16 and ViT-S/16: images/s, CPU per image, p50/p99
              latency; only when named
  gpu         ViT-B/16 on a CUDA GPU vs timm, autocast bfloat16 and float16, eager and compiled, 224 and 384,
              batch 1, 64 and 256: images/s and % of the GPU's peak (compiled while 300 s last), then
              Predictor over 4000 photos vs the model alone; only when named (says so without a GPU)

--quick takes fewer repeats (a few minutes on 2 cores). Each section printed is also written into
benchmarks/RESULTS.md, replacing that section's previous figures and keeping the others.
"""

from __future__ import annotations

import argparse
import datetime
import re
import time
from pathlib import Path

from benchmarks.common import ROOT, OtherLoad, load, machine

RESULTS = ROOT / "benchmarks" / "RESULTS.md"
SECTIONS = ["conversion", "inference", "cold_start", "folder", "rope", "peers", "compile", "ray", "hf", "sharded",
            "finetune", "zeroshot", "serve", "gpu"]
# rope (minutes at 448), peers and compile (minutes of compiling), ray, hf and sharded (optional extras), finetune
# (minutes of training), zeroshot (minutes of text encoding) and serve (servers started, minutes of load) are asked
# for by name
DEFAULT = SECTIONS[:4]
HEADER = """# Benchmark results

Written by `python -m benchmarks` (see `benchmarks/__main__.py`); each section says when, on what
machine, with how many repeats, and how busy the machine was: the 1/5/15-minute load averages before
it, and the share of the cores that processes other than the benchmark took while it ran (another
job shares these 2 cores; figures taken while it works are noisier and lower). Run one section again with
`python -m benchmarks --only SECTION`; it replaces only that section below.

Weights are random (no network here, no published checkpoint): speed does not depend on the values,
and the agreement check says what random weights can and cannot show. The photos are scikit-image's
sample images, CC0 or public domain (benchmarks/images/README.md, tests/data/README.md).

**GPU: none.** This machine has no GPU, so no GPU figures were measured and the GPU target
(fp16/bf16 on GPU) is neither met nor missed here: it is untested.
"""


def conversion(quick: bool) -> str:
    from benchmarks import conversion as c

    repeats = 1 if quick else 5  # the disk and the VM's memory make single runs swing by 30%
    rows = c.run(list(c.ARCH), repeats)
    return (f"Whole process, `vitconvert jax2torch` vs timm's `_load_weights` + `save_file` and vs `cp` of the "
            f"npz (the floor), random weights in the vit_jax layout, the three interleaved; median wall time of "
            f"{repeats} run(s), largest peak RSS.\n\n"
            + c.results_table(rows))


def inference(quick: bool) -> str:
    from benchmarks import inference as i

    repeats = 3 if quick else 10
    rows = i.matrix([224, 384], [1, 8], repeats, warmup=1 if quick else 2)
    agree = i.agreement()
    bf = min(r["ours bf16"] / r["timm fp32"] for r in rows)
    fp = min(r["ours fp32"] / r["timm fp32"] for r in rows)
    return (f"ViT-B/16, images/s (higher is better), CPU, the four variants of a row timed interleaved, median of "
            f"{repeats} runs. Same weights in ours and timm's (`realistic_random`); bfloat16 = the whole model "
            f"cast, as `Predictor(dtype='bfloat16')` / `vitpredict --dtype bfloat16` run it.\n\n"
            + i.matrix_table(rows)
            + f"\n\nTargets: ours float32 >= 1.0x timm float32: worst row {fp:.2f}x, "
            f"{'met' if fp >= 1.0 else 'NOT met'}; ours bfloat16 >= 1.5x timm float32: worst row {bf:.2f}x, "
            f"{'met' if bf >= 1.5 else 'NOT met'}.\n\n"
            "### Top-1 agreement, bfloat16 vs float32, on the sample photos (224)\n\n" + i.agreement_text(agree))


def cold_start(quick: bool) -> str:
    from benchmarks import cold_start as c

    repeats = 3 if quick else 5
    seconds = c.run(ROOT / "tests" / "data" / "cat.jpg", repeats)
    ratio = seconds["vitpredict"] / seconds["timm script"]
    return (f"ViT-B/16 (random weights), one image to printed top-5, whole process, median of {repeats} "
            "interleaved runs (float32, defaults).\n\n"
            + c.results_table(seconds)
            + f"\n\nTarget <= 0.60x: {'met' if ratio <= 0.6 else 'NOT met'}.")


def folder(quick: bool) -> str:
    from benchmarks import folder as f

    result = f.run(["bfloat16"] if quick else ["bfloat16", "float32"], rounds=1 if quick else 3)
    key = "serial" if result["default"] == 0 else "workers"
    worst = min(r[key] / r["model"] for r in result["rows"])
    return (f.text(result) + f"\n\nTarget: folder (default workers) >= 0.8x the model alone: worst {worst:.2f}x, "
            f"{'met' if worst >= 0.8 else 'NOT met'}.")


def rope(quick: bool) -> str:
    from benchmarks import rope as r

    repeats = 3 if quick else 10
    return r.text(r.run([224, 448], batch=1, repeats=repeats), repeats)


def compile_(quick: bool) -> str:
    from benchmarks import inference as i

    repeats = 3 if quick else 10
    return (f"ViT-B/16 at 224, the float32 paths `load_model(..., compile=True)` could take, against ours eager; "
            f"median of {repeats} interleaved runs after the first. compile=True runs the fastest float32 path "
            "measured here.\n\n" + i.compiled_table(i.compiled(repeats)))


def peers(quick: bool) -> str:
    from benchmarks import peers as p

    return p.text(p.run([1, 8], repeats=3 if quick else 10))


def ray(quick: bool) -> str:
    from benchmarks import ray_local as r

    return r.text(r.run([1, 2], rounds=1 if quick else 3))


def hf(quick: bool) -> str:
    from benchmarks import hf as h

    repeats = 1 if quick else 3
    return h.text(h.run(repeats), repeats)



def sharded(quick: bool) -> str:
    from benchmarks import sharded as s

    repeats = 1 if quick else 3
    return s.text(s.run(repeats, "100MB"), repeats, "100MB")


def finetune(quick: bool) -> str:
    from benchmarks import finetune as f

    return f.text(f.run(rounds=1 if quick else 3, steps=5, batch=16))


def serve(quick: bool) -> str:
    from benchmarks import serve as s

    rounds = 1 if quick else 3
    return (s.text(s.run(list(s.MODELS), rounds=rounds)) + "\n\n### One torch thread in every process\n\n"
            + s.text(s.run(list(s.MODELS), rounds=rounds, threads=1)) + "\n\n" + s.READING)


def zeroshot(quick: bool) -> str:
    from benchmarks import zeroshot as z

    return z.text(z.run(classes=2 if quick else 3, repeats=1 if quick else 2))


def gpu(quick: bool) -> str:
    import torch

    from benchmarks import gpu as g

    if not torch.cuda.is_available():
        return "No CUDA GPU on this machine: nothing measured."
    batches = [64, 1] if quick else [256, 1, 64]
    table = g.text(g.run([224, 384], batches, ["bfloat16", "float16"], repeats=5 if quick else 20, budget_s=300),
                   torch.cuda.get_device_name(0))
    return table + "\n\n" + g.folder_text(g.folder_check(1000 if quick else 4000, 64, "bfloat16"))


RUNNERS = {"conversion": conversion, "inference": inference, "cold_start": cold_start, "folder": folder, "rope": rope,
           "peers": peers, "compile": compile_, "ray": ray, "hf": hf, "sharded": sharded,
           "finetune": finetune, "zeroshot": zeroshot, "serve": serve, "gpu": gpu}
TITLES = {"conversion": "Conversion", "inference": "Inference (CPU)", "cold_start": "Cold start",
          "folder": "A folder of 200 images", "rope": "RoPE ViTs against timm's Eva (CPU)",
          "peers": "Against ONNX Runtime and OpenVINO (CPU)",
          "compile": "compile=True: the float32 paths tried (CPU)", "ray": "Ray Data, local",
          "hf": "transformers in and out", "sharded": "Sharded transformers checkpoints",
          "finetune": "Fine-tuning (CPU)", "zeroshot": "Zero-shot head building (CPU)",
          "serve": "Serving over HTTP (CPU)", "gpu": "GPU"}


def update(results: Path, bodies: dict[str, str]) -> None:
    text = results.read_text() if results.exists() else ""
    section = re.compile(r"<!-- section:(\w+) -->.*?<!-- /section:\1 -->", re.DOTALL)
    old = {m.group(1): m.group(0) for m in section.finditer(text)}
    for name, body in bodies.items():
        old[name] = f"<!-- section:{name} -->\n{body}\n<!-- /section:{name} -->"
    # Sections no runner writes (the one-off timings) are kept, after the runners' own.
    order = [*SECTIONS, *sorted(set(old) - set(SECTIONS))]
    results.write_text(HEADER + "\n" + "\n\n".join(old[n] for n in order if n in old) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="+", choices=SECTIONS, default=DEFAULT, metavar="SECTION",
                    help=f"run these sections only ({', '.join(SECTIONS)}; default the first four)")
    ap.add_argument("--quick", action="store_true", help="fewer repeats: a few minutes on 2 cores")
    ap.add_argument("--results", type=Path, default=RESULTS, help="the markdown file to update")
    ap.add_argument("--no-write", action="store_true", help="print only; leave the results file alone")
    args = ap.parse_args()
    print(f"machine: {machine()}")
    bodies = {}
    for name in [s for s in SECTIONS if s in args.only]:
        start_load, start = load(), time.perf_counter()
        when = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
        with OtherLoad() as other:
            body = RUNNERS[name](args.quick)
        took = time.perf_counter() - start
        bodies[name] = (f"## {TITLES[name]}\n\n{when}, {'--quick' if args.quick else 'full'} run, {took:.0f} s. "
                        f"Load average {start_load} before it "
                        f"(after {'the run started' if bodies else 'nothing of ours'}"
                        f"); during it {other.text}.\nMachine: {machine()}.\n\n{body}")
        print("\n" + bodies[name], flush=True)
        if not args.no_write:  # after each section, so an interrupted run keeps what it measured
            update(args.results, {name: bodies[name]})
    if not args.no_write:
        print(f"\nwritten to {args.results}")


if __name__ == "__main__":
    main()
