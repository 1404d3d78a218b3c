"""The versioned global codebook: the cells every pattern is aggregated into.

A codebook is a set of unit-norm centroids found by spherical k-means over
content embeddings. Every shard, region and hub must use the same codebook
(same `fingerprint`) for their per-cell sums to mean the same thing.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from omega.errors import OmegaError
from omega.protocol import EMBEDDING_DIM

_FORMAT = "omega-codebook/1"


def _unit_rows(vectors: np.ndarray, what: str) -> np.ndarray:
    """Validate an (n, 384) array of finite non-zero vectors and L2-normalise its rows."""
    arr = np.asarray(vectors, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != EMBEDDING_DIM:
        raise OmegaError(f"{what} must have shape (n, {EMBEDDING_DIM}), got {np.shape(vectors)}")
    if not np.isfinite(arr).all():
        raise OmegaError(f"{what} contain NaN or infinite values")
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    if (norms == 0).any():
        raise OmegaError(f"{what} contain a zero vector")
    # Leave rows that are already unit (to float32 precision) bit-for-bit alone:
    # re-dividing them can flip last bits, which would change the fingerprint of
    # a codebook between save and load.
    already_unit = np.abs(norms - 1.0) <= 1e-6
    return np.where(already_unit, arr, arr / norms).astype(np.float32)


def _fingerprint(version: int, centroids: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(_FORMAT.encode())
    h.update(int(version).to_bytes(8, "little"))
    h.update(np.ascontiguousarray(centroids, dtype="<f4").tobytes())
    return h.hexdigest()


@dataclass(frozen=True, eq=False)
class Codebook:
    """`centroids` is a (k, 384) float32 array of unit-norm rows; `version` is bumped on every rebuild."""

    version: int
    centroids: np.ndarray

    def __post_init__(self) -> None:
        if not isinstance(self.version, (int, np.integer)) or self.version < 0:
            raise OmegaError(f"codebook version must be a non-negative integer, got {self.version!r}")
        cents = _unit_rows(self.centroids, "codebook centroids")
        if cents.shape[0] == 0:
            raise OmegaError("a codebook needs at least one centroid")
        cents.setflags(write=False)
        object.__setattr__(self, "version", int(self.version))
        object.__setattr__(self, "centroids", cents)

    @property
    def k(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def fingerprint(self) -> str:
        """Hex SHA-256 of version and centroid bytes: two codebooks agree iff their fingerprints do."""
        return _fingerprint(self.version, self.centroids)

    def similarities(self, vectors: np.ndarray) -> np.ndarray:
        """Cosine similarity of each (normalised) vector to every centroid, shape (n, k)."""
        return _unit_rows(vectors, "vectors") @ self.centroids.T

    def assign(self, vectors: np.ndarray) -> np.ndarray:
        """Index of the nearest centroid by cosine for each vector (int64, shape (n,))."""
        if np.asarray(vectors).size == 0:
            return np.zeros(0, dtype=np.int64)
        return np.argmax(self.similarities(vectors), axis=1).astype(np.int64)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write an .npz atomically (temp file + rename), so a crash never leaves half a codebook."""
        target = Path(path)
        tmp = target.with_name(target.name + ".tmp")
        with open(tmp, "wb") as fh:
            np.savez(
                fh,
                format=np.array(_FORMAT),
                version=np.array(self.version, dtype=np.int64),
                centroids=np.ascontiguousarray(self.centroids, dtype="<f4"),
                sha256=np.array(self.fingerprint),
            )
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Codebook:
        """Read a codebook written by `save`; anything else (corrupt, foreign, tampered) raises OmegaError."""
        try:
            with np.load(path, allow_pickle=False) as data:
                if "format" not in data.files or str(data["format"]) != _FORMAT:
                    raise OmegaError(f"{path} is not an omega codebook")
                version = int(data["version"])
                centroids = np.array(data["centroids"])
                stored_hash = str(data["sha256"])
        except OmegaError:
            raise
        except FileNotFoundError as exc:
            raise OmegaError(f"codebook file not found: {path}") from exc
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            raise OmegaError(f"cannot read codebook {path}: {exc}") from exc
        if centroids.dtype != np.dtype("<f4") or centroids.ndim != 2:
            raise OmegaError(f"{path} holds centroids of the wrong type")
        # Check the bytes as stored, before construction touches them.
        if version < 0 or _fingerprint(version, centroids) != stored_hash:
            raise OmegaError(f"codebook {path} is corrupt: content hash mismatch")
        return cls(version, centroids)


def _kmeans_pp(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding with the spherical distance 1 - cos (for unit vectors, ||a-b||² / 2)."""
    n = x.shape[0]
    chosen = [int(rng.integers(n))]
    dist = np.maximum(1.0 - x @ x[chosen[0]], 0.0)
    for _ in range(1, k):
        total = float(dist.sum())
        if total <= 0.0:  # every point coincides with a centre: pick any unused one
            remaining = np.setdiff1d(np.arange(n), chosen)
            nxt = int(rng.choice(remaining))
        else:
            nxt = int(rng.choice(n, p=dist / total))
        chosen.append(nxt)
        dist = np.minimum(dist, np.maximum(1.0 - x @ x[nxt], 0.0))
    return x[chosen].copy()


def build_codebook(
    vectors: np.ndarray, k: int = 256, seed: int = 0, iters: int = 20, *, version: int = 1
) -> Codebook:
    """Spherical k-means (k-means++ init, `iters` Lloyd steps) over embeddings; deterministic for a seed."""
    x = _unit_rows(vectors, "training vectors")
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise OmegaError(f"k must be a positive integer, got {k!r}")
    if x.shape[0] < k:
        raise OmegaError(f"need at least k={k} training vectors, got {x.shape[0]}")
    if iters < 0:
        raise OmegaError(f"iters must be >= 0, got {iters}")
    rng = np.random.default_rng(seed)
    x64 = x.astype(np.float64)
    centroids = _kmeans_pp(x64, int(k), rng)
    for _ in range(iters):
        sims = x64 @ centroids.T
        labels = np.argmax(sims, axis=1)
        sums = np.zeros_like(centroids)
        np.add.at(sums, labels, x64)
        counts = np.bincount(labels, minlength=k)
        empty = np.flatnonzero(counts == 0)
        if empty.size:
            # Re-seed empty cells with the points worst served by their centre.
            worst = np.argsort(sims[np.arange(len(labels)), labels], kind="stable")[: empty.size]
            sums[empty] = x64[worst]
        norms = np.linalg.norm(sums, axis=1, keepdims=True)
        # A cell whose members cancel out keeps its previous centre.
        new = np.where(norms > 1e-12, sums / np.where(norms > 1e-12, norms, 1.0), centroids)
        if np.array_equal(new, centroids):
            break
        centroids = new
    return Codebook(version, centroids.astype(np.float32))


PLACEHOLDER_CODEBOOK_K = 256


def placeholder_codebook(k: int = PLACEHOLDER_CODEBOOK_K, seed: int = 0) -> Codebook:
    """Random unit centroids from a fixed seed: identical on every worker, but cells carry no meaning.

    Used only when no codebook file is configured (development); build a real
    one from the catalog with `omega codebook build`.
    """
    rng = np.random.default_rng(seed)
    return Codebook(0, rng.standard_normal((k, EMBEDDING_DIM)).astype(np.float32))
