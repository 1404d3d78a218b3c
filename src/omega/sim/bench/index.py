"""The catalog index compared in the measuring process: recall@50 and search µs per ef and per backend."""

from __future__ import annotations

from pathlib import Path

from omega.sim.bench.timing import p90_ms, rss_mb

#: HNSW search breadths compared in every run (recall vs µs, same process, same queries)
EF_SWEEP = (64, 96, 128, 160)


def measure_recall(index, ids, truth_matrix, queries, k: int) -> dict[str, float]:  # noqa: ANN001
    """recall@k of `index` against exact search over `truth_matrix`; first half item queries, second half contexts.

    Nothing is excluded on either side (an item query's own item is in its truth and may be found).
    """
    from omega.brain.index import recall_at_k

    half = len(queries) // 2
    items = recall_at_k(index, truth_matrix, queries[:half], k, keys=ids)
    contexts = recall_at_k(index, truth_matrix, queries[half:], k, keys=ids)
    return {"items": items, "contexts": contexts, "all": (items + contexts) / 2}


def ef_sweep(index, ids, truth_matrix, queries, timing_queries, default_ef: int) -> dict[str, dict]:  # noqa: ANN001
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
            recall = measure_recall(index, ids, truth_matrix, queries, 50)
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


def backend_comparison(config, ids, truth_matrix, queries, timing_queries) -> dict[str, dict]:  # noqa: ANN001
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
        recall = measure_recall(index, ids, truth_matrix, queries, 50)
        out[f"{backend}_{dtype}"]["ef"][str(ef)] = {
            "recall_at_50": round(recall["all"], 4),
            "recall_at_50_items": round(recall["items"], 4),
            "recall_at_50_contexts": round(recall["contexts"], 4),
            "search_us_p50": round(statistics.median(wrapped[combo]) * 1e6, 1),
            "search_us_p90": round(p90_ms(wrapped[combo]) * 1e3, 1),
            "raw_library_us_p50": round(statistics.median(raw[combo]) * 1e6, 1),
        }
    return out
