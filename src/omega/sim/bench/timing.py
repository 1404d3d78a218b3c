"""Shared by the benchmarks: medians, p90, per-call samples, this process's RSS."""

from __future__ import annotations

from pathlib import Path


def median_ms(samples: list[float]) -> float:
    import statistics

    return statistics.median(samples) * 1000.0


def p90_ms(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))] * 1000.0


def rss_mb() -> tuple[float, float]:
    """(current, peak) resident set size of this process in MB.

    /proc's VmHWM, not getrusage's ru_maxrss: the latter carries the parent's
    high-water mark over fork+exec and would blame the builder's memory on the child.
    """
    import resource

    found: dict[str, float] = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                found[key] = int(value.split()[0]) / 1024.0
    except OSError:
        pass
    fallback = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KB on Linux
    return found.get("VmRSS", fallback), found.get("VmHWM", fallback)


def rss_kinds_mb() -> dict[str, float]:
    """This process's resident memory by kind, in MB: "anon" (heap, arrays: the process's own) and "file"
    (mapped files: shared libraries, mapped model weights; clean pages the kernel may drop and read again).
    VmRSS is their sum (plus shared memory, none here); how much of "file" is resident depends on what
    the page cache holds and how often the pages are touched, so it moves between runs more than "anon"."""
    found = {"anon": 0.0, "file": 0.0}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("RssAnon", "RssFile"):
                found["anon" if key == "RssAnon" else "file"] = int(value.split()[0]) / 1024.0
    except OSError:
        pass
    return found


def timed(fn, repeats: int) -> list[float]:  # noqa: ANN001
    import time

    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return samples


def timed_each_with_cpu(fn, args, before=None) -> tuple[list[float], list[float]]:  # noqa: ANN001
    """`timed_each`, plus each call's CPU time on this thread: on shared cores the wall clock also counts
    the time other processes held the core, the thread's CPU time only (mostly) the call's own work.
    `before(arg)`, untimed, runs ahead of each call (what the timed call follows, e.g. a viewing)."""
    import time

    wall, cpu = [], []
    for arg in args:
        if before is not None:
            before(arg)
        t0, c0 = time.perf_counter(), time.thread_time()
        fn(arg)
        cpu.append(time.thread_time() - c0)
        wall.append(time.perf_counter() - t0)
    return wall, cpu


def timed_each(fn, args) -> list[float]:  # noqa: ANN001
    import time

    samples = []
    for arg in args:
        t0 = time.perf_counter()
        fn(arg)
        samples.append(time.perf_counter() - t0)
    return samples
