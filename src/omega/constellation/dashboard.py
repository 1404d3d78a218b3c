"""The operator dashboard of one shard: `GET /dashboard` (static page) polls `GET /v1/dashboard.json`.

The JSON is built from what the server already keeps: Prometheus counters
(sampled every few seconds into rates and a short history for the sparkline),
the WebSocket connections by tier, the trend tracker, the store's stats, and the
published consolidated patterns — followed incrementally through the
aggregator's change cursor, so a refresh reads only what changed since the last
one (never the whole store).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources

from omega.constellation.aggregation import Aggregator
from omega.constellation.crdt import CellKey, ConsolidatedCell
from omega.constellation.metrics import ServerMetrics
from omega.constellation.trends import TrendTracker
from omega.protocol import SYNC_TIERS, TaskType

SYNC_KINDS = ("push", "pull", "heartbeat")
TIERS = (*(tier.label for tier in SYNC_TIERS), "unknown")
RATE_WINDOW_S = 60.0  # sync rates are averaged over this much history
HISTORY_SAMPLES = 90  # sparkline points (at the 2 s tick: 3 minutes)
RECENT_FALLBACK_S = 15.0  # Redis counts as degraded when the cache fell back this recently
TOP_N = 10
_PAGE_BYTES = 256 * 1024
_MAX_PAGES_PER_REFRESH = 8  # a large store is caught up over several refreshes, not in one long read
_SNAPSHOT_TTL_S = 1.0  # many open dashboards cost one build per second


def task_name(task_type: int) -> str:
    try:
        return TaskType(task_type).name.lower()
    except ValueError:
        return str(task_type)


@cache
def dashboard_html() -> str:
    """The page (dashboard.html beside this module): inline CSS and JS, no external assets."""
    return resources.files("omega.constellation").joinpath("dashboard.html").read_text(encoding="utf-8")


@dataclass(frozen=True)
class _Sample:
    t: float  # monotonic seconds
    syncs: tuple[float, ...]  # cumulative, in SYNC_KINDS order
    rejections: float
    fallbacks: float


def _counter_by_label(counter: object, label: str) -> dict[str, float]:
    """{label value: value} of a labelled prometheus Counter (its `_total` samples)."""
    out: dict[str, float] = {}
    for family in counter.collect():  # type: ignore[attr-defined]
        for s in family.samples:
            if s.name.endswith("_total") and label in s.labels:
                out[s.labels[label]] = out.get(s.labels[label], 0.0) + float(s.value)
    return out


class RateMeter:
    """Per-second rates of the sync counters from periodic samples (a sliding window and a short history)."""

    def __init__(self, metrics: ServerMetrics, window_s: float = RATE_WINDOW_S, keep: int = HISTORY_SAMPLES) -> None:
        self.metrics = metrics
        self.window_s = window_s
        self._samples: deque[_Sample] = deque(maxlen=keep + 1)

    def sample(self, now: float | None = None) -> None:
        m = self.metrics
        syncs = tuple(m.sample("omega_syncs_total", {"kind": k}) for k in SYNC_KINDS)
        rejections = sum(_counter_by_label(m.rejections, "reason").values())
        self._samples.append(_Sample(time.monotonic() if now is None else now, syncs, rejections,
                                     m.sample("omega_cache_fallbacks_total")))  # fmt: skip

    def _base(self) -> _Sample | None:
        """The oldest sample inside the window (None with fewer than two samples)."""
        if len(self._samples) < 2:
            return None
        last = self._samples[-1]
        for s in self._samples:
            if last.t - s.t <= self.window_s and s is not last:
                return s
        return self._samples[-2]

    def to_json(self) -> dict[str, object]:
        base = self._base()
        if base is None:
            return {"window_s": 0.0, "per_s": None, "total_per_s": None, "rejections_per_s": None, "history": []}
        last = self._samples[-1]
        span = max(last.t - base.t, 1e-9)
        per_s = {k: round((b - a) / span, 3) for k, a, b in zip(SYNC_KINDS, base.syncs, last.syncs, strict=True)}
        history = []
        samples = list(self._samples)
        for a, b in zip(samples, samples[1:]):
            dt = max(b.t - a.t, 1e-9)
            history.append(round((sum(b.syncs) - sum(a.syncs)) / dt, 3))
        return {
            "window_s": round(span, 1),
            "per_s": per_s,
            "total_per_s": round(sum(per_s.values()), 3),
            "rejections_per_s": round((last.rejections - base.rejections) / span, 3),
            "history": history,
        }

    def fell_back_within(self, seconds: float) -> bool:
        """Whether the cache fell back to in-process during the last `seconds` (from the samples)."""
        if not self._samples:
            return False
        last = self._samples[-1]
        older = [s for s in self._samples if last.t - s.t >= seconds]
        ref = older[-1] if older else self._samples[0]
        return last.fallbacks > ref.fallbacks or (ref is last and last.fallbacks > 0)


@dataclass
class _PatternRow:
    task_type: int
    cell: int
    support: int
    success_rate: float
    version: int


class PatternBoard:
    """The published consolidated patterns (no embeddings), kept current by following the change cursor."""

    def __init__(self) -> None:
        self.cursor = 0
        self.caught_up = False
        self.rows: dict[CellKey, _PatternRow] = {}
        self.edges_seen = 0  # published transition changes read (an edge changing twice counts twice)
        self._lock = asyncio.Lock()

    async def refresh(self, aggregator: Aggregator) -> None:
        async with self._lock:  # two concurrent refreshes would read the same page twice
            for _ in range(_MAX_PAGES_PER_REFRESH):
                items, cursor, more = await aggregator.changes_since(self.cursor, _PAGE_BYTES)
                for item in items:
                    if isinstance(item, ConsolidatedCell) and item.support == 0:  # left the published state
                        self.rows.pop(item.key, None)
                    elif isinstance(item, ConsolidatedCell):
                        key = item.key
                        self.rows[key] = _PatternRow(key.task_type, key.cell, int(item.support),
                                                     float(item.success_rate), int(item.version))  # fmt: skip
                    else:
                        self.edges_seen += 1
                self.cursor = max(self.cursor, cursor)
                self.caught_up = not more
                if not more:
                    return

    def top(self, n: int, tracker: TrendTracker | None) -> list[dict[str, object]]:
        rows = sorted(self.rows.values(), key=lambda r: (-r.support, -r.success_rate, r.task_type, r.cell))[:n]
        return [
            {
                "task_type": r.task_type,
                "task": task_name(r.task_type),
                "cell": r.cell,
                "support": r.support,
                "success_rate": round(r.success_rate, 4),
                "trend_score": round(tracker.trend_score(CellKey(r.task_type, r.cell)), 3) if tracker else 0.0,
                "version": r.version,
            }
            for r in rows
        ]


@dataclass(frozen=True)
class ShardFacts:
    """What does not change while the server runs."""

    origin: str
    region: str
    store_backend: str  # sqlite | postgresql
    codebook_version: int
    codebook_k: int
    cache_backend: str  # local | redis
    trend_window_s: float


class Dashboard:
    """Builds the dashboard JSON; `tick()` on a timer feeds the rates, `snapshot()` answers the page."""

    def __init__(self, facts: ShardFacts, metrics: ServerMetrics, aggregator: Aggregator,
                 trends: TrendTracker | None = None) -> None:  # fmt: skip
        self.facts = facts
        self.metrics = metrics
        self.aggregator = aggregator
        self.trends = trends
        self.rates = RateMeter(metrics)
        self.patterns = PatternBoard()
        self.started = time.monotonic()
        self._cached: tuple[float, dict[str, object]] | None = None

    def tick(self) -> None:
        self.rates.sample()

    async def snapshot(
        self,
        *,
        ready: bool,
        draining: bool,
        connections: Mapping[str, int],
        devices_hour: int | None,
        federation: Mapping[str, object] | None,
        now_ms: int,
    ) -> dict[str, object]:
        now = time.monotonic()
        if self._cached is not None and now - self._cached[0] < _SNAPSHOT_TTL_S:
            return self._cached[1]
        m = self.metrics
        store: dict[str, object] = {"backend": self.facts.store_backend}
        try:
            stats = await self.aggregator.store.stats()
            await self.patterns.refresh(self.aggregator)
        except Exception as exc:  # the page shows the failure instead of failing itself
            store.update(ok=False, error=f"{type(exc).__name__}: {exc}")
        else:
            store.update(ok=True, head=stats.head, cells=stats.cells, edges=stats.edges,
                         contributions=stats.contributions)  # fmt: skip
        trends: list[dict[str, object]] = []
        if self.trends is not None:
            await self.trends.advance(now_ms)
            trends = [{**e.to_json(), "task": task_name(e.cell.task_type)} for e in self.trends.snapshot()[:TOP_N]]
        by_tier = {t: int(connections.get(t, 0)) for t in TIERS}
        rejections = {r: int(v) for r, v in sorted(_counter_by_label(m.rejections, "reason").items()) if v > 0}
        fallbacks = int(m.sample("omega_cache_fallbacks_total"))
        redis_used = self.facts.cache_backend == "redis"
        out: dict[str, object] = {
            "generated_at_ms": now_ms,
            "shard": {
                "origin": self.facts.origin,
                "region": self.facts.region,
                "codebook_version": self.facts.codebook_version,
                "codebook_k": self.facts.codebook_k,
                "uptime_s": round(now - self.started, 1),
            },
            "health": {
                "ready": ready,
                "draining": draining,
                "store": store,
                "redis": {
                    "configured": redis_used,
                    "ok": (not self.rates.fell_back_within(RECENT_FALLBACK_S)) if redis_used else None,
                    "fallbacks": fallbacks,
                },
                "federation": dict(federation) if federation is not None else {"mode": "off"},
                "aggregation_lag_s": round(m.sample("omega_aggregation_lag_seconds"), 4),
            },
            "connections": {"total": sum(by_tier.values()), "by_tier": by_tier},
            "devices_hour": devices_hour,
            "syncs": {
                "total": {k: int(m.sample("omega_syncs_total", {"kind": k})) for k in SYNC_KINDS},
                **self.rates.to_json(),
            },
            "bytes": {d: int(m.sample("omega_bytes_total", {"direction": d})) for d in ("in", "out")},
            "rejections": {"total": sum(rejections.values()), "by_reason": rejections},
            "trends": {"window_s": self.facts.trend_window_s, "cells": trends},
            "patterns": {
                "published": len(self.patterns.rows),
                "caught_up": self.patterns.caught_up,
                "top": self.patterns.top(TOP_N, self.trends),
            },
        }
        self._cached = (now, out)
        return out
