"""The federated EASE lead in the forms the product can ship (issue 13): offline, validation split only.

bench/rank_families.py --fed2's lead ("window 50 low ridge": SR + EASE over co-watched pairs within W, k_min 3,
the item's distinct viewers on the diagonal, every positive weight, the TV scoring its 10 recent items x0.7^i)
against what the constellation's `item_graph.refine` and the pull would actually compute and ship:

- diag: `view` the item's distinct viewers (the lead: not something the constellation can count, since a pair's
  members are keyed per pair), `deg` the item's summed pair supports (what `refine` puts there), `max` its
  largest pair support;
- top: neighbours kept per item (0: every positive weight);
- quant: 0 the raw EASE weights (the lead); 1 each source row scaled to its best and rounded to the wire's 1/16
  grid (what `refine` ships today); 2 one linear scale for the whole release; 3 a log grid, 16 steps of x sqrt 2
  below the release's largest weight.

Same protocol as rank_families (its `build`, `Parts`, `tune`): SR is the eval's seq_transition, every row's ridge
and weight tuned on the inner split I and scored on V, paired against SR. One tie seed per process; pool seeds
with `bench/rank_families.py --combine` (the output has the same `rows` / `per_viewer` layout).

    OPENBLAS_NUM_THREADS=1 .venv/bin/python bench/fed_forms.py 0 'w50 deg:50:deg:0.05,0.2,1,5:0:0;...' > f0.json

Row spec: name:window:diag:ridges:top:quant (rows separated by ';').
"""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rank_families as rf  # noqa: E402

from omega.datasets.location import resolve_data_dir  # noqa: E402
from omega.datasets.movielens import load_movielens  # noqa: E402
from omega.sim.evaluation.baselines import BASELINES  # noqa: E402
from omega.sim.evaluation.evaluate import _subsample  # noqa: E402
from omega.sim.evaluation.metrics import ndcg_values, paired_bootstrap  # noqa: E402

SR = "sr (seq_transition, eval's grid)"
K_MIN = 3


def weights(p: rf.Parts, window: int, diag: str, lam: float) -> np.ndarray:
    """EASE weights over the co-watched pairs within `window` (>= K_MIN distinct viewers) with `diag` on the
    diagonal (see the module docstring)."""
    def make() -> np.ndarray:
        G = p.cowatch(window).copy()
        G[G < K_MIN] = 0.0
        if diag in ("deg", "max"):
            np.fill_diagonal(G, 0.0)
            np.fill_diagonal(G, G.sum(axis=1) if diag == "deg" else G.max(axis=1))
        return rf.ease_solve(G, lam)

    return p.get(("B2", window, diag, lam), make)


def part(p: rf.Parts, window: int, diag: str, lam: float, top: int, quant: int) -> np.ndarray:
    """The EASE part as a TV would score it: positive weights, `top` per item, `quant`'s wire form, its 10
    recent items x0.7^i; scaled to max 1 per viewer."""
    def make() -> np.ndarray:
        items = np.argsort(-p.pop, kind="stable")[: rf.EASE_ITEMS]
        P = np.clip(weights(p, window, diag, lam), 0.0, None)
        if top:
            cut = np.partition(P, -top, axis=1)[:, -top][:, None]
            P = np.where(P >= cut, P, 0.0)
        if quant == 2:  # one scale for the whole release: its largest weight
            P = np.where(P > 0, np.clip(np.rint(16 * P / P.max()), 1, 16) / 16, 0.0)
        elif quant == 3:  # a log grid: 16 steps of x sqrt(2) below the release's largest weight (256x range)
            steps = np.clip(np.rint(16 + 2 * np.log2(np.where(P > 0, P, 1e-300) / P.max())), 1, 16)
            P = np.where(P > 0, 2.0 ** ((steps - 16) / 2), 0.0)
        elif quant == 1:  # each source row scaled to its best, on the 1/16 grid (refine's _top_rows)
            best = P.max(axis=1, keepdims=True)
            scaled = np.divide(P, best, out=np.zeros_like(P), where=best > 0)
            P = np.where(P > 0, np.clip(np.rint(16 * scaled), 1, 16) / 16, 0.0)
        U = rf.recency_matrix(p.s, 10, 0.7)[:, items].toarray()
        out = np.zeros((p.s.n_users, p.s.n_items))
        out[:, items] = U @ P
        return rf.row_max_scaled(out)

    return p.get(("E2", window, diag, lam, top, quant), make)


def main() -> None:
    seed, specs = int(sys.argv[1]), sys.argv[2].split(";")
    started = time.perf_counter()
    data = load_movielens(resolve_data_dir(None, "ml-latest-small"), max_tags=0)
    user, item, _, ts = _subsample(data, None, seed, validation=True)
    dv, di = rf.build(user, item, ts, data.item_ids)
    pv, pi = rf.Parts(dv), rf.Parts(di)
    factory, sr_grid = BASELINES["seq_transition"]
    sr_prm, _, _ = rf.tune(lambda p, prm: rf.sr_base(p, prm), sr_grid, pi)
    model = factory(**sr_prm).fit(dv.split)
    sr_ranks = rf.ranks_of(np.stack([model.scores(r, h) for r, h in enumerate(dv.split.histories)]), dv.split)
    base = rf.ndcg(sr_ranks)
    rows: dict[str, Any] = {SR: {"params": sr_prm, "ndcg@10": base}}
    per_viewer: dict[str, Any] = {"users": dv.split.users.tolist(), SR: ndcg_values(sr_ranks, 10).tolist()}
    log = lambda *a: print(*a, file=sys.stderr, flush=True)  # noqa: E731
    log(f"sr {sr_prm} V {base:.4f} ({time.perf_counter() - started:.0f}s)")
    for spec in specs:
        name, window_s, diag, lams, top_s, quant_s = spec.split(":")
        window, top, quant = int(window_s), int(top_s), int(quant_s)

        def fam(p: rf.Parts, prm: dict[str, Any]) -> np.ndarray:
            extra = part(p, window, diag, prm["lam"], top, quant)
            return p.sr(**sr_prm) + rf.POP * p.popularity() + prm["w"] * extra

        prm, v_i, tried = rf.tune(fam, {"lam": tuple(float(x) for x in lams.split(",")), "w": rf.FED2_W}, pi)
        r = rf.ranks_of(fam(pv, prm), dv.split)
        b = paired_bootstrap(ndcg_values(r, 10), ndcg_values(sr_ranks, 10), seed=seed)
        v = rf.ndcg(r)
        rows[name] = {"params": prm, "ndcg@10_I": v_i, "ndcg@10": v, "ratio_vs_sr": v / base,
                      "diff_vs_sr": b["diff"], "ci95": [b["ci95_low"], b["ci95_high"]], "grid_I": tried}  # fmt: skip
        per_viewer[name] = ndcg_values(r, 10).tolist()
        log(f"{name} {prm}: I {v_i:.4f} V {v:.4f} x{v / base:.3f} [{b['ci95_low']:+.4f},{b['ci95_high']:+.4f}]"
            f" ({time.perf_counter() - started:.0f}s)")
        for parts in (pi, pv):  # one window's EASE weights kept at a time (4,000² floats each)
            for k in [k for k in parts.cache if k[0] == "E2" or (k[0] == "B2" and k[1] != window)]:
                parts.cache.pop(k)
    out = {"seed": seed, "rows": rows, "per_viewer": per_viewer, "wall_s": time.perf_counter() - started,
           "load_avg": os.getloadavg()}  # fmt: skip
    json.dump(out, sys.stdout, default=float)
    print()


if __name__ == "__main__":
    main()
