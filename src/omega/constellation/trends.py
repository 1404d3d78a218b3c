"""Trend detection: distinct-device support per cell per time window, against an EWMA baseline.

Per cell and window (default 1 h) the tracker counts distinct device
pseudonyms — exactly with in-memory sets, or with Redis HyperLogLog (PFADD /
PFCOUNT, ~0.8 % error, shared by every worker of a shard). When a window
closes, each known cell's count x is scored against its baseline *before* that
window, then the baseline absorbs x:

    score    = (x − mean) / sqrt(max(var, mean)·(1 + α/(2 − α)) + 1)
    mean    += α·(x − mean)
    var      = (1 − α)·(var + α·(x − mean_old)²)          (EWMA variance)

Counts of distinct devices are roughly Poisson, so the variance is floored at
the mean: a cell whose counts happened to be very steady is not flagged for a
±2 wobble. The factor 1 + α/(2 − α) adds the EWMA mean's own sampling variance
(x − mean is the difference of two noisy numbers; without it a z of 3 flags
~3x more steady cells than it should), and the +1 keeps near-empty cells from
exploding. A cell is *bursting*
when score ≥ burst_z, it has at least `min_count` devices in the window and its
baseline has seen `warmup_windows` windows. Scores are those of the last closed
window (a window in progress has partial counts). `trend_score(cell)` is what
the aggregator puts in consolidated patterns (`ConsolidatedCell.trend_score`).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

from omega.constellation.crdt import CellKey
from omega.errors import OmegaError

_FORGET_BELOW = 0.05  # a cell whose baseline decayed below this (no devices for long) is dropped


@dataclass(frozen=True)
class TrendEntry:
    """One cell's state after the last closed window."""

    cell: CellKey
    window: int  # index of the scored window: it started at window × window_ms
    count: int  # distinct devices in that window
    baseline: float  # EWMA mean before that window
    score: float
    bursting: bool

    def to_json(self) -> dict[str, object]:
        return {
            "task_type": self.cell.task_type,
            "cell": self.cell.cell,
            "window": self.window,
            "count": self.count,
            "baseline": round(self.baseline, 3),
            "score": round(self.score, 3),
            "bursting": self.bursting,
        }


# ---- distinct counting ----------------------------------------------------------------
class DistinctCounter(ABC):
    """Distinct members per (window, cell)."""

    @abstractmethod
    async def add(self, window: int, items: Sequence[tuple[CellKey, bytes]]) -> None: ...

    @abstractmethod
    async def counts(self, window: int) -> dict[CellKey, int]:
        """Distinct count of every cell seen in the window."""

    @abstractmethod
    async def forget(self, window: int) -> None: ...


class ExactCounter(DistinctCounter):
    """In-memory sets (the embedded default): exact, one process."""

    def __init__(self) -> None:
        self._windows: dict[int, dict[CellKey, set[bytes]]] = {}

    async def add(self, window: int, items: Sequence[tuple[CellKey, bytes]]) -> None:
        cells = self._windows.setdefault(window, {})
        for cell, member in items:
            cells.setdefault(CellKey(*cell), set()).add(bytes(member))

    async def counts(self, window: int) -> dict[CellKey, int]:
        return {cell: len(members) for cell, members in self._windows.get(window, {}).items()}

    async def forget(self, window: int) -> None:
        self._windows.pop(window, None)


class RedisHLLCounter(DistinctCounter):
    """Redis HyperLogLog per (window, cell) plus a set of the window's cells; keys expire on their own."""

    def __init__(self, redis: object, prefix: str = "omega:trends", ttl_s: int = 3 * 86_400) -> None:
        self._redis = redis
        self._prefix = prefix
        self._ttl_s = int(ttl_s)

    @classmethod
    def from_url(cls, url: str, prefix: str = "omega:trends", ttl_s: int = 3 * 86_400) -> RedisHLLCounter:
        import redis.asyncio as aioredis

        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise OmegaError(f"Redis URL must be redis://HOST:PORT/DB, got {url!r}")
        return cls(aioredis.from_url(url), prefix, ttl_s)

    def _cells_key(self, window: int) -> str:
        return f"{self._prefix}:{window}:cells"

    def _hll_key(self, window: int, cell: CellKey) -> str:
        return f"{self._prefix}:{window}:{cell.task_type}:{cell.cell}"

    async def add(self, window: int, items: Sequence[tuple[CellKey, bytes]]) -> None:
        if not items:
            return
        by_cell: dict[CellKey, list[bytes]] = {}
        for cell, member in items:
            by_cell.setdefault(CellKey(*cell), []).append(bytes(member))
        pipe = self._redis.pipeline(transaction=False)  # type: ignore[attr-defined]
        for cell, members in by_cell.items():
            key = self._hll_key(window, cell)
            pipe.pfadd(key, *members)
            pipe.expire(key, self._ttl_s)
        cells_key = self._cells_key(window)
        pipe.sadd(cells_key, *(f"{c.task_type}:{c.cell}" for c in by_cell))
        pipe.expire(cells_key, self._ttl_s)
        await pipe.execute()

    async def _cells(self, window: int) -> list[CellKey]:
        raw = await self._redis.smembers(self._cells_key(window))  # type: ignore[attr-defined]
        cells = []
        for item in raw:
            t, c = (item.decode() if isinstance(item, bytes) else item).split(":")
            cells.append(CellKey(int(t), int(c)))
        return sorted(cells)

    async def counts(self, window: int) -> dict[CellKey, int]:
        cells = await self._cells(window)
        if not cells:
            return {}
        pipe = self._redis.pipeline(transaction=False)  # type: ignore[attr-defined]
        for cell in cells:
            pipe.pfcount(self._hll_key(window, cell))
        return {cell: int(n) for cell, n in zip(cells, await pipe.execute(), strict=True)}

    async def forget(self, window: int) -> None:
        keys = [self._hll_key(window, c) for c in await self._cells(window)] + [self._cells_key(window)]
        await self._redis.delete(*keys)  # type: ignore[attr-defined]

    async def close(self) -> None:
        await self._redis.aclose()  # type: ignore[attr-defined]


# ---- the tracker ----------------------------------------------------------------------
@dataclass
class _Baseline:
    mean: float
    var: float
    windows: int


class TrendTracker:
    """Per-cell burst detection over fixed time windows (see the module docstring for the score)."""

    def __init__(
        self,
        window_s: float = 3600.0,
        alpha: float = 0.3,
        burst_z: float = 3.0,
        *,
        counter: DistinctCounter | None = None,
        min_count: int = 3,
        warmup_windows: int = 3,
        max_gap_windows: int = 48,
    ) -> None:
        if not (window_s > 0 and 0 < alpha <= 1 and burst_z > 0 and min_count >= 1 and warmup_windows >= 1):
            raise OmegaError("trends need window_s > 0, 0 < alpha <= 1, burst_z > 0, min_count >= 1, warmup >= 1")
        self.window_ms = int(window_s * 1000)
        self.alpha = float(alpha)
        self.burst_z = float(burst_z)
        self.min_count = int(min_count)
        self.warmup_windows = int(warmup_windows)
        self.max_gap_windows = int(max_gap_windows)
        self.counter = counter or ExactCounter()
        self._mean_noise = 1.0 + self.alpha / (2.0 - self.alpha)  # Var(EWMA mean) / Var(x) for i.i.d. counts
        self._open: int | None = None  # the window observations currently go to
        self._baselines: dict[CellKey, _Baseline] = {}
        self._latest: dict[CellKey, TrendEntry] = {}

    def window_of(self, now_ms: int) -> int:
        if not isinstance(now_ms, int) or now_ms < 0:
            raise OmegaError("now_ms must be a non-negative integer")
        return now_ms // self.window_ms

    async def observe(self, cell: CellKey, pseudonym: bytes, now_ms: int) -> None:
        """One device seen contributing to a cell (pseudonym: any stable per-device bytes, never a raw id)."""
        await self.observe_many([(cell, pseudonym)], now_ms)

    async def observe_many(self, items: Sequence[tuple[CellKey, bytes]], now_ms: int) -> None:
        window = self.window_of(now_ms)
        await self.advance(now_ms)
        if window < (self._open or 0):
            return  # late observation for a window already scored: dropped, the score stands
        await self.counter.add(window, items)

    async def advance(self, now_ms: int) -> None:
        """Close and score every window that ended before `now_ms` (call it on a timer when traffic is thin)."""
        window = self.window_of(now_ms)
        if self._open is None:
            self._open = window
            return
        if window <= self._open:
            return
        closing, self._open = self._open, window
        self._close(closing, await self.counter.counts(closing))
        await self.counter.forget(closing)
        # Windows nobody contributed to count zero for every cell (bounded: a long outage resets nothing).
        for empty in range(max(closing + 1, window - self.max_gap_windows), window):
            self._close(empty, {})

    def _close(self, window: int, counts: dict[CellKey, int]) -> None:
        for cell in sorted(set(self._baselines) | set(counts)):
            x = counts.get(cell, 0)
            base = self._baselines.get(cell)
            if base is None:
                self._baselines[cell] = _Baseline(float(x), 0.0, 1)
                self._latest[cell] = TrendEntry(cell, window, x, 0.0, 0.0, False)
                continue
            score = (x - base.mean) / math.sqrt(max(base.var, base.mean) * self._mean_noise + 1.0)
            bursting = base.windows >= self.warmup_windows and x >= self.min_count and score >= self.burst_z
            self._latest[cell] = TrendEntry(cell, window, x, base.mean, score, bursting)
            diff = x - base.mean
            base.mean += self.alpha * diff
            base.var = (1.0 - self.alpha) * (base.var + self.alpha * diff * diff)
            base.windows += 1
            if base.windows > self.warmup_windows and base.mean < _FORGET_BELOW and x == 0:
                del self._baselines[cell]  # long silent: forget it (a later return starts a new baseline)
                del self._latest[cell]

    def trend_score(self, cell: CellKey) -> float:
        """The cell's burst score for the last closed window (0.0 for an unknown cell)."""
        entry = self._latest.get(CellKey(*cell))
        return entry.score if entry is not None else 0.0

    def snapshot(self) -> list[TrendEntry]:
        """Every tracked cell after the last closed window, highest score first (for GET /v1/trends)."""
        return sorted(self._latest.values(), key=lambda e: (-e.score, e.cell))

    def bursting(self) -> list[CellKey]:
        return [e.cell for e in self.snapshot() if e.bursting]
