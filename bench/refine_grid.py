"""The refined-neighbour grid on the validation split: EASE's ridge λ, neighbours per item and how the TV uses them.

One fleet replay of a viewer sample on the validation split (each viewer's test target left out
entirely), synced through the real constellation; then, over the pairs every TV pulled,
`omega.constellation.item_graph.refine` for each (λ, m), and every evaluated TV ranks with
`Brain.rank` (the shipped ranker) and those neighbours. Rows are paired per viewer against
"pairs only" (the ranking before refined neighbours: raw pairs at weight 3, nothing refined).

    .venv/bin/python bench/refine_grid.py --users 200 > bench/results/refine-grid-validation.json

Only the validation split is read: this is where `DEFAULT_LAMBDA`, `DEFAULT_NEIGHBOURS`, `w_refined`
and `w_global_pair` are chosen. The numbers are NDCG@10 / HR@10 over the sampled viewers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from omega.brain.config import BrainConfig
from omega.brain.embedder import Embedder
from omega.constellation.codebook import build_codebook
from omega.constellation.item_graph import refine
from omega.datasets.location import resolve_data_dir
from omega.datasets.movielens import load_movielens
from omega.sim.evaluation.evaluate import _subsample, _train_events
from omega.sim.evaluation.scoring import score_tvs, versus
from omega.sim.evaluation.split import leave_last_out_arrays
from omega.sim.fleet.catalog_cache import build_catalog
from omega.sim.fleet.simulator import Fleet, FleetConfig

LAMBDAS = (0.02, 0.05, 0.1, 0.5)
NEIGHBOURS = (20, 50)


def variants(base: BrainConfig) -> dict[str, BrainConfig]:
    return {
        "refined w=1, no pairs": replace(base, w_global_pair=0.0, w_refined=1.0),
        "refined w=3, no pairs": replace(base, w_global_pair=0.0, w_refined=3.0),
        "refined w=1 + pairs w=3": replace(base, w_global_pair=3.0, w_refined=1.0),
    }


async def run(data_dir: Path, users: int | None, seed: int) -> dict:
    data = load_movielens(data_dir, max_tags=0)
    base = BrainConfig()
    embedder = Embedder()
    user, item, stars, ts = _subsample(data, users, seed, validation=True)
    split = leave_last_out_arrays(user, item, data.item_ids)
    rows_by_user = {int(u): r for r, u in enumerate(split.users.tolist())}
    catalog, matrix = build_catalog(data.items, embedder, base, lambda d, t: None)
    codebook = build_codebook(matrix, k=min(256, len(data.items)), seed=seed, iters=10)
    events, when = _train_events(user, item, stars, ts)
    events = [ev for ev in events if ev.user in rows_by_user]
    out: dict = {"split": "validation", "users": split.n_users, "seed": seed, "ranker": "Brain.rank", "rows": {}}
    with tempfile.TemporaryDirectory(prefix="omega-refine-grid-") as tmp:
        fleet = await Fleet.open(Path(tmp) / "fleet", catalog, codebook, embedder=embedder,
                                 config=FleetConfig(k_min=3, seed=seed, brain=base), store_dir=Path(tmp))  # fmt: skip
        try:
            await fleet.replay(events)
            await fleet.catch_up()
            tv0 = next(iter(fleet.tvs.values()))
            pairs = [(p.src, p.dst, p.count) for p in tv0.brain.store.all_global_pairs() if p.src < p.dst]
            edges = [(e.src, e.dst, e.count) for e in tv0.brain.store.all_global_transitions()]
            out |= {"published_pairs": len(pairs), "published_edges": len(edges)}
            former = replace(base, w_global_pair=3.0, w_refined=0.0)
            reference = score_tvs(fleet, split, rows_by_user, when, config=former)
            out["rows"]["pairs only (w 3), no refined"] = reference.summary()
            for lam in LAMBDAS:
                started = time.perf_counter()
                found = refine(pairs, edges, lam=lam, neighbours=max(NEIGHBOURS))
                refine_s = time.perf_counter() - started
                table: dict[int, list[tuple[int, float]]] = {}
                for n in found:
                    table.setdefault(n.src, []).append((n.dst, n.steps / 16))
                for row in table.values():
                    row.sort(key=lambda t: (-t[1], t[0]))
                for m in NEIGHBOURS:
                    # The top m of the top max(NEIGHBOURS): what refine(neighbours=m) ships, up to requantisation.
                    def lookup(srcs: Sequence[int], m: int = m, table: dict = table) -> dict[int, list[tuple[int, float]]]:
                        return {s: table[s][:m] for s in srcs if s in table}

                    for name, config in variants(base).items():
                        scored = score_tvs(fleet, split, rows_by_user, when, config=config, refined=lookup)
                        key = f"lambda={lam} m={m} {name}"
                        out["rows"][key] = scored.summary() | {
                            "vs_pairs_only": versus(scored.ranks, reference.ranks, "pairs only", seed),
                            "refine_s": round(refine_s, 2),
                        }
                        print(key, round(out["rows"][key]["ndcg@10"], 4), file=sys.stderr)
        finally:
            await fleet.aclose()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=None, help="MovieLens folder (default: the shared data dir)")
    parser.add_argument("--users", type=int, default=200, help="viewers sampled (default 200)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    data_dir = resolve_data_dir(args.data)
    json.dump(asyncio.run(run(data_dir, args.users, args.seed)), sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
