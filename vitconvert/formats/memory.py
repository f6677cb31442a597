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


def gib(n: int) -> str:
    return f"{n / 2 ** 30:.1f} GiB"


def check_memory(need: int, what: str) -> None:
    """Refuse, before reading, `what` that needs `need` bytes where less is available."""
    free = available_memory()
    if free is not None and need > free:
        raise VitConvertError(f"{what} needs about {gib(need)} of memory and {gib(free)} is available: "
                              "free some, or convert on a larger machine")
