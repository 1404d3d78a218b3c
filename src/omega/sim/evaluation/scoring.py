"""Scoring the fleet's TVs as they run: each viewer's `Brain.rank` top K at its target's time, and the
published state a TV would hold (for the evaluation's what-if tables)."""

from __future__ import annotations

from typing import Any

import numpy as np

from omega.brain.brain import context_at
from omega.brain.config import BrainConfig
from omega.brain.recommender import ConsolidatedPrior, Published, TransitionLookup
from omega.constellation.crdt import ConsolidatedEdge
from omega.errors import OmegaError
from omega.protocol import WEIGHT_SCALE, Keyspace, passes_support_floor
from omega.sim.evaluation.metrics import ndcg_values, paired_bootstrap, summarise
from omega.sim.evaluation.split import Split
from omega.sim.fleet.simulator import Fleet

#: the list length scored (HR@10, NDCG@10): a target outside the TV's top 10 is a miss
K = 10


class Scored:
    """Per split row: the target's rank in the TV's top K (K = missed) and whether it was in the pool."""

    def __init__(self) -> None:
        self.ranks: dict[int, int] = {}
        self.in_pool: dict[int, bool] = {}

    def summary(self) -> dict[str, float]:
        pooled = list(self.in_pool.values())
        return summarise(self.ranks.values(), K) | {"pool_recall": float(np.mean(pooled)) if pooled else 0.0}


def score_tvs(
    fleet: Fleet, split: Split, rows_by_user: dict[int, int], when: dict[int, float], *,
    config: BrainConfig | None = None, published: Published | None = None, refined: TransitionLookup | None = None,
    prior: ConsolidatedPrior | None = None,
) -> Scored:  # fmt: skip
    """Each evaluated viewer's TV ranks its top K with `Brain.rank` at the target's time."""
    scored = Scored()
    for user, row in rows_by_user.items():
        tv = fleet.tvs.get(user)
        if tv is None:
            raise OmegaError(f"viewer {user} has no TV in the fleet: every evaluated viewer must be scored")
        ranking = tv.brain.rank(context_at(when[user]), K, config=config, published=published, refined=refined,
                                prior=prior)  # fmt: skip
        target = int(split.item_ids[split.targets[row]])
        ids = [r.content_id for r in ranking.recommendations]
        scored.ranks[row] = ids.index(target) if target in ids else K
        scored.in_pool[row] = target in ranking.pool
        # Its page cache refills from the file when this TV ranks again (next method): kept, one per TV, it
        # was ~0.2 MB a TV for the whole evaluation.
        tv.brain.store.release_cache()
    return scored


def versus(mine: dict[int, int], theirs: dict[int, int], name: str, seed: int) -> dict[str, Any]:
    """NDCG@10 of `mine` minus `theirs`, paired per viewer, with a bootstrap 95 % interval."""
    rows = sorted(mine)
    result = paired_bootstrap(ndcg_values(mine[r] for r in rows), ndcg_values(theirs[r] for r in rows), seed=seed)
    return {"baseline": name, "users": len(rows), "ndcg_diff": result["diff"],
            "ci95": [result["ci95_low"], result["ci95_high"]]}  # fmt: skip


async def published_edges(fleet: Fleet, k_min: int) -> list[ConsolidatedEdge]:
    """Every edge the constellation publishes at `k_min`, read page by page (a full read in one query
    would exceed SQLite's variable limit)."""
    edges: list[ConsolidatedEdge] = []
    cursor, more = 0, True
    while more:
        page = await fleet.aggregator.store.changes_since(cursor, k_min, 100_000)
        edges += [e for e in page.items if isinstance(e, ConsolidatedEdge) and e.support > 0]  # not removals
        cursor, more = page.cursor, page.more
    return edges


def published_state(edges: list[ConsolidatedEdge], *, with_pairs: bool = True) -> Published:
    """What a TV would hold after pulling `edges`, read as its ranker reads them (`Brain._published`): successors
    by source and pairs by either end (heaviest first) where they pass the support floor (store/edges.py: an
    edge a→b with support ≥ c·√V(a), a pair {a, b} with ≥ c·√max(V(a), V(b)), V = the support out of an item,
    c = protocol.SUPPORT_FLOOR_C), the most-followed items (every edge), and the rows the floor holds back."""
    volume: dict[int, int] = {}
    for e in edges:
        if e.keyspace == Keyspace.ITEM:
            volume[e.src] = volume.get(e.src, 0) + int(e.support)
    rows: dict[int, list[tuple[int, float]]] = {}
    pairs: dict[int, list[tuple[int, float]]] = {}
    held: dict[int, list[tuple[int, float]]] = {}
    into: dict[int, float] = {}
    for e in edges:
        # As the TV's store reads them: the weight where the floor passes, the distinct support where it holds back.
        if e.keyspace == Keyspace.ITEM:
            ok = passes_support_floor(e.support, volume.get(e.src, 0))
            table, value = (rows, float(e.weight)) if ok else (held, float(e.support))
            table.setdefault(e.src, []).append((e.dst, value))
            into[e.dst] = into.get(e.dst, 0.0) + float(e.weight)
        elif e.keyspace == Keyspace.PAIR and with_pairs:
            ok = passes_support_floor(e.support, max(volume.get(e.src, 0), volume.get(e.dst, 0)))
            table, value = (pairs, float(e.weight)) if ok else (held, float(e.support))
            table.setdefault(e.src, []).append((e.dst, value))
            table.setdefault(e.dst, []).append((e.src, value))
    for found in (*rows.values(), *pairs.values(), *held.values()):
        found.sort(key=lambda t: (-t[1], t[0]))
    popular = [dst for dst, _ in sorted(into.items(), key=lambda kv: (-kv[1], kv[0]))]

    def lookup(table: dict[int, list[tuple[int, float]]]) -> TransitionLookup:
        return lambda srcs: {s: table[s] for s in srcs if s in table}

    return lookup(rows), lookup(pairs), (lambda: popular), lookup(held)


def refined_state(edges: list[ConsolidatedEdge]) -> TransitionLookup:
    """The refined neighbours a shard would release from `edges` (`omega.constellation.item_graph.refine` over
    their pairs), as a TV reads them: so a what-if published set is ranked with its own refined neighbours."""
    from omega.constellation.item_graph import refine

    found = refine(
        [(e.src, e.dst, e.support) for e in edges if e.keyspace == Keyspace.PAIR],
        [(e.src, e.dst, e.support) for e in edges if e.keyspace == Keyspace.ITEM],
    )
    table: dict[int, list[tuple[int, float]]] = {}
    for n in found:
        table.setdefault(n.src, []).append((n.dst, n.steps / WEIGHT_SCALE))
    for row in table.values():
        row.sort(key=lambda t: (-t[1], t[0]))
    return lambda srcs: {s: table[s] for s in srcs if s in table}
