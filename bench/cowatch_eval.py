"""The co-watch upload through the product (issue 13): `omega eval movielens` with the TVs' co-watch upload on.

The same call the CLI makes (`evaluate_movielens`, the shipped config plus `--config`'s fields), so every row of
its JSON is the product's: the TVs queue co-watched pairs on good viewings, push them in their 1 KB pushes, the
constellation counts distinct TVs per pair, refines its release from the pairs >= k_min TVs sent, and the TVs
pull the release (20 neighbours per item, `item_graph.DEFAULT_NEIGHBOURS`). Its `tuning_grid` row `w_refined=2.0`
is the candidate default, paired per viewer against the shipped row (w_refined 0) of the same fleet.

Besides, over the same synced fleet (`inspect`), the release the shard would compute with the best 100 neighbours
per item (`item_graph.refine` on the same published state, neighbours=100), ranked by every evaluated TV with
`Brain.rank` at w_refined 2 (the release read as the TV reads it, on the 1/16 grid), paired against the shipped
row; and the release's size at 20 and 100 (neighbours, bytes at `NEIGHBOUR_WIRE_BYTES`).

    .venv/bin/python bench/cowatch_eval.py --config cowatch50.json --validation --seed 0 > out.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from omega.brain.config import BrainConfig
from omega.constellation.crdt import ConsolidatedEdge
from omega.constellation.item_graph import NEIGHBOUR_WIRE_BYTES, refine
from omega.datasets.location import resolve_data_dir
from omega.datasets.movielens import load_movielens
from omega.protocol import WEIGHT_SCALE, Keyspace
from omega.sim.evaluation import evaluate as ev
from omega.sim.evaluation.metrics import ndcg_values, paired_bootstrap
from omega.sim.evaluation.scoring import published_edges, score_tvs
from omega.sim.evaluation.split import leave_last_out_arrays


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--users", type=int, default=None)
    parser.add_argument("--config", type=Path, default=None, help="the TVs' brain config (as `omega eval --config`)")
    parser.add_argument("--validation", action="store_true")
    parser.add_argument("--tables", action="store_true", help="the privacy and ablation tables too")
    parser.add_argument("--tops", default="100", help="neighbours per item scored besides the release's own")
    args = parser.parse_args()
    started = time.perf_counter()
    data_dir = resolve_data_dir(args.data, "ml-latest-small")
    config = BrainConfig.load(args.config) if args.config else BrainConfig()
    data = load_movielens(data_dir, max_tags=0)
    user, item, stars, ts = ev._subsample(data, args.users, args.seed, validation=args.validation)
    split = leave_last_out_arrays(user, item, data.item_ids)
    rows_by_user = {int(u): r for r, u in enumerate(split.users.tolist())}
    _, when = ev._train_events(user, item, stars, ts)
    log = lambda *a: print(*a, file=sys.stderr, flush=True)  # noqa: E731

    ranks: dict[str, dict[int, int]] = {}

    async def inspect(fleet: Any) -> dict[str, Any]:
        t = time.perf_counter()
        ranks["shipped"] = score_tvs(fleet, split, rows_by_user, when, config=config).ranks
        # the candidate default as the product runs it: the release each TV pulled, ranked at w_refined 2
        candidate = replace(config, w_refined=2.0)
        ranks["w_refined=2.0"] = score_tvs(fleet, split, rows_by_user, when, config=candidate).ranks
        published = await published_edges(fleet, fleet.config.k_min)
        edges = [(e.src, e.dst, e.support) for e in published if e.keyspace == Keyspace.ITEM]
        cowatch = await fleet.aggregator.published_cowatch()
        pairs = cowatch or [(e.src, e.dst, e.support) for e in published
                            if isinstance(e, ConsolidatedEdge) and e.keyspace == Keyspace.PAIR]  # fmt: skip
        release = fleet.service.refined.items
        out: dict[str, Any] = {
            "release_20": {"neighbours": len(release), "bytes": len(release) * NEIGHBOUR_WIRE_BYTES},
            "refine_input": "cowatch" if cowatch else "pairs", "refine_pairs": len(pairs),
        }  # fmt: skip
        for top in (int(x) for x in args.tops.split(",")):
            found = refine(pairs, edges, neighbours=top)
            table: dict[int, list[tuple[int, float]]] = {}
            for n in found:
                table.setdefault(n.src, []).append((n.dst, n.steps / WEIGHT_SCALE))
            for row in table.values():
                row.sort(key=lambda x: (-x[1], x[0]))
            scored = score_tvs(fleet, split, rows_by_user, when, config=replace(config, w_refined=2.0),
                               refined=lambda srcs: {s: table[s] for s in srcs if s in table})  # fmt: skip
            ranks[f"w_refined=2.0 top {top}"] = scored.ranks
            out[f"release_{top}"] = {"neighbours": len(found), "bytes": len(found) * NEIGHBOUR_WIRE_BYTES}
            log(f"top {top}: {scored.summary()['ndcg@10']:.4f} ({time.perf_counter() - t:.0f}s)")
        return {"cowatch_inspect": out}

    result = ev.evaluate_movielens(data_dir, seed=args.seed, users=args.users, tables=args.tables,
                                   validation=args.validation, config=config, inspect=inspect)  # fmt: skip
    # Per viewer, paired: each row against the shipped row of the same fleet and against the best baseline.
    rows = sorted(ranks["shipped"])
    best = result["best_centralised"]
    base = ev._baseline_ranks(split, best, result["methods"][best]["params"], rows)
    per_viewer = {name: ndcg_values(r[i] for i in rows) for name, r in ranks.items()}
    per_viewer[best] = ndcg_values(base[i] for i in rows)
    summary = {}
    for name, values in per_viewer.items():
        a = paired_bootstrap(values, per_viewer["shipped"], seed=args.seed)
        b = paired_bootstrap(values, per_viewer[best], seed=args.seed)
        summary[name] = {"ndcg@10": float(values.mean()), "vs_shipped": [a["diff"], a["ci95_low"], a["ci95_high"]],
                         f"vs_{best}": [b["diff"], b["ci95_low"], b["ci95_high"]],
                         f"ratio_vs_{best}": float(values.mean() / per_viewer[best].mean())}  # fmt: skip
    result["cowatch_inspect"]["rows"] = summary
    result["cowatch_inspect"]["per_viewer"] = {"users": [int(split.users[i]) for i in rows],
                                               **{n: v.tolist() for n, v in per_viewer.items()}}  # fmt: skip
    result["bench"] = {"command": " ".join(sys.argv), "wall_s": round(time.perf_counter() - started, 1),
                       "load_avg_end": os.getloadavg()}  # fmt: skip
    json.dump(result, sys.stdout, default=float)
    print()


if __name__ == "__main__":
    main()
