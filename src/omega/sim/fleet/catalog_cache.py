"""The embedded catalog of a dataset, cached on disk so repeated runs skip ~30 s of MiniLM.

The cache file is keyed by a hash of every item's embedding text and the model
files' identity (dir + variant), so a changed catalog or model is re-embedded.
Location: $OMEGA_CACHE, else ~/.cache/omega/catalogs.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from omega.brain.catalog import Catalog, fingerprint
from omega.brain.config import BrainConfig
from omega.brain.embedder import Embedder
from omega.brain.records import EMBEDDING_DIM, CatalogItem
from omega.constellation.codebook import Codebook, build_codebook
from omega.errors import OmegaError
from omega.progress import Progress



def cache_dir() -> Path:
    return Path(os.environ.get("OMEGA_CACHE") or Path.home() / ".cache" / "omega") / "catalogs"


def _key(items: Sequence[CatalogItem], embedder: Embedder) -> str:
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{embedder.model_dir}/{embedder.variant}/{embedder.max_length}".encode())
    for item in items:
        digest.update(item.text().encode("utf-8") + b"\0")
    return digest.hexdigest()


def catalog_embeddings(items: Sequence[CatalogItem], embedder: Embedder, progress: Progress | None = None) -> np.ndarray:
    """(n, 384) float32 embeddings of the items' texts, from the cache when it holds them."""
    path = cache_dir() / f"{_key(items, embedder)}.npy"
    if path.is_file():
        try:
            matrix = np.load(path, allow_pickle=False)
            if matrix.shape == (len(items), EMBEDDING_DIM) and np.isfinite(matrix).all():
                return matrix.astype(np.float32, copy=False)
        except (OSError, ValueError):
            pass  # a damaged cache file is rebuilt below
    matrix = embedder.embed_batch([it.text() for it in items], progress=progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        np.save(fh, np.asarray(matrix, np.float32))
    os.replace(tmp, path)
    return matrix


def build_catalog(
    items: Sequence[CatalogItem], embedder: Embedder, config: BrainConfig, progress: Progress | None = None
) -> tuple[Catalog, np.ndarray]:
    """The shared catalog and its float32 embeddings. Its HNSW index is cached beside the embeddings, named
    by the catalog's fingerprint (ids, vectors, build parameters): building it took ~5 CPU-s a run."""
    matrix = catalog_embeddings(items, embedder, progress)
    ids = np.fromiter((it.content_id for it in items), dtype=np.int64, count=len(items))
    index_file = cache_dir() / f"{fingerprint(ids, matrix, config)}.index"
    return Catalog.from_vectors(items, matrix, config, index_file=index_file), matrix


def cached_codebook(matrix: np.ndarray, k: int, seed: int, iters: int) -> Codebook:
    """`build_codebook(matrix, k=k, seed=seed, iters=iters)`, kept in the cache: it is deterministic for these
    arguments, and a saved codebook loads bit for bit (its file carries a content hash). The evaluation
    builds up to four per run (the fleet's and the privacy table's cell sizes), ~3 CPU-s at k 256."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(np.ascontiguousarray(matrix, dtype="<f4").tobytes())
    digest.update(f"{k}/{seed}/{iters}".encode())
    path = cache_dir() / f"codebook-{digest.hexdigest()}.npz"
    if path.is_file():
        try:
            return Codebook.load(path)
        except OmegaError:
            pass  # a damaged cache file is rebuilt below
    codebook = build_codebook(matrix, k=k, seed=seed, iters=iters)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        codebook.save(path)
    except OSError:
        pass  # an unwritable cache only costs the next run the build
    return codebook
