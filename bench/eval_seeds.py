"""`omega eval movielens --seeds N`, one process per seed: the same runs, combined the same way.

On a shared 2-core machine the fleets of a 3-seed run take ~3x one run when they run one after another
in one process; here each seed is its own process (start them side by side), saves its run with the
per-viewer NDCG@10, and `--combine` builds the JSON `--seeds N` prints (`combine_seeds`: the first
seed's run plus the `seeds` block). Same defaults as the CLI: every viewer, k_min 3, 100 cold TVs, tables.

    .venv/bin/python bench/eval_seeds.py --seed 0 --save /tmp/s0.pkl &   # and --seed 1, --seed 2
    .venv/bin/python bench/eval_seeds.py --combine /tmp/s0.pkl /tmp/s1.pkl /tmp/s2.pkl > out.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import pickle
import sys
import tempfile
from pathlib import Path

from omega.brain.embedder import Embedder
from omega.constellation.privacy import DEFAULT_K_MIN
from omega.datasets.location import resolve_data_dir
from omega.datasets.movielens import load_movielens
from omega.sim.evaluation.evaluate import BASELINE_NAMES, _run
from omega.sim.evaluation.seeds import combine_seeds


def run_one(data_dir: str | None, seed: int, users: int | None, tables: bool = True) -> dict:
    data = load_movielens(resolve_data_dir(data_dir), max_tags=0)  # tags are dated after the split
    shm = Path("/dev/shm")

    def stage(what: str, done: int, total: int) -> None:
        if done == total or done % 2000 == 0:
            print(f"[seed {seed}] {what} {done}/{total}", file=sys.stderr, flush=True)

    with (
        tempfile.TemporaryDirectory(prefix="omega-eval-") as tmp,
        tempfile.TemporaryDirectory(prefix="omega-eval-store-", dir=shm if shm.is_dir() else tmp) as store_tmp,
    ):
        return asyncio.run(_run(
            data, users=users, k_min=DEFAULT_K_MIN, cold_n=3, cold_users=100, seed=seed, workdir=Path(tmp),
            stage=stage, embedder=Embedder(), tables=tables, baselines=True, inspect=None,
            store_dir=Path(store_tmp),
        ))  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--users", type=int, default=None)
    ap.add_argument("--save", default=None, help="pickle this seed's run here")
    ap.add_argument("--no-tables", action="store_true", help="skip the privacy and ablation tables (later seeds)")
    ap.add_argument("--combine", nargs="*", default=None, help="saved runs, first seed first")
    args = ap.parse_args(argv)
    if args.combine:
        runs = [pickle.loads(Path(p).read_bytes()) for p in args.combine]
        json.dump(combine_seeds(runs, BASELINE_NAMES), sys.stdout, default=float)
        print()
        return
    run = run_one(args.data, args.seed, args.users, tables=not args.no_tables)
    Path(args.save or f"eval-seed{args.seed}.pkl").write_bytes(pickle.dumps(run))


if __name__ == "__main__":
    main()
