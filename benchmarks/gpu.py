"""ViT-B/16 on a GPU (issue 17): ours against timm under autocast, eager and compiled, in one interleaved
run per row on the same weights; images/s, and the fraction of the GPU's dense half-precision peak.
Then `vitpredict`'s own path end to end: a folder of photos through `Predictor` on the GPU against the
model alone on ready batches.

    python -m benchmarks.gpu [--res 224 384] [--batches 256 1 64] [--dtypes bfloat16 float16] [--repeats 20]
                             [--budget-s 300] [--folder 4000]

Half precision is autocast, as a user runs it (`torch.autocast`): matmuls and convolutions in the
half type, LayerNorm and softmax in float32; never a cast of the whole model. Compiled is
`torch.compile` for timm and `load_model(..., compile=True)` (inductor, weights frozen) for ours, each
compiled once per input shape before timing; at batch 1 ours also runs with CUDA graphs
(`torch.compile(mode='reduce-overhead')`). Without a CUDA GPU it says so and measures nothing.

Compiling a shape takes longer than timing it (seconds per shape: docs/speed.md), and a session lent a
GPU has minutes: rows run most important first (bfloat16 before
float16, 224 before 384, batch 256, the target, before 1 and 64) and are printed as each is measured;
once the compiled variants of another row would overrun `--budget-s` (estimated from the slowest row
so far), the remaining rows are timed eager only, and the table says so.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks.common import interleaved_medians, machine, markdown

# Dense (not sparse) bfloat16/float16 tensor-core peaks in TFLOP/s, from NVIDIA's data sheets; matched
# against torch.cuda.get_device_name in this order. A GPU not listed gets no fraction of peak.
PEAK_TFLOPS = [("H200", 989.0), ("H100 NVL", 835.0), ("H100 PCIe", 756.0), ("H100", 989.0),
               ("A100", 312.0), ("L40S", 362.0), ("L4", 121.0)]
VARIANTS = ["timm AMP", "timm AMP compiled", "ours AMP", "ours AMP compile=True"]
GRAPHS = "ours, CUDA graphs"
FIRST_COMPILE_GUESS_S = 90.0  # a row's compiled variants before any was timed: two or three compiles


def peak_tflops(name: str) -> float | None:
    return next((peak for key, peak in PEAK_TFLOPS if key in name), None)


def macs_per_image(depth: int, dim: int, mlp: int, patch: int, res: int, classes: int) -> float:
    """Multiply-accumulates of one image through a ViT with a class token: the patch embedding, per block
    the qkv, attention (scores and weighted sum), projection and MLP, then the head. ViT-B/16 at 224: 17.6 G."""
    n = (res // patch) ** 2 + 1
    per_block = n * dim * 3 * dim + 2 * n * n * dim + n * dim * dim + 2 * n * dim * mlp
    return (n - 1) * 3 * patch * patch * dim + depth * per_block + dim * classes


def synchronized(fn: Callable[[], object], device: torch.device) -> Callable[[], None]:
    """`fn`, returning only when the GPU has finished it: wall time is then the GPU's time."""
    def call() -> None:
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return call


def row(ours: torch.nn.Module, theirs: torch.nn.Module, res: int, batch: int, dtype: torch.dtype,
        device: torch.device, repeats: int, compiled: bool = True) -> dict[str, float]:
    """Images/s of each variant at one input size, batch and autocast dtype."""
    from vitconvert.model.optimize import compile_model

    x = torch.randn(batch, 3, res, res, device=device)

    def under_autocast(model: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[], object]:
        def call() -> torch.Tensor:
            with torch.inference_mode(), torch.autocast(device.type, dtype=dtype):
                return model(x)
        return synchronized(call, device)

    fns = {"timm AMP": under_autocast(theirs), "ours AMP": under_autocast(ours)}
    if compiled:
        fns["timm AMP compiled"] = under_autocast(torch.compile(theirs, dynamic=False))
        fns["ours AMP compile=True"] = under_autocast(compile_model(copy.deepcopy(ours)))
        if batch == 1 and device.type == "cuda":
            fns[GRAPHS] = under_autocast(torch.compile(ours, dynamic=False, mode="reduce-overhead"))
    # The first call compiles; CUDA graphs record on the calls after it.
    seconds = interleaved_medians(fns, repeats, warmup=3)
    return {name: batch / s for name, s in seconds.items()}


def plan(resolutions: list[int], batches: list[int], dtypes: list[str]) -> list[tuple[str, int, int]]:
    """(dtype, res, batch) in the order given for each: the first dtype and size at every batch first."""
    return [(dtype, res, batch) for dtype in dtypes for res in resolutions for batch in batches]


def run(resolutions: list[int], batches: list[int], dtypes: list[str], repeats: int,
        device: str = "cuda", timm_name: str = "vit_base_patch16_224", compiled: bool = True,
        budget_s: float | None = None, report: Callable[[dict], None] | None = None) -> list[dict]:
    """One dict per row, in `plan`'s order; `report` sees each as soon as it is measured. With `budget_s`,
    a row runs its compiled variants only while they are expected to end within it."""
    from benchmarks.inference import models

    dev = torch.device(device)
    start, compiled_rows_s = time.monotonic(), []  # how long each row with compiled variants took
    rows, built = [], {}
    for dtype, res, batch in plan(resolutions, batches, dtypes):
        if res not in built:
            built.clear()  # one size's pair of models on the GPU at a time
            ours, theirs = models(timm_name, res)
            built[res] = ours.to(dev), theirs.to(dev)
        ours, theirs = built[res]
        cfg = ours.config
        left = None if budget_s is None else budget_s - (time.monotonic() - start)
        with_compiled = compiled and (left is None or left > max(compiled_rows_s, default=FIRST_COMPILE_GUESS_S))
        began = time.monotonic()
        speeds = row(ours, theirs, res, batch, getattr(torch, dtype), dev, repeats, with_compiled)
        if with_compiled:
            compiled_rows_s.append(time.monotonic() - began)
        macs = macs_per_image(cfg.depth, cfg.embed_dim, cfg.mlp_dim, cfg.patch_hw[0], res, cfg.num_classes)
        rows.append({"res": res, "batch": batch, "dtype": dtype, "gmacs": macs / 1e9, **speeds})
        if report is not None:
            report(rows[-1])
        torch._dynamo.reset()  # each shape compiles afresh; the cache would grow across rows
    return rows


def text(rows: list[dict], gpu: str) -> str:
    peak = peak_tflops(gpu)
    names = [v for v in [*VARIANTS, GRAPHS] if any(v in r for r in rows)]
    lines = [["input", "dtype", "batch", *names, "ours best / timm AMP", "ours best, % of peak"]]
    worst_256 = None
    order = {d: i for i, d in enumerate(dict.fromkeys(r["dtype"] for r in rows))}
    for r in sorted(rows, key=lambda r: (order[r["dtype"]], r["res"], r["batch"])):
        ours_best = max(r[v] for v in names if v.startswith("ours") and v in r)
        ratio = ours_best / r["timm AMP"]
        share = f"{ours_best * 2 * r['gmacs'] / 1e3 / peak:.0%}" if peak else "peak unknown"
        lines.append([f"{r['res']}x{r['res']}", r["dtype"], str(r["batch"]),
                      *[f"{r[v]:.0f}" if v in r else "-" for v in names], f"**{ratio:.2f}x**", share])
        if r["batch"] == 256:
            worst_256 = ratio if worst_256 is None else min(worst_256, ratio)
    target = ("" if worst_256 is None else
              f"\n\nTarget: ours >= 1.1x timm AMP at batch 256: worst {worst_256:.2f}x, "
              f"{'met' if worst_256 >= 1.1 else 'NOT met'}.")
    eager_only = sum("timm AMP compiled" not in r for r in rows)
    if 0 < eager_only < len(rows):
        target += f"\n\n'-': not compiled, the time budget spent ({eager_only} of {len(rows)} rows timed eager only)."
    peak_text = f"{peak:.0f} TFLOP/s dense half precision" if peak else "not in PEAK_TFLOPS"
    return (f"GPU: {gpu} (peak: {peak_text}). Images/s (higher is better), median of interleaved runs after "
            f"three warm-up calls (the first compiles); % of peak = images/s x 2 x MACs per image / peak.\n\n"
            + markdown(lines) + target)


def folder_check(num_images: int, batch: int, dtype: str, device: str = "cuda", workers: int | None = None,
                 rounds: int = 2) -> dict:
    """`Predictor.predict` over `num_images` photos (up to 400 distinct ones, made as benchmarks/folder.py
    makes them, then taken again in turn) with vitpredict's default workers, against the same predictor
    on ready batches: images/s of each."""
    from benchmarks.folder import make_folder, write_weights
    from vitconvert.inference.batches import default_workers
    from vitconvert.inference.predictor import Predictor

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        distinct = make_folder(folder, min(num_images, 400))
        paths = [distinct[i % len(distinct)] for i in range(num_images)]
        predictor = Predictor(write_weights(Path(tmp) / "b16.safetensors"), device=device, dtype=dtype)
        workers = default_workers(num_images, batch, predictor.device) if workers is None else workers
        x = torch.randn(batch, 3, 224, 224)
        x = x.pin_memory() if predictor.device.type == "cuda" else x  # as the loader pins the folder's
        predictor.batch_probabilities(x)  # warm-up

        def model_alone() -> None:  # the same host-to-device copy and read-back per batch, no decoding
            for _ in range(-(-num_images // batch)):
                predictor.batch_probabilities(x)

        def whole_folder() -> None:
            predictor.predict(paths, top_k=1, batch_size=batch, workers=workers)

        times: dict[str, list[float]] = {"model": [], "folder": []}
        for _ in range(rounds):
            for name, fn in (("model", model_alone), ("folder", whole_folder)):
                t = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t)
    speeds = {k: num_images / statistics.median(v) for k, v in times.items()}
    return {"images": num_images, "batch": batch, "dtype": dtype, "workers": workers, "rounds": rounds, **speeds}


def folder_text(r: dict) -> str:
    return (f"vitpredict's path on the GPU (`Predictor.predict`, {r['dtype']}, batch {r['batch']}, "
            f"{r['workers']} decoding workers, vitpredict's default here) over {r['images']} photos: "
            f"{r['folder']:.0f} images/s against {r['model']:.0f} for the model alone on ready batches "
            f"(**{r['folder'] / r['model']:.2f}x**; median of {r['rounds']} rounds, worker start included).")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--res", nargs="+", type=int, default=[224, 384])
    ap.add_argument("--batches", nargs="+", type=int, default=[256, 1, 64])
    ap.add_argument("--dtypes", nargs="+", default=["bfloat16", "float16"], choices=["bfloat16", "float16"])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--budget-s", type=float, default=300.0,
                    help="seconds after which rows are timed eager only (default 300)")
    ap.add_argument("--folder", type=int, default=4000, metavar="N",
                    help="photos in the end-to-end check, run after the table; 0 skips it (default 4000)")
    args = ap.parse_args()
    print(f"machine: {machine()}", flush=True)
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU here: nothing measured")
    gpu = torch.cuda.get_device_name(0)

    def report(r: dict) -> None:
        print(f"measured: {r['res']} {r['dtype']} batch {r['batch']}: "
              + ", ".join(f"{k} {v:.0f}" for k, v in r.items() if k in [*VARIANTS, GRAPHS]), flush=True)

    print(text(run(args.res, args.batches, args.dtypes, args.repeats, budget_s=args.budget_s, report=report), gpu),
          flush=True)
    if args.folder:
        print("\n" + folder_text(folder_check(args.folder, 64, "bfloat16")), flush=True)


if __name__ == "__main__":
    main()
