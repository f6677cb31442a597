"""ViT-B/16 on a GPU (issue 17): ours against timm under autocast, eager and compiled, in one interleaved
run per row on the same weights; images/s, and the fraction of the GPU's dense half-precision peak.

    python -m benchmarks.gpu [--res 224 384] [--batches 1 64 256] [--dtypes bfloat16 float16] [--repeats 20]

Half precision is autocast, as a user runs it (`torch.autocast`): matmuls and convolutions in the
half type, LayerNorm and softmax in float32; never a cast of the whole model. Compiled is
`torch.compile` for timm and `load_model(..., compile=True)` (inductor, weights frozen) for ours, each
compiled once per input shape before timing; at batch 1 ours also runs with CUDA graphs
(`torch.compile(mode='reduce-overhead')`). Without a CUDA GPU it says so and measures nothing.
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Callable

import torch

from benchmarks.common import interleaved_medians, machine, markdown

# Dense (not sparse) bfloat16/float16 tensor-core peaks in TFLOP/s, from NVIDIA's data sheets; matched
# against torch.cuda.get_device_name in this order. A GPU not listed gets no fraction of peak.
PEAK_TFLOPS = [("H200", 989.0), ("H100 NVL", 835.0), ("H100 PCIe", 756.0), ("H100", 989.0),
               ("A100", 312.0), ("L40S", 362.0), ("L4", 121.0)]
VARIANTS = ["timm AMP", "timm AMP compiled", "ours AMP", "ours AMP compile=True"]
GRAPHS = "ours, CUDA graphs"


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
    from vitconvert.model.fast import compile_model

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
    seconds = interleaved_medians(fns, repeats, warmup=1)  # the first call compiles
    return {name: batch / s for name, s in seconds.items()}


def run(resolutions: list[int], batches: list[int], dtypes: list[str], repeats: int,
        device: str = "cuda", timm_name: str = "vit_base_patch16_224", compiled: bool = True) -> list[dict]:
    from benchmarks.inference import models

    dev = torch.device(device)
    rows = []
    for res in resolutions:
        ours, theirs = models(timm_name, res)
        ours, theirs = ours.to(dev), theirs.to(dev)
        cfg = ours.config
        macs = macs_per_image(cfg.depth, cfg.embed_dim, cfg.mlp_dim, cfg.patch_hw[0], res, cfg.num_classes)
        for dtype in dtypes:
            for batch in batches:
                speeds = row(ours, theirs, res, batch, getattr(torch, dtype), dev, repeats, compiled)
                rows.append({"res": res, "batch": batch, "dtype": dtype, "gmacs": macs / 1e9, **speeds})
                torch._dynamo.reset()  # each shape compiles afresh; the cache would grow across rows
    return rows


def text(rows: list[dict], gpu: str) -> str:
    peak = peak_tflops(gpu)
    names = [v for v in [*VARIANTS, GRAPHS] if any(v in r for r in rows)]
    lines = [["input", "dtype", "batch", *names, "ours best / timm AMP", "ours best, % of peak"]]
    worst_256 = None
    for r in rows:
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
    peak_text = f"{peak:.0f} TFLOP/s dense half precision" if peak else "not in PEAK_TFLOPS"
    return (f"GPU: {gpu} (peak: {peak_text}). Images/s (higher is better), median of interleaved runs after a "
            f"first (compiling) call; % of peak = images/s x 2 x MACs per image / peak.\n\n"
            + markdown(lines) + target)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--res", nargs="+", type=int, default=[224, 384])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 64, 256])
    ap.add_argument("--dtypes", nargs="+", default=["bfloat16", "float16"], choices=["bfloat16", "float16"])
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    print(f"machine: {machine()}")
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU here: nothing measured")
    print(text(run(args.res, args.batches, args.dtypes, args.repeats), torch.cuda.get_device_name(0)))


if __name__ == "__main__":
    main()
