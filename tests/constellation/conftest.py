"""Fixtures for constellation tests: a real store per backend, a small real codebook, helpers."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator

import numpy as np
import pytest

from omega.constellation.aggregation import AggregationPolicy, Aggregator, Contribution
from omega.constellation.codebook import DIM, Codebook, build_codebook
from omega.constellation.store import ConstellationStore, open_store

SALT = b"test-server-salt-0123456789abcdef"


@pytest.fixture(params=["sqlite"])
def store_url(request: pytest.FixtureRequest, tmp_path) -> str:
    """URL of a fresh, empty store of each backend (PostgreSQL joins this list later)."""
    if request.param == "sqlite":
        return f"sqlite:{tmp_path / 'constellation.db'}"
    raise AssertionError(request.param)


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[ConstellationStore]:
    s = await open_store(store_url, origin="shard-test")
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture(scope="session")
def codebook() -> Codebook:
    """16 cells over well-separated synthetic clusters, so tests can aim a vector at a cell."""
    rng = np.random.default_rng(42)
    centres = rng.normal(size=(16, DIM))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = np.repeat(centres, 8, axis=0) + 0.02 * rng.normal(size=(128, DIM))
    return build_codebook(x.astype(np.float32), k=16, seed=0, iters=10)


@pytest.fixture
async def aggregator(store: ConstellationStore, codebook: Codebook) -> Aggregator:
    return await Aggregator.open(store, codebook, SALT, AggregationPolicy())


def device(n: int) -> bytes:
    """A distinctive 16-byte device id (so a test can search a file for it)."""
    return hashlib.sha256(b"device-%d" % n).digest()[:16]


def near(codebook: Codebook, cell: int, seed: int, spread: float = 0.05) -> np.ndarray:
    """A unit vector close to centroid `cell` (so it is assigned there)."""
    rng = np.random.default_rng(seed)
    v = codebook.centroids[cell].astype(np.float64) + spread * rng.normal(size=DIM) / np.sqrt(DIM)
    return (v / np.linalg.norm(v)).astype(np.float32)


def pattern(embedding: np.ndarray, rate: float = 0.9, uses: int = 20, task_type: int = 0, hint=None) -> Contribution:
    return Contribution(embedding, rate, uses, int(round(rate * uses)), task_type, hint)
