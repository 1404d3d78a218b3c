"""Trend detection: distinct counts per window, EWMA baseline, burst scores; exact sets and real Redis HLL."""

from __future__ import annotations

import os
import uuid

import numpy as np
import pytest

from omega.constellation.aggregation import AggregationPolicy, Aggregator
from omega.constellation.crdt import CellKey, ConsolidatedCell
from omega.constellation.store import open_store
from omega.constellation.trends import ExactCounter, RedisHLLCounter, TrendTracker
from omega.errors import OmegaError

from .conftest import SALT, device, near, pattern

REDIS_URL = os.environ.get("OMEGA_REDIS_URL", "redis://127.0.0.1:6379/0")
HOUR_MS = 3_600_000
T0 = 1_700_000_000_000 // HOUR_MS * HOUR_MS


@pytest.fixture(params=["exact", "redis"])
async def counter(request: pytest.FixtureRequest):
    if request.param == "exact":
        yield ExactCounter()
        return
    prefix = f"omega-test:{uuid.uuid4().hex}"
    hll = RedisHLLCounter.from_url(REDIS_URL, prefix=prefix, ttl_s=600)
    try:
        await hll._redis.ping()
    except Exception as exc:
        await hll.close()
        pytest.skip(f"no Redis at {REDIS_URL}: {exc}")
    try:
        yield hll
    finally:
        keys = [k async for k in hll._redis.scan_iter(match=f"{prefix}:*")]
        if keys:
            await hll._redis.delete(*keys)
        await hll.close()


async def run_fleet(tracker: TrendTracker, windows: int, burst_from: int, burst_cells: set[int], n_cells: int, seed: int):
    """Steady cells with Poisson distinct-device counts; `burst_cells` jump from window `burst_from` on.

    Returns ({window: set of flagged cells}, {window: {cell: score}}) after each window closed.
    """
    rng = np.random.default_rng(seed)
    rates = rng.uniform(5, 30, size=n_cells)
    flagged: dict[int, set[int]] = {}
    scores: dict[int, dict[int, float]] = {}
    for w in range(windows):
        items = []
        for c in range(n_cells):
            lam = rates[c] * 2.5 + 8 if (c in burst_cells and w >= burst_from) else rates[c]
            n = int(rng.poisson(lam))
            devices = rng.choice(100_000, size=n, replace=False)
            for d in devices:
                items += [(CellKey(0, c), b"dev%d" % d)] * int(rng.integers(1, 3))  # repeats: still one device
        await tracker.observe_many(items, T0 + w * HOUR_MS + 1000)
        await tracker.advance(T0 + (w + 1) * HOUR_MS)  # the window closes
        closed = tracker.window_of(T0 + w * HOUR_MS)
        flagged[w] = {e.cell.cell for e in tracker.snapshot() if e.bursting and e.window == closed}
        scores[w] = {e.cell.cell: tracker.trend_score(e.cell) for e in tracker.snapshot() if e.window == closed}
    return flagged, scores


async def test_a_synthetic_burst_is_detected_within_two_windows_and_steady_cells_are_not_flagged(counter) -> None:
    n_cells, windows, burst_from, burst_cells = 40, 18, 16, {3, 11, 22, 35}
    detected = missed = false_cells = false_windows = 0
    for seed in range(5):
        tracker = TrendTracker(window_s=3600, alpha=0.3, burst_z=3.0, counter=counter)
        flagged, scores = await run_fleet(tracker, windows, burst_from, burst_cells, n_cells, seed)
        found = {c for w in (burst_from, burst_from + 1) for c in flagged[w] if c in burst_cells}
        detected += len(found)
        missed += len(burst_cells - found)
        false_cells += len({c for cells in flagged.values() for c in cells if c not in burst_cells})
        false_windows += sum(len(cells - burst_cells) for cells in flagged.values())
        # In the burst's first window the bursting cells lead the trend scores.
        ranked = sorted(scores[burst_from], key=scores[burst_from].get, reverse=True)
        assert len(set(ranked[: len(burst_cells)]) & burst_cells) >= len(burst_cells) - 1
    recall = detected / (detected + missed)
    precision = detected / (detected + false_cells)
    steady = 5 * (n_cells - len(burst_cells)) * windows
    print(
        f"\ntrends[{type(counter).__name__}] 5 fleets x {n_cells} cells, {len(burst_cells)} bursts each: "
        f"recall {recall:.2f}, precision {precision:.2f} (cells), "
        f"false flags {false_windows} of {steady} steady cell-windows"
    )
    assert recall >= 0.95
    assert precision >= 0.6
    assert false_windows / steady < 0.01


async def test_counts_are_distinct_devices_per_window(counter) -> None:
    tracker = TrendTracker(window_s=3600, counter=counter)
    cell = CellKey(1, 4)
    for d in range(200):
        for _ in range(3):
            await tracker.observe(cell, b"device-%d" % d, T0 + 10 + d)
    await tracker.observe(CellKey(1, 5), b"device-1", T0 + 5000)
    await tracker.advance(T0 + HOUR_MS)
    entry = {e.cell: e for e in tracker.snapshot()}
    assert abs(entry[cell].count - 200) <= 6  # exact, or HyperLogLog within ~3 %
    assert entry[CellKey(1, 5)].count == 1
    assert await counter.counts(T0 // HOUR_MS) == {}  # the closed window's sets/keys are gone


async def test_baseline_follows_the_ewma_and_silent_cells_are_forgotten() -> None:
    tracker = TrendTracker(window_s=1, alpha=0.5, warmup_windows=1, min_count=1)
    cell = CellKey(0, 1)
    for w, n in enumerate([10, 10, 20]):
        await tracker.observe_many([(cell, b"d%d" % i) for i in range(n)], w * 1000)
    await tracker.advance(3000)
    (entry,) = tracker.snapshot()
    assert entry.count == 20 and entry.baseline == 10.0
    assert entry.score == pytest.approx(10 / np.sqrt(10 * (1 + 0.5 / 1.5) + 1))  # variance floored at the mean
    await tracker.advance(60_000)  # a long silence: the baseline decays away and the cell is dropped
    assert tracker.snapshot() == [] and tracker.trend_score(cell) == 0.0


async def test_bad_arguments_are_clear_errors() -> None:
    with pytest.raises(OmegaError):
        TrendTracker(alpha=0)
    with pytest.raises(OmegaError):
        await TrendTracker().observe(CellKey(0, 0), b"d", -5)
    with pytest.raises(OmegaError):
        RedisHLLCounter.from_url("http://nope")


async def test_trend_scores_ride_in_the_patterns_the_aggregator_serves(tmp_path, codebook) -> None:
    store = await open_store(f"sqlite:{tmp_path / 'c.db'}", origin="s1")
    try:
        agg = await Aggregator.open(store, codebook, SALT, AggregationPolicy(k_min=3, epoch_ms=HOUR_MS))
        agg.trends = TrendTracker(window_s=3600, warmup_windows=2, min_count=3)
        dev = 0
        for w, n in enumerate([3, 3, 3, 3, 12]):  # steady 3 devices per hour, then 12
            for _ in range(n):
                await agg.apply(device(dev), b"b", [pattern(near(codebook, 2, dev))], [], T0 + w * HOUR_MS)
                dev += 1
        await agg.trends.advance(T0 + 5 * HOUR_MS)
        (item,) = [p for p in await agg.published() if isinstance(p, ConsolidatedCell)]
        assert item.trend_score == agg.trends.trend_score(CellKey(0, 2)) > 3.0
        assert agg.trends.bursting() == [CellKey(0, 2)]
    finally:
        await store.close()
