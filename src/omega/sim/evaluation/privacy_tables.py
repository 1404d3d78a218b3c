"""The evaluation's privacy tables: NDCG@10 and what is published for each k_min (and cell size),
and for each DP ε, all from the same synced constellation."""

from __future__ import annotations

from typing import Any

import numpy as np

from omega.constellation.crdt import ConsolidatedEdge
from omega.progress import Stage
from omega.protocol import Keyspace, derive_device_key
from omega.sim.evaluation import cell_granularity as cg
from omega.sim.evaluation.scoring import published_edges, published_state, refined_state, score_tvs
from omega.sim.evaluation.split import Split
from omega.sim.evaluation.wire_audit import TappedFrame
from omega.sim.fleet.catalog_cache import cached_codebook
from omega.sim.fleet.simulator import TV, Fleet

#: k_min values of the privacy table
K_MIN_TABLE = (1, 3, 5, 10)
#: codebook sizes of the privacy table's cell rows (capped at a quarter of the catalog for tiny fixtures)
CELL_SIZES = (64, 256, 1024)


def cell_rows(
    fleet: Fleet, *, uplink: list[TappedFrame], tvs: list[TV], matrix: np.ndarray, seed: int
) -> dict[int, dict[str, Any]]:  # fmt: skip
    """What the privacy table's "item+cell<N>" rows need, per codebook size N: cell edges published at each
    k_min, upload per TV and cell edges per TV (see `privacy_table`). Computed before the k_min rows so that
    the decoded uplink can be freed first (memory)."""
    key_for = lambda dev: derive_device_key(fleet.config.secret, dev, 1)  # noqa: E731
    pushes = cg.item_pushes(uplink)
    policy = fleet.aggregator.policy
    n_items = len(fleet.catalog)
    cells_by_size: dict[int, dict[str, Any]] = {}
    for n in sorted({min(size, max(1, n_items // 4)) for size in CELL_SIZES}):
        cells = cached_codebook(matrix, k=n, seed=seed, iters=10).assign(matrix)
        cell_of = dict(zip(fleet.catalog.ids.tolist(), cells.tolist()))
        per_device = cg.cell_upload_bytes(uplink, cell_of, key_for, codebook_version=1)
        cell_up = np.array([per_device.get(tv.device_id, 0) for tv in tvs], np.float64)
        edges_per_tv: dict[bytes, set[cg.CellKey]] = {}
        for p in pushes:
            edges_per_tv.setdefault(p.device_id, set()).update(cg.rekey(p.edges, cell_of))
        aggregated = cg.aggregate_cells(pushes, cell_of, edge_w_max=policy.edge_w_max, epoch_ms=policy.epoch_ms)
        cells_by_size[n] = {
            # only the counts are kept, not every size's aggregates at once (memory)
            "published": {k: len(cg.publish(aggregated, k)) for k in K_MIN_TABLE},
            "up": float(cell_up.mean()) if cell_up.size else 0.0,
            "edges_per_tv": float(np.mean([len(edges_per_tv.get(tv.device_id, ())) for tv in tvs])) if tvs else 0.0,
        }  # fmt: skip
        del aggregated, edges_per_tv
    return cells_by_size


async def privacy_table(
    fleet: Fleet, split: Split, rows_by_user: dict[int, int], when: dict[int, float], up: np.ndarray, stage: Stage, *,
    cells_by_size: dict[int, dict[str, Any]],
) -> list[dict[str, Any]]:  # fmt: skip
    """NDCG@10 of the shipped ranking (`Brain.rank` over another published set) for each k_min, from the
    same constellation's published sets: "item" (ordered item edges alone) and "item+pair" (with the
    unordered pairs and the refined neighbours computed from them; derived by the constellation, so both
    cost a TV the same upload). "item+cell<N>"
    rows give what cell-keyed edges (codebook cells of N centroids) would cost and publish: an offline
    re-keying of the tapped pushes with the constellation's rule (`omega.sim.evaluation.cell_granularity`),
    their upload those pushes re-encoded; a TV has no cell ranking path, so they carry no NDCG
    (`cells_by_size`: from `cell_rows`)."""
    out = []
    for i, k in enumerate(K_MIN_TABLE):
        stage("privacy table", i, len(K_MIN_TABLE))
        edges = await published_edges(fleet, k)
        n_pairs = sum(e.keyspace == Keyspace.PAIR for e in edges)
        common = {"k_min": k, "published_edges": len(edges) - n_pairs}
        base = {"upload_bytes_per_tv_mean": float(up.mean()) if up.size else 0.0}
        for name, with_pairs in (("item", False), ("item+pair", True)):
            state = published_state(edges, with_pairs=with_pairs)
            # Each published set with the refined neighbours its own pairs give (none without pairs).
            refined = refined_state(edges if with_pairs else [])
            scored = score_tvs(fleet, split, rows_by_user, when, published=state, refined=refined)
            out.append({"granularity": name, **common, "published_pairs": n_pairs if with_pairs else 0,
                        **scored.summary(), **base})  # fmt: skip
            del state, refined, scored  # one published set's state at a time (memory)
        for n, c in cells_by_size.items():
            out.append({
                "granularity": f"item+cell{n}", **common, "published_pairs": 0, "hr@10": None, "ndcg@10": None,
                "upload_bytes_per_tv_mean": c["up"], "cells": n,
                "published_cell_edges": c["published"][k], "cell_edges_per_tv": c["edges_per_tv"],
            })  # fmt: skip
        del edges  # before the next k_min's set is read
    stage("privacy table", len(K_MIN_TABLE), len(K_MIN_TABLE))
    return out


#: ε per TV per day of the privacy table's DP rows (None: no noise, k_min 3 as shipped), and their δ.
EPSILON_TABLE = (None, 8.0, 4.0, 2.0, 1.0)
DP_DELTA = 1e-6


async def epsilon_table(
    fleet: Fleet, split: Split, rows_by_user: dict[int, int], when: dict[int, float], *, seed: int, stage: Stage
) -> list[dict[str, Any]]:  # fmt: skip
    """NDCG@10 of the shipped ranking when the constellation publishes with differential privacy at ε
    (`omega.constellation.privacy`: OpenDP Gaussian noise on every key's distinct support and partition
    selection by its noised support, in place of k_min), from the same constellation's supports.

    The DP rows rank without consolidated patterns: under DP a pattern is released from one day's
    contributions and only when their noised count passes the same threshold (57 TVs at ε 8), and what the
    TVs pulled here was published at k_min 3. Keeping that prior beside a DP edge set would mix two
    releases (and it ranked below a TV without sync)."""
    from omega.brain.recommender import ConsolidatedPrior
    from omega.constellation import privacy

    everything = await published_edges(fleet, 1)  # every key with its exact distinct support
    supports = {(e.keyspace, e.src, e.dst): e.support for e in everything}
    del everything  # every key's record: only the supports are needed
    out = []
    for i, eps in enumerate(EPSILON_TABLE):
        stage("privacy table (ε)", i, len(EPSILON_TABLE))
        prior = None  # the patterns each TV pulled
        if eps is None:
            edges = await published_edges(fleet, 3)
            extra: dict[str, Any] = {"epsilon": None, "k_min": 3, "consolidated_patterns": "pulled (k_min 3)"}
        else:
            release = privacy.calibrate(eps, DP_DELTA)
            noised = release.release(supports)
            edges = [ConsolidatedEdge(k[0], k[1], k[2], float(n), n, 0) for k, n in sorted(noised.items())]
            extra = {"epsilon": eps, "delta": DP_DELTA, "noise_scale": round(release.scale, 3),
                     "threshold": release.threshold, "max_keys_per_tv_day": release.max_keys,
                     "consolidated_patterns": "none"}  # fmt: skip
            prior = ConsolidatedPrior.of([])
        n_pairs = sum(e.keyspace == Keyspace.PAIR for e in edges)
        scored = score_tvs(fleet, split, rows_by_user, when, published=published_state(edges),
                           refined=refined_state(edges), prior=prior)  # fmt: skip
        out.append({**extra, "published_edges": len(edges) - n_pairs, "published_pairs": n_pairs, **scored.summary()})
        del edges, scored  # before the next ε's set is built
    stage("privacy table (ε)", len(EPSILON_TABLE), len(EPSILON_TABLE))
    return out
