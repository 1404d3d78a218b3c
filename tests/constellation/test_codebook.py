"""The global codebook: spherical k-means, assignment, persistence."""

from __future__ import annotations

import numpy as np
import pytest

from omega.constellation.codebook import Codebook, build_codebook
from omega.errors import OmegaError
from omega.protocol import EMBEDDING_DIM


def clustered(n_clusters: int, per: int, seed: int, spread: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_clusters, EMBEDDING_DIM))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = np.repeat(np.arange(n_clusters), per)
    x = centres[labels] + spread * rng.normal(size=(len(labels), EMBEDDING_DIM))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), labels


def test_build_recovers_well_separated_clusters() -> None:
    x, labels = clustered(8, 40, seed=1)
    book = build_codebook(x, k=8, seed=0, iters=20)
    assert book.centroids.shape == (8, EMBEDDING_DIM) and book.centroids.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(book.centroids, axis=1), 1.0, atol=1e-5)
    got = book.assign(x)
    # Every true cluster maps to exactly one cell and no two clusters share one.
    mapping = {int(t): set(got[labels == t].tolist()) for t in range(8)}
    assert all(len(cells) == 1 for cells in mapping.values())
    assert len({next(iter(c)) for c in mapping.values()}) == 8


def test_assign_is_nearest_by_cosine_and_ignores_scale() -> None:
    x, _ = clustered(4, 30, seed=2)
    book = build_codebook(x, k=4, seed=3)
    q = np.random.default_rng(9).normal(size=(50, EMBEDDING_DIM)).astype(np.float32)
    expected = np.argmax((q / np.linalg.norm(q, axis=1, keepdims=True)) @ book.centroids.T, axis=1)
    np.testing.assert_array_equal(book.assign(q), expected)
    np.testing.assert_array_equal(book.assign(q * 7.5), expected)
    assert book.assign(q[0]).shape == (1,)


def test_deterministic_for_a_seed_and_differs_across_seeds() -> None:
    x, _ = clustered(20, 10, seed=4, spread=0.5)
    a = build_codebook(x, k=16, seed=5, iters=5)
    b = build_codebook(x, k=16, seed=5, iters=5)
    c = build_codebook(x, k=16, seed=6, iters=5)
    assert a.fingerprint == b.fingerprint
    np.testing.assert_array_equal(a.centroids, b.centroids)
    assert a.fingerprint != c.fingerprint


def test_save_load_roundtrip(tmp_path) -> None:
    x, _ = clustered(5, 10, seed=5)
    book = build_codebook(x, k=5, seed=0, version=7)
    path = tmp_path / "codebook.npz"
    book.save(path)
    loaded = Codebook.load(path)
    assert loaded.version == 7
    assert loaded.fingerprint == book.fingerprint
    np.testing.assert_array_equal(loaded.centroids, book.centroids)


def test_fingerprint_depends_on_version() -> None:
    x, _ = clustered(3, 5, seed=6)
    book = build_codebook(x, k=3)
    assert Codebook(book.version + 1, book.centroids).fingerprint != book.fingerprint


def test_corrupt_foreign_and_tampered_files_are_rejected(tmp_path) -> None:
    x, _ = clustered(3, 5, seed=7)
    book = build_codebook(x, k=3)
    good = tmp_path / "good.npz"
    book.save(good)

    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a codebook at all")
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[:200])
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, weights=np.zeros(3))
    tampered = tmp_path / "tampered.npz"
    cents = book.centroids.copy()
    cents[0] = cents[1]
    np.savez(tampered, format=np.array("omega-codebook/1"), version=np.array(1), centroids=cents,
             sha256=np.array(book.fingerprint))

    for path in (garbage, truncated, foreign, tampered, tmp_path / "missing.npz"):
        with pytest.raises(OmegaError):
            Codebook.load(path)


def test_bad_inputs_raise_omega_error() -> None:
    with pytest.raises(OmegaError):
        build_codebook(np.zeros((10, 3)), k=2)
    with pytest.raises(OmegaError):
        build_codebook(np.ones((3, EMBEDDING_DIM)), k=5)
    bad = np.ones((10, EMBEDDING_DIM))
    bad[0, 0] = np.nan
    with pytest.raises(OmegaError):
        build_codebook(bad, k=2)
    with pytest.raises(OmegaError):
        Codebook(1, np.zeros((2, EMBEDDING_DIM)))


def test_save_load_round_trip_keeps_the_fingerprint_for_many_codebooks(tmp_path) -> None:
    """Regression: re-normalising already-unit rows on load used to flip last bits and fail the hash check."""
    rng = np.random.default_rng(7)
    for seed in range(20):
        vectors = rng.standard_normal((200, 384)).astype(np.float32)
        book = build_codebook(vectors, k=8, seed=seed, iters=3)
        path = tmp_path / f"book{seed}.npz"
        book.save(path)
        assert Codebook.load(path).fingerprint == book.fingerprint
