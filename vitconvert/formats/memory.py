"""How much memory this machine has free, so that a conversion that cannot fit says so before it reads."""

from __future__ import annotations

import os

from ..core.errors import VitConvertError


def available_memory() -> int | None:
    """Bytes the system can give without swapping (Linux's MemAvailable; else the free pages); None if unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def size_words(n: int) -> str:
    """Bytes in the largest unit that keeps a number of at least 1: '192 KiB', '27.4 GiB'."""
    for power, unit in ((3, "GiB"), (2, "MiB"), (1, "KiB")):
        if n >= 1024 ** power:
            value = n / 1024 ** power
            return f"{value:.1f} {unit}" if value < 100 else f"{value:.0f} {unit}"
    return f"{n} bytes"


def check_memory(need: int, what: str) -> None:
    """Refuse, before reading, `what` that needs `need` bytes where less is available."""
    free = available_memory()
    if free is not None and need > free:
        raise VitConvertError(f"{what} needs about {size_words(need)} of memory and {size_words(free)} is available: "
                              "free some, or convert on a larger machine")
