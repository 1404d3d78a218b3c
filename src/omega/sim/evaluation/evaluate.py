"""`omega eval movielens`: the fleet against centralised baselines on one leave-last-out split.

Every method sees the same split (`omega.sim.evaluation.split.leave_last_out`): per user
the last rating is the target, earlier ones the history; ranking is over the
whole catalog minus the history (`omega.sim.evaluation.metrics`).

- edge_only: each TV's brain after replaying its own training history, no sync
  (local transitions, content similarity).
- edge_federated: the same brains after syncing every training viewing through
  the constellation and pulling what it published (k_min TVs per edge).
- cold_start: new TVs for a sample of users that watch only their first
  `cold_n` training episodes, then sync; target = that user's next episode
  (with most-popular and seq_transition on the same task as references).
- mostpop, itemknn, als, seq_transition: centralised, tuned on the validation
  split, trained on all training histories (`omega.sim.evaluation.baselines`).

The TV-side scorer's defaults (`EdgeWeights`) were picked on the ml-latest-small
validation split; the held-out targets are never synced (only training
viewings are replayed).
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from omega.brain.embedder import Embedder
from omega.brain.records import TransitionStat
from omega.brain.sync import SyncConfig
from omega.constellation.codebook import build_codebook
from omega.constellation.crdt import ConsolidatedEdge
from omega.datasets.movielens import MovieLensData, load_movielens
from omega.errors import OmegaError
from omega.protocol import Keyspace, derive_device_key, peek_frame
from omega.sim.evaluation import cell_granularity as cg
from omega.sim.evaluation.baselines import BASELINES, tune_and_evaluate
from omega.sim.evaluation.baselines.mostpop import MostPop
from omega.sim.evaluation.baselines.seq_transition import SeqTransition
from omega.sim.evaluation.edge_ranking import EdgeWeights, score_catalog
from omega.sim.evaluation.metrics import ndcg_values, paired_bootstrap, summarise, target_rank
from omega.sim.evaluation.split import Split, leave_last_out_arrays
from omega.sim.evaluation.wire_audit import TappedFrame, audit_frames, decode_uplink
from omega.sim.fleet.catalog_cache import build_catalog
from omega.sim.fleet.simulator import SIM_BRAIN_CONFIG, TV, Fleet, FleetConfig, ViewingEvent

Stage = Callable[[str, int, int], None]  # (stage name, done, total)
Inspect = Callable[[Fleet], dict[str, Any]]  # looks at the synced fleet before it is closed; adds keys
BASELINE_NAMES = ("mostpop", "itemknn", "als", "seq_transition")
FEDERATED = EdgeWeights()
EDGE_ONLY = EdgeWeights(w_global=0.0, w_pair=0.0, w_popularity=0.0, w_local=1.0, w_content=0.05)
ABLATION: dict[str, EdgeWeights] = {
    "content": EdgeWeights(w_global=0.0, w_pair=0.0, w_popularity=0.0, w_local=0.0, w_content=1.0),
    "content+local": EDGE_ONLY,
    "content+local+global": EdgeWeights(w_global=1.0, w_pair=0.0, w_popularity=0.0, w_local=0.3, w_content=0.05),
    "content+global+popularity": EdgeWeights(w_pair=0.0),
    "content+global+pairs+popularity": FEDERATED,
    "content+global+pairs+popularity+trends": EdgeWeights(w_consolidated=0.05),
}
K_MIN_TABLE = (1, 3, 5, 10)
#: codebook sizes of the privacy table's cell rows (capped at a quarter of the catalog for tiny fixtures)
CELL_SIZES = (64, 256, 1024)
#: weight of the cell backoff next to the item edges (bench/quality.py --grid table)
W_CELL = 0.3


def _subsample(data: MovieLensData, users: int | None, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    r = data.ratings
    keep = np.ones(len(r), bool)
    if users is not None:
        if users < 2:
            raise OmegaError(f"--users must be at least 2, got {users}")
        ids = np.unique(r.user)
        if users < ids.size:
            chosen = np.random.default_rng(seed).choice(ids, size=users, replace=False)
            keep = np.isin(r.user, chosen)
    return r.user[keep], r.item[keep], r.rating[keep], r.timestamp[keep]


def _train_events(user: np.ndarray, item: np.ndarray, stars: np.ndarray, ts: np.ndarray) -> list[ViewingEvent]:
    """Every rating except each user's last (the test target), in time order."""
    last = {}
    for i, u in enumerate(user.tolist()):
        last[u] = i
    held = set(last.values())
    return [
        ViewingEvent(int(u), int(c), float(s), float(t))
        for i, (u, c, s, t) in enumerate(zip(user.tolist(), item.tolist(), stars.tolist(), ts.tolist()))
        if i not in held
    ]


def _evaluate_tvs(fleet: Fleet, split: Split, weights: EdgeWeights, rows_by_user: dict[int, int], **kw: Any) -> dict[str, float]:
    return _evaluate_variants(fleet, split, weights, rows_by_user, {"": None}, **kw)[""]


Extra = Callable[[list[int]], np.ndarray]  # catalog rows watched last (most recent first) -> scores to add


def _evaluate_variants(
    fleet: Fleet, split: Split, weights: EdgeWeights, rows_by_user: dict[int, int], variants: dict[str, Extra | None],
    **kw: Any,
) -> dict[str, dict[str, float]]:  # fmt: skip
    """Like `_evaluate_tvs`, scoring each TV once with `weights` and then once per variant (base + extra)."""
    ranks = _rank_variants(fleet, split, weights, rows_by_user, variants, **kw)
    return {name: summarise(r.values()) for name, r in ranks.items()}


def _rank_variants(
    fleet: Fleet, split: Split, weights: EdgeWeights, rows_by_user: dict[int, int], variants: dict[str, Extra | None],
    **kw: Any,
) -> dict[str, dict[int, int]]:  # fmt: skip
    """Per variant, the target rank of each evaluated TV by its user's split row."""
    ranks: dict[str, dict[int, int]] = {name: {} for name in variants}
    for user, row in rows_by_user.items():
        tv = fleet.tvs.get(user)
        if tv is None:
            continue
        scores = score_catalog(tv.brain, weights, **kw)
        recent: list[int] = []
        if any(extra is not None for extra in variants.values()):
            cat = tv.brain.catalog
            recent = cat.rows([c for c in tv.brain.store.recent_content_ids(weights.n_recent) if c in cat]).tolist()
        for name, extra in variants.items():
            s = scores if extra is None else scores + extra(recent)
            ranks[name][row] = target_rank(s, int(split.targets[row]), split.histories[row])
    return ranks


def _versus_best(
    split: Split, federated: dict[int, int], best: str, params: dict[str, Any], seed: int
) -> dict[str, Any]:
    """NDCG@10 of edge + federation minus the best centralised model's, paired per viewer, with a
    bootstrap 95 % interval: whether "matches" is more than noise. The baseline is refitted with its
    tuned parameters to get its per-viewer ranks."""
    factory, _ = BASELINES[best]
    model = factory(**params).fit(split)
    rows = sorted(federated)
    theirs = [target_rank(model.scores(r, split.histories[r]), int(split.targets[r]), split.histories[r]) for r in rows]
    result = paired_bootstrap(ndcg_values(federated[r] for r in rows), ndcg_values(theirs), seed=seed)
    return {"baseline": best, "users": len(rows), "ndcg_diff": result["diff"],
            "ci95": [result["ci95_low"], result["ci95_high"]]}  # fmt: skip


async def published_edges(fleet: Fleet, k_min: int) -> list[ConsolidatedEdge]:
    """Every edge the constellation publishes at `k_min`, read page by page (a full read in one query
    would exceed SQLite's variable limit)."""
    edges: list[ConsolidatedEdge] = []
    cursor, more = 0, True
    while more:
        page = await fleet.aggregator.store.changes_since(cursor, k_min, 100_000)
        edges += [e for e in page.items if isinstance(e, ConsolidatedEdge)]
        cursor, more = page.cursor, page.more
    return edges


Lookup = Callable[[int], list[TransitionStat]]


def _published_lookup(edges: list[ConsolidatedEdge]) -> tuple[Lookup, Lookup, dict[int, float]]:
    """(ordered edges by source, unordered pairs by either end, in-weight per item) of a published set."""
    rows: dict[int, list[TransitionStat]] = {}
    pairs: dict[int, list[TransitionStat]] = {}
    into: dict[int, float] = {}
    for e in edges:
        if e.keyspace == Keyspace.ITEM:
            rows.setdefault(e.src, []).append(TransitionStat(e.src, e.dst, float(e.weight), e.support))
            into[e.dst] = into.get(e.dst, 0.0) + float(e.weight)
        elif e.keyspace == Keyspace.PAIR:
            pairs.setdefault(e.src, []).append(TransitionStat(e.src, e.dst, float(e.weight), e.support))
            pairs.setdefault(e.dst, []).append(TransitionStat(e.dst, e.src, float(e.weight), e.support))
    return (lambda src: rows.get(src, [])), (lambda src: pairs.get(src, [])), into


async def _run(
    data: MovieLensData, *, users: int | None, k_min: int, cold_n: int, cold_users: int, seed: int,
    workdir: Path, stage: Stage, embedder: Embedder, tables: bool, baselines: bool, inspect: Inspect | None,
    store_dir: Path | None = None,
) -> dict[str, Any]:  # fmt: skip
    timings: dict[str, float] = {}
    started = time.perf_counter()
    user, item, stars, ts = _subsample(data, users, seed)
    split = leave_last_out_arrays(user, item, data.item_ids)
    if split.n_users == 0:
        raise OmegaError(f"{data.path}: no user has two or more ratings to evaluate")
    rows_by_user = {int(u): r for r, u in enumerate(split.users.tolist())}

    catalog, matrix = build_catalog(data.items, embedder, SIM_BRAIN_CONFIG, lambda d, t: stage("embed catalog", d, t))
    if not np.array_equal(catalog.ids, split.item_ids.astype(np.int64)):
        raise OmegaError("catalog order differs from the split's item order")
    codebook = build_codebook(matrix, k=min(256, len(data.items)), seed=seed, iters=10)
    timings["catalog_s"] = time.perf_counter() - started

    t0 = time.perf_counter()
    events = [ev for ev in _train_events(user, item, stars, ts) if ev.user in rows_by_user]
    fleet = await Fleet.open(
        workdir, catalog, codebook, embedder=embedder, config=FleetConfig(k_min=k_min, seed=seed), store_dir=store_dir
    )
    try:
        await fleet.replay(events, lambda d, t: stage("replay viewings", d, t))
        fleet_tvs = list(fleet.tvs.values())
        up = np.array([tv.bytes_up for tv in fleet_tvs], np.float64)
        push_sizes = [len(d) for _, d in fleet.tap.uplink if peek_frame(d).kind == "push"]
        # What the fleet TVs sent while learning (before catch-up and cold start), decoded once for the
        # wire audit and the privacy table's cell rows.
        uplink = decode_uplink(fleet.tap.uplink, lambda dev: derive_device_key(fleet.config.secret, dev, 1))
        audit = audit_frames(uplink)
        await fleet.catch_up(progress=lambda d, t: stage("pull published patterns", d, t))
        timings["fleet_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        methods: dict[str, dict[str, Any]] = {}
        stage("score TVs", 0, 2)
        methods["edge_only"] = _evaluate_tvs(fleet, split, EDGE_ONLY, rows_by_user)
        stage("score TVs", 1, 2)
        federated_ranks = _rank_variants(fleet, split, FEDERATED, rows_by_user, {"": None})[""]
        methods["edge_federated"] = summarise(federated_ranks.values())
        stage("score TVs", 2, 2)
        timings["edge_eval_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        methods["cold_start"] = await _cold_start(fleet, split, events, rows_by_user, cold_n, cold_users, seed, stage)
        timings["cold_start_s"] = time.perf_counter() - t0

        out_tables: dict[str, Any] = {}
        if tables:
            t0 = time.perf_counter()
            ablation = {}
            for i, (name, w) in enumerate(ABLATION.items()):
                stage("ablation", i, len(ABLATION))
                ablation[name] = _evaluate_tvs(fleet, split, w, rows_by_user)
            out_tables["ablation"] = ablation
            out_tables["privacy"] = await _privacy_table(
                fleet, split, rows_by_user, up, stage, uplink=uplink, tvs=fleet_tvs, matrix=matrix, seed=seed
            )
            timings["tables_s"] = time.perf_counter() - t0
        published = await published_edges(fleet, k_min)
        extra = inspect(fleet) if inspect is not None else {}
    finally:
        await fleet.aclose()

    if baselines:
        for i, name in enumerate(BASELINE_NAMES):
            stage("centralised baselines", i, len(BASELINE_NAMES))
            t0 = time.perf_counter()
            result = tune_and_evaluate(name, split)
            methods[name] = {"hr@10": result["hr@10"], "ndcg@10": result["ndcg@10"], "params": result["params"]}
            timings[f"{name}_s"] = time.perf_counter() - t0
        stage("centralised baselines", len(BASELINE_NAMES), len(BASELINE_NAMES))

    best = max((n for n in BASELINE_NAMES if n in methods), key=lambda n: methods[n]["ndcg@10"], default=None)
    versus = _versus_best(split, federated_ranks, best, methods[best]["params"], seed) if best else None
    return {
        "dataset": data.path.name,
        "layout": data.layout,
        "users": split.n_users,
        "items": split.n_items,
        "train_viewings": len(events),
        "k_min": k_min,
        "methods": methods,
        "best_centralised": best,
        "edge_federated_matches_best": bool(best and methods["edge_federated"]["ndcg@10"] >= methods[best]["ndcg@10"]),
        "edge_federated_vs_best": versus,
        "upload_bytes_per_tv": {"mean": float(up.mean()) if up.size else 0.0, "p95": float(np.percentile(up, 95)) if up.size else 0.0},
        "push_bytes_p50": float(np.median(push_sizes)) if push_sizes else 0.0,
        "pushes": len(push_sizes),
        "published_edges": sum(e.keyspace == Keyspace.ITEM for e in published),
        "published_pairs": sum(e.keyspace == Keyspace.PAIR for e in published),
        "wire_audit": {
            "frames": audit.frames, "kinds": dict(audit.kinds), "patterns": audit.patterns, "edges": audit.edges,
            "violations": audit.violations[:5], "no_raw_episode_left": audit.clean,
        },  # fmt: skip
        "tables": out_tables,
        **extra,
        "timings_s": {k: round(v, 2) for k, v in timings.items()} | {"total": round(time.perf_counter() - started, 2)},
    }


async def _cold_start(
    fleet: Fleet, split: Split, events: list[ViewingEvent], rows_by_user: dict[int, int], cold_n: int, cold_users: int,
    seed: int, stage: Stage,
) -> dict[str, Any]:  # fmt: skip
    """New TVs that watched only a viewer's first `cold_n` episodes, synced, ranking that viewer's next episode.

    The centralised most-popular and seq_transition models rank the same target from the same few
    items (`reference`): all of them were trained on data that includes these viewers' later
    episodes, so the comparison is like for like, and the absolute numbers are optimistic.
    """
    firsts: dict[int, list[ViewingEvent]] = {}
    for ev in events:
        got = firsts.setdefault(ev.user, [])
        if len(got) <= cold_n:
            got.append(ev)
    eligible = sorted(u for u, evs in firsts.items() if len(evs) == cold_n + 1)
    rng = np.random.default_rng(seed + 1)
    chosen = rng.choice(eligible, size=min(cold_users, len(eligible)), replace=False).tolist() if eligible else []
    references: dict[str, Any] = {"mostpop": MostPop().fit(split), "seq_transition": SeqTransition().fit(split)}
    ranks: list[int] = []
    ref_ranks: dict[str, list[int]] = {name: [] for name in references}
    for done, u in enumerate(chosen, 1):
        # Its viewings stay local (no edges pushed): the same viewer's fleet TV already contributed them,
        # and a second device would count that viewer twice towards k_min.
        tv = fleet.add_tv(10_000_000 + u, name=f"cold-{u}", sync=SyncConfig(max_edges_per_push=0))
        seen, target = firsts[u][:cold_n], firsts[u][cold_n]
        for ev in seen:
            fleet.watch(tv, ev.content_id, ev.stars, ev.timestamp)
        await fleet.catch_up([tv])
        history = split.item_ids.searchsorted(np.array([ev.content_id for ev in seen]))
        target_row = int(split.item_ids.searchsorted(target.content_id))
        ranks.append(target_rank(score_catalog(tv.brain, FEDERATED), target_row, history))
        for name, model in references.items():
            ref_ranks[name].append(target_rank(model.scores(rows_by_user[u], history), target_row, history))
        stage("cold-start TVs", done, len(chosen))
    return summarise(ranks) | {
        "tvs": len(chosen), "episodes": cold_n, "target": f"episode {cold_n + 1}",
        "reference": {name: summarise(r) for name, r in ref_ranks.items()},
    }  # fmt: skip


async def _privacy_table(
    fleet: Fleet, split: Split, rows_by_user: dict[int, int], up: np.ndarray, stage: Stage, *,
    uplink: list[TappedFrame], tvs: list[TV], matrix: np.ndarray, seed: int,
) -> list[dict[str, Any]]:  # fmt: skip
    """NDCG@10 of the federated scorer for each k_min and granularity, from the same constellation's
    published sets: "item" (ordered item edges alone), "item+pair" (with the unordered pairs; derived by
    the constellation, so both cost a TV the same upload) and "item+cell<N>" (the item edges plus a backoff
    over codebook cells of N centroids, `W_CELL`). Cell edges are an offline re-keying of the tapped
    pushes with the constellation's rule (`omega.sim.evaluation.cell_granularity`); their upload is those pushes
    re-encoded with cell-keyed edges."""
    key_for = lambda dev: derive_device_key(fleet.config.secret, dev, 1)  # noqa: E731
    pushes = cg.item_pushes(uplink)
    policy = fleet.aggregator.policy
    n_items = len(fleet.catalog)
    cells_by_size: dict[int, dict[str, Any]] = {}
    for n in sorted({min(size, max(1, n_items // 4)) for size in CELL_SIZES}):
        cells = build_codebook(matrix, k=n, seed=seed, iters=10).assign(matrix)
        cell_of = dict(zip(fleet.catalog.ids.tolist(), cells.tolist()))
        per_device = cg.cell_upload_bytes(uplink, cell_of, key_for, codebook_version=1)
        cell_up = np.array([per_device.get(tv.device_id, 0) for tv in tvs], np.float64)
        edges_per_tv: dict[bytes, set[cg.CellKey]] = {}
        for p in pushes:
            edges_per_tv.setdefault(p.device_id, set()).update(cg.rekey(p.edges, cell_of))
        aggregated = cg.aggregate_cells(pushes, cell_of, edge_w_max=policy.edge_w_max, epoch_ms=policy.epoch_ms)
        cells_by_size[n] = {
            "cells": cells, "aggregated": aggregated,
            "up": float(cell_up.mean()) if cell_up.size else 0.0,
            "edges_per_tv": float(np.mean([len(edges_per_tv.get(tv.device_id, ())) for tv in tvs])) if tvs else 0.0,
        }  # fmt: skip
    item_weights = EdgeWeights(w_pair=0.0)
    out = []
    for i, k in enumerate(K_MIN_TABLE):
        stage("privacy table", i, len(K_MIN_TABLE))
        edges = await published_edges(fleet, k)
        lookup, pairs, into = _published_lookup(edges)
        pop = np.zeros(n_items, np.float64)
        if into:
            pop[fleet.catalog.rows(list(into))] = list(into.values())
            pop /= pop.max()
        n_pairs = sum(e.keyspace == Keyspace.PAIR for e in edges)
        common = {"k_min": k, "published_edges": len(edges) - n_pairs}
        base = {"upload_bytes_per_tv_mean": float(up.mean()) if up.size else 0.0}
        kw = {"global_lookup": lookup, "pair_lookup": pairs, "pop": pop}
        variants: dict[str, Extra | None] = {"item": None}
        published_cells = {}
        for n, c in cells_by_size.items():
            published_cells[n] = cg.publish(c["aggregated"], k)
            backoff = cg.CellBackoff(
                c["cells"], published_cells[n], pop, n_cells=n, recency_decay=item_weights.recency_decay,
                source_norm=item_weights.source_norm,
            )  # fmt: skip
            variants[f"cell{n}"] = lambda recent, b=backoff: W_CELL * b.scores(recent)
        results = _evaluate_variants(fleet, split, item_weights, rows_by_user, variants, **kw)
        out.append({"granularity": "item", **common, "published_pairs": 0, **results["item"], **base})
        with_pairs = _evaluate_tvs(fleet, split, FEDERATED, rows_by_user, **kw)
        out.append({"granularity": "item+pair", **common, "published_pairs": n_pairs, **with_pairs, **base})
        for n, c in cells_by_size.items():
            out.append({
                "granularity": f"item+cell{n}", **common, "published_pairs": 0, **results[f"cell{n}"],
                "upload_bytes_per_tv_mean": c["up"], "cells": n, "published_cell_edges": len(published_cells[n]),
                "cell_edges_per_tv": c["edges_per_tv"],
            })  # fmt: skip
    stage("privacy table", len(K_MIN_TABLE), len(K_MIN_TABLE))
    return out


def evaluate_movielens(
    data_dir: Path | str,
    *,
    users: int | None = None,
    k_min: int = 3,
    cold_n: int = 3,
    cold_users: int = 100,
    seed: int = 0,
    workdir: Path | str | None = None,
    stage: Stage | None = None,
    embedder: Embedder | None = None,
    tables: bool = True,
    baselines: bool = True,
    inspect: Inspect | None = None,
) -> dict[str, Any]:
    """Run the whole evaluation (see module docstring); returns the `omega eval movielens` JSON object."""
    if k_min < 1:
        raise OmegaError(f"--k-min must be at least 1, got {k_min}")
    if cold_n < 1:
        raise OmegaError(f"cold-start episodes must be at least 1, got {cold_n}")
    data = load_movielens(data_dir)
    embedder = embedder or Embedder()
    noop: Stage = lambda name, done, total: None  # noqa: E731
    shm = Path("/dev/shm")
    with (
        tempfile.TemporaryDirectory(prefix="omega-eval-", dir=workdir) as tmp,
        tempfile.TemporaryDirectory(prefix="omega-eval-store-", dir=shm if shm.is_dir() else tmp) as store_tmp,
    ):
        return asyncio.run(
            _run(
                data, users=users, k_min=k_min, cold_n=cold_n, cold_users=cold_users, seed=seed, workdir=Path(tmp),
                stage=stage or noop, embedder=embedder, tables=tables, baselines=baselines, inspect=inspect,
                store_dir=Path(store_tmp),
            )  # fmt: skip
        )
