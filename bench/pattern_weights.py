"""What honest TVs push as embedding patterns, and the shipped fleet's NDCG@10, on the validation split (issue 14).

One fleet replay of the validation split (same viewers, seed and shipped brain as `omega eval movielens
--validation --users N`, without its tuning grid), with `Aggregator.apply` watched: every pattern a TV
pushed is recorded with its quality weight before the server's cap (success_rate × uses) and its uses.
The distribution is what the per-contribution cap `AggregationPolicy.w_max` is chosen from (one
contribution may weigh no more than an honest TV's typical one). The run's per-viewer NDCG@10 is saved,
so two runs of different code can be paired per viewer (`--pair OLD.json NEW.json`).

    .venv/bin/python bench/pattern_weights.py --users 200 --save /tmp/new.json
    .venv/bin/python bench/pattern_weights.py --pair /tmp/old.json /tmp/new.json

Only the validation split is read.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from omega.brain.embedder import Embedder
from omega.constellation import aggregation
from omega.datasets.location import resolve_data_dir
from omega.datasets.movielens import load_movielens
from omega.sim.evaluation import evaluate
from omega.sim.evaluation.metrics import paired_bootstrap
from omega.sim.evaluation.seeds import PER_VIEWER
from omega.sim.fleet import simulator
from omega.constellation.crdt import ConsolidatedCell

QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9, 0.99)


def _summary(values: list[float]) -> dict[str, Any]:
    v = np.asarray(values, np.float64)
    if v.size == 0:
        return {"n": 0}
    return {"n": int(v.size), "mean": round(float(v.mean()), 3), "max": round(float(v.max()), 3),
            **{f"p{round(q * 100)}": round(float(np.quantile(v, q)), 3) for q in QUANTILES}}  # fmt: skip


def run(data_dir: str | None, users: int, seed: int, w_max: float | None = None) -> dict[str, Any]:
    pushed: list[tuple[bytes, float, int]] = []  # (device, success_rate × uses, uses) per pushed pattern
    real_apply = aggregation.Aggregator.apply

    async def watched(self, device, batch_id, patterns, transitions, now_ms):  # type: ignore[no-untyped-def]
        pushed.extend((bytes(device), float(p.success_rate) * int(p.uses), int(p.uses)) for p in patterns)
        return await real_apply(self, device, batch_id, patterns, transitions, now_ms)

    aggregation.Aggregator.apply = watched  # type: ignore[method-assign]
    cells: dict[str, dict[str, Any]] = {}  # the published patterns once the replay is over
    real_catch_up = simulator.Fleet.catch_up

    async def caught_up(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        for item in await self.app.state.omega.service.aggregator.published():
            if isinstance(item, ConsolidatedCell):
                cells[f"{item.task_type}/{item.cluster_id}"] = {
                    "support": item.support, "success_rate": float(item.success_rate),
                    "embedding": np.asarray(item.embedding, np.float64).round(5).tolist()}  # fmt: skip
        return await real_catch_up(self, *args, **kwargs)

    simulator.Fleet.catch_up = caught_up  # type: ignore[method-assign]
    if w_max is not None:  # a variant of the server's cap (default: the shipped ServerSettings.w_max)
        simulator.ServerSettings = functools.partial(simulator.ServerSettings, w_max=w_max)  # type: ignore
    real_subsample = evaluate._subsample
    evaluate._subsample = lambda d, u, s, validation=False: real_subsample(d, u, s, validation=True)  # type: ignore

    def stage(what: str, done: int, total: int) -> None:
        if done == total or done % 500 == 0:
            print(f"{what} {done}/{total}", file=sys.stderr, flush=True)

    data = load_movielens(resolve_data_dir(data_dir), max_tags=0)
    with tempfile.TemporaryDirectory(prefix="omega-weights-") as tmp:
        out = asyncio.run(evaluate._run(
            data, users=users, k_min=3, cold_n=3, cold_users=0, seed=seed, workdir=Path(tmp), stage=stage,
            embedder=Embedder(), tables=False, baselines=False, inspect=None, validation=False,
        ))  # fmt: skip
    per_device: dict[bytes, list[float]] = {}
    for device, weight, _ in pushed:
        per_device.setdefault(device, []).append(weight)
    pv = out.pop(PER_VIEWER)
    return {
        "split": "validation", "users": users, "seed": seed, "w_max": w_max,
        "pushed_pattern_weight": _summary([w for _, w, _ in pushed]),
        "pushed_pattern_uses": _summary([u for _, _, u in pushed]),
        # Each TV's last push of a pattern holds its cumulative stats: the weight it ends up with.
        "per_tv_median_weight": _summary([float(np.median(ws)) for ws in per_device.values()]),
        "tvs_pushing_patterns": len(per_device),
        "methods": out["methods"], "published_edges": out["published_edges"],
        "published_pairs": out["published_pairs"], "pushes": out["pushes"],
        "consolidated_patterns_per_tv": out["consolidated_patterns_per_tv"], "timings_s": out["timings_s"],
        "per_viewer": {"users": pv["users"], "ndcg": {k: v.tolist() for k, v in pv["ndcg"].items()}},
        "published_cells": cells,
    }  # fmt: skip


def pair(old: dict[str, Any], new: dict[str, Any], seed: int) -> dict[str, Any]:
    if old["per_viewer"]["users"] != new["per_viewer"]["users"]:
        raise SystemExit("the two runs did not score the same viewers")
    out: dict[str, Any] = {}
    for method in ("edge_federated", "edge_only"):
        a, b = (np.asarray(r["per_viewer"]["ndcg"][method]) for r in (new, old))
        out[method] = {"old": round(float(b.mean()), 4), "new": round(float(a.mean()), 4),
                       "new_minus_old": paired_bootstrap(a, b, seed=seed)}  # fmt: skip
    # How the published patterns moved: per cell published in both runs, the angle between the two
    # directions and the change of success rate.
    both = sorted(set(old.get("published_cells", {})) & set(new.get("published_cells", {})))
    if both:
        o, n = old["published_cells"], new["published_cells"]
        cos = [float(np.clip(np.dot(o[k]["embedding"], n[k]["embedding"]), -1, 1)) for k in both]
        deg = np.degrees(np.arccos(cos))
        rate = np.abs([n[k]["success_rate"] - o[k]["success_rate"] for k in both])
        out["published_cells"] = {
            "old": len(o), "new": len(n), "in_both": len(both),
            "direction_change_deg": {"median": round(float(np.median(deg)), 3), "max": round(float(deg.max()), 3)},
            "success_rate_change": {"median": round(float(np.median(rate)), 4), "max": round(float(rate.max()), 4)},
        }  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=None)
    ap.add_argument("--users", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--w-max", type=float, default=None, help="the server's w_max (default: shipped)")
    ap.add_argument("--save", default=None, help="write the run (with per-viewer NDCG@10) here")
    ap.add_argument("--pair", nargs=2, metavar=("OLD", "NEW"), default=None, help="pair two saved runs per viewer")
    args = ap.parse_args(argv)
    if args.pair:
        old, new = (json.loads(Path(p).read_text()) for p in args.pair)
        result: dict[str, Any] = pair(old, new, args.seed)
    else:
        result = run(args.data, args.users, args.seed, args.w_max)
        if args.save:
            Path(args.save).write_text(json.dumps(result, default=float))
        result = {k: v for k, v in result.items() if k not in ("per_viewer", "published_cells")}
    json.dump(result, sys.stdout, indent=1, default=float)
    print()


if __name__ == "__main__":
    main()
