"""What the support floor on consolidated patterns costs honest ranking (issue 14): one fleet, scored twice.

Replays the MovieLens fleet exactly as `omega eval movielens` does (same sampling, split, codebook,
FleetConfig; no cold-start TVs, no tables), then scores every evaluated viewer's TV with the shipped
`Brain.rank` twice: with the shipped floor (consolidated patterns need support >= c*sqrt(S), c =
protocol.SUPPORT_FLOOR_C) and with it off (c = 0; the edges' floor is off then too, so the second
run is "no floor at all" and the first "shipped"); also with only the pattern floor off, by
clearing the patterns it dropped. Paired NDCG@10 difference per viewer with a bootstrap interval.

    .venv/bin/python bench/pattern_floor.py --users 200 --validation > bench/results/pattern-floor-validation.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from omega.brain.recommender import ConsolidatedPrior
from omega.protocol import SUPPORT_FLOOR_C
from omega.sim.evaluation.scoring import score_tvs, versus
from omega.sim.fleet.simulator import Fleet, FleetConfig

from eval_fleet import add_eval_fleet_args, eval_fleet_inputs  # bench/, beside this script


async def run(data_dir: Path, users: int | None, validation: bool, seed: int) -> dict:
    cpu0, wall0 = time.process_time(), time.perf_counter()
    fi = eval_fleet_inputs(data_dir, users, validation, seed)
    embedder, split, rows_by_user, catalog, codebook = fi.embedder, fi.split, fi.rows_by_user, fi.catalog, fi.codebook
    events, when = fi.events, fi.when
    with tempfile.TemporaryDirectory(prefix="omega-floor-") as tmp:
        fleet = await Fleet.open(Path(tmp), catalog, codebook, embedder=embedder, config=FleetConfig(seed=seed))
        try:
            await fleet.replay(events, lambda d, t: print(f"replay {d}/{t}", file=sys.stderr) if d % 5000 == 0 else 0)
            await fleet.catch_up()
            tvs = list(fleet.tvs.values())
            held = [tv.brain.store.consolidated() for tv in tvs]
            kept = [len(ConsolidatedPrior.of(h, SUPPORT_FLOOR_C)) for h in held]
            supports = sorted(p.support for p in held[0]) if held else []
            shipped = score_tvs(fleet, split, rows_by_user, when)

            def set_floor(c: float) -> None:
                for tv in tvs:
                    tv.brain.store.support_floor_c = c
                    tv.brain._prior = None  # noqa: SLF001 — rebuilt with the new floor on the next rank

            # Only the pattern floor off: the edges keep theirs (the prior is built at c = 0, the edges read at c).
            for tv in tvs:
                tv.brain._prior = ConsolidatedPrior.of(tv.brain.store.consolidated(), 0.0)  # noqa: SLF001
            no_pattern_floor = score_tvs(fleet, split, rows_by_user, when)
            set_floor(0.0)
            no_floor = score_tvs(fleet, split, rows_by_user, when)
            set_floor(SUPPORT_FLOOR_C)
        finally:
            await fleet.aclose()
    return {
        "users": len(rows_by_user), "validation": validation, "seed": seed, "floor_c": SUPPORT_FLOOR_C,
        "consolidated_held_per_tv": float(np.mean([len(h) for h in held])) if held else 0.0,
        "consolidated_kept_per_tv": float(np.mean(kept)) if kept else 0.0,
        "floor_on_first_tv": SUPPORT_FLOOR_C * math.sqrt(sum(supports)) if supports else 0.0,
        "supports_first_tv": supports,
        "ndcg@10": {"shipped": shipped.summary()["ndcg@10"], "no_pattern_floor": no_pattern_floor.summary()["ndcg@10"],
                    "no_floor": no_floor.summary()["ndcg@10"]},
        "shipped_vs_no_pattern_floor": versus(shipped.ranks, no_pattern_floor.ranks, "no_pattern_floor", seed),
        "shipped_vs_no_floor": versus(shipped.ranks, no_floor.ranks, "no_floor", seed),
        "cpu_s": round(time.process_time() - cpu0, 1), "wall_s": round(time.perf_counter() - wall0, 1),
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_eval_fleet_args(ap)
    args = ap.parse_args()
    print(json.dumps(asyncio.run(run(args.data, args.users, args.validation, args.seed)), indent=1))


if __name__ == "__main__":
    main()
