"""`omega bench poisoning`: how far a few sybil device ids move what a victim TV is recommended.

The scenario of issue 14: h honest TVs watched a source item S and then some of eight other
titles (popularity Zipf-like, as real viewing is), each pushing the transitions a TV's brain
learns (S→a, S→b at half weight, a→b); s sybil ids push one edge S→T at the per-device cap on
five consecutive days. Everything goes through a real `Aggregator` over a real SQLite store,
and a real `Brain` that watched S merges what the constellation publishes and the refined
neighbours it computes from that (as its sync would) and ranks with `Brain.recommend`.

Per (h, s) it reports the target's rank on the victim (1-based, null when not among the top
`RANKED`), its share of the published weight out of S, and whether it outranks any title that
more than s honest TVs support (the bar: never) — in the victim's list, the order a viewer sees, as
`target_rank` is; `outranks_because_of_sybils` leaves out what the target outranks with no sybils at all.
"""

from __future__ import annotations

import asyncio
import os
import random
import tempfile
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from omega.brain import Brain, BrainConfig
from omega.brain.catalog import Catalog
from omega.brain.records import CatalogItem, TransitionStat, ViewingContext
from omega.constellation.aggregation import DAY_MS, AggregationPolicy, Aggregator
from omega.constellation.codebook import placeholder_codebook
from omega.constellation.crdt import ConsolidatedEdge
from omega.constellation.item_graph import refine
from omega.constellation.store import open_store
from omega.protocol import EMBEDDING_DIM, WEIGHT_SCALE, Keyspace

HONEST = (30, 100)
SYBILS = (1, 3, 5, 10)
SOURCE, TARGET = 1, 2
TITLES = tuple(range(3, 11))  # the eight titles honest viewers watched after the source
N_ITEMS = 200
SYBIL_DAYS = 5
SYBIL_WEIGHT = 10.0  # what a sybil asks for; the server caps it
RANKED = 100
START_MS = 1_750_000_000_000


#: A fixed viewing context (Friday 20:00), so the victim's ranking does not depend on when the bench runs.
VICTIM_CONTEXT = ViewingContext(hour=20, weekday=4)


def poisoning_catalog(seed: int = 0) -> Catalog:
    """Random unit vectors; the target and the eight titles orthogonal to the source and to the
    victim's viewing context (its embedded text), so content and context favour none of them."""
    from omega.brain.embedder import Embedder
    from omega.brain.recommender import context_text

    rng = np.random.default_rng(seed)
    matrix = rng.standard_normal((N_ITEMS, EMBEDDING_DIM))
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    source = matrix[SOURCE - 1]
    context = np.asarray(Embedder(threads=1).embed(context_text(VICTIM_CONTEXT, [f"title {SOURCE}"])), np.float64)
    basis, _ = np.linalg.qr(np.stack([source, context], axis=1))  # orthonormal span of source and context
    for cid in (TARGET, *TITLES):
        other = matrix[cid - 1] - basis @ (basis.T @ matrix[cid - 1])
        matrix[cid - 1] = other / np.linalg.norm(other)
    matrix = matrix.astype(np.float32)
    items = [CatalogItem(content_id=i + 1, title=f"title {i + 1}", genres=("drama",)) for i in range(N_ITEMS)]
    return Catalog.from_vectors(items, matrix)


def _honest_pushes(h: int, rng: random.Random) -> list[list[tuple[int, int, int, float]]]:
    """Each honest TV: S, then two distinct titles a, b (Zipf 1/rank), learned as a brain learns them."""
    weights = [1.0 / (r + 1) for r in range(len(TITLES))]
    pushes = []
    for _ in range(h):
        a = rng.choices(TITLES, weights)[0]
        b = rng.choices([t for t in TITLES if t != a], [w for t, w in zip(TITLES, weights) if t != a])[0]
        reward = rng.uniform(0.75, 1.0)  # a good viewing: reward 0.7·fraction + 0.3·engagement
        item = int(Keyspace.ITEM)
        pushes.append([(item, SOURCE, a, reward), (item, SOURCE, b, 0.5 * reward), (item, a, b, reward)])
    return pushes


def _device(rng: random.Random) -> bytes:
    return uuid.UUID(int=rng.getrandbits(128)).bytes


async def _one_run(
    h: int, s: int, catalog: Catalog, workdir: Path, seed: int, honest_seed: int, daily_ids: bool = False
) -> dict:
    rng = random.Random(f"poisoning-{honest_seed}-{seed}")  # the same honest fleet for every s
    store = await open_store(f"sqlite:{workdir / f'store-{h}-{s}.db'}", origin="bench")
    try:
        agg = await Aggregator.open(store, placeholder_codebook(), os.urandom(32), AggregationPolicy())
        honest_support: dict[int, int] = {}
        for edges in _honest_pushes(h, rng):
            await agg.apply(_device(rng), b"honest", [], edges, START_MS)
            for _, src, dst, _ in edges:
                if src == SOURCE:
                    honest_support[dst] = honest_support.get(dst, 0) + 1
        sybil_rng = random.Random(f"sybils-{s}-{seed}")
        sybils = [_device(sybil_rng) for _ in range(s)]
        for day in range(SYBIL_DAYS):
            if daily_ids and day:  # per-epoch pseudonyms: each day a fresh id the server cannot link
                sybils = [_device(sybil_rng) for _ in range(s)]
            for dev in sybils:
                await agg.apply(dev, b"day-%d" % day, [], [(int(Keyspace.ITEM), SOURCE, TARGET, SYBIL_WEIGHT)],
                                START_MS + day * DAY_MS)  # fmt: skip
        published = [e for e in await agg.published() if isinstance(e, ConsolidatedEdge)]
    finally:
        await store.close()
    from_source = [e for e in published if e.keyspace == Keyspace.ITEM and e.src == SOURCE]
    total = sum(e.weight for e in from_source)
    target_w = sum(e.weight for e in from_source if e.dst == TARGET)

    victim = Brain(workdir / f"victim-{h}-{s}.db", catalog=catalog, config=BrainConfig(), synchronous="NORMAL")
    try:
        victim.on_user_action(SOURCE, watch_fraction=1.0, started_at=START_MS / 1000 + SYBIL_DAYS * 86_400)
        # What the victim's sync stores from a pull (sync.agent: TransitionStat(src, dst, weight, support)).
        transitions = [TransitionStat(e.src, e.dst, e.weight, e.support) for e in published if e.keyspace == Keyspace.ITEM]
        pairs = [TransitionStat(e.src, e.dst, e.weight, e.support) for e in published if e.keyspace == Keyspace.PAIR]
        victim.apply_consolidated([], transitions, pairs=pairs)
        # And the refined neighbours the shard computes from what it publishes (its daily job).
        found = refine([(p.src, p.dst, p.count) for p in pairs], [(t.src, t.dst, t.count) for t in transitions])
        victim.store.put_refined([TransitionStat(n.src, n.dst, n.steps / WEIGHT_SCALE, 0) for n in found], fresh=True)
        recs = victim.recommend(VICTIM_CONTEXT, k=RANKED)
    finally:
        victim.close()
    ranked = [r.content_id for r in recs]
    rank = ranked.index(TARGET) + 1 if TARGET in ranked else None
    stronger = [t for t, n in honest_support.items() if n > s]
    # Outranks = sits above it in the list (a title not in the list is below every listed one).
    outranked = sorted(t for t in stronger if rank is not None and (t not in ranked or ranked.index(t) + 1 > rank))
    return {
        "honest": h,
        "sybils": s,
        "target_rank": rank,
        "target_weight_share": round(target_w / total, 4) if total else 0.0,
        "outranks_item_with_more_support": bool(outranked),
        "outranked": {t: honest_support[t] for t in outranked},  # item -> its honest support
        "target_published": any(e.dst == TARGET for e in from_source),
        "honest_support_from_source": dict(sorted(honest_support.items())),
    }


def run_poisoning_bench(
    honest: Sequence[int] = HONEST, sybils: Sequence[int] = SYBILS, *, seed: int = 0,
    progress: Callable[[str], None] | None = None, daily_ids: bool = False,
) -> dict:  # fmt: skip
    """Every (honest, sybils) run; see the module docstring. Bar: s ≤ 3 vs 30 honest → rank > 10 (or absent).

    `daily_ids`: what per-epoch pseudonyms would cost (not shipped: frames carry the long-lived device
    id): each sybil pushes under a fresh, unlinkable id every day, so it counts once per day in the
    window's distinct support instead of once."""
    catalog = poisoning_catalog(seed)
    runs = []
    with tempfile.TemporaryDirectory(prefix="omega-poisoning-") as tmp:
        for h in honest:
            # The same honest fleet without sybils: what the victim would rank anyway (content, context).
            clean = asyncio.run(_one_run(h, 0, catalog, Path(tmp), seed, honest_seed=h, daily_ids=daily_ids))
            for s in sybils:
                if progress:
                    progress(f"{h} honest TVs, {s} sybil ids")
                run = asyncio.run(_one_run(h, s, catalog, Path(tmp), seed, honest_seed=h, daily_ids=daily_ids))
                # Outranked because of the sybils: items the target also outranks with none are left out.
                caused = {t: n for t, n in run["outranked"].items() if n > s and t not in clean["outranked"]}
                run["outranks_because_of_sybils"] = bool(caused)
                run["rank_without_sybils"] = clean["target_rank"]
                runs.append(run)
    bar_top10 = all(r["target_rank"] is None or r["target_rank"] > 10 for r in runs if r["sybils"] <= 3 and r["honest"] >= 30)
    return {
        "runs": runs,
        "scenario": f"{SYBIL_DAYS} days of sybil pushes at weight {SYBIL_WEIGHT:g}; victim watched the source once",
        "sybil_ids": "a fresh id each day (per-epoch pseudonyms, not shipped)" if daily_ids else "one id each",
        "policy": {"k_min": AggregationPolicy().k_min, "edge_w_max": AggregationPolicy().edge_w_max},
        "bar_met": {
            "top10_clear_for_s_le_3": bar_top10,
            "never_outranks_more_supported": not any(r["outranks_item_with_more_support"] for r in runs),
            "never_outranks_more_supported_because_of_sybils": not any(r["outranks_because_of_sybils"] for r in runs),
        },
    }
