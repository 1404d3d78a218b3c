"""What ordering the ranking in tiers costs honest ranking (issue 14): one fleet, every viewer ranked twice.

The shipped ranker orders its list in tiers (`omega.brain.recommender`, module docstring): every item some
part scores before every item none scores, and among the unscored, more support from the published edges
and pairs the support floor holds back first; MMR trades relevance for variety inside a tier only. The old
order was one MMR pass over the whole pool, where variety could lift an unscored item over a scored one.

This replays the MovieLens fleet exactly as `omega eval movielens` does (same sampling, split, codebook,
FleetConfig; no cold-start TVs, no tables), then ranks each evaluated viewer's top 10 with the shipped
`Brain.rank` at the target's time, in tiers as shipped and in one MMR pass (same process, same stores; the
ranking does not feed the replay, so the two are paired exactly): paired NDCG@10 difference with a
bootstrap interval, how many viewers' top 10 changed at all, and how many top-10 lists held an unscored item.
Also the CPU of a repeated `Brain.rank` call (edge reads kept, context vector remembered: the ranking itself),
the two orders alternated `--reps` times per viewer in the same process (thread CPU; per-viewer medians, then
the median over viewers and the median of the per-viewer paired differences).

    .venv/bin/python bench/ranking_tiers.py --users 200 --validation > bench/results/ranking-tiers-validation.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from omega.brain import recommender
from omega.brain.brain import context_at
from omega.sim.evaluation.metrics import ndcg_values
from omega.sim.evaluation.scoring import K, versus
from omega.sim.fleet.simulator import Fleet, FleetConfig

from eval_fleet import add_eval_fleet_args, eval_fleet_inputs  # bench/, beside this script


def _one_pass(self, ids, score, recent):  # noqa: ANN001, ANN202 — the old order: one MMR pass over the pool
    return None


async def run(data_dir: Path, users: int | None, validation: bool, seed: int, reps: int) -> dict:
    cpu0, wall0 = time.process_time(), time.perf_counter()
    fi = eval_fleet_inputs(data_dir, users, validation, seed)
    embedder, split, rows_by_user, catalog, codebook = fi.embedder, fi.split, fi.rows_by_user, fi.catalog, fi.codebook
    events, when = fi.events, fi.when
    shipped_tiers = recommender.Recommender._tiers  # noqa: SLF001 — the A/B switch of this measurement
    ranks: dict[str, dict[int, int]] = {"tiers": {}, "one_pass": {}}
    changed = unscored_in_top = held_back_viewers = 0
    unscored_seen: list[int] = []
    cpu_ms: dict[str, list[float]] = {"tiers": [], "one_pass": []}
    cpu_diff: list[float] = []
    with tempfile.TemporaryDirectory(prefix="omega-tiers-") as tmp:
        fleet = await Fleet.open(Path(tmp), catalog, codebook, embedder=embedder, config=FleetConfig(seed=seed))
        try:
            await fleet.replay(events, lambda d, t: print(f"replay {d}/{t}", file=sys.stderr) if d % 5000 == 0 else 0)
            await fleet.catch_up()
            for u, row in rows_by_user.items():
                brain = fleet.tvs[u].brain
                target = int(split.item_ids[split.targets[row]])
                lists = {}
                for name in ("tiers", "one_pass"):
                    tiers = shipped_tiers if name == "tiers" else _one_pass
                    recommender.Recommender._tiers = tiers  # type: ignore[method-assign]  # noqa: SLF001
                    recs = brain.rank(context_at(when[u]), K).recommendations
                    ids = [r.content_id for r in recs]
                    ranks[name][row] = ids.index(target) if target in ids else K
                    lists[name] = ids
                    if name == "tiers":
                        unscored = sum(r.score < recommender._UNSCORED for r in recs)  # noqa: SLF001
                        unscored_in_top += bool(unscored)
                        unscored_seen.append(unscored)
                times: dict[str, list[float]] = {"tiers": [], "one_pass": []}
                for _ in range(reps):
                    for name, tiers in (("tiers", shipped_tiers), ("one_pass", _one_pass)):
                        recommender.Recommender._tiers = tiers  # type: ignore[method-assign]  # noqa: SLF001
                        t0 = time.thread_time_ns()
                        brain.rank(context_at(when[u]), K)
                        times[name].append((time.thread_time_ns() - t0) / 1e6)
                for name in times:
                    cpu_ms[name].append(statistics.median(times[name]))
                cpu_diff.append(statistics.median(a - b for a, b in zip(times["tiers"], times["one_pass"])))
                recommender.Recommender._tiers = shipped_tiers  # type: ignore[method-assign]  # noqa: SLF001
                changed += lists["tiers"] != lists["one_pass"]
                recent = brain._hist().recent(brain.config.recent_items)  # noqa: SLF001
                held_back_viewers += bool(brain._held_back(recent)) if recent else 0  # noqa: SLF001
        finally:
            recommender.Recommender._tiers = shipped_tiers  # type: ignore[method-assign]  # noqa: SLF001
            await fleet.aclose()
    mean = lambda rs: float(sum(ndcg_values(rs.values())) / len(rs)) if rs else 0.0  # noqa: E731
    return {
        "users": len(rows_by_user), "validation": validation, "seed": seed,
        "viewers_with_held_back_edges": held_back_viewers, "viewers_whose_top10_changed": changed,
        "viewers_with_an_unscored_item_in_top10": unscored_in_top,
        "ndcg@10": {"tiers": mean(ranks["tiers"]), "one_pass": mean(ranks["one_pass"])},
        "tiers_vs_one_pass": versus(ranks["tiers"], ranks["one_pass"], "one_pass", seed),
        "rank_cpu_ms_median": {name: round(statistics.median(v), 3) for name, v in cpu_ms.items() if v},
        "rank_cpu_ms_paired_diff_median": round(statistics.median(cpu_diff), 3) if cpu_diff else None,
        "rank_cpu_ms_paired_diff_quartiles": [round(q, 3) for q in statistics.quantiles(cpu_diff, n=4)]
        if len(cpu_diff) > 1 else None,
        "rank_cpu_reps_per_viewer": reps,
        "cpu_s": round(time.process_time() - cpu0, 1), "wall_s": round(time.perf_counter() - wall0, 1),
        "load_avg_at_end": [round(x, 2) for x in os.getloadavg()],
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_eval_fleet_args(ap)
    ap.add_argument("--reps", type=int, default=5, help="timed calls per order and viewer")
    args = ap.parse_args()
    print(json.dumps(asyncio.run(run(args.data, args.users, args.validation, args.seed, args.reps)), indent=1))


if __name__ == "__main__":
    main()
