"""`VectorIndex.search` of another checkout against this one's, on one loaded catalog index, in one process.

Issue 13 (2026-12-02): what the wrapper around hnswlib's knn_query costs on the catalog's hot path. Both methods
run on the same index object (the other checkout's `VectorIndex` class over this one's backend), with the bare
knn_query beside them; blocks of 100 queries (the bench's mix: 500 catalog items, 500 context queries, seed 11),
the three in a seeded random order per round. Prints medians and per-round wins as JSON.

    PYTHONPATH=src .venv/bin/python bench/search_wrapper_ab.py OTHER/src/omega/brain/index.py BRAIN_DB [rounds] [seed]
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path

import numpy as np


def main(argv: list[str]) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from hnsw_reorder_probe import _queries

    from omega.brain.brain import Brain

    spec = importlib.util.spec_from_file_location("other_index", argv[0])
    other = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(other)
    rounds = int(argv[2]) if len(argv) > 2 else 40
    queries, _ = _queries(Path(argv[1]))
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    with Brain(Path(argv[1])) as brain:
        index = brain.catalog.index
        old = other.VectorIndex.__new__(other.VectorIndex)
        old.__dict__.update(index.__dict__)  # the same backend and index, the other checkout's methods
        raw = index._index.index
        calls = {"old": lambda q: old.search(q, 50), "new": lambda q: index.search(q, 50),
                 "raw": lambda q: raw.knn_query(q, k=50, num_threads=1)}  # fmt: skip
        same = sum(
            all(np.array_equal(a, b) for a, b in zip(old.search(q, 50), index.search(q, 50))) for q in queries
        )
        rng = np.random.default_rng(int(argv[3]) if len(argv) > 3 else 2)
        took: dict[str, list[float]] = {name: [] for name in calls}
        for _ in range(rounds):
            block = rng.permutation(len(queries))[:100]
            for name in rng.permutation(list(calls)):
                call = calls[name]
                for i in block:
                    q = queries[i]
                    start = time.perf_counter()
                    call(q)
                    took[name].append(time.perf_counter() - start)
    per_round = {name: np.median(np.array(v).reshape(rounds, -1), axis=1) for name, v in took.items()}
    print(json.dumps({
        "us_p50": {name: round(float(np.median(v)) * 1e6, 2) for name, v in took.items()},
        "identical_answers": f"{same}/{len(queries)}",
        "rounds_new_faster_than_old": f"{int((per_round['new'] < per_round['old']).sum())}/{rounds}",
        "new_minus_old_us_median_of_rounds": round(float(np.median(per_round["new"] - per_round["old"])) * 1e6, 2),
        "new_minus_raw_us_median_of_rounds": round(float(np.median(per_round["new"] - per_round["raw"])) * 1e6, 2),
        "old_minus_raw_us_median_of_rounds": round(float(np.median(per_round["old"] - per_round["raw"])) * 1e6, 2),
        "load_before_after": [load_before, Path("/proc/loadavg").read_text().split()[:3]],
        "utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
    }))  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1:])
