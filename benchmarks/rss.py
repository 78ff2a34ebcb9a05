"""The peak extra resident memory of one CPU call, read from /proc (Linux): what the
benchmarks' memory columns measure, each in a fresh process of its own."""

from __future__ import annotations

import gc
from typing import Callable


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_extra_rss(fn: Callable[[], object]) -> int:
    """Bytes by which one call of ``fn`` raised this process's resident peak above what it
    held before the call (``fn`` is called once first, for lazy initialisations)."""
    fn()
    gc.collect()
    before = _status_kb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS
    result = fn()
    peak = _status_kb("VmHWM")
    del result
    return 1024 * (peak - before)
