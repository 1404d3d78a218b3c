"""What the held-back tie-break costs honest ranking (issue 14): one fleet, every viewer ranked twice.

The TV's ranker gives the published edges and pairs that the support floor holds back a last tie-break
weight (`recommender._HELD_BACK_WEIGHT`, 1e-9): they order items no other part separates. This replays
the MovieLens fleet exactly as `omega eval movielens` does (same sampling, split, codebook, FleetConfig;
no cold-start TVs, no tables), then ranks each evaluated viewer's top 10 with the shipped `Brain.rank`
at the target's time with the weight as shipped and at 0 (same process, same stores): paired NDCG@10
difference with a bootstrap interval, and how many viewers' top 10 changed at all.

    .venv/bin/python bench/held_back.py --users 200 --validation > bench/results/held-back-validation.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

from omega.brain import recommender
from omega.brain.config import BrainConfig
from omega.brain.embedder import Embedder
from omega.brain.brain import context_at
from omega.constellation.codebook import build_codebook
from omega.datasets.movielens import load_movielens
from omega.sim.evaluation.evaluate import _subsample, _train_events  # the eval's own sampling and events
from omega.sim.evaluation.metrics import ndcg_values
from omega.sim.evaluation.scoring import K, versus
from omega.sim.evaluation.split import leave_last_out_arrays
from omega.sim.fleet.catalog_cache import build_catalog
from omega.sim.fleet.simulator import Fleet, FleetConfig


async def run(data_dir: Path, users: int | None, validation: bool, seed: int) -> dict:
    cpu0, wall0 = time.process_time(), time.perf_counter()
    data = load_movielens(data_dir)
    embedder = Embedder(threads=1)
    user, item, stars, ts = _subsample(data, users, seed, validation=validation)
    split = leave_last_out_arrays(user, item, data.item_ids)
    rows_by_user = {int(u): r for r, u in enumerate(split.users.tolist())}
    catalog, matrix = build_catalog(data.items, embedder, BrainConfig(), lambda d, t: None)
    codebook = build_codebook(matrix, k=min(256, len(data.items)), seed=seed, iters=10)
    events, when = _train_events(user, item, stars, ts)
    events = [ev for ev in events if ev.user in rows_by_user]
    shipped_w = recommender._HELD_BACK_WEIGHT  # noqa: SLF001 — the A/B switch of this measurement
    ranks: dict[str, dict[int, int]] = {"shipped": {}, "off": {}}
    changed = held_back_viewers = 0
    with tempfile.TemporaryDirectory(prefix="omega-held-back-") as tmp:
        fleet = await Fleet.open(Path(tmp), catalog, codebook, embedder=embedder, config=FleetConfig(seed=seed))
        try:
            await fleet.replay(events, lambda d, t: print(f"replay {d}/{t}", file=sys.stderr) if d % 5000 == 0 else 0)
            await fleet.catch_up()
            for u, row in rows_by_user.items():
                brain = fleet.tvs[u].brain
                target = int(split.item_ids[split.targets[row]])
                lists = {}
                for name, weight in (("shipped", shipped_w), ("off", 0.0)):
                    recommender._HELD_BACK_WEIGHT = weight  # noqa: SLF001
                    ids = [r.content_id for r in brain.rank(context_at(when[u]), K).recommendations]
                    ranks[name][row] = ids.index(target) if target in ids else K
                    lists[name] = ids
                recommender._HELD_BACK_WEIGHT = shipped_w  # noqa: SLF001
                changed += lists["shipped"] != lists["off"]
                recent = brain._hist().recent(brain.config.recent_items)  # noqa: SLF001
                held_back_viewers += bool(brain._held_back(recent)) if recent else 0  # noqa: SLF001
        finally:
            recommender._HELD_BACK_WEIGHT = shipped_w  # noqa: SLF001
            await fleet.aclose()
    mean = lambda rs: float(sum(ndcg_values(rs.values())) / len(rs)) if rs else 0.0  # noqa: E731
    return {
        "users": len(rows_by_user), "validation": validation, "seed": seed, "held_back_weight": shipped_w,
        "viewers_with_held_back_edges": held_back_viewers, "viewers_whose_top10_changed": changed,
        "ndcg@10": {"shipped": mean(ranks["shipped"]), "held_back_off": mean(ranks["off"])},
        "shipped_vs_held_back_off": versus(ranks["shipped"], ranks["off"], "held_back_off", seed),
        "cpu_s": round(time.process_time() - cpu0, 1), "wall_s": round(time.perf_counter() - wall0, 1),
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("/work/shared/data/ml-latest-small"))
    ap.add_argument("--users", type=int, default=None)
    ap.add_argument("--validation", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    print(json.dumps(asyncio.run(run(args.data, args.users, args.validation, args.seed)), indent=1))


if __name__ == "__main__":
    main()
