"""`omega bench …` commands: measured budgets, one JSON object on stdout, progress on stderr.

This module holds the group and `bench brain`. Other benchmarks live in their
own modules and attach themselves to `app` (``@app.command("sync")``); they are
imported at the bottom of this file when present, so adding one never touches
the root CLI.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from omega.errors import OmegaError

app = typer.Typer(help="benchmarks of the edge and sync budgets (JSON on stdout)", no_args_is_help=True)

#: Modules that add `bench` subcommands to `app` when imported.
EXTENSIONS = ("omega.cli.bench_sync",)

REPO = Path(__file__).resolve().parents[3]


def default_data_dir() -> Path:
    """$OMEGA_DATA/ml-latest-small, else ../shared/data/ml-latest-small beside the repository."""
    base = Path(os.environ["OMEGA_DATA"]) if os.environ.get("OMEGA_DATA") else REPO.parent / "shared" / "data"
    return base / "ml-latest-small"


def progress(message: str) -> None:
    print(f"omega bench: {message}", file=sys.stderr, flush=True)


def _positive(option: str, lo: int, hi: int):  # noqa: ANN202  (a typer parser)
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise OmegaError(f"{option} must be an integer in {lo}..{hi}, got {text!r}") from None
        if not lo <= value <= hi:
            raise OmegaError(f"{option} must be an integer in {lo}..{hi}, got {text!r}")
        return value

    return parse


@app.command("brain")
def brain(
    data: Annotated[Path | None, typer.Option("--data", help="MovieLens folder (default: $OMEGA_DATA or ../shared/data)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object on stdout")] = False,
    patterns: Annotated[int, typer.Option("--patterns", help="patterns in the store", parser=_positive("--patterns", 0, 10_000))] = 10_000,
    repeats: Annotated[int, typer.Option("--repeats", help="timed calls per figure", parser=_positive("--repeats", 5, 100_000))] = 300,
    items: Annotated[int, typer.Option("--items", help="use only the first N catalog items (0 = all)", parser=_positive("--items", 0, 10_000_000))] = 0,
) -> None:
    """Edge budgets on a real catalog: embed, search k=50, recommend end to end, RSS, recall@50."""
    folder = data if data is not None else default_data_dir()
    report = run_brain_bench(folder, n_patterns=patterns, repeats=repeats, max_items=items or None, progress=progress)
    if as_json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            print(f"{key:<22} {value}")


# ---------------------------------------------------------------- bench brain


def _median_ms(samples: list[float]) -> float:
    import statistics

    return statistics.median(samples) * 1000.0


def _p90_ms(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))] * 1000.0


def rss_mb() -> tuple[float, float]:
    """(current, peak) resident set size of this process in MB.

    /proc's VmHWM, not getrusage's ru_maxrss: the latter carries the parent's
    high-water mark over fork+exec and would blame the builder's memory on the child.
    """
    import resource

    found: dict[str, float] = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                found[key] = int(value.split()[0]) / 1024.0
    except OSError:
        pass
    fallback = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KB on Linux
    return found.get("VmRSS", fallback), found.get("VmHWM", fallback)


def run_brain_bench(
    folder: Path, *, n_patterns: int = 10_000, repeats: int = 300, max_items: int | None = None, progress=progress
) -> dict:
    """Measure the brain's budgets (DESIGN §6 keys) on a MovieLens catalog.

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
        built = _build_bench_brain(folder, db, n_patterns=n_patterns, max_items=max_items, progress=progress)
        progress(f"measuring in a fresh process ({repeats} calls per figure)")
        started = time.perf_counter()
        child = subprocess.run(
            [sys.executable, "-c", "import sys; from omega.cli.bench import _measure_main; _measure_main(sys.argv[1:])",
             str(db), str(repeats)],
            stdout=subprocess.PIPE, text=True, check=False,
        )  # fmt: skip
        if child.returncode != 0:
            raise OmegaError(f"bench brain: the measuring process failed (exit {child.returncode})")
        measured = json.loads(child.stdout)
        progress(f"measured in {time.perf_counter() - started:.1f} s")
    return {**measured, **built, "repeats": repeats, "threads": 1}


def _build_bench_brain(folder: Path, db: Path, *, n_patterns: int, max_items: int | None, progress) -> dict:  # noqa: ANN001
    """A brain as a TV would hold it: embedded catalog + saved index, a full SkillLibrary, synced priors, a history."""
    import time
    import uuid

    import numpy as np

    from omega.brain.brain import Brain
    from omega.brain.learning import episode_from_rating
    from omega.brain.records import ConsolidatedPattern, Pattern, TaskType
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

        # A full SkillLibrary: real patterns around real items (noisy, renormalised).
        progress(f"filling {n_patterns} patterns")
        now = time.time()
        with brain.store.transaction():
            for _ in range(n_patterns):
                vector = matrix[rng.integers(len(matrix))] + rng.normal(0, 0.02, matrix.shape[1]).astype(np.float32)
                uses = int(rng.integers(1, 60))
                successes = int(rng.binomial(uses, rng.uniform(0.3, 1.0)))
                brain.store.put_pattern(Pattern(
                    uuid.uuid4(), vector / np.linalg.norm(vector), TaskType.CONTENT_MATCH, successes / uses, uses,
                    successes, now - 86_400, now - 3_600, now - float(rng.uniform(0, 86_400 * 30)),
                    float(uses * rng.uniform(0.0, 0.9)), 1,
                ))  # fmt: skip
        # Consolidated patterns and global transitions, as a sync would leave them.
        centres = matrix[rng.choice(len(matrix), size=min(256, len(matrix)), replace=False)]
        brain.apply_consolidated(
            [ConsolidatedPattern(i, c, TaskType.CONTENT_MATCH, float(rng.uniform(0.5, 1)), int(rng.integers(3, 500)),
                                 float(rng.normal()), 1) for i, c in enumerate(centres)],  # fmt: skip
            _global_transitions(data, set(ids.tolist())),
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
    progress(f"built: {stats['patterns']} patterns, {stats['global_transitions']} global transitions, {len(mine)} viewings")
    return {
        "catalog_items": len(catalog_items),
        "patterns": stats["patterns"],
        "consolidated": stats["consolidated"],
        "global_transitions": stats["global_transitions"],
        "episodes": stats["episodes"],
        "index_file_mb": round(stats["catalog_index_bytes"] / 1e6, 2),
        "ingest_s": round(ingest_s, 1),
    }


#: HNSW search breadths compared in every run (recall vs µs, same process, same queries)
EF_SWEEP = (64, 96, 128, 160)
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
    from omega.brain.records import ViewingContext

    db, repeats = Path(argv[0]), int(argv[1])
    rng = np.random.default_rng(11)
    breakdown: dict[str, float] = {}
    last = [rss_mb()[0]]
    breakdown["runtime"] = last[0]  # interpreter + numpy + onnxruntime + tokenizers + usearch + omega

    def step(name: str) -> None:
        now = rss_mb()[0]
        breakdown[name] = round(breakdown.get(name, 0.0) + now - last[0], 1)
        last[0] = now

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
        breakdown["runtime"] = round(breakdown["runtime"], 1)

        text = "Evening on a Friday. Recently watched: Heat; Alien; Toy Story"
        embed = _timed(lambda: embedder.embed(text), repeats)
        contexts = [ViewingContext(hour=h % 24, weekday=h % 7) for h in range(repeats)]
        recommend = _timed_each(lambda c: brain.recommend(c, k=10), contexts)
        after, peak = rss_mb()  # the brain after use, before the bench's own recall arrays below

        # Real queries: catalog items (what pattern/consolidated neighbourhoods and "more like this" send)
        # and the recommender's own query vectors (embedded context text blended with a viewing history).
        ids, truth_matrix = brain.store.catalog_embeddings()  # the store's float32 truth, not the f16 copy
        truth_matrix /= np.linalg.norm(truth_matrix, axis=1, keepdims=True)
        n_q = min(RECALL_QUERIES, len(ids))
        item_queries = truth_matrix[rng.choice(len(ids), size=n_q, replace=False)]
        ranker = brain._ranker()
        context_queries = np.stack([
            ranker._query(ViewingContext(int(rng.integers(24)), int(rng.integers(7))),
                          [int(c) for c in rng.choice(ids, size=int(rng.integers(0, 6)), replace=False)])
            for _ in range(n_q)
        ]).astype(np.float32)  # fmt: skip
        queries = np.concatenate([item_queries, context_queries])
        timing_queries = queries[rng.permutation(len(queries))[:repeats]]
        search = _timed_each(lambda q: catalog.search(q, 50), timing_queries)
        index = catalog.index
        default_ef = index.expansion_search
        recall = _recall(index, ids, truth_matrix, queries, 50)
        sweep = _ef_sweep(index, ids, truth_matrix, queries, timing_queries, default_ef)
        config = brain.config
        comparison = _backend_comparison(config, ids, truth_matrix, queries, timing_queries)
    print(json.dumps({
        "embed_ms_p50": round(_median_ms(embed), 3),
        "search_us_p50": round(_median_ms(search) * 1000.0, 1),
        "recommend_ms_p50": round(_median_ms(recommend), 3),
        "rss_mb": round(current, 1),
        "recall_at_50": round(recall["all"], 4),
        "recall_at_50_items": round(recall["items"], 4),
        "recall_at_50_contexts": round(recall["contexts"], 4),
        "recall_queries": {"items": n_q, "contexts": n_q, "truth": "exact numpy cosine over the store's float32 embeddings"},
        "embed_ms_p90": round(_p90_ms(embed), 3),
        "search_us_p90": round(_p90_ms(search) * 1000.0, 1),
        "recommend_ms_p90": round(_p90_ms(recommend), 3),
        "rss_breakdown_mb": breakdown,
        "memory_objects_mb": {
            "catalog_matrix_f16": round(catalog.nbytes / 1e6, 2),
            f"catalog_index_{index.backend}": round(index.memory_bytes / 1e6, 2),
            "pattern_memory": round(memory.nbytes / 1e6, 2),
        },
        "rss_after_runs_mb": round(after, 1),
        "rss_peak_mb": round(peak, 1),
        "load_ms": round(load_ms, 1),
        "index_backend": index.backend,
        "index": {"backend": index.backend, "dtype": index.dtype, "m": index.connectivity, "ef_construction": index.expansion_add,
                  "ef_search": default_ef, "threads": index.threads},
        "ef_sweep": sweep,
        "config_index": {"index_m": config.index_m, "index_ef_construction": config.index_ef_construction,
                         "index_ef_search": config.index_ef_search, "index_dtype": config.index_dtype,
                         "index_backend": config.index_backend},
        "backend_comparison": comparison,
    }))  # fmt: skip


def _recall(index, ids, truth_matrix, queries, k: int) -> dict[str, float]:  # noqa: ANN001
    """recall@k of `index` against exact search over `truth_matrix`; first half item queries, second half contexts.

    Nothing is excluded on either side (an item query's own item is in its truth and may be found).
    """
    from omega.brain.index import recall_at_k

    half = len(queries) // 2
    items = recall_at_k(index, truth_matrix, queries[:half], k, keys=ids)
    contexts = recall_at_k(index, truth_matrix, queries[half:], k, keys=ids)
    return {"items": items, "contexts": contexts, "all": (items + contexts) / 2}


def _ef_sweep(index, ids, truth_matrix, queries, timing_queries, default_ef: int) -> dict[str, dict]:  # noqa: ANN001
    """recall@50 and search µs per ef, timed in interleaved blocks in this one process."""
    import statistics
    import time

    import numpy as np

    efs = sorted(set(EF_SWEEP) | {default_ef})
    samples: dict[int, list[float]] = {ef: [] for ef in efs}
    blocks = np.array_split(timing_queries, 3) if len(timing_queries) >= 3 else [timing_queries]
    try:
        for block in blocks:
            for ef in efs:
                index.expansion_search = ef
                index.search(block[0], 50)  # settle after the change
                for q in block:
                    t0 = time.perf_counter()
                    index.search(q, 50)
                    samples[ef].append(time.perf_counter() - t0)
        out = {}
        for ef in efs:
            index.expansion_search = ef
            recall = _recall(index, ids, truth_matrix, queries, 50)
            out[str(ef)] = {
                "recall_at_50": round(recall["all"], 4),
                "recall_at_50_contexts": round(recall["contexts"], 4),
                "search_us_p50": round(statistics.median(samples[ef]) * 1e6, 1),
            }
        return out
    finally:
        index.expansion_search = default_ef


#: (backend, dtype, ef values) compared on the real catalog in every run
BACKEND_VARIANTS = (("usearch", "f16", (64, 80, 96, 128)), ("hnswlib", "f32", (48, 64, 80, 96, 128)))


def _backend_comparison(config, ids, truth_matrix, queries, timing_queries) -> dict[str, dict]:  # noqa: ANN001
    """Every backend in BACKEND_VARIANTS built over the same vectors (config's M and ef_construction), same queries.

    Per variant: build time, VmRSS growth while building it, the library's memory figure, the saved file
    size; per ef: recall@50 and search µs p50 through `VectorIndex.search` and through the bare library
    call (the difference is the wrapper's cost: input checks, k clamp, result conversion). All timings
    are interleaved in blocks (variant by variant, ef by ef) so a noisy core hits every figure alike.
    """
    import gc
    import statistics
    import tempfile
    import time

    import numpy as np

    from omega.brain.index import VectorIndex

    built: dict[str, VectorIndex] = {}
    out: dict[str, dict] = {}
    for backend, dtype, _ in BACKEND_VARIANTS:
        gc.collect()
        before = rss_mb()[0]
        started = time.perf_counter()
        index = VectorIndex(
            truth_matrix.shape[1], dtype=dtype, connectivity=config.index_m, expansion_add=config.index_ef_construction,
            expansion_search=config.index_ef_search, exact_below=config.index_exact_below, threads=1, backend=backend,
        )  # fmt: skip
        index.add(ids, truth_matrix)
        build_s = time.perf_counter() - started
        gc.collect()
        with tempfile.TemporaryDirectory(prefix="omega-bench-index-") as tmp:
            path = Path(tmp) / "catalog.index"
            index.save(path)
            file_mb = path.stat().st_size / 1e6
        built[backend] = index
        out[f"{backend}_{dtype}"] = {
            "backend": backend, "dtype": dtype, "m": config.index_m, "ef_construction": config.index_ef_construction,
            "build_s": round(build_s, 2), "rss_growth_mb": round(rss_mb()[0] - before, 1),
            "memory_mb": round(index.memory_bytes / 1e6, 2), "file_mb": round(file_mb, 2), "ef": {},
        }  # fmt: skip

    def raw_call(backend: str, index: VectorIndex):  # noqa: ANN202
        library = index._index.index
        if backend == "usearch":
            return lambda q: library.search(q, 50, threads=1)
        return lambda q: library.knn_query(q, k=50, num_threads=1)

    combos = [(backend, dtype, ef) for backend, dtype, efs in BACKEND_VARIANTS for ef in efs]
    wrapped: dict[tuple, list[float]] = {c: [] for c in combos}
    raw: dict[tuple, list[float]] = {c: [] for c in combos}
    rows = [np.ascontiguousarray(q[None, :], dtype=np.float32) for q in timing_queries]
    blocks = np.array_split(np.arange(len(rows)), 3) if len(rows) >= 3 else [np.arange(len(rows))]
    for block in blocks:
        for combo in combos:
            backend, _, ef = combo
            index = built[backend]
            index.expansion_search = ef
            call = raw_call(backend, index)
            index.search(rows[block[0]][0], 50)  # settle after the change
            for i in block:  # alternate which goes first: the second call finds the first's path in cache
                q = rows[i]
                if i % 2:
                    t0 = time.perf_counter()
                    index.search(q[0], 50)
                    t1 = time.perf_counter()
                    call(q)
                else:
                    t0 = time.perf_counter()
                    call(q)
                    t1 = time.perf_counter()
                    index.search(q[0], 50)
                t2 = time.perf_counter()
                wrapped[combo].append(t1 - t0 if i % 2 else t2 - t1)
                raw[combo].append(t2 - t1 if i % 2 else t1 - t0)
    for combo in combos:
        backend, dtype, ef = combo
        index = built[backend]
        index.expansion_search = ef
        recall = _recall(index, ids, truth_matrix, queries, 50)
        out[f"{backend}_{dtype}"]["ef"][str(ef)] = {
            "recall_at_50": round(recall["all"], 4),
            "recall_at_50_items": round(recall["items"], 4),
            "recall_at_50_contexts": round(recall["contexts"], 4),
            "search_us_p50": round(statistics.median(wrapped[combo]) * 1e6, 1),
            "search_us_p90": round(_p90_ms(wrapped[combo]) * 1e3, 1),
            "raw_library_us_p50": round(statistics.median(raw[combo]) * 1e6, 1),
        }
    return out


def _timed(fn, repeats: int) -> list[float]:  # noqa: ANN001
    import time

    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return samples


def _timed_each(fn, args) -> list[float]:  # noqa: ANN001
    import time

    samples = []
    for arg in args:
        t0 = time.perf_counter()
        fn(arg)
        samples.append(time.perf_counter() - t0)
    return samples


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


for _name in EXTENSIONS:
    if importlib.util.find_spec(_name) is not None:
        importlib.import_module(_name)
