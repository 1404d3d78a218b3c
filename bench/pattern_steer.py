"""How far s sybil ids steer a consolidated pattern's direction in k_min mode (issue 14).

Through the real `Aggregator` over a SQLite store, with `omega bench poisoning`'s catalog and a codebook
built from it (k 200, as tests/sim/bench/test_pattern_poisoning.py): 23 honest TVs push a content
pattern near title 3 (success 0.9, 20 uses: quality weight 18) once; s sybil ids push, on 5 days, a
vector as far toward the bench's target as the codebook still assigns to title 3's cell (success 1.0,
500 uses: weight capped at w_max). Reported per s: the published direction's cosine to the honest one and
the share of the angle from the honest vector to the sybils' that it moved. The shipped row is
`AggregationPolicy()` as a served shard runs it (its w_max; a device's later contribution to a cell
replaces its earlier one). Beside it, the same replace rule with other caps: 26 (the median weight honest
TVs pushed on the validation split, bench/pattern_weights.py) and the old 50, to tell the two changes
apart. One honest viewer's share of the 24 TVs' weight is 1/24 ≈ 4 %.

    .venv/bin/python bench/pattern_steer.py > bench/results/pattern-steer.json
"""

from __future__ import annotations

import asyncio
import json
import random
import tempfile
import uuid
from pathlib import Path

import numpy as np

from omega.constellation.aggregation import DAY_MS, AggregationPolicy, Aggregator, Contribution
from omega.constellation.codebook import build_codebook
from omega.constellation.crdt import ConsolidatedCell
from omega.constellation.store import open_store
from omega.protocol import TaskType
from omega.sim.bench.poisoning import TARGET, poisoning_catalog

HONEST, TITLE, SYBILS, START_MS = 23, 3, (0, 1, 3, 10), 1_750_000_000_000


def _pattern(v: np.ndarray, rng: np.random.Generator, uses: int, rate: float, noise: float) -> Contribution:
    v = v + noise * rng.standard_normal(v.shape) / np.sqrt(v.size)
    return Contribution(embedding=(v / np.linalg.norm(v)).astype(np.float32), success_rate=rate, uses=uses,
                        successes=int(rate * uses), task_type=int(TaskType.CONTENT_MATCH))  # fmt: skip


async def _run(
    codebook, honest_v: np.ndarray, sybil_v: np.ndarray, cell: int, s: int, w_max: float, days: int
) -> dict:
    with tempfile.TemporaryDirectory(prefix="omega-steer-") as tmp:
        store = await open_store(f"sqlite:{Path(tmp) / 'c.db'}", origin="bench")
        try:
            agg = await Aggregator.open(store, codebook, b"s" * 32, AggregationPolicy(w_max=w_max))
            rng, nrng = random.Random(1), np.random.default_rng(1)
            for _ in range(HONEST):
                honest = [_pattern(honest_v, nrng, 20, 0.9, 0.05)]
                await agg.apply(uuid.UUID(int=rng.getrandbits(128)).bytes, b"h", honest, [], START_MS)
            for n in range(s):
                dev = uuid.UUID(int=random.Random(f"sybil-{n}").getrandbits(128)).bytes
                for day in range(days):
                    await agg.apply(dev, b"d%d" % day, [_pattern(sybil_v, nrng, 500, 1.0, 0.0)], [],
                                    START_MS + day * DAY_MS)  # fmt: skip
            found = [c for c in await agg.published() if isinstance(c, ConsolidatedCell) and c.cluster_id == cell]
        finally:
            await store.close()
    e = np.asarray(found[0].embedding, np.float64)
    e /= np.linalg.norm(e)
    moved = np.arccos(np.clip(honest_v @ e, -1, 1)) / np.arccos(np.clip(honest_v @ sybil_v, -1, 1))
    return {"sybils": s, "support": found[0].support, "cos_to_honest": round(float(honest_v @ e), 4),
            "moved_toward_sybils": round(float(moved), 3), "success_rate": round(float(found[0].success_rate), 3)}


def run() -> dict:
    catalog = poisoning_catalog()
    matrix = catalog.vectors(catalog.rows(np.arange(1, 201)))
    codebook = build_codebook(matrix, k=200, seed=0)
    honest_v = matrix[TITLE - 1].astype(np.float64)
    cell = int(codebook.assign(honest_v[None].astype(np.float32))[0])
    lo, hi = 0.0, 1.0  # bisect for the farthest point toward the target still in the honest cell
    for _ in range(30):
        t = (lo + hi) / 2
        v = (1 - t) * honest_v + t * matrix[TARGET - 1]
        inside = int(codebook.assign((v / np.linalg.norm(v))[None].astype(np.float32))[0]) == cell
        lo, hi = (t, hi) if inside else (lo, t)
    sybil_v = (1 - 0.98 * lo) * honest_v + 0.98 * lo * matrix[TARGET - 1]
    sybil_v /= np.linalg.norm(sybil_v)
    shipped = AggregationPolicy().w_max
    policies = {f"shipped (w_max {shipped:g}, latest wins, 5 days)": (shipped, 5),
                "w_max 26, latest wins (5 days)": (26.0, 5), "w_max 50, latest wins (5 days)": (50.0, 5)}  # fmt: skip
    return {
        "honest": HONEST, "cell": cell, "sybil_cos_to_honest": round(float(honest_v @ sybil_v), 3),
        "sybil_cos_to_target": round(float(matrix[TARGET - 1] @ sybil_v), 3),
        "policies": {name: [asyncio.run(_run(codebook, honest_v, sybil_v, cell, s, w, d)) for s in SYBILS]
                     for name, (w, d) in policies.items()},
    }  # fmt: skip


if __name__ == "__main__":
    print(json.dumps(run(), indent=1))
