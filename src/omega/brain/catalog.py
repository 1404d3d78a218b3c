"""`Catalog`: the items a TV can recommend, their embeddings and an HNSW index over them.

Read-only once built, so one `Catalog` can be shared by many brains in one
process (the fleet simulator runs hundreds of brains over one catalog; every
TV receives the same catalog metadata anyway).

Persistence: the embeddings live in the brain store's `catalog` table; the
index is saved beside the database (`<db>.index`) together with a fingerprint
of the embeddings in the store's sync_state, and rebuilt when missing, corrupt,
stale or built with other index parameters.

Memory: the store keeps the float32 truth; in RAM the catalog keeps its
vectors once more only as a float16 matrix (the HNSW index holds its own copy,
which it needs to search: float32 in hnswlib). For 9,742 items that is 7.5 MB
instead of 15 MB; a row is turned back into float32 when it is read (`vector`,
`vectors`). A load from the store builds that matrix block by block and never
holds the whole float32 matrix (`_unit_half_from_store`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

from omega.brain.config import BrainConfig
from omega.brain.embedder import Embedder
from omega.brain.index import VectorIndex
from omega.brain.records import EMBEDDING_DIM, CatalogItem, require_all
from omega.brain.store import BrainStore
from omega.errors import OmegaError
from omega.progress import Progress

_FINGERPRINT_KEY = "catalog_index_fingerprint"
#: neighbourhoods `Catalog.neighbours` keeps: a brain asks for those of its best few patterns on every call
_NEIGHBOURS_KEPT = 256
#: rows whose norms are computed at once while normalising (each row's norm is the same by blocks or whole)
_NORM_ROWS = 1024


def index_path_for(db_path: Path | str) -> Path | None:
    """Where the catalog index of a brain file lives (None for an in-memory store)."""
    if str(db_path) == ":memory:":
        return None
    path = Path(db_path)
    return path.with_name(path.name + ".index")


def fingerprint(ids: np.ndarray, matrix: np.ndarray, config: BrainConfig) -> str:
    """Identifies the exact content of an index: ids, vectors (as float32) and build parameters."""
    return _with_params(_content_hash(ids, matrix), config)


def _content_hash(ids: np.ndarray, matrix: np.ndarray):  # noqa: ANN202  (a hashlib object)
    digest = hashlib.blake2b(digest_size=16)
    digest.update(memoryview(np.ascontiguousarray(ids, dtype="<i8")))  # the arrays' bytes, not a copy of them
    digest.update(memoryview(np.ascontiguousarray(matrix, dtype="<f4")))
    return digest


def _with_params(content, config: BrainConfig) -> str:  # noqa: ANN001
    digest = content.copy()
    params = f"{config.index_m}/{config.index_ef_construction}/{config.index_dtype}"
    if config.index_backend != "usearch":  # usearch fingerprints predate the backend choice: keep them valid
        params += f"/{config.index_backend}"
    digest.update(params.encode())
    return digest.hexdigest()


class Catalog:
    """Items, a row-normalised (n, 384) float16 matrix and a VectorIndex keyed by content id."""

    def __init__(
        self, items: Sequence[CatalogItem], matrix: np.ndarray, index: VectorIndex, *, _content=None,  # noqa: ANN001
        _owned: bool = False, _unit_half: bool = False,
    ) -> None:
        """`_owned`: `matrix` is a float32 array nobody else holds, normalised in place instead of copied.
        `_unit_half`: `matrix` is already the float16 unit matrix (`_unit_half_from_store`), `_content` its hash."""
        matrix = np.asarray(matrix)
        if matrix.shape != (len(items), EMBEDDING_DIM):
            raise OmegaError(f"catalog matrix must have shape ({len(items)}, {EMBEDDING_DIM}), got {matrix.shape}")
        if len(index) != len(items):
            raise OmegaError(f"catalog index holds {len(index)} vectors for {len(items)} items")
        self.items: tuple[CatalogItem, ...] = tuple(items)
        self.ids = np.fromiter((it.content_id for it in self.items), dtype=np.int64, count=len(self.items))
        self._row = {int(cid): row for row, cid in enumerate(self.ids.tolist())}
        if len(self._row) != len(self.items):
            raise OmegaError("catalog has duplicate content ids")
        if _unit_half:
            if matrix.dtype != np.float16 or _content is None:
                raise OmegaError("a float16 catalog matrix comes with its content hash")
            self._content = _content
            #: (n, 384) float16 unit rows; read rows through `vector`/`vectors` to get float32
            self.matrix = matrix
        else:
            unit = _normalised(matrix, in_place=_owned)  # float32, transient
            del matrix
            self._content = _content if _content is not None else _content_hash(self.ids, unit)
            self.matrix = unit.astype(np.float16)
            del unit
        self.matrix.setflags(write=False)  # shared between brains: nobody may change it
        self.index = index
        self._neighbours = lru_cache(maxsize=_NEIGHBOURS_KEPT)(self._search_ids)

    # ------------------------------------------------------------------ building

    @classmethod
    def from_vectors(
        cls, items: Sequence[CatalogItem], matrix: np.ndarray, config: BrainConfig | None = None, *,
        index_file: Path | None = None,
    ) -> Catalog:  # fmt: skip
        """A catalog over precomputed embeddings (builds the HNSW index).

        `index_file` (a tool's cache, e.g. the simulator's): the index is loaded from there when it holds
        exactly these ids, else built and saved there. The caller names the file by `fingerprint` (ids,
        vectors and build parameters), so a file of other vectors is never read as this one's."""
        config = config or BrainConfig()
        if not len(items):
            return cls(items, matrix, new_index(config))
        ids = np.fromiter((it.content_id for it in items), dtype=np.int64, count=len(items))
        index = _load_index(index_file, config, ids) if index_file is not None else None
        if index is None:
            index = new_index(config)
            index.add(ids, _normalised(np.asarray(matrix)))
            if index_file is not None:
                index_file.parent.mkdir(parents=True, exist_ok=True)
                index.save(index_file)
        return cls(items, matrix, index)

    @classmethod
    def build(
        cls,
        items: Sequence[CatalogItem],
        embedder: Embedder,
        *,
        progress: Progress | None = None,
        config: BrainConfig | None = None,
    ) -> Catalog:
        """Embed every item's text (batched) and index it."""
        items = require_all(items, CatalogItem, "catalog entries must be CatalogItem")
        matrix = embedder.embed_batch([it.text() for it in items], progress=progress)
        return cls.from_vectors(items, matrix, config)

    @classmethod
    def from_store(cls, store: BrainStore, config: BrainConfig | None = None) -> Catalog:
        """The store's catalog, with its saved index (rebuilt and re-saved if missing, corrupt or stale)."""
        config = config or BrainConfig()
        items = store.catalog_items()
        path = index_path_for(store.path)
        if not len(items):
            return cls(items, store.catalog_embeddings()[1], new_index(config))
        # A TV's load: the float16 matrix and the content hash from the store's rows block by block (a float32
        # matrix of the whole catalog beside the index was the load's peak, +15 MB for 9,742 items), then the
        # saved index when it holds these vectors.
        ids, half, content = _unit_half_from_store(store)
        expected = _with_params(content, config)
        index = _load_index(path, config, ids) if store.get_state(_FINGERPRINT_KEY) == expected else None
        if index is not None:
            return cls(items, half, index, _content=content, _unit_half=True)
        # Rebuild (no index, a stale or corrupt one): the index is built from the float32 unit vectors, read again.
        del half
        ids, matrix = store.catalog_embeddings()
        unit = _normalised(matrix, in_place=True)  # the store's fresh copy: the only float32 one while building
        del matrix
        index = new_index(config)
        index.add(ids, unit)
        catalog = cls(items, unit, index, _content=_content_hash(ids, unit), _owned=True)
        catalog.save_index(store, config)
        return catalog

    def save_index(self, store: BrainStore, config: BrainConfig) -> None:
        """Write the index beside the store's file and record what it holds."""
        path = index_path_for(store.path)
        if path is None:
            return
        self.index.save(path)
        store.set_state(_FINGERPRINT_KEY, _with_params(self._content, config))

    # ------------------------------------------------------------------ lookups

    def __len__(self) -> int:
        return len(self.items)

    @property
    def row_index(self) -> dict[int, int]:
        """content id → row, for membership tests in the ranker's loops (an `in` on it costs a dict lookup, where
        `in catalog` also converts and guards): read it, never change it."""
        return self._row

    def __contains__(self, content_id: object) -> bool:
        try:
            return int(content_id) in self._row  # type: ignore[call-overload]
        except (TypeError, ValueError):
            return False

    def row(self, content_id: int) -> int:
        """Row of a content id in `items`/`matrix`, or OmegaError."""
        try:
            return self._row[int(content_id)]
        except (KeyError, TypeError, ValueError):
            raise OmegaError(f"unknown content id {content_id!r}: not in the catalog") from None

    def rows(self, content_ids: Sequence[int]) -> np.ndarray:
        """Rows of known content ids (unknown ones are dropped)."""
        get = self._row.get
        found = [get(int(c)) for c in content_ids]
        return np.fromiter((r for r in found if r is not None), dtype=np.int64)

    def item(self, content_id: int) -> CatalogItem:
        return self.items[self.row(content_id)]

    def vector(self, content_id: int) -> np.ndarray:
        """The unit-length embedding of an item (a float32 copy)."""
        return self.matrix[self.row(content_id)].astype(np.float32)

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        """(len(rows), 384) float32 embeddings of catalog rows (see `rows`)."""
        return self.matrix[np.asarray(rows, dtype=np.int64)].astype(np.float32)

    @property
    def nbytes(self) -> int:
        """Bytes of the in-RAM embedding matrix (the index holds its own copy)."""
        return int(self.matrix.nbytes)

    def search(self, vector: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(content ids, cosine similarities) of the k nearest items, best first."""
        if not self.items:
            return np.empty(0, np.int64), np.empty(0, np.float32)
        return self.index.search(vector, k)


    def neighbours(self, vector: np.ndarray, k: int) -> np.ndarray:
        """Content ids of the k nearest items to a vector that recurs from call to call (a pattern's centre),
        best first; the last few answers are kept, keyed by the vector's exact bytes, since the catalog and
        its index never change."""
        return self._neighbours(np.ascontiguousarray(vector, dtype=np.float32).tobytes(), int(k))

    def _search_ids(self, key: bytes, k: int) -> np.ndarray:
        ids = self.search(np.frombuffer(key, dtype=np.float32), k)[0]
        ids.setflags(write=False)  # shared by every caller that asks again
        return ids


def _unit_half_from_store(store: BrainStore) -> tuple[np.ndarray, np.ndarray, object]:
    """(ids, float16 unit matrix, content hash) from the store's rows, _NORM_ROWS at a time: the same values and
    hash as the whole float32 matrix gave (each row's norm is the same by blocks), one block held."""
    with store.catalog_embedding_blocks(_NORM_ROWS) as (ids, blocks):
        digest = hashlib.blake2b(digest_size=16)
        digest.update(memoryview(np.ascontiguousarray(ids, dtype="<i8")))  # as `_content_hash`: ids, then vectors
        half = np.empty((len(ids), EMBEDDING_DIM), np.float16)
        start = 0
        for block in blocks:
            unit = _normalised(block, in_place=True)
            digest.update(memoryview(np.ascontiguousarray(unit, dtype="<f4")))
            # Normalised once more, as `Catalog(..., _owned=True)` does to the unit matrix it is given: the rows
            # a TV has always ranked with (a second division moves ~0.002 % of the float16 values by one step).
            half[start : start + len(unit)] = _normalised(unit, in_place=True)
            start += len(unit)
    if start != len(ids):
        raise OmegaError(f"catalog read {start} embeddings for {len(ids)} items")
    return ids, half, digest


def _normalised(matrix: np.ndarray, *, in_place: bool = False) -> np.ndarray:
    """Unit rows as float32: one new array, or `matrix` itself divided in place (a float32 array its caller
    owns; the same values, without a second copy of the vectors)."""
    matrix = np.asarray(matrix, dtype=np.float32)
    norms = np.empty((len(matrix), 1), np.float32)
    for start in range(0, len(matrix), _NORM_ROWS):  # by blocks: norm's squares are a temporary of their size
        norms[start : start + _NORM_ROWS] = np.linalg.norm(matrix[start : start + _NORM_ROWS], axis=1, keepdims=True)
    if np.any(norms == 0) or not np.all(np.isfinite(norms)):
        raise OmegaError("catalog embeddings contain zero or non-finite vectors")
    if in_place:
        matrix /= norms
        return matrix
    return (matrix / norms).astype(np.float32, copy=False)


def new_index(config: BrainConfig) -> VectorIndex:
    return VectorIndex(
        EMBEDDING_DIM, dtype=config.index_dtype, connectivity=config.index_m,
        expansion_add=config.index_ef_construction, expansion_search=config.index_ef_search,
        exact_below=config.index_exact_below, threads=config.threads, backend=config.index_backend,
    )  # fmt: skip


def _load_index(path: Path | None, config: BrainConfig, ids: np.ndarray) -> VectorIndex | None:
    """The saved index if it is intact and holds exactly `ids`; None means rebuild."""
    if path is None or not path.is_file():
        return None
    try:
        index = VectorIndex.load(
            path, expansion_search=config.index_ef_search, exact_below=config.index_exact_below, dim=EMBEDDING_DIM,
            threads=config.threads,
        )
    except OmegaError:
        return None  # corrupt or truncated: the store holds the truth, rebuild from it
    if index.backend != config.index_backend:
        return None  # the config switched backends: rebuild with the configured one
    if len(index) != len(ids) or not np.array_equal(np.sort(index.keys()), np.sort(ids)):
        return None
    return index
