"""`omega eval movielens`: the fleet against centralised baselines on one leave-last-out split.

Every method sees the same split (`omega.sim.evaluation.split.leave_last_out`): per user
the last rating is the target, earlier ones the history. Ratings that share a
timestamp (about 16 % of consecutive viewings in ml-latest-small) are put in a
seeded random order first, not file order (ascending movieId), which a sequence
model would learn as a fake signal. Item text is title, year and genres only:
MovieLens tags carry dates up to the end of the data, after the split.

The TVs are scored exactly as they run: `Brain.rank` (what `Brain.recommend`
returns, with the shipped `BrainConfig`) gives each evaluated viewer's TV its
top 10 at the target's time, history excluded as the TV excludes it; the
target's rank is its position there (10 = missed). A viewer without a TV is an
error. `pool_recall` is the share of targets inside the candidate pool.

- edge_only: the same brains ranking with what they learned alone (local
  transitions, patterns, content; nothing pulled).
- edge_federated: the shipped ranking after syncing every training viewing
  through the constellation and pulling what it published (k_min TVs per edge).
- cold_start: new TVs for a sample of users that watch only their first
  `cold_n` training episodes and pull, at the time of that user's next episode
  (the target), what was published by then, the viewer's own fleet TV offline
  until then (`omega.sim.evaluation.cold_start`); most-popular as of that time
  is the reference on the same task.
- mostpop, itemknn, als, seq_transition: centralised, tuned on the validation
  split, trained on all training histories (`omega.sim.evaluation.baselines`).

Each method's NDCG@10 comes with a paired bootstrap interval of its difference
to the best centralised baseline (`versus_best`). The held-out targets are
never synced (only training viewings are replayed).
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from omega.brain.brain import release_freed_memory
from omega.brain.config import BrainConfig
from omega.brain.embedder import Embedder
from omega.constellation.privacy import DEFAULT_K_MIN, check_k_min
from omega.datasets.movielens import MovieLensData, load_movielens
from omega.errors import OmegaError
from omega.progress import Stage, quiet
from omega.protocol import Keyspace, derive_device_key, peek_frame
from omega.sim.evaluation.baselines import BASELINES, tune_and_evaluate
from omega.sim.evaluation.cold_start import ColdStart
from omega.sim.evaluation.metrics import ndcg_values, target_rank
from omega.sim.evaluation.resources import StageMeter
from omega.sim.evaluation.privacy_tables import cell_rows, epsilon_table, privacy_table
from omega.sim.evaluation.seeds import PER_VIEWER, combine_seeds, per_viewer
from omega.sim.evaluation.scoring import K, published_edges, score_tvs, versus
from omega.sim.evaluation.split import Split, leave_last_out_arrays
from omega.sim.evaluation.wire_audit import audit_frames, decode_uplink
from omega.sim.fleet.catalog_cache import build_catalog, cached_codebook
from omega.sim.fleet.simulator import TV, Fleet, FleetConfig, ViewingEvent

#: looks at the synced fleet before it is closed (a coroutine function to read its stores); adds keys
Inspect = Callable[[Fleet], "dict[str, Any] | Awaitable[dict[str, Any]]"]
BASELINE_NAMES = ("mostpop", "itemknn", "als", "seq_transition")
#: most seeds one `omega eval movielens --seeds` runs (each is a whole fleet)
MAX_SEEDS = 10
#: recorded beside window_epochs in the eval JSON
WINDOW_NOTE = ("simulation only: the contribution window spans the replayed viewings (a live fleet's viewers "
               "watch at the same time; the replay spreads them over the data's years); served default 30 days")
#: how the evaluation orders ratings that share a timestamp
TIES = "seeded shuffle"


def _without(config: BrainConfig, *parts: str, **changes: Any) -> BrainConfig:
    """The config with the named score parts switched off (weight 0)."""
    names = {"local": "w_local_transition", "global": "w_global_transition", "pair": "w_global_pair",
             "refined": "w_refined", "content": "w_content", "pattern": "w_pattern",
             "consolidated": "w_consolidated"}  # fmt: skip
    return replace(config, **{names[p]: 0.0 for p in parts}, **changes)


def edge_only_config(config: BrainConfig) -> BrainConfig:
    """What a TV knows without sync: nothing pulled is used."""
    return _without(config, "global", "pair", "refined", "consolidated", popular_k=0)


#: the raw pairs' weight and the refined neighbours' weight validated in their place (their ablation rows)
RAW_PAIR_WEIGHT = 3.0
REFINED_WEIGHT = 1.0


def ablation_configs(config: BrainConfig) -> dict[str, BrainConfig]:
    """Rows that each add or remove one part that is active in a synced fleet (local transitions are not
    a row: they only point at watched items, which the TV excludes)."""
    content = _without(config, "local", "global", "pair", "refined", "pattern", "consolidated", popular_k=0)
    return {
        "content": content,
        "content+patterns": replace(content, w_pattern=config.w_pattern),
        "content+edges": replace(content, w_global_transition=config.w_global_transition),
        "content+edges+raw pairs": replace(content, w_global_transition=config.w_global_transition,
                                           w_global_pair=RAW_PAIR_WEIGHT),
        "content+edges+refined": replace(content, w_global_transition=config.w_global_transition,
                                         w_refined=REFINED_WEIGHT),
        "shipped with refined instead of raw pairs": replace(config, w_global_pair=0.0, w_refined=REFINED_WEIGHT),
        "shipped without pairs": _without(config, "pair"),
        "shipped without popular pool": replace(config, popular_k=0),
        "shipped without patterns": _without(config, "pattern"),
        "shipped without consolidated": _without(config, "consolidated"),
        "shipped without diversity": replace(config, diversity_lambda=1.0),
        "shipped": config,
    }


def tuning_grid(config: BrainConfig) -> dict[str, BrainConfig]:
    """Recommend-time settings varied one at a time around `config` (scored on the validation split only;
    settings that change what a TV learns would need a replay each and are not in it)."""
    axes: dict[str, tuple[Any, ...]] = {
        "w_global_pair": (1.0, 2.0, 3.0, 4.0),
        "w_refined": (0.0, 0.5, 1.0, 2.0, 3.0),
        "w_content": (0.0, 0.02, 0.05, 0.1),
        "recent_decay": (0.5, 0.6, 0.7, 0.8),
        "recent_items": (5, 10, 20),
        "diversity_lambda": (0.8, 0.9, 1.0),
        "w_pattern": (0.0, 0.05, 0.2),
        "w_consolidated": (0.0, 0.05, 0.2),
        "popular_k": (0, 100, 300),
        "candidates_k": (20, 50, 100),
    }
    grid = {"shipped": config}
    for name, values in axes.items():
        for value in values:
            if value != getattr(config, name):
                grid[f"{name}={value}"] = replace(config, **{name: value})
    return grid


def _subsample(
    data: MovieLensData, users: int | None, seed: int, *, validation: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The ratings of `users` sampled viewers (all by default) in time order, same-second ties shuffled;
    with `validation`, without each viewer's last rating (the test target), so the split's targets are
    the second-to-last ones."""
    r = data.ratings
    keep = np.ones(r.user.shape[0], bool)
    if users is not None:
        if users < 2:
            raise OmegaError(f"--users must be at least 2, got {users}")
        ids = np.unique(r.user)
        if users < ids.size:
            chosen = np.random.default_rng(seed).choice(ids, size=users, replace=False)
            keep = np.isin(r.user, chosen)
    idx = np.flatnonzero(keep)
    # Time order with a seeded random tie-break (lexsort: last key is primary).
    order = idx[np.lexsort((np.random.default_rng(seed + 7).random(idx.size), r.timestamp[idx]))]
    if validation:
        last: dict[int, int] = {}
        for i, u in enumerate(r.user[order].tolist()):
            last[u] = i
        order = np.delete(order, list(last.values()))
    return r.user[order], r.item[order], r.rating[order], r.timestamp[order]


def _train_events(user: np.ndarray, item: np.ndarray, stars: np.ndarray, ts: np.ndarray) -> tuple[list[ViewingEvent], dict[int, float]]:
    """Every rating except each user's last (the test target), in time order; and each user's target time."""
    last = {}
    for i, u in enumerate(user.tolist()):
        last[u] = i
    held = set(last.values())
    events = [
        ViewingEvent(int(u), int(c), float(s), float(t))
        for i, (u, c, s, t) in enumerate(zip(user.tolist(), item.tolist(), stars.tolist(), ts.tolist()))
        if i not in held
    ]
    return events, {int(u): float(ts[i]) for u, i in last.items()}


#: titles compared in `after_overlap` (the most watched ones)
OVERLAP_TITLES = 100


def after_overlap(tv: TV, split: Split, k: int = K) -> dict[str, Any]:
    """Over the most-watched titles X: the share of a TV's k "after X" candidates (`Brain.after`) that are
    among X's k centralised item-kNN neighbours, so "sensible" is a number."""
    from omega.sim.evaluation.baselines.itemknn import ItemKNN

    knn = ItemKNN(neighbours=k).fit(split)
    _, items = split.train_interactions()
    top = np.argsort(-np.bincount(items, minlength=split.n_items), kind="stable")[:OVERLAP_TITLES]
    overlaps = []
    for row in top.tolist():
        sims = knn.similarity.getrow(row)
        theirs = {int(split.item_ids[j]) for j in sims.indices[np.argsort(-sims.data, kind="stable")][:k]}
        mine = tv.brain.after(int(split.item_ids[row]), k)
        overlaps.append(len(theirs & set(mine)) / k)
    return {"titles": len(overlaps), "k": k, "mean": float(np.mean(overlaps)) if overlaps else 0.0}


def _baseline_ranks(split: Split, name: str, params: dict[str, Any], rows: list[int]) -> dict[int, int]:
    """Per-row target ranks of a centralised baseline refitted with its tuned parameters."""
    factory, _ = BASELINES[name]
    model = factory(**params).fit(split)
    return {r: target_rank(model.scores(r, split.histories[r]), int(split.targets[r]), split.histories[r]) for r in rows}


async def _run(
    data: MovieLensData, *, users: int | None, k_min: int, cold_n: int, cold_users: int, seed: int,
    workdir: Path, stage: Stage, embedder: Embedder, tables: bool, baselines: bool, inspect: Inspect | None,
    store_dir: Path | None = None, config: BrainConfig | None = None, validation: bool = False,
    fleet_config: FleetConfig | None = None,
) -> dict[str, Any]:  # fmt: skip
    meter = StageMeter()
    started = meter.started
    config = config or BrainConfig()
    user, item, stars, ts = _subsample(data, users, seed, validation=validation)
    split = leave_last_out_arrays(user, item, data.item_ids)
    if split.n_users == 0:
        raise OmegaError(f"{data.path}: no user has two or more ratings to evaluate")
    rows_by_user = {int(u): r for r, u in enumerate(split.users.tolist())}

    catalog, matrix = build_catalog(data.items, embedder, config, lambda d, t: stage("embed catalog", d, t))
    if not np.array_equal(catalog.ids, split.item_ids.astype(np.int64)):
        raise OmegaError("catalog order differs from the split's item order")
    codebook = cached_codebook(matrix, k=min(256, len(data.items)), seed=seed, iters=10)
    meter.mark("catalog_s", started)

    t0 = time.perf_counter()
    events, when = _train_events(user, item, stars, ts)
    events = [ev for ev in events if ev.user in rows_by_user]
    # The fleet's TVs take the refined neighbours (the refined ablation and grid rows rank with them); the
    # shipped TV opts out while w_refined is 0, and its ranking does not read them, so its rows are the same.
    fleet_brain = replace(config, pull_refined=True)
    fleet_config = replace(fleet_config or FleetConfig(), k_min=k_min, seed=seed, brain=fleet_brain)
    fleet = await Fleet.open(workdir, catalog, codebook, embedder=embedder, config=fleet_config, store_dir=store_dir)
    try:
        cold = ColdStart(fleet, split, events, rows_by_user, cold_n=cold_n, cold_users=cold_users, seed=seed, stage=stage)
        await fleet.replay(events, lambda d, t: stage("replay viewings", d, t), probes=cold.probes(), hold=cold.hold())
        meter.seconds["cold_start_s"] = cold.seconds  # inside the replay, at each target's time
        t1 = meter.mark("replay_s", t0)
        fleet_tvs = list(fleet.tvs.values())
        up = np.array([tv.bytes_up for tv in fleet_tvs], np.float64)
        push_sizes = [len(d) for _, d in fleet.tap.uplink if peek_frame(d).kind == "push"]
        await fleet.catch_up(progress=lambda d, t: stage("pull published patterns", d, t))
        meter.mark("catch_up_s", t1)
        meter.mark("fleet_s", t0)

        t0 = time.perf_counter()
        methods: dict[str, dict[str, Any]] = {}
        stage("score TVs", 0, 2)
        edge_only = score_tvs(fleet, split, rows_by_user, when, config=edge_only_config(config))
        methods["edge_only"] = edge_only.summary()
        stage("score TVs", 1, 2)
        federated = score_tvs(fleet, split, rows_by_user, when)
        methods["edge_federated"] = federated.summary()
        stage("score TVs", 2, 2)
        meter.mark("edge_eval_s", t0)
        held, refined_held = [], []
        for tv in fleet_tvs:
            held.append(len(tv.brain.store.consolidated()))
            refined_held.append(tv.brain.store.stats().get("refined_neighbours", 0))
            tv.brain.store.release_cache()  # as after scoring (score_tvs): the pages just read need not stay
        overlap = after_overlap(fleet_tvs[0], split) if fleet_tvs else None
        grid: dict[str, Any] = {}
        if validation:
            variants = tuning_grid(config)
            for i, (name, variant) in enumerate(variants.items()):
                stage("tuning grid", i, len(variants))
                scored = federated if variant == config else score_tvs(fleet, split, rows_by_user, when, config=variant)
                grid[name] = scored.summary() | {"vs_shipped": versus(scored.ranks, federated.ranks, "shipped", seed)}

        methods["cold_start"] = cold.summary()
        # Every uplink frame, the catch-up's and the cold-start TVs' included, decoded for the wire audit;
        # the privacy table's cell rows re-key the fleet TVs' pushes.
        uplink = decode_uplink(fleet.tap.uplink, lambda dev: derive_device_key(fleet.config.secret, dev, 1))
        # With each fleet TV's viewing times, the audit also checks that no contribution went out in the
        # sync right after a viewing (the cold-start TVs push no edges).
        viewings: dict[bytes, list[float]] = {}
        for ev in events:
            viewings.setdefault(fleet.tvs[ev.user].device_id, []).append(ev.timestamp)
        audit = audit_frames(uplink, viewings)

        out_tables: dict[str, Any] = {}
        ranks_by_method: dict[str, dict[int, int]] = {"edge_only": edge_only.ranks, "edge_federated": federated.ranks}
        if tables:
            t0 = time.perf_counter()
            ablation = {}
            configs = ablation_configs(config)
            for i, (name, variant) in enumerate(configs.items()):
                stage("ablation", i, len(configs))
                scored = federated if variant == config else score_tvs(fleet, split, rows_by_user, when, config=variant)
                ablation[name] = scored.summary()
                ranks_by_method[f"ablation: {name}"] = scored.ranks
            out_tables["ablation"] = ablation
            t1 = meter.mark("ablation_s", t0)
            # The what-if rows below rank with their own published sets, not what each TV pulled: its kept
            # copies of the pulled edges (volumes, kept successors: one set per TV) are dropped first.
            for tv in fleet_tvs:
                tv.brain.release_caches()
            release_freed_memory()
            cells = cell_rows(fleet, uplink=uplink, tvs=fleet_tvs, matrix=matrix, seed=seed)
            del uplink  # decoded frames: not needed by the k_min rows, whose published sets come next
            release_freed_memory()
            out_tables["privacy"] = await privacy_table(
                fleet, split, rows_by_user, when, up, stage, cells_by_size=cells
            )
            t1 = meter.mark("privacy_s", t1)
            out_tables["privacy_epsilon"] = await epsilon_table(fleet, split, rows_by_user, when, seed=seed, stage=stage)
            meter.mark("privacy_epsilon_s", t1)
            meter.mark("tables_s", t0)  # the three above together
        published = await published_edges(fleet, k_min)
        cowatch_published = len(await fleet.aggregator.published_cowatch())
        window_epochs = fleet.aggregator.policy.window_epochs
        extra = inspect(fleet) if inspect is not None else {}
        if asyncio.iscoroutine(extra):  # an inspection that reads the fleet's stores
            extra = await extra
    finally:
        await fleet.aclose()
        release_freed_memory()  # the closed fleet's heap holes, before the baselines allocate theirs

    if baselines:
        for i, name in enumerate(BASELINE_NAMES):
            stage("centralised baselines", i, len(BASELINE_NAMES))
            t0 = time.perf_counter()
            result = tune_and_evaluate(name, split)
            methods[name] = {"hr@10": result["hr@10"], "ndcg@10": result["ndcg@10"], "params": result["params"]}
            meter.mark(f"{name}_s", t0)
        stage("centralised baselines", len(BASELINE_NAMES), len(BASELINE_NAMES))

    best = max((n for n in BASELINE_NAMES if n in methods), key=lambda n: methods[n]["ndcg@10"], default=None)
    against_best: dict[str, Any] = {}
    if best:
        rows = sorted(federated.ranks)
        best_ranks = _baseline_ranks(split, best, methods[best]["params"], rows)
        for name in BASELINE_NAMES:
            if name != best and name in methods:
                ranks_by_method[name] = _baseline_ranks(split, name, methods[name]["params"], rows)
        against_best = {name: versus(r, best_ranks, best, seed) for name, r in ranks_by_method.items()}
        ranks_by_method[best] = best_ranks
    rows = sorted(federated.ranks)
    viewers = per_viewer([int(split.users[r]) for r in rows],
                         {name: ndcg_values(ranks[r] for r in rows) for name, ranks in ranks_by_method.items()})  # fmt: skip
    return {
        "dataset": data.path.name,
        "layout": data.layout,
        "ranker": "Brain.recommend",
        "config": config.to_dict(),
        "ties": TIES,
        "split": "validation (each viewer's second-to-last rating)" if validation else "test (each viewer's last rating)",
        "item_text": "title, year, genres (tags left out: they are dated after the split)",
        "users": split.n_users,
        "items": split.n_items,
        "train_viewings": len(events),
        "k_min": k_min,
        "window_epochs": window_epochs,
        "window": WINDOW_NOTE,
        "fleet_pulls_refined": "simulation only: the fleet's TVs pull the refined neighbours for the refined rows; "
                               "the shipped config does not (pull_refined false) and ranks the same without them",
        "server_pull_snapshot_s": fleet.config.pull_snapshot_s,  # sim-only: the live head (FleetConfig says why)
        "seed": seed,
        "methods": methods,
        "best_centralised": best,
        "edge_federated_matches_best": bool(best and methods["edge_federated"]["ndcg@10"] >= methods[best]["ndcg@10"]),
        "edge_federated_vs_best": against_best.get("edge_federated"),
        "versus_best": against_best,
        "after_overlap_with_itemknn": overlap,
        "consolidated_patterns_per_tv": float(np.mean(held)) if held else 0.0,
        "refined_neighbours": {"released": len(fleet.service.refined.items),
                               "per_tv": float(np.mean(refined_held)) if refined_held else 0.0},
        "upload_bytes_per_tv": {"mean": float(up.mean()) if up.size else 0.0, "p95": float(np.percentile(up, 95)) if up.size else 0.0},
        "push_bytes_p50": float(np.median(push_sizes)) if push_sizes else 0.0,
        "pushes": len(push_sizes),
        "published_edges": sum(e.keyspace == Keyspace.ITEM for e in published),
        "published_pairs": sum(e.keyspace == Keyspace.PAIR for e in published),
        "published_cowatch": cowatch_published,  # co-watched pairs at k_min (the refined input when > 0)
        "wire_audit": {
            "frames": audit.frames, "kinds": dict(audit.kinds), "patterns": audit.patterns, "edges": audit.edges,
            "cowatch": audit.cowatch,
            "violations": audit.violations[:5], "no_raw_episode_left": audit.clean,
        },  # fmt: skip
        "tables": out_tables,
        **({"tuning_grid": grid} if validation else {}),
        **extra,
        PER_VIEWER: viewers,
        "timings_s": meter.timings(),
        "rss_mb": meter.rss(),
    }


def evaluate_movielens(
    data_dir: Path | str,
    *,
    users: int | None = None,
    k_min: int = DEFAULT_K_MIN,
    cold_n: int = 3,
    cold_users: int = 100,
    seed: int = 0,
    workdir: Path | str | None = None,
    stage: Stage | None = None,
    embedder: Embedder | None = None,
    tables: bool = True,
    baselines: bool = True,
    inspect: Inspect | None = None,
    config: BrainConfig | None = None,
    validation: bool = False,
    seeds: int = 1,
    fleet_config: FleetConfig | None = None,
) -> dict[str, Any]:
    """Run the whole evaluation (see module docstring); returns the `omega eval movielens` JSON object.

    `seeds`: run it for seeds `seed`, `seed + 1`, ... (each a whole fleet) and add the `seeds` block
    (`omega.sim.evaluation.seeds.combine_seeds`); the top level is the first seed's run.

    `config`: the brains' config (default: the shipped `BrainConfig()`). `validation`: evaluate on the
    validation split (each viewer's test target left out entirely) and add `tuning_grid`, the
    recommend-time settings of `tuning_grid()` scored on the same synced fleet: defaults are tuned there,
    never on the test split. `fleet_config`: the simulated fleet's settings other than k_min, seed and
    brain (default: `FleetConfig()`; bench/quality_costs.py varies the window and the sync caps)."""
    check_k_min(k_min, "--k-min")
    if isinstance(seeds, bool) or not isinstance(seeds, int) or not 1 <= seeds <= MAX_SEEDS:
        raise OmegaError(f"--seeds must be an integer in 1..{MAX_SEEDS}, got {seeds!r}")
    if cold_n < 1:
        raise OmegaError(f"cold-start episodes must be at least 1, got {cold_n}")
    data = load_movielens(data_dir, max_tags=0)  # tags are dated after the split: no text from the future
    embedder = embedder or Embedder()
    shm = Path("/dev/shm")
    runs = []
    for one_seed in range(seed, seed + seeds):
        with (
            tempfile.TemporaryDirectory(prefix="omega-eval-", dir=workdir) as tmp,
            tempfile.TemporaryDirectory(prefix="omega-eval-store-", dir=shm if shm.is_dir() else tmp) as store_tmp,
        ):
            runs.append(asyncio.run(
                _run(
                    data, users=users, k_min=k_min, cold_n=cold_n, cold_users=cold_users, seed=one_seed,
                    workdir=Path(tmp), stage=stage or quiet, embedder=embedder, tables=tables, baselines=baselines,
                    inspect=inspect, store_dir=Path(store_tmp), config=config, validation=validation,
                    fleet_config=fleet_config,
                )
            ))  # fmt: skip
    if seeds == 1:
        return {k: v for k, v in runs[0].items() if k != PER_VIEWER}
    return combine_seeds(runs, BASELINE_NAMES)
