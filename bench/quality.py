"""Fast central estimate of what federation can carry (no fleet, no SQLite): seconds instead of ~17 min.

Rebuilds, from the leave-last-out split, what the simulated TVs push and what the
constellation publishes: each TV learns quality-weighted transitions the way the
Brain does (sources: the last `window` distinct viewings, destination: a finished
viewing, weight reward·decay^step), rounds its per-edge total down to the wire's
1/16 grid, and an edge (item→item or codebook cell→cell) is published only with
≥ k_min distinct TVs. It then scores every viewer with the former side scorer's
formula (same parts, same weights) on published edges only, optionally with a
cell-level backoff.

    .venv/bin/python bench/quality.py            # validation split (tuning)
    .venv/bin/python bench/quality.py --test     # the held-out targets (report only)

Grids (`--grid`): basic (item level, k_min 1/3/5/10), pairs (item edges plus the unordered
pairs the constellation derives from them, pair weight 1/2/3, k_min 1/3/5/10), table (item vs codebook-cell
backoff of 64/256/1024 cells, k_min 3/5, cell edges per TV), cell, derived (cell
backoff coarsened from the published item edges, no new wire data), hops
(two-hop and reverse edges, plus the central seq_transition for reference),
tune (scorer weights). `--window/--decay/--teach` change what a TV learns.

It is an estimate: the fleet also drops pushes that collide within an epoch
(duplicate_flood) and caps edges per push. The real numbers come from
`omega eval movielens`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import scipy.sparse as sp

from omega.brain.embedder import Embedder
from omega.brain.learning import episode_from_rating, reward
from omega.constellation.codebook import build_codebook
from omega.datasets.movielens import load_movielens
from omega.sim.evaluation.metrics import summarise, target_rank
from omega.sim.evaluation.split import leave_last_out, validation_split
from omega.sim.fleet.catalog_cache import catalog_embeddings

WIRE = 16


def sequences(data):
    """Per user (time order): dense items and star ratings, aligned with `leave_last_out`."""
    r = data.ratings
    ids = data.item_ids
    dense = np.searchsorted(ids, r.item)
    order = np.argsort(r.user, kind="stable")
    u, it, st = r.user[order], dense[order], r.rating[order]
    starts = np.flatnonzero(np.r_[True, u[1:] != u[:-1]])
    return np.split(it, starts[1:]), np.split(st, starts[1:])


def tv_edges(items: np.ndarray, stars: np.ndarray, window: int, decay: float, teach: str = "success") -> dict[tuple[int, int], float]:
    """One TV's transition table, as the Brain learns it (brain.py on_user_action)."""
    out: dict[tuple[int, int], float] = {}
    order: dict[int, None] = {}
    for c, s in zip(items.tolist(), stars.tolist()):
        v = episode_from_rating(s)
        rw = reward(v.watch_fraction, v.engagement)
        if teach == "all-wf":  # every viewing teaches, weighted by how much of it was watched
            rw = v.watch_fraction
        elif teach == "all-1":
            rw = 1.0
        elif teach == "success+low":  # finished viewings by reward, others a small fixed weight
            rw = rw if (v.watch_fraction > 0.7 and rw > 0) else 0.25
        if rw > 0 and (teach != "success" or v.watch_fraction > 0.7):
            srcs = [x for x in reversed(order) if x != c][:window]
            for step, a in enumerate(srcs):
                out[(a, c)] = out.get((a, c), 0.0) + rw * decay**step
        order.pop(c, None)
        order[c] = None
    return out


def publish(per_tv: list[dict], n: int, k_min: int, key=None, n_keys: int | None = None):
    """(weights, support) as sparse matrices over edges with ≥ k_min distinct TVs; weights on the wire grid."""
    rows, cols, ws = [], [], []
    for edges in per_tv:
        if key is not None:
            agg: dict = {}
            for (a, b), w in edges.items():
                kk = (key[a], key[b])
                agg[kk] = agg.get(kk, 0.0) + w
            edges = agg
        for (a, b), w in edges.items():
            w = np.floor(w * WIRE) / WIRE
            if w > 0:
                rows.append(a), cols.append(b), ws.append(w)
    m = n_keys or n
    W = sp.csr_matrix((np.array(ws), (np.array(rows), np.array(cols))), shape=(m, m))
    S = sp.csr_matrix((np.ones(len(ws)), (np.array(rows), np.array(cols))), shape=(m, m))
    W.sum_duplicates(), S.sum_duplicates()
    keep = S.copy()
    keep.data = (keep.data >= k_min).astype(np.float64)
    W = W.multiply(keep).tocsr()
    S = S.multiply(keep).tocsr()
    W.eliminate_zeros(), S.eliminate_zeros()
    return W, S


def row_norm(W: sp.csr_matrix, source_norm: float) -> sp.csr_matrix:
    out = np.asarray(W.sum(axis=1)).ravel()
    scale = np.where(out > 0, np.power(np.maximum(out, 1e-12), -source_norm), 0.0)
    return (sp.diags(scale) @ W).tocsr()


def evaluate(split, hists, W, S, emb, cfg, cells=None, CW=None, P=None) -> dict:
    n = split.n_items
    PT = row_norm((P + P.T).tocsr(), cfg["source_norm"]) if P is not None and cfg.get("w_pair", 0) > 0 else None
    Wc = W
    if cfg.get("support_c", 0) > 0:
        conf = S.copy()
        conf.data = conf.data / (conf.data + cfg["support_c"])
        Wc = W.multiply(conf).tocsr()
    T = row_norm(Wc, cfg["source_norm"])
    TR = row_norm(Wc.T.tocsr(), cfg["source_norm"]) if cfg.get("w_reverse", 0) > 0 else None
    pop = np.asarray(W.sum(axis=0)).ravel()
    pop = pop / pop.max() if pop.max() > 0 else pop
    if cfg.get("pop_viewers"):  # distinct viewers per item (published at k_min), like seq_transition's prior
        v = np.bincount(np.concatenate([np.unique(h) for h in hists]), minlength=n).astype(np.float64)
        v[v < cfg["pop_viewers"]] = 0
        pop = v / v.max()
    if cells is not None and CW is not None:
        CT = row_norm(CW, cfg["source_norm"])
        # within a destination cell: share by published in-weight (smoothed), so known items lead
        share = pop**cfg.get("cell_pop_exp", 1.0) + cfg.get("cell_eps", 1e-3)
        cell_tot = np.bincount(cells, weights=share, minlength=CW.shape[0])
        share = share / np.maximum(cell_tot[cells], 1e-12)
    ranks = []
    for row in range(split.n_users):
        h = split.histories[row]
        recent = list(dict.fromkeys(h[::-1].tolist()))
        rec = recent[: cfg["n_recent"]]
        d = cfg["recency_decay"] ** np.arange(len(rec))
        q = sp.csr_matrix((d, (np.zeros(len(rec), int), rec)), shape=(1, n))
        s = np.asarray((q @ T).todense()).ravel()
        top = s.max(initial=0.0)
        score = cfg["w_global"] * (s / top if top > 0 else s)
        if PT is not None:  # published unordered pairs, read from either end
            sp_ = np.asarray((q @ PT).todense()).ravel()
            tp = sp_.max(initial=0.0)
            score += cfg["w_pair"] * (sp_ / tp if tp > 0 else sp_)
        if cfg.get("w_twohop", 0) > 0 and top > 0:  # a→b→c through published edges
            s2 = np.asarray((sp.csr_matrix(s / top) @ T).todense()).ravel()
            t2 = s2.max(initial=0.0)
            score += cfg["w_twohop"] * (s2 / t2 if t2 > 0 else s2)
        if cfg.get("w_reverse", 0) > 0:  # published b→a read as "a and b go together"
            s3 = np.asarray((q @ TR).todense()).ravel()
            t3 = s3.max(initial=0.0)
            score += cfg["w_reverse"] * (s3 / t3 if t3 > 0 else s3)
        if cells is not None and CW is not None and cfg.get("w_cell", 0) > 0:
            cq = sp.csr_matrix((d, (np.zeros(len(rec), int), cells[rec])), shape=(1, CW.shape[0]))
            cs = np.asarray((cq @ CT).todense()).ravel()
            ctop = cs.max(initial=0.0)
            cs = cs / ctop if ctop > 0 else cs
            bo = cs[cells] * share
            btop = bo.max(initial=0.0)
            score += cfg["w_cell"] * (bo / btop if btop > 0 else bo)
        score += cfg["w_popularity"] * pop
        cr = rec[: cfg["content_recent"]]
        if cfg["w_content"] > 0 and cr:
            qv = (cfg["recency_decay"] ** np.arange(len(cr))) @ emb[cr]
            qv /= max(np.linalg.norm(qv), 1e-12)
            score += cfg["w_content"] * np.clip(emb @ qv, 0, 1) ** 3
        ranks.append(target_rank(score, int(split.targets[row]), h))
    return summarise(ranks)


BASE = dict(n_recent=10, recency_decay=0.6, source_norm=0.5, w_global=1.0, w_popularity=0.02, w_content=0.05,
            content_recent=5, w_cell=0.0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--data", default="/work/shared/data/ml-latest-small")
    p.add_argument("--test", action="store_true")
    p.add_argument("--window", type=int, default=5)
    p.add_argument("--decay", type=float, default=0.8)
    p.add_argument("--grid", default="basic")
    p.add_argument("--teach", default="success", choices=["success", "all-wf", "all-1", "success+low"])
    a = p.parse_args(argv)
    t0 = time.time()
    data = load_movielens(a.data)
    split = leave_last_out(data)
    its, sts = sequences(data)
    # training sequences per split row (users with ≥2 ratings), minus the held-out target
    keep = [i for i, s in enumerate(its) if s.size >= 2]
    tr_items = [its[i][:-1] for i in keep]
    tr_stars = [sts[i][:-1] for i in keep]
    if not a.test:
        split = validation_split(split)
        keep2 = [i for i, s in enumerate(tr_items) if s.size >= 2]
        tr_items = [tr_items[i][:-1] for i in keep2]
        tr_stars = [tr_stars[i][:-1] for i in keep2]
    assert all(np.array_equal(x, h) for x, h in zip(tr_items, split.histories))
    emb = catalog_embeddings(data.items, Embedder())
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    per_tv = [tv_edges(i, s, a.window, a.decay, a.teach) for i, s in zip(tr_items, tr_stars)]
    n = split.n_items
    bytes_item = np.mean([len(e) for e in per_tv])
    out = []

    def run(name, k, cfg, cells=None, ncells=None, derived=False):
        W, S = publish(per_tv, n, k)
        P = None
        if cfg.get("w_pair", 0) > 0:  # what the constellation derives: one unordered pair per TV and item pair
            per_tv_pairs = []
            for edges in per_tv:
                agg: dict = {}
                for (x, y), w in edges.items():
                    key = (min(x, y), max(x, y))
                    agg[key] = agg.get(key, 0.0) + w
                per_tv_pairs.append(agg)
            P, _ = publish(per_tv_pairs, n, k)
        CW = None
        if cells is not None and derived:  # coarsen the *published* item edges on the TV: no new wire data
            P = sp.csr_matrix((np.ones(n), (np.arange(n), cells)), shape=(n, ncells))
            CW = (P.T @ W @ P).tocsr()
        elif cells is not None:
            CW, _ = publish(per_tv, n, k, key=cells, n_keys=ncells)
        res = evaluate(split, tr_items, W, S, emb, cfg, cells, CW, P)
        row = {"name": name, "k_min": k, "edges": int(W.nnz), "cell_edges": int(CW.nnz) if CW is not None else 0,
               "pairs": int(P.nnz) if P is not None else 0,
               **{m: round(v, 4) for m, v in res.items()}}
        out.append(row)
        print(json.dumps(row), flush=True)

    books = {}

    def cells_of(k):
        if k not in books:
            books[k] = build_codebook(emb, k=k, seed=0, iters=10).assign(emb)
        return books[k]

    if a.grid == "basic":
        for k in (1, 3, 5, 10):
            run("item", k, BASE)
    elif a.grid == "pairs":  # unordered pairs derived by the constellation, next to the ordered edges
        for k in (1, 3, 5, 10):
            run("item", k, BASE)
            for wp in (1.0, 2.0, 3.0):
                run(f"item+pair w{wp}", k, BASE | {"w_pair": wp})
    elif a.grid == "cell":
        for nc in (64, 256, 1024):
            for wc in (0.1, 0.3):
                run(f"item+cell{nc} w{wc}", 3, BASE | {"w_cell": wc}, cells_of(nc), nc)
    elif a.grid == "derived":
        for nc in (64, 256):
            for wc in (0.3, 0.6):
                run(f"item+derived-cell{nc} w{wc}", 3, BASE | {"w_cell": wc}, cells_of(nc), nc, derived=True)
        for wc in (0.6, 1.0):
            run(f"item+cell256 w{wc}", 3, BASE | {"w_cell": wc}, cells_of(256), 256)
    elif a.grid == "table":  # the granularity × k_min table (edges per TV: distinct keys a TV pushes)
        for k in (1, 3, 5, 10):
            run("item", k, BASE)
        for nc in (64, 256, 1024):
            c = cells_of(nc)
            per = np.mean([len({(c[x], c[y]) for x, y in e}) for e in per_tv])
            for k in (3, 5):
                run(f"item+cell{nc} backoff w0.3 (cell edges/TV {per:.0f})", k, BASE | {"w_cell": 0.3}, c, nc)
    elif a.grid == "hops":
        from omega.sim.evaluation.baselines.seq_transition import SeqTransition
        m = SeqTransition().fit(split)
        print(json.dumps({"name": "seq_transition (central, all training)",
                          **summarise(target_rank(m.scores(r, split.histories[r]), int(split.targets[r]), split.histories[r])
                                      for r in range(split.n_users))}), flush=True)
        for name, extra in {"base": {}, "twohop0.1": {"w_twohop": 0.1}, "twohop0.3": {"w_twohop": 0.3},
                            "reverse0.2": {"w_reverse": 0.2}, "reverse0.5": {"w_reverse": 0.5},
                            "viewers-pop0.02": {"pop_viewers": 3}, "viewers-pop0.05": {"pop_viewers": 3, "w_popularity": 0.05},
                            "reverse0.1": {"w_reverse": 0.1}, "reverse0.2+twohop0.3": {"w_reverse": 0.2, "w_twohop": 0.3},
                            }.items():
            run(name, 3, BASE | extra)
    elif a.grid == "tune":
        for cfg_name, cfg in {
            "base": BASE,
            "pop0.05": BASE | {"w_popularity": 0.05},
            "pop0.1": BASE | {"w_popularity": 0.1},
            "content0.1": BASE | {"w_content": 0.1},
            "content0.2": BASE | {"w_content": 0.2},
            "sn0.3": BASE | {"source_norm": 0.3},
            "sn0.7": BASE | {"source_norm": 0.7},
            "supc2": BASE | {"support_c": 2.0},
            "rd0.7": BASE | {"recency_decay": 0.7},
            "nr20": BASE | {"n_recent": 20},
        }.items():
            run(cfg_name, 3, cfg)
    print(f"# {time.time() - t0:.0f}s, mean item edges per TV {bytes_item:.0f}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
