"""Trend detection on the fleet simulator: does a synthetic burst get flagged, and do steady cells stay quiet?

A small fleet of real Brains syncs with the simulator's constellation (the
real server on loopback), whose `Aggregator` gets a `TrendTracker` attached, on a simulated
clock cut into windows (default one simulated day — the aggregator's epoch is
set to the window, so a device can contribute to a cell once per window, which
is exactly what "distinct devices per window" counts).

Catalog: `n_cells` well separated topics of `items_per_cell` random unit vectors
(cosine ≈ 0.8 to the topic centre, ≈ 0.64 between two items — below the pattern-match
threshold the experiment sets, 0.85, so every newly watched item founds its own pattern),
and a codebook of `n_cells` cells built on them. The brains push any successful
pattern (high_quality_min_uses = 1), so one 5★ viewing of an item in a cell makes
that TV contribute to that cell at its next sync.

Steady traffic: every TV has `favorites_per_tv` favourite cells; in each window
it is active with probability `p_active` and then watches `views_per_window`
unseen items, each from a random favourite. Burst: from window `burst_start` on,
a random `burst_fraction` of the TVs additionally watches one item in each of
`n_burst_cells` chosen cells every window. Each TV syncs once per window (again
while something is still queued), then the tracker closes the window.

Metrics (windows before `warmup_windows` cannot be flagged and are left out):
- recall: burst cells flagged within `detect_within` windows of the burst start
  (flagged at the close of window burst_start … burst_start + detect_within − 1)
  / burst cells;
- detection_delay_windows: per burst cell, the number of burst windows closed
  when it was first flagged (1 = at the close of the first burst window), None
  if never;
- precision: flagged (cell, window) pairs that are a burst cell in a burst
  window / all flagged pairs; cell_precision: the same over distinct cells.
"""

from __future__ import annotations

import asyncio
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from omega.brain.catalog import Catalog
from omega.brain.config import BrainConfig
from omega.brain.records import CatalogItem
from omega.brain.sync import SyncConfig
from omega.constellation.codebook import build_codebook
from omega.constellation.trends import TrendTracker
from omega.errors import OmegaError
from omega.protocol import EMBEDDING_DIM
from omega.sim.fleet.simulator import Fleet, FleetConfig

_MAX_SYNCS_PER_WINDOW = 5


def _catalog_around_cells(
    n_cells: int, items_per_cell: int, rng: np.random.Generator
) -> tuple[list[CatalogItem], np.ndarray]:
    centres = rng.standard_normal((n_cells, EMBEDDING_DIM))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    noise = rng.standard_normal((n_cells * items_per_cell, EMBEDDING_DIM))
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    # cos(item, centre) ≈ 0.8, cos(item, item') ≈ 0.64 within a topic, ≈ 0 across topics.
    matrix = 0.8 * np.repeat(centres, items_per_cell, axis=0) + 0.6 * noise
    matrix = (matrix / np.linalg.norm(matrix, axis=1, keepdims=True)).astype(np.float32)
    items = [CatalogItem(i + 1, f"Synthetic item {i + 1}", ("Drama",)) for i in range(len(matrix))]
    return items, matrix


async def _run(
    workdir: Path,
    *,
    n_tvs: int,
    n_cells: int,
    items_per_cell: int,
    favorites_per_tv: int,
    views_per_window: int,
    p_active: float,
    windows: int,
    burst_start: int | None,
    burst_fraction: float,
    n_burst_cells: int,
    window_s: float,
    alpha: float,
    burst_z: float,
    min_count: int,
    warmup_windows: int,
    detect_within: int,
    seed: int,
) -> dict[str, object]:
    rng = np.random.default_rng(seed)
    items, matrix = _catalog_around_cells(n_cells, items_per_cell, rng)
    # Item-level patterns (0.85 > the ≈ 0.64 between two items of a topic): each viewing founds its own.
    brain_config = BrainConfig(high_quality_min_uses=1, pattern_match_threshold=0.85)
    catalog = Catalog.from_vectors(items, matrix, brain_config)
    codebook = build_codebook(matrix, k=n_cells, seed=seed)
    assigned = codebook.assign(matrix)
    by_cell: dict[int, list[int]] = {}
    for item, cell in zip(items, assigned.tolist(), strict=True):
        by_cell.setdefault(int(cell), []).append(item.content_id)
    cells = sorted(c for c, members in by_cell.items() if len(members) >= max(3, items_per_cell // 2))
    if len(cells) < max(favorites_per_tv, n_burst_cells) + 1:
        raise OmegaError("the codebook did not separate the topics; use more distinct cells")

    # Trends need pushes in the window of the viewings: this experiment turns the TVs' daily contribution
    # schedule off (contribution_period_s=0, a push at every sync); the shipped TV batches per day.
    config = FleetConfig(seed=seed, brain=brain_config, sync=SyncConfig(contribution_period_s=0))
    fleet = await Fleet.open(workdir, catalog, codebook, config=config)
    window_ms = int(window_s * 1000)
    # One contribution per device per cell per *window*: what the tracker counts is then who was there.
    fleet.aggregator.policy = replace(fleet.aggregator.policy, epoch_ms=window_ms)
    tracker = TrendTracker(
        window_s=window_s, alpha=alpha, burst_z=burst_z, min_count=min_count, warmup_windows=warmup_windows
    )
    fleet.aggregator.trends = tracker
    task_type = None  # learnt from the first closed window (patterns are CONTENT_MATCH)

    try:
        tvs = [fleet.add_tv(user) for user in range(1, n_tvs + 1)]
        favorites = {tv.user: [int(c) for c in rng.choice(cells, favorites_per_tv, replace=False)] for tv in tvs}
        burst_cells = [int(c) for c in rng.choice(cells, n_burst_cells, replace=False)] if burst_start is not None else []
        n_burst_tvs = round(burst_fraction * n_tvs) if burst_start is not None else 0
        burst_tvs = {int(u) for u in rng.choice([tv.user for tv in tvs], n_burst_tvs, replace=False)}
        seen: dict[int, set[int]] = {tv.user: set() for tv in tvs}

        def pick(user: int, cell: int) -> int:
            fresh = [i for i in by_cell[cell] if i not in seen[user]]
            item = int(rng.choice(fresh or by_cell[cell]))
            seen[user].add(item)
            return item

        flagged: dict[int, list[int]] = {}  # window → flagged cells
        counts: dict[int, dict[int, int]] = {}  # window → cell → distinct devices
        for w in range(windows):
            start_s = w * window_s
            for rank, idx in enumerate(rng.permutation(n_tvs)):
                tv = tvs[int(idx)]
                t = start_s + (rank + 1) / (n_tvs + 2) * window_s
                fleet.now = t
                watched: list[int] = []
                if rng.random() < p_active:
                    watched += [pick(tv.user, int(rng.choice(favorites[tv.user]))) for _ in range(views_per_window)]
                if burst_start is not None and w >= burst_start and tv.user in burst_tvs:
                    watched += [pick(tv.user, c) for c in burst_cells]
                for k, item in enumerate(watched):
                    fleet.watch(tv, item, 5.0, t - 60.0 * (len(watched) - k))
                for _ in range(_MAX_SYNCS_PER_WINDOW):
                    if not await fleet.sync(tv):
                        break
            await tracker.advance(int((w + 1) * window_ms))
            entries = [e for e in tracker.snapshot() if e.window == w]
            if task_type is None and entries:
                task_type = entries[0].cell.task_type
            flagged[w] = sorted(e.cell.cell for e in entries if e.bursting)
            counts[w] = {e.cell.cell: e.count for e in entries}
    finally:
        await fleet.aclose()

    scored = [w for w in range(windows) if w >= warmup_windows]
    pairs = [(c, w) for w in scored for c in flagged[w]]
    burst_set = set(burst_cells)

    def is_true(c: int, w: int) -> bool:
        return c in burst_set and burst_start is not None and w >= burst_start

    true_pairs = [p for p in pairs if is_true(*p)]
    flagged_cells = sorted({c for c, _ in pairs})
    true_cells = [c for c in flagged_cells if c in burst_set and any(is_true(c, w) for cc, w in pairs if cc == c)]
    delays: dict[int, int | None] = {}
    for c in burst_cells:
        hits = [w for w in scored if burst_start is not None and w >= burst_start and c in flagged[w]]
        delays[c] = (hits[0] - burst_start + 1) if hits else None  # type: ignore[operator]
    detected = [c for c, d in delays.items() if d is not None and d <= detect_within]
    steady_pairs = sum(1 for w in scored for c in cells if not is_true(c, w))
    false_pairs = len(pairs) - len(true_pairs)
    return {
        "fleet_size": n_tvs,
        "windows": windows,
        "window_s": window_s,
        "warmup_windows": warmup_windows,
        "cells": len(cells),
        "burst_start": burst_start,
        "burst_tvs": len(burst_tvs),
        "burst_cells": burst_cells,
        "task_type": task_type,
        "recall": (len(detected) / len(burst_cells)) if burst_cells else None,
        "precision": (len(true_pairs) / len(pairs)) if pairs else None,
        "cell_precision": (len(true_cells) / len(flagged_cells)) if flagged_cells else None,
        "detection_delay_windows": delays,
        "detect_within": detect_within,
        "flagged_pairs": len(pairs),
        "true_positive_pairs": len(true_pairs),
        "false_positive_pairs": false_pairs,
        "false_positive_rate": false_pairs / steady_pairs if steady_pairs else 0.0,
        "flagged_cells": flagged_cells,
        "flagged_per_window": {w: flagged[w] for w in range(windows)},
        "mean_steady_count": float(
            np.mean([counts[w].get(c, 0) for w in scored for c in cells if c not in burst_set]) if scored else 0.0
        ),
        "burst_counts": {c: [counts[w].get(c, 0) for w in range(windows)] for c in burst_cells},
        "syncs": sum(tv.syncs for tv in tvs),
    }


def run_burst_experiment(
    workdir: Path | str | None = None,
    *,
    n_tvs: int = 60,
    n_cells: int = 24,
    items_per_cell: int = 40,
    favorites_per_tv: int = 3,
    views_per_window: int = 2,
    p_active: float = 0.9,
    windows: int = 12,
    burst_start: int | None = 8,
    burst_fraction: float = 0.3,
    n_burst_cells: int = 3,
    window_s: float = 86_400.0,
    alpha: float = 0.3,
    burst_z: float = 3.0,
    min_count: int = 3,
    warmup_windows: int = 3,
    detect_within: int = 2,
    seed: int = 0,
) -> dict[str, object]:
    """Run the burst experiment (see the module docstring); `burst_start=None` is a steady-only run."""
    if burst_start is not None and not warmup_windows <= burst_start < windows:
        raise OmegaError("burst_start must fall after the warm-up and inside the run")
    if not 0.0 <= burst_fraction <= 1.0 or not 0.0 <= p_active <= 1.0:
        raise OmegaError("burst_fraction and p_active must be in [0, 1]")
    kwargs = dict(
        n_tvs=n_tvs, n_cells=n_cells, items_per_cell=items_per_cell, favorites_per_tv=favorites_per_tv,
        views_per_window=views_per_window, p_active=p_active, windows=windows, burst_start=burst_start,
        burst_fraction=burst_fraction, n_burst_cells=n_burst_cells, window_s=window_s, alpha=alpha,
        burst_z=burst_z, min_count=min_count, warmup_windows=warmup_windows, detect_within=detect_within, seed=seed,
    )  # fmt: skip
    if workdir is not None:
        return asyncio.run(_run(Path(workdir), **kwargs))  # type: ignore[arg-type]
    with tempfile.TemporaryDirectory(prefix="omega-trends-") as tmp:
        return asyncio.run(_run(Path(tmp), **kwargs))  # type: ignore[arg-type]


__all__ = ["run_burst_experiment"]
