"""`VectorIndex`: cosine ANN search over catalog items or patterns (HNSW: usearch or hnswlib).

Below `exact_below` vectors, search is exact (numpy over the stored vectors):
HNSW buys nothing there, and exact search never misses an item. Both paths
return the same format: int64 keys and float32 similarities (1 - cosine
distance, in [-1, 1]), best first.

Keys are non-negative int64 (content ids; callers map pattern UUIDs to row
numbers). In `search_batch` rows with fewer than k hits are padded with key -1
and similarity NaN.

Two backends behind the same API (`backend=`): "usearch" (f32/f16/i8 storage)
and "hnswlib" (f32 only; removed slots are reused by later adds). Which is the
TV default, and why, is recorded in `BrainConfig.index_backend`.

File format (written atomically): the line `OMEGA-VECTOR-INDEX 1`, a JSON
header line (backend, dim, metric, dtype, connectivity, payload size and
CRC-32), then the backend's own serialised index (hnswlib: its `save_index`
file, followed by the uint64 labels of removed-but-not-reused slots). A header
without "backend" is a usearch file (written before hnswlib was added). The
checksum matters: both libraries trust their input, and a bit-flipped graph can
crash the process instead of raising.
"""

from __future__ import annotations

import json
import math
import os
import zlib
from pathlib import Path

import numpy as np

from omega.brain.index_backends import HnswlibBackend, UsearchBackend  # loads onnxruntime, then usearch
from omega.errors import OmegaError
from omega.protocol import EMBEDDING_DIM

_MAGIC = b"OMEGA-VECTOR-INDEX 1\n"
DTYPES = ("f32", "f16", "i8")
METRICS = ("cos",)
BACKENDS = ("usearch", "hnswlib")
#: storage types each backend supports (hnswlib keeps float32 vectors only)
BACKEND_DTYPES = {"usearch": DTYPES, "hnswlib": ("f32",)}
_MAX_HEADER = 4096
_ONE, _MINUS_ONE = np.float32(1.0), np.float32(-1.0)
#: chunk in which an index file's payload is checked and copied
_CHUNK = 1 << 20


def _crc32(handle) -> tuple[int, int]:  # noqa: ANN001
    """(bytes, CRC-32) of the rest of an open file, read in chunks."""
    size = crc = 0
    while chunk := handle.read(_CHUNK):
        size += len(chunk)
        crc = zlib.crc32(chunk, crc)
    return size, crc


class VectorIndex:
    """An HNSW cosine index with an exact path for small sets (see module docstring)."""

    def __init__(
        self,
        dim: int = EMBEDDING_DIM,
        *,
        metric: str = "cos",
        dtype: str = "f16",
        connectivity: int = 16,
        expansion_add: int = 128,
        expansion_search: int = 64,
        exact_below: int = 256,
        threads: int = 1,
        backend: str = "usearch",
    ) -> None:
        if backend not in BACKENDS:
            raise OmegaError(f"unsupported index backend {backend!r}; supported: {', '.join(BACKENDS)}")
        if metric not in METRICS:
            raise OmegaError(f"unsupported metric {metric!r}; supported: {', '.join(METRICS)}")
        if dtype not in BACKEND_DTYPES[backend]:
            supported = ", ".join(BACKEND_DTYPES[backend])
            raise OmegaError(f"unsupported index dtype {dtype!r} for backend {backend}; supported: {supported}")
        if dim < 1 or connectivity < 2 or expansion_add < 1 or expansion_search < 1 or exact_below < 0 or threads < 1:
            raise OmegaError(
                "index parameters out of range: need dim >= 1, connectivity >= 2, expansions >= 1, exact_below >= 0,"
                " threads >= 1"
            )
        self.backend = backend
        self.dim = int(dim)
        self.metric = metric
        self.dtype = dtype
        self.connectivity = int(connectivity)
        self.expansion_add = int(expansion_add)
        self._expansion_search = int(expansion_search)
        self.exact_below = int(exact_below)
        #: workers per call. 1 on a TV: usearch's default (0 = every core) dispatches even a single query
        #: to a thread pool, which measured ~50-100 µs slower than searching in-thread; hnswlib's default
        #: (every core) starts std::threads per call.
        self.threads = int(threads)
        backend_class = UsearchBackend if backend == "usearch" else HnswlibBackend
        self._index: UsearchBackend | HnswlibBackend = backend_class(
            self.dim, dtype, self.connectivity, self.expansion_add, self._expansion_search, self.threads
        )
        self._exact_cache: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def expansion_search(self) -> int:
        """HNSW search breadth (ef): higher finds more of the true neighbours and costs more µs."""
        return self._expansion_search

    @expansion_search.setter
    def expansion_search(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise OmegaError(f"expansion_search must be an integer >= 1, got {value!r}")
        self._expansion_search = int(value)
        self._index.set_expansion_search(int(value))

    # ------------------------------------------------------------------ contents

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, key: object) -> bool:
        try:
            value = int(key)  # type: ignore[call-overload]
        except (TypeError, ValueError):
            return False
        return value >= 0 and bool(self._index.contains(np.array([value], np.uint64))[0])

    @property
    def memory_bytes(self) -> int:
        """What the library holds (usearch: its own report; hnswlib: its serialised size, = its arrays)."""
        return int(self._index.memory_bytes())

    def keys(self) -> np.ndarray:
        """All keys held, as int64 (in no particular order)."""
        return self._index.keys().astype(np.int64)

    def add(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        """Add vectors under keys; a key already present is replaced by its new vector."""
        ukeys = self._keys(keys)
        matrix = self._vectors(vectors, "vectors")
        if len(ukeys) != len(matrix):
            raise OmegaError(f"{len(ukeys)} keys but {len(matrix)} vectors")
        if len(np.unique(ukeys)) != len(ukeys):
            raise OmegaError("duplicate keys in one add() call")
        if len(ukeys) == 0:
            return
        self._index.add(ukeys, matrix)
        self._exact_cache = None

    def remove(self, keys: np.ndarray) -> int:
        """Remove keys (absent ones are ignored); returns how many were removed."""
        ukeys = self._keys(keys)
        present = ukeys[self._index.contains(ukeys)] if len(ukeys) else ukeys
        if len(present):
            self._index.remove(present)
            self._exact_cache = None
        return int(len(present))

    # ------------------------------------------------------------------ search

    def search(self, vector: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest keys to `vector` (fewer if the index holds fewer), best first.

        The catalog's hot path (a recommend's content search, `omega bench brain`'s search k=50): one query, as
        few numpy calls as the checks allow. Each costs more here than in a loop of its own: the search before it
        streams ~3 MB of vectors through the core's caches and evicts numpy's code and data (the wrapper around
        hnswlib's ~90 µs call measured 11-13 µs, against ~5 µs for the same calls timed alone)."""
        query = self._query(vector)
        width = self._width(k)
        if width == 0:
            return np.empty(0, np.int64), np.empty(0, np.float32)
        if len(self._index) < self.exact_below:
            keys, sims = self._exact(query[None, :], width)
            return keys[0], sims[0]
        found = self._index.search_one(query, width)
        if found is None:  # hnswlib found fewer than `width` (a sparse graph): exact never misses
            keys, sims = self._exact(query[None, :], width)
            return keys[0], sims[0]
        keys, distances, count = found
        if count < width:
            keys, distances = keys[:count], distances[:count]
        # 1 - distance, in place (the library's fresh array). Both libraries return a row sorted by distance, so
        # only its ends can leave [-1, 1] (float32 rounding of unit vectors' dot products): checked there.
        sims = np.subtract(_ONE, distances, out=distances)
        if count and (sims[0] > _ONE or sims[-1] < _MINUS_ONE):
            np.minimum(sims, _ONE, out=sims)
            np.maximum(sims, _MINUS_ONE, out=sims)
        return keys, sims

    def search_batch(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(m, k') keys and similarities for m queries, k' = min(k, len); short rows padded with -1 / NaN."""
        return self._search(self._vectors(vectors, "queries"), k)

    def _width(self, k: int) -> int:
        """Results per query: k, checked, capped at the keys held."""
        if not isinstance(k, (int, np.integer)) or k < 0:
            raise OmegaError(f"k must be a non-negative integer, got {k!r}")
        return min(int(k), len(self._index))

    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """search_batch over already checked queries."""
        width = self._width(k)
        if width == 0 or len(queries) == 0:
            return np.empty((len(queries), width), np.int64), np.empty((len(queries), width), np.float32)
        if len(self) < self.exact_below:
            return self._exact(queries, width)
        found = self._index.search(queries, width)
        if found is None:  # hnswlib found fewer than `width` for some row (a sparse graph): exact never misses
            return self._exact(queries, width)
        keys, distances, counts = found
        sims = np.subtract(np.float32(1.0), distances, dtype=np.float32)
        np.minimum(sims, np.float32(1.0), out=sims)  # ufuncs, not np.clip: this is the per-query hot path
        np.maximum(sims, np.float32(-1.0), out=sims)
        if counts is not None and counts.min() < width:
            missing = np.arange(width)[None, :] >= counts[:, None]
            keys[missing] = -1
            sims[missing] = np.nan
        return keys, sims

    def _exact(self, queries: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
        if self._exact_cache is None:
            ukeys = self._index.keys()
            stored = self._index.get(ukeys).reshape(len(ukeys), self.dim)
            self._exact_cache = (ukeys.astype(np.int64), _normalise(stored))
        keys, matrix = self._exact_cache
        sims = _normalise(queries) @ matrix.T
        top = _top_k(sims, width)
        return keys[top], np.clip(np.take_along_axis(sims, top, axis=1), -1.0, 1.0).astype(np.float32)

    # ------------------------------------------------------------------ persistence

    def save(self, path: Path | str) -> None:
        """Write the index atomically (temp file + fsync + rename): a crash leaves the old file intact."""
        import tempfile  # here: a TV that loads its saved index never writes one (tempfile imports shutil, random)

        path = Path(path)
        payload = self._index.save()
        header = {
            "backend": self.backend, "dim": self.dim, "metric": self.metric, "dtype": self.dtype,
            "connectivity": self.connectivity, "expansion_add": self.expansion_add, "count": len(self),
            "payload_bytes": len(payload), "payload_crc32": zlib.crc32(payload),
        }  # fmt: skip
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        except OSError as exc:
            raise OmegaError(f"cannot write vector index {path}: {exc}") from None
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(_MAGIC)
                handle.write(json.dumps(header).encode() + b"\n")
                handle.write(payload)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(
        cls,
        path: Path | str,
        *,
        expansion_search: int = 64,
        exact_below: int = 256,
        dim: int | None = None,
        threads: int = 1,
    ) -> VectorIndex:
        """Read an index written by `save`; OmegaError if missing, corrupt or of another dimension than `dim`.

        The backend is the file's (header "backend"); callers check `.backend` if they need a given one.
        """
        path = Path(path)
        try:
            with path.open("rb") as handle:
                index = cls._read(path, handle, expansion_search, exact_below, dim, threads)
        except OSError as exc:
            raise OmegaError(f"cannot read vector index {path}: {exc.strerror or exc}") from None
        return index

    @classmethod
    def _read(  # noqa: ANN206
        cls, path: Path, handle, expansion_search: int, exact_below: int, dim: int | None, threads: int,  # noqa: ANN001
    ):
        """`load` from an open file. The payload is checked (length, CRC-32) in chunks, then streamed to the
        backend: the process never holds the file beside the index it becomes (+16 MB at a TV's load)."""
        head = handle.read(len(_MAGIC) + _MAX_HEADER)
        if not head.startswith(_MAGIC):
            raise OmegaError(f"{path} is not an omega vector index file")
        end = head.find(b"\n", len(_MAGIC), len(_MAGIC) + _MAX_HEADER)
        try:
            header = json.loads(head[len(_MAGIC) : end]) if end > 0 else None
            handle.seek(end + 1)
            size, crc = _crc32(handle)
            valid = (
                isinstance(header, dict)
                and header["payload_bytes"] == size
                and header["payload_crc32"] == crc
                and header.get("backend", "usearch") in BACKENDS
            )
        except (ValueError, KeyError, TypeError):
            valid = False
        if not valid:
            raise OmegaError(f"vector index {path} is corrupt or truncated (header or checksum mismatch)")
        if dim is not None and header["dim"] != dim:
            raise OmegaError(f"vector index {path} holds {header['dim']}-d vectors, expected {dim}")
        index = cls(
            header["dim"], metric=header["metric"], dtype=header["dtype"], connectivity=header["connectivity"],
            expansion_add=header["expansion_add"], expansion_search=expansion_search, exact_below=exact_below,
            threads=threads, backend=header.get("backend", "usearch"),
        )  # fmt: skip
        handle.seek(end + 1)
        try:
            index._index.load_from(handle, size)
        except (RuntimeError, ValueError) as exc:
            raise OmegaError(f"vector index {path} could not be loaded: {exc}") from None
        if len(index) != header["count"]:
            raise OmegaError(f"vector index {path} holds {len(index)} vectors, header says {header['count']}")
        return index

    # ------------------------------------------------------------------ input checks

    def _keys(self, keys: np.ndarray) -> np.ndarray:
        array = np.atleast_1d(np.asarray(keys))
        if array.ndim != 1 or (array.size and array.dtype.kind not in "iu"):
            raise OmegaError("keys must be a 1-d array of integers")
        if array.size and ((array.dtype.kind == "i" and array.min() < 0) or array.max() > np.iinfo(np.int64).max):
            raise OmegaError("keys must be in [0, 2**63)")
        return array.astype(np.uint64)

    def _query(self, vector: np.ndarray) -> np.ndarray:
        """One query as a checked, C-contiguous float32 vector of `dim` (a (1, dim) matrix is taken as its row)."""
        query = np.asarray(vector, dtype=np.float32)
        if query.ndim != 1:
            if query.ndim == 2 and query.shape[0] != 1 and query.shape[1] == self.dim:
                raise OmegaError("search() takes one vector; use search_batch() for many")
            return self._vectors(query, "query")[0]  # (1, dim), or the shape error
        if query.shape[0] != self.dim:
            raise OmegaError(f"query must have {self.dim} columns, got shape {np.shape(vector)}")
        one = float(np.dot(query, query))  # non-finite iff a NaN/inf (or float32 overflow), 0 iff a zero vector
        if not math.isfinite(one):
            raise OmegaError("query contain NaN or infinite values")
        if one == 0.0:
            raise OmegaError("query contain a zero vector, which has no cosine direction")
        return query if query.flags.c_contiguous else np.ascontiguousarray(query)

    def _vectors(self, vectors: np.ndarray, name: str) -> np.ndarray:
        matrix = np.asarray(vectors, dtype=np.float32)
        if matrix.ndim == 1:
            matrix = matrix[None, :]
        if matrix.ndim != 2 or matrix.shape[1] != self.dim:
            raise OmegaError(f"{name} must have {self.dim} columns, got shape {np.shape(vectors)}")
        # One pass over the data for both checks: a squared norm is non-finite iff the row holds a
        # NaN/inf (or overflows float32, which cosine cannot use either), and 0 iff the row is zero.
        if matrix.shape[0] == 1:  # one query (the hot path): a scalar dot beats einsum + all + any by ~8 µs
            one = float(np.dot(matrix[0], matrix[0]))
            finite, zero = math.isfinite(one), one == 0.0
        else:
            squared = np.einsum("ij,ij->i", matrix, matrix) if matrix.size else np.empty(0, np.float32)
            finite, zero = bool(np.all(np.isfinite(squared))), bool(np.any(squared == 0))
        if not finite:
            raise OmegaError(f"{name} contain NaN or infinite values")
        if zero:
            raise OmegaError(f"{name} contain a zero vector, which has no cosine direction")
        return matrix if matrix.flags.c_contiguous else np.ascontiguousarray(matrix)


def _normalise(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.where(norms == 0, 1.0, norms)


def _top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the k largest scores per row, best first (ties by position)."""
    if k >= scores.shape[1]:
        return np.argsort(-scores, axis=1, kind="stable")[:, :k]
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def exact_search(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Row indices into `vectors` of the k most cosine-similar vectors to each query, best first."""
    sims = _normalise(np.asarray(queries, np.float32).reshape(-1, np.shape(vectors)[1])) @ _normalise(
        np.asarray(vectors, np.float32)
    ).T
    return _top_k(sims, min(k, len(vectors)))


def recall_at_k(
    index: VectorIndex, vectors: np.ndarray, queries: np.ndarray, k: int, keys: np.ndarray | None = None
) -> float:
    """Mean fraction of the true k nearest neighbours (exact numpy search over `vectors`) the index returns.

    `keys[i]` is the key `vectors[i]` was added under (default: 0..n-1).
    """
    vectors = np.asarray(vectors, np.float32)
    keys = np.arange(len(vectors), dtype=np.int64) if keys is None else np.asarray(keys, np.int64)
    if len(keys) != len(vectors) or len(vectors) == 0 or k < 1:
        raise OmegaError("recall_at_k needs as many keys as vectors, at least one vector and k >= 1")
    width = min(k, len(vectors))
    truth = keys[exact_search(vectors, queries, width)]
    found, _ = index.search_batch(np.asarray(queries, np.float32).reshape(len(truth), -1), width)
    hits = [len(np.intersect1d(t, f[f >= 0])) for t, f in zip(truth, found)]
    return float(np.sum(hits) / (width * len(truth)))
