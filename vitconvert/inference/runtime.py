"""Inference settings: the compute dtype (checked against the device), and `torch.compile`.

float32 is exact. bfloat16 halves memory traffic and, on CPUs with native bfloat16 (AVX512-BF16 or
AMX) and on GPUs, runs matrix products several times faster; float16 is for GPUs. A dtype the
device can run only by emulation is allowed with a `VitConvertWarning` that says it is slow (float16
on most CPUs, bfloat16 on CPUs without native support); one it cannot run at all is refused.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable

import torch

from ..core.errors import VitConvertError, VitConvertWarning

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}


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
    if device.type == "cpu":
        _check_cpu(chosen)
    elif device.type == "cuda" and chosen is torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise VitConvertError(f"device {device}: this GPU has no bfloat16 support; use float16")
    return chosen


def _check_cpu(dtype: torch.dtype) -> None:
    probe = {torch.bfloat16: "_is_mkldnn_bf16_supported", torch.float16: "_is_mkldnn_fp16_supported"}[dtype]
    try:
        native = bool(getattr(torch.ops.mkldnn, probe)())
    except (AttributeError, RuntimeError):
        native = False
    if native:
        return
    if dtype is torch.float16:
        advice = ("this CPU has no native float16 arithmetic, so it is emulated and usually several "
                  "times slower than float32; use bfloat16 on a CPU (float16 is for GPUs)")
    else:
        advice = ("this CPU has no native bfloat16 arithmetic (AVX512-BF16 or AMX), so it is emulated "
                  "and usually slower than float32; float32 is the faster choice here")
    warnings.warn(f"{_name(dtype)} on CPU: {advice}", VitConvertWarning, stacklevel=4)


def _name(dtype: torch.dtype) -> str:
    return next(name for name, d in DTYPES.items() if d is dtype)


def compile_model(model: torch.nn.Module | Callable[[torch.Tensor], torch.Tensor]):
    """`torch.compile` of an eval-mode model (or one of its methods) for fixed shapes (each batch size
    compiles once).

    Compilation happens on the first call of each shape; `run_compiled` turns a failure there into a
    clear error instead of a compiler traceback.
    """
    return torch.compile(model, dynamic=False)


def run_compiled(fn, batch: torch.Tensor) -> torch.Tensor:
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
    threshold afresh), so every forward pass page-faults its activations in again: on 2 cores,
    ViT-B/16 over 200 images in a fresh process took 1.2 million page faults and 13.1 s in bfloat16,
    11.5 s with this (float32: 35.8 s, 34.1 s). It sets glibc's mmap threshold to its largest
    value and the trim threshold to 1 GiB, which is process-wide: `vitpredict` calls it; a library
    user may (the process keeps up to 1 GiB of freed memory for reuse). True if it took effect;
    a no-op returning False outside glibc.
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
