"""What the fleet's privacy bounds cost in NDCG@10, on the validation split (issue 13).

One fleet replay per variant of the simulated fleet (same viewers, same seed, same shipped brain),
each scored with `Brain.recommend` exactly as `omega eval movielens --validation` scores it; every
variant is paired per viewer against "span" (the simulation's default: a contribution window that
spans the replayed viewings):

- "window 3650": the fixed 10-year window the fleet used before (the replay's first 12 years expire);
- "caps off": no per-device contribution caps on the TV (a push at every sync instead of one sealed
  contribution per day, and up to 100 pushes per sync instead of 3);
- wire weights are not a variant: the cloud reads a pushed weight only as "> 0" (a published edge's
  weight is its distinct support), so levels on the wire cannot change what is published.

    .venv/bin/python bench/quality_costs.py --users 200 > bench/results/quality-costs-validation.json

Only the validation split is read.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from omega.brain.embedder import Embedder
from omega.brain.sync import SyncConfig
from omega.datasets.location import resolve_data_dir
from omega.datasets.movielens import load_movielens
from omega.sim.evaluation.evaluate import _run
from omega.sim.evaluation.metrics import paired_bootstrap
from omega.sim.evaluation.seeds import PER_VIEWER
from omega.sim.fleet.simulator import FleetConfig

VARIANTS: dict[str, FleetConfig] = {
    "span": FleetConfig(),
    "window 3650": FleetConfig(window_epochs=3650),
    "caps off": FleetConfig(sync=SyncConfig(contribution_period_s=0.0, max_batches_per_sync=100)),
}
WIRE_NOTE = ("not a variant: a published edge's weight is its distinct support (crdt.consolidate_edge), so the "
             "levels a TV pushed before 45a485b could not change what is published or ranked")
KEEP = ("window_epochs", "published_edges", "published_pairs", "pushes", "upload_bytes_per_tv", "methods",
        "consolidated_patterns_per_tv", "refined_neighbours", "timings_s")  # fmt: skip


async def one(data: Any, name: str, users: int, seed: int, embedder: Embedder) -> dict[str, Any]:
    def stage(what: str, done: int, total: int) -> None:
        if done == total or done % 500 == 0:
            print(f"[{name}] {what} {done}/{total}", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="omega-costs-") as tmp:
        return await _run(
            data, users=users, k_min=3, cold_n=3, cold_users=0, seed=seed, workdir=Path(tmp), stage=stage,
            embedder=embedder, tables=False, baselines=False, inspect=None, validation=False,
            fleet_config=VARIANTS[name],
        )  # fmt: skip


def combine(runs: dict[str, dict[str, Any]], seed: int) -> dict[str, Any]:
    """Each variant's figures, paired per viewer against "span"."""
    out: dict[str, Any] = {"split": "validation", "variants": {}, "wire_weights": WIRE_NOTE}
    base = runs.get("span")
    for name, run in runs.items():
        row = {k: run[k] for k in KEEP if k in run}
        if base is not None and name != "span":
            if run["per_viewer"]["users"] != base["per_viewer"]["users"]:
                raise SystemExit(f"{name}: not the same viewers as span")
            for method in ("edge_federated", "edge_only"):
                a, b = run["per_viewer"]["ndcg"][method], base["per_viewer"]["ndcg"][method]
                row[f"{method}_vs_span"] = paired_bootstrap(np.asarray(a), np.asarray(b), seed=seed)
        out["variants"][name] = row
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=None)
    ap.add_argument("--users", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", nargs="*", default=list(VARIANTS), help="variants to run (each a fleet)")
    ap.add_argument("--save", default=None, help="write each run (with per-viewer NDCG) to SAVE-<variant>.json")
    ap.add_argument("--combine", nargs="*", default=None, help="combine saved runs instead of running")
    args = ap.parse_args(argv)
    runs: dict[str, dict[str, Any]] = {}
    if args.combine:
        for path in args.combine:
            run = json.loads(Path(path).read_text())
            runs[run["variant"]] = run
    else:
        data = load_movielens(resolve_data_dir(args.data), max_tags=0)
        # The validation split (each viewer's test target left out entirely, as omega eval --validation),
        # without its tuning grid: these variants change what the fleet learns, not how a TV ranks.
        from omega.sim.evaluation import evaluate

        real = evaluate._subsample
        evaluate._subsample = lambda d, u, s, validation=False: real(d, u, s, validation=True)  # type: ignore
        embedder = Embedder()
        for name in args.only:
            run = asyncio.run(one(data, name, args.users, args.seed, embedder))
            pv = run.pop(PER_VIEWER)
            run |= {"variant": name, "per_viewer": {"users": pv["users"],
                                                    "ndcg": {k: v.tolist() for k, v in pv["ndcg"].items()}}}
            runs[name] = run
            if args.save:
                Path(f"{args.save}-{name.replace(' ', '_')}.json").write_text(json.dumps(run, default=float))
    json.dump(combine(runs, args.seed) | {"users": args.users, "seed": args.seed}, sys.stdout, indent=1, default=float)
    print()


if __name__ == "__main__":
    main()
