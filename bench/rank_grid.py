"""Ranker variants on the validation split, over one replayed fleet (issue 13, quality beyond parity).

`snapshot`: one `omega eval movielens --validation` fleet (all viewers, the eval's own replay, cold-start
holds included; tables off, the tuning grid reduced to the shipped row), then, from every evaluated TV,
what `Brain.rank` reads: its context at the target's time, recent items, excluded items, patterns,
consolidated prior, own transitions, and the published edges/pairs/most-followed it pulled
(taken from one TV: the same on every TV after the catch-up, compared on a sample and recorded as
`same_published_on_sampled_tvs`). Pickled with the TVs' shipped ranks from `score_tvs`.

`score`: rebuilds the shipped `Recommender` over the snapshot for each variant config (code under test:
the working tree's `omega.brain.recommender`) and reports NDCG@10 / HR@10 / pool recall, paired per viewer
against the shipped row and against seq_transition (tuned on the validation split's own validation part,
as the eval does). The "shipped" row must reproduce the eval's edge_federated ranks exactly: the count of
viewers whose rank differs is reported as `shipped_mismatch_vs_score_tvs` (0 expected).

    .venv/bin/python bench/rank_grid.py snapshot --out /tmp/snap.pkl
    .venv/bin/python bench/rank_grid.py score --snap /tmp/snap.pkl --variants 'recent_items=5' ... > grid.json

Variants: `name=value[,name=value]` of BrainConfig fields, or `mod.NAME=value` of a module-level knob of
`omega.brain.recommender` (`KNOBS`; the experiment knobs exist only with bench/results/rank-grid-knobs.patch).

Only the validation split is read here.
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from omega.brain.brain import context_at
from omega.brain.config import BrainConfig
from omega.brain.embedder import Embedder
from omega.brain.recommender import Recommender
from omega.datasets.location import resolve_data_dir
from omega.datasets.movielens import load_movielens
from omega.sim.evaluation import evaluate as ev
from omega.sim.evaluation.baselines import BASELINES
from omega.sim.evaluation.metrics import ndcg_values, paired_bootstrap, summarise, target_rank
from omega.sim.evaluation.scoring import K, score_tvs
from omega.sim.evaluation.split import leave_last_out_arrays
from omega.sim.fleet.catalog_cache import build_catalog

#: module-level knobs a variant may set as mod.NAME=value; all but _PER_SOURCE exist only with
#: bench/results/rank-grid-knobs.patch applied (to main 2cd7dd8's recommender; its defaults rank as shipped)
KNOBS = ("_EDGE_POWER", "_SOURCE_NORM", "_TWO_HOP", "_TWO_HOP_BETA", "_W_POPULAR", "_TARGET_NORM", "_PER_SOURCE")
DEFAULT_KNOBS: dict[str, Any] = {}
RECENT_KEPT = 30  # recent items kept per viewer (variants may read up to this many)


def snapshot(data_dir: Path, out: Path, users: int | None, seed: int) -> None:
    ev.tuning_grid = lambda config: {"shipped": config}  # the grid is what this tool scores instead

    def dump(fleet: Any) -> dict[str, Any]:
        data = load_movielens(data_dir, max_tags=0)
        user, item, stars, ts = ev._subsample(data, users, seed, validation=True)
        split = leave_last_out_arrays(user, item, data.item_ids)
        rows_by_user = {int(u): r for r, u in enumerate(split.users.tolist())}
        _, when = ev._train_events(user, item, stars, ts)
        shipped = score_tvs(fleet, split, rows_by_user, when)
        tvs = list(fleet.tvs.values())
        ids = [int(c) for c in split.item_ids.tolist()]
        store0 = tvs[0].brain.store
        def table(store: Any, name: str) -> dict[int, list[tuple[int, float]]]:
            found: dict[int, list[tuple[int, float]]] = {}
            for i in range(0, len(ids), 500):  # the floored read, past the 64-source cache
                found.update(store.edges._successors(name, ids[i:i + 500])[0])  # [0]: the rows above the floor
            return found

        glob = table(store0, "global_transitions")
        pairs = table(store0, "global_pairs")
        popular = list(tvs[0].brain._most_followed())
        same = [table(tv.brain.store, "global_transitions") == glob for tv in tvs[1:: max(1, len(tvs) // 5)]]
        viewers = {}
        for u, row in rows_by_user.items():
            brain = fleet.tvs[u].brain
            hist = brain._hist()
            recent = hist.recent(RECENT_KEPT)
            memory = brain._memory()
            memory._allocate(len(memory))  # the pickle holds the used rows only, not the 10K-row capacity
            viewers[u] = {
                "row": row, "when": when[u], "recent": recent,
                "exclude": sorted(hist.watched if brain.config.exclude_watched else hist.finished),
                "patterns": memory, "prior": brain._consolidated(),
                "own": brain.store.edges._successors("transitions", sorted(set(recent)))[0],
                "target": int(split.item_ids[split.targets[row]]), "shipped_rank": shipped.ranks[row],
            }
        with open(out, "wb") as f:
            snap = {"seed": seed, "users": users, "glob": glob, "pairs": pairs, "popular": popular,
                    "viewers": viewers, "same_published_on_sampled_tvs": same}
            pickle.dump(snap, f, protocol=pickle.HIGHEST_PROTOCOL)
        return {}

    result = ev.evaluate_movielens(data_dir, users=users, seed=seed, validation=True, tables=False, inspect=dump,
                                   stage=lambda what, d, t: print(f"{what} {d}/{t}", file=sys.stderr, flush=True))
    with open(out.with_suffix(".eval.json"), "w") as f:
        json.dump(result, f, indent=1, default=str)


def _lookup(table: dict[int, list[tuple[int, float]]]):
    return lambda srcs: {s: table[s] for s in srcs if s in table}


def score(snap_path: Path, data_dir: Path, variants: list[str]) -> dict[str, Any]:
    snap = pickle.load(open(snap_path, "rb"))
    seed, users = snap["seed"], snap["users"]
    data = load_movielens(data_dir, max_tags=0)
    base = BrainConfig()
    embedder = Embedder()
    catalog, _ = build_catalog(data.items, embedder, base, lambda d, t: None)
    cache: dict[str, np.ndarray] = {}

    def embed(text: str) -> np.ndarray:
        if text not in cache:
            cache[text] = embedder.embed(text)
        return cache[text]

    user, item, stars, ts = ev._subsample(data, users, seed, validation=True)
    split = leave_last_out_arrays(user, item, data.item_ids)
    params = json.load(open(snap_path.with_suffix(".eval.json")))["methods"]["seq_transition"]["params"]
    seq = BASELINES["seq_transition"][0](**params).fit(split)
    viewers = snap["viewers"]
    rows = sorted(v["row"] for v in viewers.values())
    seq_ranks = {r: target_rank(seq.scores(r, split.histories[r]), int(split.targets[r]), split.histories[r])
                 for r in rows}
    import omega.brain.recommender as recmod
    DEFAULT_KNOBS.update({k: getattr(recmod, k) for k in KNOBS if hasattr(recmod, k)})
    into: dict[int, float] = {}
    for row in snap["glob"].values():
        for dst, w in row:
            into[dst] = into.get(dst, 0.0) + w
    recmod._POP_WEIGHTS = into
    glob, pairs, popular = _lookup(snap["glob"]), _lookup(snap["pairs"]), (lambda: snap["popular"])
    out: dict[str, Any] = {"split": "validation", "seed": seed, "viewers": len(rows), "rows": {}}
    ref: dict[int, int] | None = None
    for spec in ["shipped", *variants]:
        cfg = base
        if spec != "shipped":
            changes = {}
            for part in spec.split(","):
                name, value = part.split("=")
                if name.startswith("mod."):
                    continue
                kind = type(getattr(base, name))
                changes[name] = (value == "true") if kind is bool else kind(value)
            cfg = replace(base, **changes)
        import omega.brain.recommender as recmod
        for knob, value in DEFAULT_KNOBS.items():
            setattr(recmod, knob, value)
        if spec != "shipped":
            for part in spec.split(","):
                name, value = part.split("=")
                if name.startswith("mod."):
                    if name[4:] not in DEFAULT_KNOBS:
                        raise SystemExit(f"{name[4:]}: not a knob of this recommender (the experiment knobs: "
                                         f"git apply bench/results/rank-grid-knobs.patch on main 2cd7dd8)")
                    setattr(recmod, name[4:], type(DEFAULT_KNOBS[name[4:]])(value))
        t0 = time.process_time()
        ranks, pooled = {}, []
        for v in viewers.values():
            rec = Recommender(catalog, cfg, embed, _lookup(v["own"]), glob, pairs, popular, None)
            ranking = rec.rank(context_at(v["when"]), K, recent=v["recent"][: cfg.recent_items], exclude=v["exclude"],
                               patterns=v["patterns"], prior=v["prior"])  # fmt: skip
            got = [r.content_id for r in ranking.recommendations]
            ranks[v["row"]] = got.index(v["target"]) if v["target"] in got else K
            pooled.append(v["target"] in ranking.pool)
        cpu = time.process_time() - t0
        if spec == "shipped":
            ref = ranks
            mismatch = sum(ranks[v["row"]] != v["shipped_rank"] for v in viewers.values())
            out["shipped_mismatch_vs_score_tvs"] = mismatch
        row = summarise(ranks.values(), K) | {"pool_recall": float(np.mean(pooled)), "cpu_s": round(cpu, 1)}
        for name, other in (("vs_shipped", ref), ("vs_seq_transition", seq_ranks)):
            b = paired_bootstrap(ndcg_values(ranks[r] for r in rows), ndcg_values(other[r] for r in rows), seed=seed)
            row[name] = [round(b["diff"], 4), round(b["ci95_low"], 4), round(b["ci95_high"], 4)]
        out["rows"][spec] = row
        print(f"{spec:50s} ndcg {row['ndcg@10']:.4f} hr {row['hr@10']:.3f} pool {row['pool_recall']:.3f} "
              f"vs_shipped {row['vs_shipped']} vs_seq {row['vs_seq_transition']} cpu {cpu:.0f}s",
              file=sys.stderr, flush=True)
    out["seq_transition"] = summarise(seq_ranks.values(), K) | {"params": params}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=("snapshot", "score"))
    p.add_argument("--data", default=None)
    p.add_argument("--users", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("/tmp/rank-snap.pkl"))
    p.add_argument("--snap", type=Path, default=Path("/tmp/rank-snap.pkl"))
    p.add_argument("--variants", nargs="*", default=[])
    a = p.parse_args()
    data_dir = resolve_data_dir(Path(a.data) if a.data else None, "ml-latest-small")
    if a.mode == "snapshot":
        snapshot(data_dir, a.out, a.users, a.seed)
    else:
        print(json.dumps(score(a.snap, data_dir, a.variants), indent=1))


if __name__ == "__main__":
    main()
