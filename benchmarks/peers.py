"""ViT-B/16 at 224 on the CPU against what people deploy with, one interleaved run on the same weights:
timm eager, ours eager, ours `compile=True`, ONNX Runtime and OpenVINO (both on the ONNX file timm's
model exports, float32, the same thread count as torch); then ours int8 and bfloat16.

    python -m benchmarks.peers [--batches 1 8] [--repeats 5]

ONNX Runtime and OpenVINO come from the `bench` extra (pip install '.[bench]'); a runtime that is
not installed gets a row saying so instead of figures.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks.common import interleaved_medians, machine, markdown
from benchmarks.inference import models

FLOAT32 = ["timm eager", "ours eager", "ours compile=True", "ONNX Runtime", "OpenVINO"]
PEERS = ["timm eager", "ONNX Runtime", "OpenVINO"]
LOWER = ["ours int8", "ours bfloat16"]


def cpu_text() -> str:
    """The CPU and the flags that decide its half-precision and int8 speed."""
    from vitconvert.inference.runtime import cpu_flags

    flags = cpu_flags()
    model = "unknown CPU"
    with contextlib.suppress(OSError, StopIteration), open("/proc/cpuinfo") as f:
        model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    shown = ", ".join(f"{flag} {'yes' if flag in flags else 'no'}"
                      for flag in ("avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16", "avx512_fp16"))
    return f"{model}; {shown}"


def matmul_ms(repeats: int = 5) -> dict[str, float]:
    """A plain 4096x4096 matrix product in float32 and bfloat16, median milliseconds: the figure issue 17
    compares across CPUs (its figures on other CPUs: docs/speed.md)."""
    a, b = torch.randn(4096, 4096), torch.randn(4096, 4096)
    a16, b16 = a.bfloat16(), b.bfloat16()
    seconds = interleaved_medians({"float32": lambda: a @ b, "bfloat16": lambda: a16 @ b16}, repeats, warmup=1)
    return {k: v * 1000 for k, v in seconds.items()}


def export_timm(model: torch.nn.Module, res: int, path: Path) -> None:
    """timm's model as ONNX, dynamic batch: the file an ONNX Runtime or OpenVINO user would start from."""
    with contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
        program = torch.onnx.export(model, (torch.zeros(2, 3, res, res),), dynamo=True, input_names=["pixels"],
                                    dynamic_shapes=({0: torch.export.Dim("batch", min=1)},), verbose=False)
    program.save(str(path))


def onnxruntime_runner(path: Path, threads: int) -> Callable | str:
    try:
        import onnxruntime as ort
    except ImportError:
        return "not installed"
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"pixels": x})[0]


def openvino_runner(path: Path, threads: int, batch: int, res: int) -> Callable | str:
    try:
        import openvino as ov
    except ImportError:
        return "not installed"
    core = ov.Core()
    model = core.read_model(str(path))
    model.reshape([batch, 3, res, res])  # static shapes, as OpenVINO prefers (and as compile=True runs)
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads,
                                                 "PERFORMANCE_HINT": "LATENCY"})
    request = compiled.create_infer_request()
    return lambda x: request.infer({0: x})[compiled.output(0)]


def run(batches: list[int], repeats: int, warmup: int = 2, res: int = 224,
        timm_name: str = "vit_base_patch16_224") -> dict:
    from vitconvert.model.optimize import compile_model, quantize_int8

    threads = torch.get_num_threads()
    ours, theirs = models(timm_name, res, realistic=True)
    torch_paths = {"timm eager": theirs, "ours eager": ours, "ours compile=True": compile_model(copy.deepcopy(ours)),
                   "ours int8": quantize_int8(copy.deepcopy(ours)),
                   "ours bfloat16": copy.deepcopy(ours).to(torch.bfloat16)}
    rows, missing = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp) / "timm.onnx"
        export_timm(theirs, res, onnx_path)
        ort_run = onnxruntime_runner(onnx_path, threads)
        for batch in batches:
            x = torch.randn(batch, 3, res, res, generator=torch.Generator().manual_seed(0))
            xn = x.numpy()
            fns: dict[str, Callable[[], object]] = {}
            for name, model in torch_paths.items():
                xin = x.to(torch.bfloat16) if name == "ours bfloat16" else x
                fns[name] = lambda model=model, xin=xin: model(xin)
            ov_run = openvino_runner(onnx_path, threads, batch, res)
            for name, runner in (("ONNX Runtime", ort_run), ("OpenVINO", ov_run)):
                if isinstance(runner, str):
                    missing[name] = runner
                else:
                    fns[name] = lambda runner=runner, xn=xn: torch.as_tensor(runner(xn))
            with torch.inference_mode():
                reference = theirs(x)
                diffs = {name: (fn().float() - reference).abs().max().item() for name, fn in fns.items()}
                seconds = interleaved_medians(fns, repeats, warmup)
            rows.append({"batch": batch, "ips": {k: batch / v for k, v in seconds.items()}, "diff": diffs})
    return {"rows": rows, "missing": missing, "threads": threads, "repeats": repeats, "cpu": cpu_text(),
            "matmul_ms": matmul_ms(), "bf16_support": _bf16_support(),
            "model": f"{timm_name} at {res}"}


def _bf16_support() -> str:
    from vitconvert.inference.runtime import cpu_support

    return {"amx": "AMX tiles", "avx512": "AVX512-BF16 without AMX (timed at run time)",
            "emulated": "emulated"}[cpu_support(torch.bfloat16)]


def table(result: dict) -> str:
    rows = result["rows"]
    batches = [r["batch"] for r in rows]
    lines = [["runtime", *[f"batch {b}, images/s" for b in batches], *[f"batch {b} vs fastest peer" for b in batches],
              "max abs logit diff vs timm eager"]]
    best = {r["batch"]: max(r["ips"][p] for p in PEERS if p in r["ips"]) for r in rows}
    for name in FLOAT32 + LOWER:
        if name in result["missing"]:
            lines.append([name, *[result["missing"][name]] * (2 * len(batches)), "-"])
            continue
        ips = [r["ips"][name] for r in rows]
        lines.append([name if name in FLOAT32 else f"{name} (not float32)", *[f"{v:.2f}" for v in ips],
                      *[f"{v / best[b]:.2f}x" for v, b in zip(ips, batches, strict=False)],
                      f"{max(r['diff'][name] for r in rows):.1e}"])
    return markdown(lines)


def verdict(result: dict) -> str:
    last = result["rows"][-1]
    peers = {p: last["ips"][p] for p in PEERS if p in last["ips"]}
    fastest = max(peers, key=peers.get)
    ratio = last["ips"]["ours compile=True"] / peers[fastest]
    return (f"Target: ours compile=True >= 1.0x the fastest peer at batch {last['batch']} float32: "
            f"{ratio:.2f}x {fastest}, {'met' if ratio >= 1.0 else 'NOT met'}.")


def text(result: dict) -> str:
    return (f"{result['model']}, CPU, {result['threads']} threads everywhere (torch, ONNX Runtime intra-op, "
            f"OpenVINO INFERENCE_NUM_THREADS), same weights (`realistic_random`); median of {result['repeats']} "
            "interleaved runs per batch size. ONNX Runtime and OpenVINO run the ONNX file timm's model exports "
            "(torch.onnx dynamo exporter), ONNX Runtime with its CPU execution provider and all graph "
            "optimisations, OpenVINO with the f32 precision hint at a static batch; our int8 and bfloat16 "
            "change the arithmetic and are listed apart.\n\nCPU: " + result["cpu"] + f"; bfloat16 here: "
            f"{result['bf16_support']}. A 4096x4096 matrix product: {result['matmul_ms']['float32']:.0f} ms "
            f"float32, {result['matmul_ms']['bfloat16']:.0f} ms bfloat16.\n\n" + table(result)
            + "\n\n" + verdict(result))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    print(f"machine: {machine()}")
    print(text(run(args.batches, args.repeats)))


if __name__ == "__main__":
    main()
