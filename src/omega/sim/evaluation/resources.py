"""Where an evaluation's wall time and memory go: seconds and resident memory per stage.

The JSON's `timings_s` gives each stage's wall seconds; `rss_mb` the process's resident memory at the
end of each stage and its peak so far (Linux `/proc/self/statm` and `ru_maxrss`; elsewhere only the
peak), so a regression in either shows in the run that caused it.
"""

from __future__ import annotations

import os
import resource
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

_MB = 1024 * 1024


def rss_mb() -> float | None:
    """The process's resident memory now, in MB (None where /proc is missing)."""
    try:
        with open("/proc/self/statm", "rb") as fh:
            pages = int(fh.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / _MB


def peak_rss_mb() -> float:
    """The process's peak resident memory so far, in MB (ru_maxrss: KB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / _MB if sys.platform == "darwin" else peak / 1024


class StageMeter:
    """Wall seconds per stage, and resident memory (now, peak) when each stage ends."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.seconds: dict[str, float] = {}
        self.memory: dict[str, dict[str, float | None]] = {}

    def mark(self, name: str, since: float) -> float:
        """Record stage `name` as the time from `since` (a perf_counter reading) to now; returns now."""
        now = time.perf_counter()
        self.seconds[name] = self.seconds.get(name, 0.0) + now - since
        rss = rss_mb()
        self.memory[name] = {"rss": None if rss is None else round(rss, 1), "peak": round(peak_rss_mb(), 1)}
        return now

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.mark(name, t0)

    def timings(self) -> dict[str, float]:
        """Seconds per stage plus `total` (rounded to 10 ms)."""
        return {k: round(v, 2) for k, v in self.seconds.items()} | {"total": round(time.perf_counter() - self.started, 2)}

    def rss(self) -> dict[str, object]:
        """Resident MB when each stage ended (`rss`) and the peak up to then (`peak`), plus the run's peak."""
        return {"stages": dict(self.memory), "peak": round(peak_rss_mb(), 1)}
