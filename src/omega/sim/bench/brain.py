"""`omega bench brain`: the edge budgets on a real catalog (embed, search k=50, recommend, RSS, recall@50).

The brain is built in this process and measured in a fresh child process that
opens it as a TV would (see `run_brain_bench`).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from omega.constellation.privacy import DEFAULT_K_MIN
from omega.errors import OmegaError
from omega.progress import Notes, quiet
from omega.sim.bench.index import backend_comparison, ef_sweep, measure_recall
from omega.sim.bench.timing import median_ms, p90_ms, rss_kinds_mb, rss_mb, timed_each, timed_each_with_cpu


def run_brain_bench(
    folder: Path, *, n_patterns: int | None = None, repeats: int = 300, max_items: int | None = None,
    progress: Notes = quiet,
) -> dict:
    """Measure the brain's budgets (docs/architecture.md §6 keys) on a MovieLens catalog.

    The SkillLibrary holds what the shipped learning founds (`_learned_patterns`: every title of the catalog
    watched once, in the order that founds the most); `n_patterns` fills it with that many synthetic patterns
    instead (a stress figure: up to max_patterns, more than this learning can found on a MovieLens catalog).

    Building the brain (embedding the whole catalog in batches) leaves the
    builder with memory a TV, which receives its catalog already embedded, never
    holds. So the brain is built here and measured in a fresh child process that
    opens it as a TV would: RSS is that process's, with `rss_breakdown_mb`
    (VmRSS deltas per load step) saying where it goes.
    """
    import subprocess
    import tempfile
    import time

    with tempfile.TemporaryDirectory(prefix="omega-bench-") as tmp:
        db = Path(tmp) / "brain.db"
        built = _build_bench_brain(folder, db, n_patterns=n_patterns, max_items=max_items, progress=progress,
                                   next_viewings=repeats)  # fmt: skip
        progress(f"measuring in a fresh process ({repeats} calls per figure)")
        started = time.perf_counter()
        # One BLAS thread, as the omega CLI sets it on a TV (see omega/cli/__init__.py), whoever calls this.
        env = {**os.environ, "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS", "1")}
        child = subprocess.run(
            [sys.executable, "-c", "import sys; from omega.sim.bench.brain import _measure_main; _measure_main(sys.argv[1:])",
             str(db), str(repeats), str(_viewings_path(db))],
            stdout=subprocess.PIPE, text=True, check=False, env=env,
        )  # fmt: skip
        if child.returncode != 0:
            raise OmegaError(f"bench brain: the measuring process failed (exit {child.returncode})")
        measured = json.loads(child.stdout)
        progress(f"measured in {time.perf_counter() - started:.1f} s")
        synced = _sync_figures(db, Path(tmp) / "server", env, progress)
    return {**measured, **built, "repeats": repeats, "threads": 1, **synced}


#: the figures `_sync_figures` adds (None, with `rss_after_sync_reason`, when there is no sync to measure)
SYNC_RSS_KEYS = ("rss_after_sync_mb", "rss_after_sync_anon_mb", "rss_after_sync_file_mb")
#: the seed's tiers (`omega.brain.sync.tiers`), each measured after the shipped default in `rss_after_sync_by_tier`
SYNC_TIERS = ("premium", "active", "casual")


def _sync_figures(db: Path, folder: Path, env: dict[str, str], progress: Notes) -> dict:
    """RSS of the brain once it has synced, as a TV that syncs holds it (issue 13's budget is about that TV).

    A real sync server (`omega serve`'s entry point, `start_server`) runs on a free loopback port over a SQLite
    store in `folder`; a fresh child process opens the brain as the measuring one does (the same load steps up
    to the first recommendation, so `rss_before_sync_mb` is the figure `rss_mb` is), then does one sync session
    through the TV's own `SyncAgent` with its shipped defaults (tier, transport, config) and reads RSS. Then one
    more child per other tier (`rss_after_sync_by_tier`: a tier loads its own transport's library only), each a
    new device on the same brain, which has synced before by then. The server is stopped whatever happens;
    `folder` lies in the caller's temporary directory, removed with it. A server that does not start or a sync
    that fails gives None figures and a reason, not an exception.
    """
    import secrets
    import subprocess
    import uuid

    from omega.constellation.keyring import Keyring
    from omega.constellation.settings import load_settings
    from omega.sim.load.server_process import start_server

    def missing(reason: str) -> dict:
        progress(f"bench brain: no RSS after a sync: {reason}")
        return {**dict.fromkeys(SYNC_RSS_KEYS), "rss_after_sync_reason": reason}

    secret = secrets.token_hex(32)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        server = start_server(folder, f"sqlite:{folder / 'constellation.db'}", secret, shard_id="bench-brain")
    except OmegaError as exc:
        return missing(f"the sync server did not start: {exc}")
    settings = load_settings(env={"OMEGA_SECRET": secret})
    keyring = Keyring(settings.secrets, settings.active_key_id)

    def sync_child(tier: str) -> dict:
        """One child's figures, or {"reason": ...}; `tier` "" is the shipped default."""
        device = uuid.uuid4().bytes
        child = subprocess.run(
            [sys.executable, "-c", "import sys; from omega.sim.bench.brain import _sync_main; _sync_main(sys.argv[1:])",
             str(db), server.url, device.hex(), keyring.token(device), tier],  # the token `omega device token` prints
            stdout=subprocess.PIPE, text=True, check=False, env=env,
        )  # fmt: skip
        if child.returncode != 0:
            return {"reason": f"the syncing process failed (exit {child.returncode})"}
        return json.loads(child.stdout)

    try:
        progress(f"one sync session against a sync server on {server.url}")
        synced = sync_child("")
        if "reason" in synced:
            return missing(synced["reason"])
        by_tier = {synced["sync_session"]["tier"]: synced}
        for tier in SYNC_TIERS:
            if tier not in by_tier:
                progress(f"one sync session of a {tier} TV")
                by_tier[tier] = sync_child(tier)
    finally:
        server.stop()
    synced["rss_after_sync_by_tier"] = {
        tier: by_tier[tier] if "reason" in by_tier[tier] else {
            "transport": by_tier[tier]["sync_session"]["transport"], "rss_mb": by_tier[tier]["rss_after_sync_mb"],
            "anon_mb": by_tier[tier]["rss_after_sync_anon_mb"], "file_mb": by_tier[tier]["rss_after_sync_file_mb"],
        }
        for tier in SYNC_TIERS
    }  # fmt: skip
    return synced


def _sync_main(argv: list[str]) -> None:
    """Child process of `_sync_figures`: open the brain like a TV, sync once (on the tier argv[4] names, else the
    shipped default), read RSS; JSON on stdout."""
    import asyncio

    from omega.brain.brain import Brain
    from omega.brain.records import ViewingContext

    db, url, device, token = Path(argv[0]), argv[1], bytes.fromhex(argv[2]), argv[3]
    tier = argv[4] if len(argv) > 4 else ""
    with Brain(db) as brain:
        brain.recommend(ViewingContext(20, 4), k=10)  # the load steps `rss_mb` is read after
        before = rss_mb()[0]
        # the sync stack (its tier's transport library, TLS) is imported only now: part of what syncing costs
        from omega.brain.sync import SyncAgent, parse_tier, tier_name
        from omega.brain.sync import state as sync_state

        sync_state.save_identity(brain.store, device, token)  # as `omega brain sync --device-id --token` does
        chosen = {"tier": parse_tier(tier)} if tier else {}
        agent = SyncAgent(brain, server_url=url, device_id=device, token=token, **chosen)  # shipped transport, config

        async def once() -> tuple[object, float, dict[str, float]]:
            try:
                report = await agent.sync_once()
                # read before close(): a persistent tier still holds its connection here
                return report, rss_mb()[0], rss_kinds_mb()
            finally:
                await agent.close()

        try:
            report, after, after_kinds = asyncio.run(once())
        except OmegaError as exc:  # SyncFailed, or the TV's own store refusing: a reason, not a traceback
            print(json.dumps({"reason": f"the sync failed: {exc}"}))
            return
    print(json.dumps({
        "rss_after_sync_mb": round(after, 1),
        "rss_after_sync_anon_mb": round(after_kinds["anon"], 1),
        "rss_after_sync_file_mb": round(after_kinds["file"], 1),
        "rss_before_sync_mb": round(before, 1),
        "sync_session": {"tier": tier_name(agent.tier), "transport": agent.policy.transport.value,
                         "pushed_patterns": report.pushed_patterns, "pushed_edges": report.pushed_edges,
                         "pulled_patterns": report.pulled_patterns, "pulled_edges": report.pulled_edges},
    }))  # fmt: skip


def _build_bench_brain(
    folder: Path, db: Path, *, n_patterns: int | None, max_items: int | None, progress, next_viewings: int = 0,  # noqa: ANN001
) -> dict:
    """A brain as a TV would hold it: embedded catalog + saved index, its SkillLibrary (learned, or `n_patterns`
    synthetic ones), synced priors, a history; and beside it (`_viewings_path`) the `next_viewings` viewings the
    measuring process watches, one before each first call after a viewing."""
    import time

    import numpy as np

    from omega.brain.brain import Brain
    from omega.brain.learning import episode_from_rating
    from omega.brain.records import ConsolidatedRecord, TaskType
    from omega.datasets.movielens import load_movielens

    rng = np.random.default_rng(7)
    data = load_movielens(folder)
    catalog_items = list(data.items[:max_items] if max_items else data.items)
    progress(f"loaded {len(catalog_items)} items and {len(data.ratings)} ratings from {folder}")
    with Brain(db, synchronous="NORMAL") as brain:
        started = time.perf_counter()
        last = [0.0]

        def tick(done: int, total: int) -> None:
            if time.perf_counter() - last[0] > 2 or done == total:
                last[0] = time.perf_counter()
                progress(f"embedding catalog {done}/{total}")

        brain.ingest_catalog(catalog_items, progress=tick)
        ingest_s = time.perf_counter() - started
        catalog = brain.catalog
        matrix, ids = catalog.matrix, catalog.ids

        if n_patterns is None:
            progress("learning patterns: every title watched once (the shipped pattern rule)")
            fill = _learned_patterns(brain, db.with_name("scratch.db"), data, rng)
        else:
            fill = _synthetic_patterns(matrix, n_patterns, rng)
        with brain.store.transaction():
            for pattern in fill:
                brain.store.put_pattern(pattern)
        # Consolidated patterns and global transitions, as a sync would leave them.
        centres = matrix[rng.choice(len(matrix), size=min(256, len(matrix)), replace=False)]
        brain.apply_consolidated(
            [ConsolidatedRecord(i, c, TaskType.CONTENT_MATCH, float(rng.uniform(0.5, 1)), int(rng.integers(3, 500)),
                                 float(rng.normal()), 1) for i, c in enumerate(centres)],  # fmt: skip
            _global_transitions(data, set(ids.tolist())),
            pairs=_global_pairs(data, set(ids.tolist())),
        )
        # A real viewer's history: the first user's ratings, as viewings.
        r = data.ratings
        user = int(r.user[0])
        mine = [
            (int(i), float(s), int(t))
            for u, i, s, t in zip(r.user.tolist(), r.item.tolist(), r.rating.tolist(), r.timestamp.tolist())
            if u == user and i in catalog
        ][:40]
        for content_id, stars, ts in mine:
            viewing = episode_from_rating(stars)
            brain.on_user_action(content_id, watch_fraction=viewing.watch_fraction, engagement=viewing.engagement, started_at=ts)
        stats = brain.stats()
    upcoming = _next_viewings(data, catalog, {c for c, _, _ in mine}, next_viewings)
    if next_viewings and not upcoming:
        raise OmegaError("bench brain: the viewer has watched every title of the catalog: use more --items")
    _viewings_path(db).write_text(json.dumps(upcoming))
    progress(f"built: {stats['patterns']} patterns, {stats['global_transitions']} global transitions, {len(mine)} viewings")
    return {
        "catalog_items": len(catalog_items),
        "patterns": stats["patterns"],
        "pattern_fill": LEARNED_FILL if n_patterns is None else "synthetic",
        "consolidated": stats["consolidated"],
        "global_transitions": stats["global_transitions"],
        "global_pairs": stats["global_pairs"],
        "episodes": stats["episodes"],
        "index_file_mb": round(stats["catalog_index_bytes"] / 1e6, 2),
        "ingest_s": round(ingest_s, 1),
    }


def _viewings_path(db: Path) -> Path:
    """Where `_build_bench_brain` leaves the viewings the measuring process watches (`_next_viewings`)."""
    return db.with_name("viewings.json")


def _next_viewings(data, catalog, watched: set[int], n: int) -> list[tuple[int, float, int]]:  # noqa: ANN001
    """(content id, stars, timestamp) of the first `n` ratings of the dataset, in its order, of titles the bench
    viewer has not watched, each title once: what the viewer goes on to watch (the first user's ratings after
    the history, then the next users')."""
    r = data.ratings
    out: list[tuple[int, float, int]] = []
    seen = set(watched)
    for item, stars, ts in zip(r.item.tolist(), r.rating.tolist(), r.timestamp.tolist()):
        if len(out) == n:
            break
        if item not in seen and item in catalog:
            seen.add(item)
            out.append((int(item), float(stars), int(ts)))
    return out


#: `pattern_fill` of the default bench brain (see `_learned_patterns`)
LEARNED_FILL = "learned: every title watched once, least-connected first"


def _synthetic_patterns(matrix, n: int, rng) -> list:  # noqa: ANN001
    """`n` patterns around random catalog items (noisy, renormalised), with random counts: a SkillLibrary of any
    size up to max_patterns, whether or not viewings could found it."""
    import time
    import uuid

    import numpy as np

    from omega.brain.records import Pattern, TaskType

    now = time.time()
    out = []
    for _ in range(n):
        vector = matrix[rng.integers(len(matrix))] + rng.normal(0, 0.02, matrix.shape[1]).astype(np.float32)
        uses = int(rng.integers(1, 60))
        successes = int(rng.binomial(uses, rng.uniform(0.3, 1.0)))
        out.append(Pattern(
            uuid.uuid4(), vector / np.linalg.norm(vector), TaskType.CONTENT_MATCH, successes / uses, uses,
            successes, now - 86_400, now - 3_600, now - float(rng.uniform(0, 86_400 * 30)),
            float(uses * rng.uniform(0.0, 0.9)), 1,
        ))  # fmt: skip
    return out


def _learned_patterns(brain, scratch: Path, data, rng) -> list:  # noqa: ANN001
    """The SkillLibrary the shipped learning founds when a viewer watches every title of the catalog once.

    A pattern is founded only by a viewing farther than `pattern_match_threshold` from every pattern held
    (else that pattern learns from it), so a catalog bounds how many a TV can hold. The titles are watched
    least-connected first (fewest other titles within the threshold), the order that founded the most in our
    tries (ml-latest-small: 1,094; random orders 424-452), each with a star rating drawn from that title's own
    ratings (a random one of the dataset's for an unrated title). Watched by a scratch brain over the same
    catalog (`Brain.on_user_action`, the shipped rule), whose patterns are returned.
    """
    import time

    import numpy as np

    from omega.brain.brain import Brain
    from omega.brain.learning import episode_from_rating

    catalog = brain.catalog
    threshold = brain.config.pattern_match_threshold
    unit = catalog.vectors(np.arange(len(catalog.ids)))
    degree = np.concatenate([(unit[i : i + 1024] @ unit.T >= threshold).sum(axis=1) for i in range(0, len(unit), 1024)])
    order = np.lexsort((rng.random(len(unit)), degree))  # ties in a seeded random order
    stars: dict[int, list[float]] = {}
    for item, rating in zip(data.ratings.item.tolist(), data.ratings.rating.tolist()):
        stars.setdefault(int(item), []).append(float(rating))
    every = data.ratings.rating
    start = time.time() - 86_400 * 365
    with Brain(scratch, catalog=catalog, embedder=brain.embedder, config=brain.config, synchronous="NORMAL") as viewer:
        for step, row in enumerate(order.tolist()):
            content_id = int(catalog.ids[row])
            mine = stars.get(content_id)
            rating = float(mine[rng.integers(len(mine))] if mine else every[rng.integers(len(every))])
            viewing = episode_from_rating(rating)
            viewer.on_user_action(content_id, watch_fraction=viewing.watch_fraction, engagement=viewing.engagement,
                                  started_at=start + 3_600.0 * step)  # fmt: skip
        learned = viewer.store.patterns()
    for leftover in (scratch, scratch.with_name(scratch.name + "-wal"), scratch.with_name(scratch.name + "-shm")):
        leftover.unlink(missing_ok=True)
    return learned


#: real queries per kind for recall: catalog items and the recommender's own context queries
RECALL_QUERIES = 500


def _measure_main(argv: list[str]) -> None:
    """Child process of `run_brain_bench`: open the brain like a TV and time it; JSON on stdout.

    RSS is read step by step while the brain loads (VmRSS deltas: what each part
    costs) and reported before any timing loop runs.
    """
    import time

    import numpy as np

    from omega.brain.brain import Brain
    from omega.brain.learning import episode_from_rating
    from omega.brain.records import ViewingContext

    db, repeats, viewings = Path(argv[0]), int(argv[1]), json.loads(Path(argv[2]).read_text())
    rng = np.random.default_rng(11)
    breakdown: dict[str, float] = {}
    kinds: dict[str, dict[str, float]] = {}  # the same steps split into anon (own) and file-mapped pages
    last = [rss_mb()[0]]
    last_kinds = [rss_kinds_mb()]
    # interpreter + numpy + onnxruntime + omega.brain (usearch only with that backend); this module imports
    # nothing heavier, so the figure is a TV process's, not the bench's
    breakdown["runtime"] = last[0]
    kinds["runtime"] = dict(last_kinds[0])

    def step(name: str) -> None:
        now, now_kinds = rss_mb()[0], rss_kinds_mb()
        breakdown[name] = round(breakdown.get(name, 0.0) + now - last[0], 1)
        kinds[name] = {k: round(now_kinds[k] - last_kinds[0][k], 1) for k in now_kinds}
        last[0], last_kinds[0] = now, now_kinds

    started = time.perf_counter()
    with Brain(db) as brain:
        step("store")
        embedder = brain.embedder
        step("embedder")
        catalog = brain.catalog
        step("catalog")
        memory = brain._memory()
        step("patterns")
        brain.recommend(ViewingContext(20, 4), k=10)  # loads priors and history, first inference
        step("first_recommend")
        load_ms = (time.perf_counter() - started) * 1000.0
        current, peak = rss_mb()
        current_kinds = rss_kinds_mb()
        breakdown["runtime"] = round(breakdown["runtime"], 1)
        kinds["runtime"] = {k: round(v, 1) for k, v in kinds["runtime"].items()}

        text = "Evening on a Friday. Recently watched: Heat; Alien; Toy Story"
        embed, embed_cpu = timed_each_with_cpu(lambda _: embedder.embed(text), range(repeats))
        contexts = [ViewingContext(hour=h % 24, weekday=h % 7) for h in range(repeats)]
        # The first call after a pull: every edge row the store keeps is dropped (a pull changes the published
        # tables, and the TV's own are read again too) and the context is embedded again.
        recommend_pull, recommend_pull_cpu = timed_each_with_cpu(
            lambda c: (brain._context_vectors.clear(), brain.store.edges.forget(), brain.recommend(c, k=10)), contexts
        )
        # A new daypart with the same history: the context is embedded again, the edge rows are still kept.
        recommend_daypart, recommend_daypart_cpu = timed_each_with_cpu(
            lambda c: (brain._context_vectors.clear(), brain.recommend(c, k=10)), contexts
        )
        # A repeated call in one viewing session (same daypart, same history): the brain remembers the
        # context's vector and recomputes everything else.
        session = ViewingContext(20, 4)
        brain.recommend(session, k=10)
        recommend_session, recommend_session_cpu = timed_each_with_cpu(
            lambda _: brain.recommend(session, k=10), range(repeats)
        )
        after, peak = rss_mb()  # the brain after use, before the bench's own recall arrays below
        # The first call after a viewing: the viewer watches a title it had not seen (`Brain.on_user_action`,
        # untimed), then the call pays what that viewing changed: its context text (a new last title) is
        # embedded, its own transitions and the new title's published rows are read. Last, as these viewings
        # grow the history the figures above are measured on.
        watch = iter(viewings)

        def view(_: object) -> None:
            content_id, stars, ts = next(watch)
            seen = episode_from_rating(stars)
            brain.on_user_action(content_id, watch_fraction=seen.watch_fraction, engagement=seen.engagement,
                                 started_at=ts)  # fmt: skip

        recommend, recommend_cpu = timed_each_with_cpu(
            lambda c: brain.recommend(c, k=10), contexts[: len(viewings)], before=view
        )

        # Real queries: catalog items (what pattern/consolidated neighbourhoods and "more like this" send)
        # and the recommender's own query vectors (embedded context text blended with a viewing history).
        ids, truth_matrix = brain.store.catalog_embeddings()  # the store's float32 truth, not the f16 copy
        truth_matrix /= np.linalg.norm(truth_matrix, axis=1, keepdims=True)
        n_q = min(RECALL_QUERIES, len(ids))
        item_queries = truth_matrix[rng.choice(len(ids), size=n_q, replace=False)]
        ranker = brain._ranker()
        context_queries = np.stack([
            ranker._query(ViewingContext(int(rng.integers(24)), int(rng.integers(7))),
                          [int(c) for c in rng.choice(ids, size=int(rng.integers(0, 6)), replace=False)])[0]
            for _ in range(n_q)
        ]).astype(np.float32)  # fmt: skip
        queries = np.concatenate([item_queries, context_queries])
        timing_queries = queries[rng.permutation(len(queries))[:repeats]]
        search = timed_each(lambda q: catalog.search(q, 50), timing_queries)
        index = catalog.index
        default_ef = index.expansion_search
        recall = measure_recall(index, ids, truth_matrix, queries, 50)
        sweep = ef_sweep(index, ids, truth_matrix, queries, timing_queries, default_ef)
        config = brain.config
        comparison = backend_comparison(config, ids, truth_matrix, queries, timing_queries)
    print(json.dumps({
        "embed_ms_p50": round(median_ms(embed), 3),
        "search_us_p50": round(median_ms(search) * 1000.0, 1),
        "recommend_ms_p50": round(median_ms(recommend), 3),
        "recommend_same_context_ms_p50": round(median_ms(recommend_session), 3),
        "recommend_new_daypart_ms_p50": round(median_ms(recommend_daypart), 3),
        "rss_mb": round(current, 1),
        "recall_at_50": round(recall["all"], 4),
        "recall_at_50_items": round(recall["items"], 4),
        "recall_at_50_contexts": round(recall["contexts"], 4),
        "recall_queries": {"items": n_q, "contexts": n_q, "truth": "exact numpy cosine over the store's float32 embeddings"},
        "embed_ms_p90": round(p90_ms(embed), 3),
        "search_us_p90": round(p90_ms(search) * 1000.0, 1),
        "recommend_ms_p90": round(p90_ms(recommend), 3),
        "recommend_same_context_ms_p90": round(p90_ms(recommend_session), 3),
        "embed_cpu_ms_p50": round(median_ms(embed_cpu), 3),
        "recommend_cpu_ms_p50": round(median_ms(recommend_cpu), 3),
        "recommend_same_context_cpu_ms_p50": round(median_ms(recommend_session_cpu), 3),
        "recommend_new_daypart_cpu_ms_p50": round(median_ms(recommend_daypart_cpu), 3),
        "recommend_after_pull_ms_p50": round(median_ms(recommend_pull), 3),
        "recommend_after_pull_cpu_ms_p50": round(median_ms(recommend_pull_cpu), 3),
        "first_calls_after_a_viewing": len(recommend),
        "rss_breakdown_mb": breakdown,
        "rss_anon_mb": round(current_kinds["anon"], 1),
        "rss_file_mb": round(current_kinds["file"], 1),
        "rss_breakdown_kinds_mb": kinds,
        "memory_objects_mb": {
            "catalog_matrix_f16": round(catalog.nbytes / 1e6, 2),
            f"catalog_index_{index.backend}": round(index.memory_bytes / 1e6, 2),
            "pattern_memory": round(memory.nbytes / 1e6, 2),
        },
        "rss_after_runs_mb": round(after, 1),
        "rss_peak_mb": round(peak, 1),
        "load_ms": round(load_ms, 1),
        "index_backend": index.backend,
        "embedder_model_file": embedder.model_file,
        "index": {"backend": index.backend, "dtype": index.dtype, "m": index.connectivity, "ef_construction": index.expansion_add,
                  "ef_search": default_ef, "threads": index.threads},
        "ef_sweep": sweep,
        "config_index": {"index_m": config.index_m, "index_ef_construction": config.index_ef_construction,
                         "index_ef_search": config.index_ef_search, "index_dtype": config.index_dtype,
                         "index_backend": config.index_backend},
        "backend_comparison": comparison,
    }))  # fmt: skip


def _global_transitions(data, known: set[int]) -> list:  # noqa: ANN001
    """Consecutive good viewings of every user, counted over the whole dataset (what the cloud would hold)."""
    from collections import Counter

    from omega.brain.records import TransitionStat

    last: dict[int, int] = {}
    counts: Counter[tuple[int, int]] = Counter()
    r = data.ratings
    for user, item, stars in zip(r.user.tolist(), r.item.tolist(), r.rating.tolist()):
        if stars < 3.0 or item not in known:
            continue
        prev = last.get(user)
        if prev is not None and prev != item:
            counts[(prev, item)] += 1
        last[user] = item
    return [TransitionStat(src, dst, float(n), n) for (src, dst), n in counts.items() if n >= 2]


def _global_pairs(data, known: set[int], window: int = 5, k_min: int = DEFAULT_K_MIN) -> list:  # noqa: ANN001
    """Unordered pairs of good viewings at most `window` apart, by distinct viewers, published at >= k_min
    (weight = support, as the constellation publishes them)."""
    from collections import defaultdict

    from omega.brain.records import TransitionStat

    recent: dict[int, list[int]] = defaultdict(list)
    viewers: dict[tuple[int, int], set[int]] = defaultdict(set)
    r = data.ratings
    for user, item, stars in zip(r.user.tolist(), r.item.tolist(), r.rating.tolist()):
        if stars < 3.0 or item not in known:
            continue
        seen = recent[user]
        for prev in seen[-window:]:
            if prev != item:
                viewers[(min(prev, item), max(prev, item))].add(user)
        seen.append(item)
    return [TransitionStat(a, b, float(len(v)), len(v)) for (a, b), v in viewers.items() if len(v) >= k_min]
