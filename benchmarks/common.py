"""Timing and machine description shared by the benchmarks."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path


def machine() -> str:
    import torch

    cpu, flags = platform.processor() or platform.machine(), "flags unknown"
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read().splitlines()
        cpu = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
        present = set(next(line.split(":", 1)[1].split() for line in info if line.startswith("flags")))
        # What decides our speed claims: bfloat16 and int8 matmul units, and SHA for the source's hash.
        flags = " ".join(f for f in ("avx512_bf16", "amx_bf16", "avx512_vnni", "sha_ni") if f in present) or "none"
        flags = f"flags {flags}" + ("" if "amx_tile" in present else ", no AMX")
    except (OSError, StopIteration):
        pass
    try:
        bf16 = "native" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "emulated"
    except (AttributeError, RuntimeError):
        bf16 = "unknown"
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{cpu} ({flags}), {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"Python {platform.python_version()}, CPU bfloat16 {bf16}, {gpu}")


def interleaved_medians(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 2) -> dict[str, float]:
    """Median seconds per call of each function, runs interleaved so drift hits all alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {name: statistics.median(ts) for name, ts in times.items()}


ROOT = Path(__file__).resolve().parents[1]
# The sample photos (licences in benchmarks/images/README.md and tests/data/README.md).
PHOTOS = [ROOT / "tests" / "data" / "cat.jpg", ROOT / "benchmarks" / "images" / "coffee.jpg",
          ROOT / "benchmarks" / "images" / "rocket.jpg", ROOT / "benchmarks" / "images" / "astronaut.jpg",
          ROOT / "tests" / "data" / "camera_gray.png"]


def load() -> str:
    """The 1, 5 and 15 minute load averages: how busy the machine was (another job on it shows here)."""
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def realistic_random(model, seed: int = 0):
    """Random weights of a trained model's scale, and a head whose logits spread (std about 3).

    timm's own initialisation gives near-zero, near-uniform logits, for which a top-1 says nothing;
    with these a photo's top class leads by a margin that can be compared with the bfloat16 error.
    (The tests' `randomize` + `spread_heads`, restated here so the benchmarks need no test code.)
    """
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if name in ("cls_token", "dist_token", "pos_embed"):
                p.copy_(0.1 * noise)
            elif name.endswith(".weight") and p.ndim == 1:  # norm scales around 1
                p.copy_(1 + 0.1 * noise)
            elif p.ndim == 1:
                p.copy_(0.05 * noise)
            else:
                p.copy_(noise * (0.5 / p[0].numel() ** 0.5))
        head = model.head
        head.weight.copy_(torch.randn(head.weight.shape, generator=g) * 3 / head.in_features ** 0.5)
    return model.eval()


def markdown(rows: list[list[str]]) -> str:
    """A pipe table: readable as text, rendered on GitHub."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + " |" for r in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


class OtherLoad:
    """CPU time other processes took while a section ran: the machine's busy time (/proc/stat) less
    this process's and its waited-for children's. Load averages count the benchmark itself; this does not.

    >>> with OtherLoad() as other: ...
    >>> other.text  # e.g. 'other processes used 3% of the 2 cores'
    """

    def __enter__(self) -> OtherLoad:  # noqa: PYI034 (typing.Self needs 3.11)
        self.start = (self._busy(), self._ours(), time.perf_counter())
        return self

    def __exit__(self, *exc: object) -> None:
        now = (self._busy(), self._ours(), time.perf_counter())
        busy, ours, wall = (b - a for a, b in zip(self.start, now, strict=True))
        cores = os.cpu_count() or 1
        self.fraction = max(0.0, busy - ours) / (wall * cores) if wall > 0 else 0.0
        self.text = f"other processes used {self.fraction * 100:.0f}% of the {cores} cores"

    @staticmethod
    def _busy() -> float:
        try:
            with open("/proc/stat") as f:
                fields = [int(v) for v in f.readline().split()[1:]]
        except (OSError, ValueError):
            return 0.0
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")  # guest time is already in user

    @staticmethod
    def _ours() -> float:
        import resource

        return sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                     resource.getrusage(resource.RUSAGE_CHILDREN)))
