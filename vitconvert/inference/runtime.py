"""Inference settings: the compute dtype, checked against the device and what it runs fast.

float32 is exact. bfloat16 halves memory traffic and on GPUs and on some CPUs runs matrix products
several times faster, but a CPU's flags alone do not say whether it gains: with AMX tiles (Intel Xeon
Sapphire Rapids and later) it does; with AVX512-BF16 and no AMX it did on one CPU and did not on another
(an AMD EPYC and an Intel Xeon: docs/speed.md); without either it is emulated. So on a CPU with
AVX512-BF16 (or AVX512-FP16) but no AMX a small matrix product is timed once per process in both dtypes,
and the chosen dtype is allowed with a `VitConvertWarning` when it is slower than float32, as it is when
emulated. float16 is for GPUs. 'int8' keeps float32 activations and runs the linear layers in int8
(dynamic quantisation, CPU only: `torch.qint8` stands for it); a dtype the device cannot run at all is
refused.
"""

from __future__ import annotations

import functools
import os
import time
import warnings

import torch

from ..core.errors import VitConvertError, VitConvertWarning

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "int8": torch.qint8}
ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16", "qint8": "int8"}
# The flags that say how a CPU runs each half-precision type: tiles, vector instructions, neither.
NATIVE = {torch.bfloat16: ("amx_bf16", "avx512_bf16"), torch.float16: ("amx_fp16", "avx512_fp16")}


def inference_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """`dtype` (a name, an alias like 'bf16', or a torch dtype; None is float32), checked for `device`."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise VitConvertError(f"inference dtype must be one of {', '.join(DTYPES)}, got {dtype}")
        chosen = dtype
    else:
        name = ALIASES.get(str(dtype).lower(), str(dtype).lower())
        if name not in DTYPES:
            raise VitConvertError(f"inference dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        chosen = DTYPES[name]
    if chosen is torch.float32:
        return chosen
    if chosen is torch.qint8:
        if device.type != "cpu":
            raise VitConvertError(f"int8 is dynamic quantisation for the CPU, not for device {device}; "
                                  "use float16 or bfloat16 there")
    elif device.type == "cpu":
        _check_cpu(chosen)
    elif device.type == "cuda" and chosen is torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise VitConvertError(f"device {device}: this GPU has no bfloat16 support; use float16")
    return chosen


def input_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of the model's input for a compute dtype: an int8 model takes float32."""
    return torch.float32 if dtype is torch.qint8 else dtype


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (Linux); empty where that cannot be read."""
    try:
        with open("/proc/cpuinfo") as f:
            return frozenset(next(line for line in f if line.startswith("flags")).split(":", 1)[1].split())
    except (OSError, StopIteration):
        return frozenset()


def cpu_support(dtype: torch.dtype) -> str:
    """How this CPU runs `dtype` (bfloat16 or float16): 'amx' (tiles), 'avx512' (vector
    instructions; faster than float32 on some CPUs, slower on others) or 'emulated'."""
    tiles, vectors = NATIVE[dtype]
    flags = cpu_flags()
    if not flags:  # not Linux: oneDNN's own probe says native or not, not which kind
        probe = {torch.bfloat16: "_is_mkldnn_bf16_supported", torch.float16: "_is_mkldnn_fp16_supported"}[dtype]
        try:
            return "avx512" if bool(getattr(torch.ops.mkldnn, probe)()) else "emulated"
        except (AttributeError, RuntimeError):
            return "emulated"
    return "amx" if tiles in flags else "avx512" if vectors in flags else "emulated"


@functools.cache
def matmul_slowdown(dtype: torch.dtype) -> float:
    """Time of a ViT-sized matrix product (512x768 by 768x3072) in `dtype` over its time in float32,
    on this CPU with torch's threads: best of 3 after a warm-up, once a process, since the flags do not
    say which dtype is faster (what it costs at start: docs/speed.md)."""
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(512, 768, generator=gen), torch.randn(768, 3072, generator=gen)

    def best(x: torch.Tensor, y: torch.Tensor) -> float:
        x @ y
        times = []
        for _ in range(3):
            start = time.perf_counter()
            x @ y
            times.append(time.perf_counter() - start)
        return min(times)  # the least disturbed by other work on the machine

    return best(a.to(dtype), b.to(dtype)) / best(a, b)


def _check_cpu(dtype: torch.dtype) -> None:
    name = _name(dtype)
    support = cpu_support(dtype)
    if support == "amx":
        return
    if support == "avx512":
        slowdown = matmul_slowdown(dtype)
        if slowdown <= 1:
            return
        advice = (f"this CPU has {NATIVE[dtype][1].upper().replace('_', '-')} but no AMX tiles, and here a "
                  f"matrix product in {name} took {slowdown:.1f}x the float32 time; float32 is the faster "
                  f"choice on this CPU ({name} gains on CPUs with AMX, and on some without)")
    elif dtype is torch.float16:
        advice = ("this CPU has no native float16 arithmetic, so it is emulated and usually several "
                  "times slower than float32; use bfloat16 on a CPU (float16 is for GPUs)")
    else:
        advice = ("this CPU has no native bfloat16 arithmetic (AVX512-BF16 or AMX), so it is emulated "
                  "and usually slower than float32; float32 is the faster choice here")
    warnings.warn(f"{name} on CPU: {advice}", VitConvertWarning, stacklevel=4)


def _name(dtype: torch.dtype) -> str:
    return next(name for name, d in DTYPES.items() if d is dtype)


def run_compiled(fn, batch: torch.Tensor) -> torch.Tensor:
    """`fn(batch)`; for a model that `torch.compile` prepared (`load_model(..., compile=True)` off the
    CPU or in half precision) a compiler failure, on the first call of a shape, becomes a clear
    error instead of a compiler traceback."""
    try:
        return fn(batch)
    except Exception as e:  # compile errors come in many types; only the compiler's are rewritten
        from torch._dynamo.exc import TorchDynamoException

        if not isinstance(e, TorchDynamoException):
            raise
        cause = getattr(e, "inner_exception", None) or e  # BackendCompilerFailed wraps the compiler's error
        text = str(cause).strip()
        reason = f"{type(cause).__name__}: {text.splitlines()[0]}" if text else type(cause).__name__
        raise VitConvertError(
            f"torch.compile failed ({reason[:300]}); run without --compile (compile=False), or "
            "check that a C++ compiler is installed for CPU inference") from e


def keep_freed_memory() -> bool:
    """Let this process reuse the memory a forward pass frees instead of returning it to the system.

    glibc gives big blocks back to the kernel when they are freed (and maps blocks over its
    threshold afresh), so every forward pass page-faults its activations in again (a million faults
    over a folder of photos; the timings with and without: docs/speed.md). It sets glibc's
    mmap threshold to its largest value and the trim threshold to 1 GiB, which is process-wide:
    `vitpredict` calls it; a library user may (the process keeps up to 1 GiB of freed memory for
    reuse). True if it took effect; a no-op returning False outside glibc.
    """
    import ctypes

    try:
        if not os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc"):
            return False
        libc = ctypes.CDLL(None)
        # mallopt parameters: M_TRIM_THRESHOLD = -1, M_MMAP_THRESHOLD = -3. Setting one of them turns
        # glibc's dynamic thresholds off, so both are set; 32 MiB is the largest mmap threshold allowed.
        return bool(libc.mallopt(-3, 32 << 20)) and bool(libc.mallopt(-1, 1 << 30))
    except (AttributeError, OSError, ValueError):
        return False
