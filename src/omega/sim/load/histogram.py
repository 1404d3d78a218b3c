"""A log-bucketed latency histogram: bounded memory, mergeable across processes, ~1 % precision.

A load run may answer millions of frames in several processes; keeping every
sample would cost memory and pickling time, while percentiles to 1 % are plenty.
"""

from __future__ import annotations

import math

#: bucket i holds latencies in [GROWTH**i, GROWTH**(i+1)) microseconds
GROWTH = 1.01
_LOG_GROWTH = math.log(GROWTH)


class LatencyHistogram:
    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.total = 0

    def add(self, seconds: float) -> None:
        us = max(seconds * 1e6, 1.0)
        bucket = int(math.log(us) / _LOG_GROWTH)
        self.counts[bucket] = self.counts.get(bucket, 0) + 1
        self.total += 1

    def merge(self, other: LatencyHistogram) -> None:
        for bucket, n in other.counts.items():
            self.counts[bucket] = self.counts.get(bucket, 0) + n
        self.total += other.total

    def quantile_ms(self, q: float) -> float | None:
        """The q-quantile in milliseconds (bucket midpoint), None when empty."""
        if not self.total:
            return None
        rank = min(self.total - 1, int(q * self.total))
        seen = 0
        for bucket in sorted(self.counts):
            seen += self.counts[bucket]
            if seen > rank:
                return GROWTH ** (bucket + 0.5) / 1000.0
        raise AssertionError("unreachable: counts sum to total")

    def __getstate__(self) -> tuple[dict[int, int], int]:
        return self.counts, self.total

    def __setstate__(self, state: tuple[dict[int, int], int]) -> None:
        self.counts, self.total = state
