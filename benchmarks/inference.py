"""Inference images/s of our ViT and timm's on the same weights, same process, same batch (CPU).

    python -m benchmarks.inference [--model vit_base_patch16_224] [--batch 8] [--res 224] [--repeats 10]

`matrix` (used by `python -m benchmarks`) times float32 and bfloat16, ours and timm's, interleaved,
for several sizes and batches; `agreement` compares their top-1 classes on the sample photos.
"""

from __future__ import annotations

import argparse
import copy

import torch

from benchmarks.common import PHOTOS, interleaved_medians, machine, markdown, realistic_random


def models(timm_name: str, res: int, realistic: bool = False):
    """(ours, timm's) holding the same weights: timm's initialisation, or `realistic_random` ones."""
    import timm

    from vitconvert.conversion.timm import config_from_shapes
    from vitconvert.model.loading import at_size, build_with_weights

    theirs = timm.create_model(timm_name, pretrained=False, img_size=res).eval()
    if realistic:
        realistic_random(theirs)
    state = theirs.state_dict()
    cfg = config_from_shapes({k: tuple(v.shape) for k, v in state.items()}, timm_name,
                       num_heads=theirs.blocks[0].attn.num_heads).config
    ours = build_with_weights(*at_size(cfg, state, (res, res)))
    return ours, theirs


def run(timm_name: str = "vit_base_patch16_224", batch: int = 8, res: int = 224, repeats: int = 10,
        dtype: torch.dtype = torch.float32) -> dict[str, float]:
    ours, theirs = models(timm_name, res)
    ours, theirs = ours.to(dtype), theirs.to(dtype)
    x = torch.randn(batch, 3, res, res, dtype=dtype)

    def step(model):
        def call():
            with torch.inference_mode():
                model(x)
        return call

    seconds = interleaved_medians({"vitconvert": step(ours), "timm": step(theirs)}, repeats)
    return {name: batch / s for name, s in seconds.items()}


def matrix(sizes: list[int], batches: list[int], repeats: int, warmup: int = 1,
           timm_name: str = "vit_base_patch16_224") -> list[dict]:
    """images/s of ours and timm's in float32 and bfloat16; the four runs of a (size, batch) interleaved."""
    rows = []
    for res in sizes:
        ours, theirs = models(timm_name, res, realistic=True)
        variants = {"ours fp32": ours, "timm fp32": theirs,
                    "ours bf16": copy.deepcopy(ours).to(torch.bfloat16),
                    "timm bf16": copy.deepcopy(theirs).to(torch.bfloat16)}
        for batch in batches:
            x = torch.randn(batch, 3, res, res, generator=torch.Generator().manual_seed(0))
            inputs = {torch.float32: x, torch.bfloat16: x.to(torch.bfloat16)}

            def step(model, inputs=inputs):
                x = inputs[next(model.parameters()).dtype]

                def call():
                    with torch.inference_mode():
                        model(x)
                return call

            seconds = interleaved_medians({k: step(m) for k, m in variants.items()}, repeats, warmup)
            rows.append({"res": res, "batch": batch, **{k: batch / s for k, s in seconds.items()}})
    return rows


def matrix_table(rows: list[dict]) -> str:
    lines = [["input", "batch", "timm fp32", "ours fp32", "ours/timm fp32", "timm bf16", "ours bf16",
              "ours bf16 / timm fp32", "ours bf16 / timm bf16"]]
    for r in rows:
        lines.append([f"{r['res']}x{r['res']}", str(r["batch"]), f"{r['timm fp32']:.2f}", f"{r['ours fp32']:.2f}",
                      f"{r['ours fp32'] / r['timm fp32']:.2f}x", f"{r['timm bf16']:.2f}", f"{r['ours bf16']:.2f}",
                      f"**{r['ours bf16'] / r['timm fp32']:.2f}x**", f"{r['ours bf16'] / r['timm bf16']:.2f}x"])
    return markdown(lines)


def agreement(res: int = 224, timm_name: str = "vit_base_patch16_224") -> dict:
    """Top-1 classes of ours and timm's, float32 and bfloat16, on the sample photos, through our
    preprocessing (AugReg's, at `res`), with each photo's float32 margin and the bfloat16 logit error.

    A top-1 can only change when the logit error reaches half the margin between the first two
    classes, so `forced` (largest error < smallest margin / 2) says the agreement is no accident.
    """
    from vitconvert.formats.weights_file import Preprocess
    from vitconvert.inference.batches import prepare

    pre = Preprocess(size=(res, res), resize="crop", crop_pct=0.9, interpolation="bicubic")
    x = torch.stack([prepare(p, pre, 10**9) for p in PHOTOS])
    ours, theirs = models(timm_name, res, realistic=True)
    with torch.inference_mode():
        logits = {"ours fp32": ours(x), "timm fp32": theirs(x),
                  "ours bf16": ours.to(torch.bfloat16)(x.to(torch.bfloat16)).float(),
                  "timm bf16": theirs.to(torch.bfloat16)(x.to(torch.bfloat16)).float()}
    ref = logits["timm fp32"]
    top2 = ref.topk(2, dim=-1).values
    margins = (top2[:, 0] - top2[:, 1]).tolist()
    errors = {k: (v - ref).abs().amax(dim=-1).tolist() for k, v in logits.items()}
    rows = []
    for i, photo in enumerate(PHOTOS):
        rows.append({"photo": photo.name, **{k: int(v[i].argmax()) for k, v in logits.items()},
                     "margin": margins[i], "err ours bf16": errors["ours bf16"][i],
                     "err timm bf16": errors["timm bf16"][i], "err ours fp32": errors["ours fp32"][i]})
    same = sum(r["ours bf16"] == r["timm fp32"] for r in rows)
    forced = sum(r["err ours bf16"] < r["margin"] / 2 for r in rows)
    return {"rows": rows, "same": same, "forced": forced, "n": len(rows), "worst": max(errors["ours bf16"]),
            "logit_std": ref.std().item(), "distinct": len({r["timm fp32"] for r in rows})}


def agreement_text(a: dict) -> str:
    lines = [["photo", "timm fp32", "ours fp32", "timm bf16", "ours bf16", "fp32 margin (top1 - top2)",
              "max abs logit diff: ours bf16", "timm bf16", "ours fp32", "forced"]]
    for r in a["rows"]:
        lines.append([r["photo"], str(r["timm fp32"]), str(r["ours fp32"]), str(r["timm bf16"]),
                      str(r["ours bf16"]), f"{r['margin']:.3f}", f"{r['err ours bf16']:.3f}",
                      f"{r['err timm bf16']:.3f}", f"{r['err ours fp32']:.1e}",
                      "yes" if r["err ours bf16"] < r["margin"] / 2 else "no"])
    return (markdown(lines) + "\n\n"
            f"Top-1 class index per model (random weights, so indices rather than names; {a['distinct']} distinct "
            f"top-1 classes over {a['n']} photos; logits vs timm float32, whose logits have std "
            f"{a['logit_std']:.2f}). Ours in bfloat16 gives timm float32's top-1 on **{a['same']}/{a['n']}** "
            f"photos. A top-1 can only flip when the logit error reaches half the margin between the first "
            f"two classes: on {a['forced']}/{a['n']} photos the error is below that, so agreement there is "
            f"certain; on the other {a['n'] - a['forced']} the margin is within the bfloat16 error "
            f"(largest {a['worst']:.3f}) and the agreement could have gone either way. timm's own bfloat16 "
            f"has the same size of error. What this shows: with any weights, a top-1 that leads the second class "
            f"by more than twice the bfloat16 error (here about {2 * a['worst']:.2f} logits) cannot change; random "
            "weights give unusually close races (a trained model's top-1 on a clear photo usually leads by much more).")


def _jit_frozen(model, x):
    """TorchScript's inference path: trace, freeze, optimize_for_inference (deprecated in torch 2.x)."""
    import warnings

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        return torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(model, x, check_trace=False)))


def compiled(repeats: int, batch: int = 8, res: int = 224, timm_name: str = "vit_base_patch16_224") -> list[dict]:
    """The float32 paths `load_model(..., compile=True)` could take, against ours eager: inductor as
    `torch.compile(dynamic=False)` gives it, inductor with weight freezing, TorchScript's freeze +
    optimize_for_inference, oneDNN's prepacked linears with GELU fused (what compile=True runs on
    the CPU in float32); and compile=True in bfloat16 (inductor with freezing). images/s, interleaved,
    and each path's first call, which includes compiling from an empty inductor cache (a process
    finding a warm cache, e.g. a second vitpredict run with the same shapes, compiles faster)."""
    import os
    import tempfile
    import time

    from vitconvert.model.optimize import compile_model

    ours, _ = models(timm_name, res, realistic=True)
    paths = {"inductor": (torch.float32, lambda m, x: torch.compile(m, dynamic=False)),
             "inductor + freezing": (torch.float32,
                                     lambda m, x: torch.compile(m, dynamic=False, options={"freezing": True})),
             "TorchScript freeze + optimize_for_inference": (torch.float32, _jit_frozen),
             "oneDNN packed linears, GELU fused (compile=True)": (torch.float32, lambda m, x: compile_model(m)),
             "compile=True, bfloat16 (inductor + freezing)": (torch.bfloat16, lambda m, x: compile_model(m))}
    eager = {dtype: copy.deepcopy(ours).to(dtype) for dtype in (torch.float32, torch.bfloat16)}
    x = torch.randn(batch, 3, res, res, generator=torch.Generator().manual_seed(0))
    inputs = {dtype: x.to(dtype) for dtype in eager}
    fns, first = {"eager float32": (eager[torch.float32], torch.float32),
                  "eager bfloat16": (eager[torch.bfloat16], torch.bfloat16)}, {}
    saved = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    for name, (dtype, prepare) in paths.items():
        with tempfile.TemporaryDirectory() as cache:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
            torch._dynamo.reset()
            start = time.perf_counter()
            fast = prepare(copy.deepcopy(eager[dtype]), inputs[dtype])
            with torch.inference_mode():
                fast(inputs[dtype])
            first[name] = time.perf_counter() - start
            fns[name] = (fast, dtype)
    if saved is None:
        os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
    else:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = saved

    def step(model, dtype):
        def call():
            with torch.inference_mode():
                model(inputs[dtype])
        return call

    seconds = interleaved_medians({k: step(*v) for k, v in fns.items()}, repeats, warmup=1)
    with torch.inference_mode():
        reference = eager[torch.float32](x)
        diffs = {k: (m(inputs[d]).float() - reference).abs().max().item() for k, (m, d) in fns.items()}
    return [{"path": k, "dtype": str(d).removeprefix("torch."), "ips": batch / seconds[k], "first": first.get(k),
             "diff": diffs[k]} for k, (_, d) in fns.items()]


def compiled_table(rows: list[dict], batch: int = 8) -> str:
    base = {r["dtype"]: r["ips"] for r in rows if r["path"].startswith("eager")}
    lines = [["path", "dtype", f"images/s (batch {batch})", "vs eager, same dtype", "first call (compiling)",
              "images to pay back the compile", "max abs logit diff vs eager float32"]]
    for r in rows:
        gain = 1 / base[r["dtype"]] - 1 / r["ips"]  # seconds saved per image
        payback = ("-" if r["first"] is None
                   else f"{(r['first'] - batch / r['ips']) / gain:.0f}" if gain > 0 else "never")
        lines.append([r["path"], r["dtype"], f"{r['ips']:.2f}", f"{r['ips'] / base[r['dtype']]:.2f}x",
                      "-" if r["first"] is None else f"{r['first']:.1f} s", payback, f"{r['diff']:.1e}"])
    return markdown(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="vit_base_patch16_224")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--res", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()
    ips = run(args.model, args.batch, args.res, args.repeats)
    print(f"machine: {machine()}")
    print(f"{args.model} at {args.res}, batch {args.batch}, float32, median of {args.repeats} interleaved runs")
    print(markdown([["", "images/s", "vs timm"],
                 ["vitconvert", f"{ips['vitconvert']:.2f}", f"{ips['vitconvert'] / ips['timm']:.2f}x"],
                 ["timm", f"{ips['timm']:.2f}", "1.00x"]]))


if __name__ == "__main__":
    main()
