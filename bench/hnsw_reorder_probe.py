"""Does hnswlib's memory order matter for search k=50? (issue 13, tried 2026-12-02, not kept: see bench/README).

The catalog's hnswlib index is built in catalog order, so its internal ids (and the place of each element's links
and vector in memory) follow the catalog, not the vectors' geometry. This probe takes a bench brain's saved index
and relabels its internal ids by a locality order, rewriting hnswlib's file (same graph, every link remapped, so
every search visits the same elements in the same order and returns the same answers), then times knn_query k=50
at the shipped ef on the bench's query mix (500 catalog items + 500 recommender context queries, seed 11):

- warm: one fresh process per order (only that index in it, as in `omega bench brain`), orders alternating;
- cold: one process holding every order, 96 MB written between two queries (the index is fetched from DRAM), the
  orders interleaved per query.

    PYTHONPATH=src .venv/bin/python bench/hnsw_reorder_probe.py BRAIN_DB OUT.json [rounds]

BRAIN_DB: a brain built by `omega bench brain`'s builder (`omega.sim.bench.brain._build_bench_brain`).
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

import numpy as np

# hnswlib 0.8 saveIndex: offsetLevel0, max_elements, cur_element_count, size_data_per_element, label_offset,
# offsetData (size_t), maxlevel (int), enterpoint_node (uint32), maxM, maxM0, M (size_t), mult (double), ef_c
_HEAD = struct.Struct("<QQQQQQiIQQQdQ")
ORDERS = ("catalog", "bfs", "rcm", "pca", "kmeans")


def read(raw: bytes):  # noqa: ANN201
    head = _HEAD.unpack_from(raw, 0)
    n, size = head[2], head[3]
    pos = _HEAD.size
    level0 = np.frombuffer(raw, np.uint8, n * size, pos).reshape(n, size).copy()
    pos += n * size
    upper = []
    for _ in range(n):
        (length,) = struct.unpack_from("<I", raw, pos)
        upper.append(np.frombuffer(raw, np.uint8, length, pos + 4).copy())
        pos += 4 + length
    if pos != len(raw):
        raise SystemExit("not an hnswlib 0.8 index file")
    return head, level0, upper


def links(head, level0):  # noqa: ANN001, ANN201
    maxm0 = head[9]
    return level0[:, 4 : 4 + 4 * maxm0].view(np.uint32), level0[:, 0:2].view(np.uint16)[:, 0]


def relabel(raw: bytes, order: np.ndarray) -> bytes:
    """The same graph with element order[r] stored as internal id r (links, entry point and upper levels remapped)."""
    head, level0, upper = read(raw)
    n, maxm, maxm0 = head[2], head[8], head[9]
    rank = np.empty(n, np.uint32)
    rank[order] = np.arange(n, dtype=np.uint32)
    moved = level0[order].copy()
    ids, counts = links(head, moved)
    valid = np.arange(maxm0)[None, :] < counts[:, None]
    ids[valid] = rank[ids[valid]]
    fields = list(head)
    fields[7] = int(rank[head[7]])
    out = [_HEAD.pack(*fields), moved.tobytes()]
    per_level = 4 + 4 * maxm
    for old in order.tolist():
        block = upper[old].copy()
        if len(block):
            levels = block.reshape(-1, per_level)
            level_ids = levels[:, 4:].view(np.uint32)
            used = np.arange(maxm)[None, :] < levels[:, 0:2].view(np.uint16)[:, 0][:, None]
            level_ids[used] = rank[level_ids[used]]
        out += [struct.pack("<I", len(block)), block.tobytes()]
    return b"".join(out)


def vectors(raw: bytes) -> np.ndarray:
    head, level0, _ = read(raw)
    return level0[:, head[5] : head[5] + 384 * 4].copy().view(np.float32)


def order_of(name: str, raw: bytes) -> np.ndarray:
    head, level0, _ = read(raw)
    n = head[2]
    if name == "catalog":
        return np.arange(n)
    if name == "bfs":  # breadth-first over the level-0 graph from the entry point
        ids, counts = links(head, level0)
        seen, order = np.zeros(n, bool), []
        for start in [head[7], *range(n)]:
            if seen[start]:
                continue
            seen[start] = True
            queue = deque([start])
            while queue:
                node = queue.popleft()
                order.append(node)
                for nxt in ids[node, : counts[node]].tolist():
                    if not seen[nxt]:
                        seen[nxt] = True
                        queue.append(nxt)
        return np.array(order)
    if name == "rcm":  # reverse Cuthill-McKee of the symmetrised level-0 graph
        from scipy.sparse import csr_matrix
        from scipy.sparse.csgraph import reverse_cuthill_mckee

        ids, counts = links(head, level0)
        rows = np.repeat(np.arange(n), counts)
        cols = np.concatenate([ids[i, : counts[i]] for i in range(n)])
        graph = csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n))
        return np.asarray(reverse_cuthill_mckee((graph + graph.T).tocsr(), symmetric_mode=True))
    x = vectors(raw)
    centred = x - x.mean(0)
    if name == "pca":  # along the first principal component
        return np.argsort(centred @ np.linalg.svd(centred, full_matrices=False)[2][0], kind="stable")
    # kmeans: 128 spherical k-means clusters, clusters along the first principal component of their centres,
    # members by similarity to their centre
    rng = np.random.default_rng(0)
    centres = x[rng.choice(n, 128, replace=False)].copy()
    for _ in range(15):
        member = np.argmax(x @ centres.T, axis=1)
        for j in range(128):
            if (member == j).any():
                centres[j] = x[member == j].mean(0)
                centres[j] /= np.linalg.norm(centres[j])
    spread = centres - centres.mean(0)
    place = np.argsort(np.argsort(spread @ np.linalg.svd(spread, full_matrices=False)[2][0]))
    return np.lexsort((-np.einsum("ij,ij->i", x, centres[member]), place[member]))


def _queries(db: Path) -> np.ndarray:
    """The bench's query mix (`_measure_main`): 500 catalog items and 500 context queries, seed 11."""
    from omega.brain.brain import Brain
    from omega.brain.records import ViewingContext

    rng = np.random.default_rng(11)
    with Brain(db) as brain:
        ids, truth = brain.store.catalog_embeddings()
        truth /= np.linalg.norm(truth, axis=1, keepdims=True)
        items = truth[rng.choice(len(ids), size=500, replace=False)]
        ranker = brain._ranker()
        contexts = np.stack([
            ranker._query(ViewingContext(int(rng.integers(24)), int(rng.integers(7))),
                          [int(c) for c in rng.choice(ids, size=int(rng.integers(0, 6)), replace=False)])[0]
            for _ in range(500)
        ]).astype(np.float32)  # fmt: skip
        ef = brain.config.index_ef_search
    return np.concatenate([items, contexts]), ef


def _load(path: str, ef: int):  # noqa: ANN202
    import hnswlib

    index = hnswlib.Index(space="cosine", dim=384)
    index.load_index(path, max_elements=0)
    index.set_ef(ef)
    index.set_num_threads(1)
    return index


def _warm_child(path: str, queries: str, ef: int) -> None:
    """One order in a process of its own: every query searched once, 3 passes in a seeded order; p50 µs."""
    q = np.load(queries)
    index = _load(path, ef)
    rng = np.random.default_rng(5)
    took = []
    for _ in range(3):
        for i in rng.permutation(len(q)):
            start = time.perf_counter()
            index.knn_query(q[i], 50, 1)
            took.append(time.perf_counter() - start)
    print(round(float(np.median(took)) * 1e6, 1))


def main(argv: list[str]) -> None:
    if argv and argv[0] == "--warm-child":
        _warm_child(argv[1], argv[2], int(argv[3]))
        return
    db, out = Path(argv[0]), Path(argv[1])
    started_utc = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
    rounds = int(argv[2]) if len(argv) > 2 else 4
    payload = Path(str(db) + ".index").read_bytes()
    end = payload.index(b"\n", len(b"OMEGA-VECTOR-INDEX 1\n"))
    body = payload[end + 1 :]
    (removed,) = struct.unpack_from("<Q", body, 0)
    raw = body[8 + 8 * removed :]
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    queries, ef = _queries(db)
    tmp = Path(tempfile.mkdtemp(prefix="omega-reorder-"))
    np.save(tmp / "q.npy", queries)
    files, answers, build_s = {}, {}, {}
    for name in ORDERS:
        started = time.perf_counter()
        data = relabel(raw, order_of(name, raw))
        build_s[name] = round(time.perf_counter() - started, 3)
        files[name] = tmp / f"{name}.hnsw"
        files[name].write_bytes(data)
        index = _load(str(files[name]), ef)
        labels, distances = index.knn_query(queries, 50, 1)
        answers[name] = (labels, distances)
    identical = {
        name: int(sum(np.array_equal(a, b) and np.array_equal(c, d) for a, b, c, d in zip(
            answers[name][0], answers["catalog"][0], answers[name][1], answers["catalog"][1])))
        for name in ORDERS
    }  # fmt: skip
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    warm: dict[str, list[float]] = {name: [] for name in ORDERS}
    for r in range(rounds):
        for name in ORDERS if r % 2 == 0 else ORDERS[::-1]:
            command = [sys.executable, __file__, "--warm-child", str(files[name]), str(tmp / "q.npy"), str(ef)]
            child = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
            warm[name].append(float(child.stdout))
    indexes = {name: _load(str(files[name]), ef) for name in ORDERS}
    evict = np.ones(96 << 17)
    cold: dict[str, list[float]] = {name: [] for name in ORDERS}
    rng = np.random.default_rng(1)
    for _ in range(150 * rounds):
        q = queries[rng.integers(len(queries))]
        for name in rng.permutation(ORDERS):
            evict += 1.0
            start = time.perf_counter()
            indexes[name].knn_query(q, 50, 1)
            cold[name].append(time.perf_counter() - start)
    base = np.array(cold["catalog"])
    result = {
        "what": "hnswlib internal ids relabelled by a locality order (same graph); knn_query k=50 at the shipped ef",
        "ef": ef, "queries": len(queries), "identical_answers_of_1000": identical, "relabel_s": build_s,
        "warm_us_p50_per_round": warm, "warm_us_p50_median": {n: float(np.median(v)) for n, v in warm.items()},
        "cold_us_p50": {n: round(float(np.median(v)) * 1e6, 1) for n, v in cold.items()},
        "cold_queries_faster_than_catalog_order": {n: int((np.array(v) < base).sum()) for n, v in cold.items()},
        "cold_queries": len(base),
        "load_before_after": [load_before, Path("/proc/loadavg").read_text().split()[:3]],
        "started_utc": started_utc,
    }  # fmt: skip
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
