"""The simulator's catalog index cache: a loaded index answers exactly as the one built."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from omega.brain import catalog as catalog_module
from omega.brain.catalog import Catalog, fingerprint
from omega.brain.config import BrainConfig
from omega.brain.records import CatalogItem


def _items(n: int, seed: int) -> tuple[list[CatalogItem], np.ndarray]:
    rng = np.random.default_rng(seed)
    matrix = rng.standard_normal((n, 384)).astype(np.float32)
    return [CatalogItem(i + 1, f"T{i}", ()) for i in range(n)], matrix


def test_a_cached_index_is_loaded_and_searches_as_the_built_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    config = BrainConfig()
    items, matrix = _items(600, 0)  # above index_exact_below: the HNSW graph answers, not a scan
    ids = np.arange(1, 601, dtype=np.int64)
    path = tmp_path / f"{fingerprint(ids, matrix, config)}.index"
    built = Catalog.from_vectors(items, matrix, config, index_file=path)
    assert path.is_file()

    def no_build(config):  # noqa: ANN001, ANN202
        raise AssertionError("the cached index should have been loaded")

    monkeypatch.setattr(catalog_module, "new_index", no_build)
    loaded = Catalog.from_vectors(items, matrix, config, index_file=path)
    queries = np.random.default_rng(1).standard_normal((25, 384)).astype(np.float32)
    for q in queries:
        a, b = built.search(q, 50), loaded.search(q, 50)
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    # a file holding other ids is not used: the catalog's own index is built (and saved) instead
    monkeypatch.undo()
    other_items, other = _items(500, 2)
    rebuilt = Catalog.from_vectors(other_items, other, config, index_file=path)
    assert len(rebuilt.index) == 500


def test_a_cached_codebook_is_the_one_built(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from omega.constellation.codebook import build_codebook
    from omega.sim.fleet import catalog_cache

    monkeypatch.setenv("OMEGA_CACHE", str(tmp_path))
    _, matrix = _items(300, 3)
    first = catalog_cache.cached_codebook(matrix, k=16, seed=4, iters=5)
    again = catalog_cache.cached_codebook(matrix, k=16, seed=4, iters=5)  # from the file
    built = build_codebook(matrix, k=16, seed=4, iters=5)
    assert first.fingerprint == again.fingerprint == built.fingerprint
    assert len(list((tmp_path / "catalogs").glob("codebook-*.npz"))) == 1
    assert catalog_cache.cached_codebook(matrix, k=16, seed=5, iters=5).fingerprint != built.fingerprint
