"""What refined neighbours learned from a wider co-watch window would give the shipped ranker (issue 13).

The federated EASE lead (bench/rank_families.py --fed2, "window 50 low ridge") pairs every viewing with the
viewer's last W items; today a TV uploads only its ordered edges of window `transition_window` (5), from which
the constellation derives its unordered pairs. This runs one `omega eval movielens --validation` fleet (the
eval's own replay, shipped config, tables off, the tuning grid reduced to the shipped row) and, over that synced
fleet, asks what the refined release would add if TVs uploaded co-watched pairs of window W:

- the upload is simulated here, by the product's rule (`Brain.on_user_action`: a good viewing, success and
  reward > 0, paired with the last W distinct items before it), each pair counted once per viewer, kept with
  >= k_min distinct viewers (the constellation's k-anonymity count);
- everything after the upload is the product: `item_graph.refine` (its support floor with the published edges'
  volumes, the wire's 1/16 grid per source), and every evaluated TV ranking with `Brain.rank` (the shipped
  config plus `w_refined`), its pulled edges and pairs as pulled.

Rows are paired per viewer against the shipped row of the same fleet and against seq_transition (tuned on the
validation split's own inner split, as the eval does). "fleet pairs" is today's input (the pairs the fleet
published), for reference. Validation split only.

    .venv/bin/python bench/refine_window.py --seed 0 > bench/results/refine-window-validation-seed0.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from omega.brain import learning
from omega.brain.config import BrainConfig
from omega.constellation import item_graph
from omega.constellation.item_graph import Neighbour, refine
from omega.datasets.location import resolve_data_dir
from omega.datasets.movielens import load_movielens
from omega.sim.evaluation import evaluate as ev
from omega.sim.evaluation.metrics import ndcg_values, paired_bootstrap
from omega.sim.evaluation.scoring import score_tvs
from omega.sim.evaluation.split import leave_last_out_arrays

K_MIN = 3
#: neighbours kept per item at most ("dense": every positive EASE weight of a row is rarely more)
DENSE = 1000


def _top_rows_log(B: np.ndarray, items: np.ndarray, m: int) -> list[Neighbour]:
    """`item_graph._top_rows` with one scale for the whole release on a log grid: steps 1..16, weight
    2^((steps - 16) / 2), 16 = the release's largest weight (so weights compare across sources; `--scale log`)."""
    out: list[Neighbour] = []
    m = min(m, B.shape[1] - 1)
    top = np.argpartition(-B, m - 1, axis=1)[:, :m]
    vals = np.take_along_axis(B, top, axis=1)
    best = float(vals.max()) if vals.size else 0.0
    if best <= 0:
        return out
    for row in range(B.shape[0]):
        ok = vals[row] > 0
        cols, v = top[row][ok], vals[row][ok]
        steps = np.clip(np.rint(16 + 2 * np.log2(v / best)), 1, 16).astype(int)
        out += [Neighbour(int(items[row]), int(items[c]), int(k)) for c, k in zip(cols.tolist(), steps.tolist())]
    return out


def cowatch_pairs(events: Iterable[Any], window: int, k_min: int) -> list[tuple[int, int, float]]:
    """(a, b, distinct viewers) of the pairs TVs would upload with a co-watch window of `window`: each good
    viewing (the product's rule for transitions) with the last `window` distinct items before it."""
    history: dict[int, list[int]] = {}
    seen: dict[int, set[tuple[int, int]]] = {}
    for e in events:
        order = history.setdefault(e.user, [])
        viewing = learning.episode_from_rating(e.stars)
        reward = learning.reward(viewing.watch_fraction, viewing.engagement)
        if learning.is_success(viewing.watch_fraction) and reward > 0:
            mine = seen.setdefault(e.user, set())
            for src in [c for c in order[::-1][: window + 1] if c != e.content_id][:window]:
                mine.add((min(src, e.content_id), max(src, e.content_id)))
        if e.content_id in order:
            order.remove(e.content_id)
        order.append(e.content_id)
        if len(order) > window + 1:
            del order[0]
    counts: dict[tuple[int, int], int] = {}
    for mine in seen.values():
        for key in mine:
            counts[key] = counts.get(key, 0) + 1
    return [(a, b, float(c)) for (a, b), c in counts.items() if c >= k_min]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--users", type=int, default=None)
    parser.add_argument("--windows", default="25,50")
    parser.add_argument("--lambdas", default="0.05,0.2,1.0")
    parser.add_argument("--weights", default="1,2,3", help="w_refined values ranked (raw pairs kept at their weight)")
    parser.add_argument("--scale", choices=("row", "log"), default="row",
                        help="the release's wire weights: row = refine's (each source's best = 1, 1/16 grid), "
                             "log = one scale for the release on a x sqrt(2) grid (`_top_rows_log`)")
    parser.add_argument("--tops", default="20,100", help="neighbours per item besides dense, for the best row")
    args = parser.parse_args()
    started = time.perf_counter()
    data_dir = resolve_data_dir(args.data, "ml-latest-small")
    data = load_movielens(data_dir, max_tags=0)
    user, item, stars, ts = ev._subsample(data, args.users, args.seed, validation=True)
    split = leave_last_out_arrays(user, item, data.item_ids)
    rows_by_user = {int(u): r for r, u in enumerate(split.users.tolist())}
    events, when = ev._train_events(user, item, stars, ts)
    events = [e for e in events if e.user in rows_by_user]
    config = BrainConfig()
    if args.scale == "log":
        item_graph._top_rows = _top_rows_log  # refine's own code otherwise
    decode = (lambda steps: 2.0 ** ((steps - 16) / 2)) if args.scale == "log" else (lambda steps: steps / 16)
    ev.tuning_grid = lambda cfg: {"shipped": cfg}  # the variants below are this tool's grid
    log = lambda *a: print(*a, file=sys.stderr, flush=True)  # noqa: E731
    rows: dict[str, Any] = {}
    ranks: dict[str, dict[int, int]] = {}

    def inspect(fleet: Any) -> dict[str, Any]:
        tv0 = next(iter(fleet.tvs.values()))
        edges = [(e.src, e.dst, float(e.count)) for e in tv0.brain.store.all_global_transitions()]
        fleet_pairs = [(p.src, p.dst, float(p.count)) for p in tv0.brain.store.all_global_pairs() if p.src < p.dst]
        shipped = score_tvs(fleet, split, rows_by_user, when)
        ranks["shipped"] = shipped.ranks
        rows["shipped"] = shipped.summary()
        sources = {"fleet pairs": fleet_pairs}
        for w in (int(x) for x in args.windows.split(",")):
            sources[f"window {w}"] = cowatch_pairs(events, w, K_MIN)
        info = {name: len(p) for name, p in sources.items()}
        log(f"pairs: {info} ({time.perf_counter() - started:.0f}s)")

        def table_of(found: Sequence[Any]) -> dict[int, list[tuple[int, float]]]:
            table: dict[int, list[tuple[int, float]]] = {}
            for n in found:
                table.setdefault(n.src, []).append((n.dst, decode(n.steps)))
            for row in table.values():
                row.sort(key=lambda t: (-t[1], t[0]))
            return table

        def rank_with(name: str, table: dict, top: int, w: float, extra: dict) -> None:
            def lookup(srcs: Sequence[int]) -> dict[int, list[tuple[int, float]]]:
                return {s: table[s][:top] for s in srcs if s in table}

            t = time.perf_counter()
            scored = score_tvs(fleet, split, rows_by_user, when, config=replace(config, w_refined=w), refined=lookup)
            ranks[name] = scored.ranks
            rows[name] = scored.summary() | extra
            log(f"{name}: {rows[name]['ndcg@10']:.4f} ({time.perf_counter() - t:.0f}s)")

        tables: dict[tuple[str, float], dict] = {}
        for src_name, pairs in sources.items():
            for lam in (float(x) for x in args.lambdas.split(",")):
                t = time.perf_counter()
                found = refine(pairs, edges, lam=lam, neighbours=DENSE)
                table = tables[(src_name, lam)] = table_of(found)
                extra = {"pairs_in": len(pairs), "neighbours": len(found), "lambda": lam, "w_refined": 2.0,
                         "top": DENSE, "refine_s": round(time.perf_counter() - t, 1)}  # fmt: skip
                rank_with(f"{src_name} λ {lam} dense w 2", table, DENSE, 2.0, extra)
        # the best (source, λ) of the first pass: its weight and neighbour cap
        best = max((k for k in rows if k != "shipped"), key=lambda k: rows[k]["ndcg@10"])
        src_name, lam = best.split(" λ ")[0], float(best.split(" λ ")[1].split()[0])
        table = tables[(src_name, lam)]
        for w in (float(x) for x in args.weights.split(",")):
            if w != 2.0:
                rank_with(f"{src_name} λ {lam} dense w {w:g}", table, DENSE, w,
                          {"lambda": lam, "w_refined": w, "top": DENSE})
        for top in (int(x) for x in args.tops.split(",")):
            rank_with(f"{src_name} λ {lam} top {top} w 2", table, top, 2.0,
                      {"lambda": lam, "w_refined": 2.0, "top": top})
        return {"pairs_in": info, "best_first_pass": best}

    result = ev.evaluate_movielens(data_dir, seed=args.seed, users=args.users, tables=False, validation=True,
                                   inspect=inspect)  # fmt: skip
    sr_params = result["methods"]["seq_transition"]["params"]
    rows_idx = sorted(ranks["shipped"])
    sr = ev._baseline_ranks(split, "seq_transition", sr_params, rows_idx)
    base_sr = ndcg_values(sr[r] for r in rows_idx)
    base_shipped = ndcg_values(ranks["shipped"][r] for r in rows_idx)
    for name, rk in ranks.items():
        mine = ndcg_values(rk[r] for r in rows_idx)
        a = paired_bootstrap(mine, base_shipped, seed=args.seed)
        b = paired_bootstrap(mine, base_sr, seed=args.seed)
        rows[name] |= {"vs_shipped": [a["diff"], a["ci95_low"], a["ci95_high"]],
                       "vs_seq_transition": [b["diff"], b["ci95_low"], b["ci95_high"]],
                       "ratio_vs_seq_transition": float(mine.mean() / base_sr.mean())}  # fmt: skip
    out = {
        "what": __doc__.splitlines()[0], "split": "validation", "seed": args.seed, "viewers": len(rows_idx),
        "scale": args.scale, "command": " ".join(sys.argv),
        "seq_transition": {"ndcg@10": float(base_sr.mean()), "params": sr_params},
        "eval_edge_federated": result["methods"]["edge_federated"]["ndcg@10"],
        "pairs_in": result.get("pairs_in"), "best_first_pass": result.get("best_first_pass"),
        "rows": rows,
        "per_viewer": {"rows": rows_idx, "seq_transition": base_sr.tolist(),
                       **{n: ndcg_values(rk[r] for r in rows_idx).tolist() for n, rk in ranks.items()}},
        "wall_s": round(time.perf_counter() - started, 1), "load_avg": os.getloadavg(),
    }  # fmt: skip
    json.dump(out, sys.stdout, indent=1, default=float)
    print()


if __name__ == "__main__":
    main()
