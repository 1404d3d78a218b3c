from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from omega.brain.index import BACKENDS, VectorIndex, exact_search, recall_at_k
from omega.errors import OmegaError

#: the storage each backend is tested with (hnswlib keeps float32 only)
DTYPE = {"usearch": "f16", "hnswlib": "f32"}


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request) -> str:
    return request.param


def make(backend: str, dim: int = 384, **kwargs) -> VectorIndex:
    kwargs.setdefault("dtype", DTYPE[backend])
    return VectorIndex(dim, backend=backend, **kwargs)


def clustered(n: int, dim: int = 384, clusters: int = 50, seed: int = 0) -> np.ndarray:
    """Unit vectors around a few centres, like embeddings of a real catalog."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    vectors = centres[rng.integers(0, clusters, n)] + 0.6 * rng.normal(size=(n, dim))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors.astype(np.float32)


@pytest.fixture(scope="module")
def data_and_queries() -> tuple[np.ndarray, np.ndarray]:
    """5,000 indexed vectors and 200 held-out queries from the same clusters."""
    vectors = clustered(5200)
    return vectors[:5000], vectors[5000:]


@pytest.fixture(scope="module")
def data(data_and_queries) -> np.ndarray:
    return data_and_queries[0]


@pytest.fixture(scope="module")
def big_index(backend: str, data: np.ndarray) -> VectorIndex:
    index = make(backend)
    index.add(np.arange(len(data)), data)
    return index


def test_add_search_update_remove(backend: str):
    vectors = clustered(600, seed=1)
    index = make(backend, exact_below=0)  # force the HNSW path
    assert index.backend == backend
    index.add(np.arange(1000, 1600), vectors)
    assert len(index) == 600 and 1000 in index and 5 not in index and "x" not in index
    keys, sims = index.search(vectors[7], 5)
    assert keys.dtype == np.int64 and sims.dtype == np.float32
    assert keys[0] == 1007 and sims[0] == pytest.approx(1.0, abs=1e-3)
    assert np.all(np.diff(sims) <= 1e-6) and np.all((sims >= -1) & (sims <= 1))
    index.add(np.array([1007]), -vectors[7])  # update an existing key
    assert len(index) == 600
    keys, sims = index.search(-vectors[7], 1)
    assert keys.tolist() == [1007] and sims[0] == pytest.approx(1.0, abs=1e-3)
    assert index.remove(np.array([1007, 42])) == 1
    assert 1007 not in index and len(index) == 599
    assert 1007 not in index.search(-vectors[7], 50)[0]
    assert sorted(index.keys().tolist()) == [k for k in range(1000, 1600) if k != 1007]


def test_recall_at_50_on_clustered_data(big_index: VectorIndex, data_and_queries):
    data, queries = data_and_queries
    assert len(big_index) >= big_index.exact_below  # the HNSW path, not the exact one
    assert recall_at_k(big_index, data, queries, 50) >= 0.95


def test_batch_matches_single_search(big_index: VectorIndex, data: np.ndarray):
    keys, sims = big_index.search_batch(data[:3], 10)
    assert keys.shape == sims.shape == (3, 10)
    one_keys, one_sims = big_index.search(data[1], 10)
    assert np.array_equal(keys[1], one_keys) and np.allclose(sims[1], one_sims)


def test_save_load_round_trip(tmp_path: Path, big_index: VectorIndex, data: np.ndarray):
    path = tmp_path / "catalog.usearch"
    big_index.save(path)
    loaded = VectorIndex.load(path, dim=384)
    assert len(loaded) == len(big_index) and loaded.dtype == big_index.dtype and loaded.backend == big_index.backend
    for q in data[:20]:
        a, b = big_index.search(q, 50), loaded.search(q, 50)
        assert np.array_equal(a[0], b[0]) and np.allclose(a[1], b[1])
    assert not [p for p in tmp_path.iterdir() if p.name != "catalog.usearch"]  # no temp files left
    with pytest.raises(OmegaError, match="expected 128"):
        VectorIndex.load(path, dim=128)


def test_hnswlib_loads_through_memory_or_a_temporary_file_alike(tmp_path: Path, monkeypatch, data: np.ndarray):
    """hnswlib reads an index only from a path: on Linux the file's part is copied to an in-memory file (memfd),
    elsewhere (no memfd_create) to a temporary directory. Both give the same index, and neither leaves a file."""
    import tempfile

    import omega.brain.index_backends as backends

    index = make("hnswlib")
    index.add(np.arange(len(data)), data)
    path = tmp_path / "catalog.index"
    index.save(path)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    opened: list[str] = []
    real = backends._path_of_rest

    def spy(handle):  # noqa: ANN001, ANN202
        context = real(handle)
        opened.append(context.__enter__())
        return _Entered(context, opened[-1])

    monkeypatch.setattr(backends, "_path_of_rest", spy)
    in_memory = VectorIndex.load(path, dim=384)
    monkeypatch.delattr(backends.os, "memfd_create")
    on_disk = VectorIndex.load(path, dim=384)
    assert opened[0].startswith("/proc/self/fd/") and opened[1].startswith(str(scratch))
    for q in data[:20]:
        a, b, c = index.search(q, 50), in_memory.search(q, 50), on_disk.search(q, 50)
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[0], c[0]) and np.array_equal(b[1], c[1])
    assert list(scratch.iterdir()) == []


class _Entered:
    """A context manager already entered (`value` is what its __enter__ gave)."""

    def __init__(self, context, value: str) -> None:  # noqa: ANN001
        self.context, self.value = context, value

    def __enter__(self) -> str:
        return self.value

    def __exit__(self, *exc) -> None:  # noqa: ANN002
        self.context.__exit__(*exc)


def test_exact_path_for_tiny_sets(backend: str):
    vectors = clustered(40, seed=3)
    index = make(backend)  # 40 < exact_below
    index.add(np.arange(40), vectors)
    queries = clustered(5, seed=4)
    keys, sims = index.search_batch(queries, 7)
    assert np.array_equal(keys, exact_search(vectors, queries, 7))
    truth = queries @ vectors.T
    assert np.allclose(sims, np.take_along_axis(truth, keys, axis=1), atol=2e-3)  # f16 storage
    keys, sims = index.search(queries[0], 100)  # k beyond len: everything, best first
    assert len(keys) == 40 and sorted(keys.tolist()) == list(range(40)) and np.all(np.diff(sims) <= 1e-6)


def test_empty_index_and_bad_input(backend: str):
    index = make(backend, 8)
    keys, sims = index.search(np.ones(8), 5)
    assert keys.shape == sims.shape == (0,)
    assert index.search_batch(np.ones((2, 8)), 3)[0].shape == (2, 0)
    with pytest.raises(OmegaError):
        index.add(np.array([1]), np.ones((1, 7)))
    with pytest.raises(OmegaError):
        index.add(np.array([-1]), np.ones((1, 8)))
    with pytest.raises(OmegaError):
        index.add(np.array([1, 1]), np.ones((2, 8)))
    with pytest.raises(OmegaError):
        index.search(np.full(8, np.nan), 1)
    with pytest.raises(OmegaError):
        index.search(np.zeros(8), 1)
    with pytest.raises(OmegaError):
        index.search(np.ones(8), -1)
    with pytest.raises(OmegaError):
        VectorIndex(8, dtype="f64", backend=backend)
    with pytest.raises(OmegaError):
        VectorIndex(8, backend="faiss")
    with pytest.raises(OmegaError, match="for backend hnswlib"):
        VectorIndex(8, dtype="f16", backend="hnswlib")


def test_single_search_takes_any_form_of_one_query(backend: str):
    """`search` (the catalog's hot path, its own checks) answers a row, a (1, dim) matrix, a strided view and a list
    alike, as `search_batch` does; sims stay in [-1, 1] (a stored vector's own similarity rounds to 1 ± 1 ulp)."""
    vectors = clustered(600, seed=6)
    index = make(backend, exact_below=0)
    index.add(np.arange(600), vectors)
    strided = np.asfortranarray(vectors)  # its rows are not contiguous
    batch_keys, batch_sims = index.search_batch(vectors[:40], 50)
    for row in range(40):
        keys, sims = index.search(vectors[row], 50)
        assert keys.dtype == np.int64 and sims.dtype == np.float32 and keys.shape == sims.shape == (50,)
        assert np.array_equal(keys, batch_keys[row]) and np.allclose(sims, batch_sims[row])
        assert sims.max() <= 1.0 and sims.min() >= -1.0 and np.all(np.diff(sims) <= 1e-6)
        for same in (vectors[row : row + 1], strided[row], vectors[row].tolist()):
            again = index.search(same, 50)
            assert np.array_equal(again[0], keys) and np.allclose(again[1], sims)
    with pytest.raises(OmegaError, match="takes one vector"):
        index.search(vectors[:2], 5)
    with pytest.raises(OmegaError, match="384 columns"):
        index.search(vectors[0, :10], 5)
    with pytest.raises(OmegaError, match="384 columns"):
        index.search(vectors[:1, :10], 5)
    with pytest.raises(OmegaError, match="NaN"):
        index.search(np.full(384, np.inf, np.float32), 5)
    with pytest.raises(OmegaError, match="k must be"):
        index.search(vectors[0], 2.5)
    assert index.search(vectors[0], 0)[0].shape == (0,)


@pytest.mark.parametrize("dtype", ["f32", "i8"])
def test_other_dtypes_work(dtype: str):
    vectors = clustered(400, seed=5)
    index = VectorIndex(384, dtype=dtype, exact_below=0)
    index.add(np.arange(400), vectors)
    assert recall_at_k(index, vectors, vectors[:30], 10) >= 0.8


def test_corrupt_or_foreign_file_is_an_omega_error(tmp_path: Path, backend: str):
    vectors = clustered(300, seed=6)
    index = make(backend)
    index.add(np.arange(300), vectors)
    good = tmp_path / "good.usearch"
    index.save(good)
    data = bytearray(good.read_bytes())
    cases = {
        "missing": None,
        "garbage": np.random.default_rng(0).bytes(4096),
        "truncated": bytes(data[: len(data) // 2]),
        "header only": bytes(data[: data.index(b"}\n") + 2]),
        "appended": bytes(data) + b"\0",  # the payload is checked to its end, not to the header's length
        "empty": b"",
    }
    flipped = bytearray(data)
    flipped[len(flipped) // 2] ^= 0xFF
    cases["bitflip"] = bytes(flipped)
    for name, content in cases.items():
        path = tmp_path / f"{name}.usearch"
        if content is not None:
            path.write_bytes(content)
        with pytest.raises(OmegaError):
            VectorIndex.load(path)


def test_churn_reuses_slots_and_survives_save_load(tmp_path: Path, backend: str):
    """Remove, re-add removed keys, add new keys into removed slots, grow past the first capacity."""
    vectors = clustered(3000, seed=8)
    index = make(backend, exact_below=0)
    for start in range(0, 1500, 500):  # several adds: hnswlib grows its capacity (first 1,024)
        index.add(np.arange(start, start + 500), vectors[start : start + 500])
    assert len(index) == 1500
    assert index.remove(np.arange(0, 300)) == 300
    assert index.remove(np.arange(0, 300)) == 0  # already gone
    index.add(np.arange(100, 200), vectors[100:200])  # back under the same keys
    index.add(np.arange(5000, 5100), vectors[2000:2100])  # new keys (hnswlib: into removed slots)
    index.add(np.array([1000]), -vectors[1000])  # update a live key
    live = sorted([*range(100, 200), *range(300, 1500), *range(5000, 5100)])
    assert len(index) == len(live) and sorted(index.keys().tolist()) == live
    assert 50 not in index and 150 in index and 5050 in index
    keys, sims = index.search(vectors[150], 1)
    assert keys.tolist() == [150] and sims[0] == pytest.approx(1.0, abs=1e-3)
    assert index.search(vectors[2050], 1)[0].tolist() == [5050]
    assert index.search(-vectors[1000], 1)[0].tolist() == [1000]
    found = index.search_batch(vectors[:300], 50)[0]
    assert not np.isin(found, [*range(0, 100), *range(200, 300)]).any()  # removed keys never come back
    path = tmp_path / "churned.index"
    index.save(path)
    loaded = VectorIndex.load(path)
    assert loaded.backend == backend and sorted(loaded.keys().tolist()) == live
    assert 50 not in loaded and 150 in loaded
    loaded.add(np.array([50]), vectors[50])  # a removed key, after a reload
    loaded.add(np.array([7000]), vectors[2500])
    assert len(loaded) == len(live) + 2 and loaded.search(vectors[50], 1)[0].tolist() == [50]
    truth_keys = np.array([*live, 50, 7000])
    truth_vectors = np.concatenate([vectors[[k for k in live if k < 5000]], vectors[2000:2100], vectors[[50, 2500]]])
    truth_vectors[live.index(1000)] = -vectors[1000]
    assert recall_at_k(loaded, truth_vectors, vectors[2600:2700], 10, keys=truth_keys) >= 0.9


def test_file_records_its_backend(tmp_path: Path, backend: str):
    index = make(backend)
    index.add(np.arange(300), clustered(300, seed=9))
    path = tmp_path / "x.index"
    index.save(path)
    assert f'"backend": "{backend}"'.encode() in path.read_bytes()[:4096]
    empty = make(backend)
    empty.save(tmp_path / "empty.index")
    assert len(VectorIndex.load(tmp_path / "empty.index")) == 0


def test_brain_config_picks_the_backend(backend: str):
    from omega.brain.catalog import new_index
    from omega.brain.config import BrainConfig

    config = BrainConfig(index_backend=backend, index_dtype=DTYPE[backend])
    index = new_index(config)
    assert index.backend == backend and index.dtype == DTYPE[backend]
    with pytest.raises(OmegaError, match="index_backend"):
        BrainConfig(index_backend="faiss")
    with pytest.raises(OmegaError, match="f32"):
        BrainConfig(index_backend="hnswlib", index_dtype="f16")


def test_file_without_backend_in_header_is_usearch(tmp_path: Path):
    """Files written before the backend choice existed carry no "backend" key."""
    import json
    import zlib

    index = make("usearch")
    index.add(np.arange(300), clustered(300, seed=10))
    path = tmp_path / "old.index"
    index.save(path)
    magic, header, payload = path.read_bytes().split(b"\n", 2)
    fields = json.loads(header)
    del fields["backend"]
    assert fields["payload_crc32"] == zlib.crc32(payload)
    path.write_bytes(magic + b"\n" + json.dumps(fields).encode() + b"\n" + payload)
    loaded = VectorIndex.load(path)
    assert loaded.backend == "usearch" and len(loaded) == 300
