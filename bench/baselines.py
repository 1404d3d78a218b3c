"""Tune (on validation) and evaluate the centralised baselines on a MovieLens folder.

Usage: .venv/bin/python bench/baselines.py [DATA_DIR] [--methods mostpop,als,...] [--no-tune]
Prints one JSON object on stdout in the `omega eval movielens` shape (methods part);
progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from omega.datasets.movielens import load_movielens
from omega.sim.evaluation.baselines import BASELINES, evaluate, tune_and_evaluate
from omega.sim.evaluation.split import leave_last_out

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-latest-small"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="?", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--methods", default=",".join(BASELINES))
    parser.add_argument("--no-tune", action="store_true", help="use each model's default parameters")
    args = parser.parse_args()

    started = time.perf_counter()
    data = load_movielens(args.data)
    split = leave_last_out(data)
    load_s = time.perf_counter() - started
    print(f"loaded {args.data} in {load_s:.2f}s: {split.n_users} users, {split.n_items} items", file=sys.stderr)

    methods = {}
    for name in args.methods.split(","):
        started = time.perf_counter()
        if args.no_tune:
            factory, _ = BASELINES[name]
            model = factory().fit(split)
            fit_s = time.perf_counter() - started
            result = dict(evaluate(model, split), fit_s=fit_s)
        else:
            result = tune_and_evaluate(name, split)
        result["wall_s"] = time.perf_counter() - started
        methods[name] = result
        print(f"{name}: hr@10 {result['hr@10']:.4f} ndcg@10 {result['ndcg@10']:.4f} "
              f"({result['wall_s']:.1f}s)", file=sys.stderr)

    out = {"dataset": data.path.name, "users": split.n_users, "items": split.n_items,
           "load_s": load_s, "methods": methods}
    json.dump(out, sys.stdout, indent=2, default=float)
    print()


if __name__ == "__main__":
    main()
