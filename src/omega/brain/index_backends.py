"""The two HNSW libraries behind `VectorIndex` (omega.brain.index), each wrapped to one small API.

Both take checked input from VectorIndex: uint64 keys (unique within a call), C-contiguous float32
(n, dim) matrices, 1 <= width <= len. `search` returns (int64 keys, float32 cosine distances, per-row
hit counts or None when every row is full), or None when the library cannot fill every row.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

# Order matters: with usearch 2.26.6 and onnxruntime 1.32 on x86-64, loading
# onnxruntime's extension *after* usearch's segfaults the interpreter (seen
# here with a bare `import usearch.compiled; import onnxruntime`). The reverse
# order is fine, so ORT is loaded here, before either backend can load usearch.
import onnxruntime  # noqa: F401,E402  (imported for its side effect on load order)


class UsearchBackend:
    """usearch's HNSW (f32/f16/i8 storage); replacing a key is remove + add (its API refuses duplicates)."""

    def __init__(self, dim: int, dtype: str, m: int, ef_add: int, ef_search: int, threads: int) -> None:
        # Imported here: only brains that use this backend pay for usearch (+17 MB RSS with its tqdm and
        # numkong imports, measured on the bench brain's process).
        from usearch.index import Index

        self.threads = threads
        self.index = Index(
            ndim=dim, metric="cos", dtype=dtype, connectivity=m, expansion_add=ef_add, expansion_search=ef_search
        )

    def __len__(self) -> int:
        return len(self.index)

    def set_expansion_search(self, value: int) -> None:
        self.index.expansion_search = value

    def memory_bytes(self) -> int:
        return int(self.index.memory_usage)

    def contains(self, ukeys: np.ndarray) -> np.ndarray:
        return np.asarray(self.index.contains(ukeys), dtype=bool).reshape(-1)

    def keys(self) -> np.ndarray:
        return np.asarray(self.index.keys, dtype=np.uint64)

    def get(self, ukeys: np.ndarray) -> np.ndarray:
        return np.asarray(self.index.get(ukeys), dtype=np.float32)

    def add(self, ukeys: np.ndarray, matrix: np.ndarray) -> None:
        present = ukeys[self.contains(ukeys)]
        if len(present):
            # usearch's high-level API refuses duplicate keys: replace = remove, then add.
            self.index.remove(present)
        self.index.add(ukeys, matrix, threads=self.threads)

    def remove(self, present: np.ndarray) -> None:
        self.index.remove(present)

    def search(self, queries: np.ndarray, width: int):  # noqa: ANN201
        matches = self.index.search(queries, width, threads=self.threads)
        rows = len(queries)
        keys = np.asarray(matches.keys, dtype=np.uint64).reshape(rows, -1)[:, :width].astype(np.int64)
        distances = np.asarray(matches.distances, dtype=np.float32).reshape(rows, -1)[:, :width]
        counts = np.asarray(matches.counts).reshape(-1) if hasattr(matches, "counts") else np.full(1, width)
        return keys, distances, counts

    def search_one(self, query: np.ndarray, width: int):  # noqa: ANN201
        """One (dim,) query: (int64 keys, float32 distances, hits), the row's slots past `hits` unfilled."""
        keys, distances, counts = self.search(query[None, :], width)
        return keys[0], distances[0], int(counts[0])

    def save(self) -> bytes:
        return bytes(self.index.save())

    def load_from(self, handle, size: int) -> None:  # noqa: ANN001
        """Restore from the next `size` bytes of an open file (what `save` returned)."""
        self.index.load(memoryview(handle.read(size)))


class HnswlibBackend:
    """hnswlib 0.8 "cosine" space (stores unit float32 vectors; distance = 1 - dot).

    hnswlib keeps a removed item's slot (mark_deleted) and its label in its lookup table until
    `replace_deleted` reuses the slot for a new label. So: a live key is updated in place, a removed
    key still in the table is unmarked and updated in place, and only a key hnswlib has never seen (or
    whose slot was reused) takes a removed slot; adding with replace_deleted under a label the table
    still holds would leave two slots with one label. Live keys are kept here as a sorted uint64 array
    (8 bytes a key) because hnswlib's `get_ids_list` includes removed labels.
    """

    _FIRST_CAPACITY = 1024
    _GROWTH = 1.5

    def __init__(self, dim: int, dtype: str, m: int, ef_add: int, ef_search: int, threads: int) -> None:
        self.dim, self.m, self.ef_add, self.ef_search, self.threads = dim, m, ef_add, ef_search, threads
        self.index = None  # created on first add or load (load_index replaces an inited index noisily)
        self.live = np.empty(0, np.uint64)

    def _new(self, capacity: int):  # noqa: ANN202
        import hnswlib  # after onnxruntime (top of module); only brains that use this backend load it

        index = hnswlib.Index(space="cosine", dim=self.dim)
        if capacity:
            index.init_index(max_elements=capacity, ef_construction=self.ef_add, M=self.m, allow_replace_deleted=True)
        return index

    def _configure(self) -> None:
        self.index.set_ef(self.ef_search)
        self.index.set_num_threads(self.threads)

    def __len__(self) -> int:
        return len(self.live)

    def set_expansion_search(self, value: int) -> None:
        self.ef_search = value
        if self.index is not None:
            self.index.set_ef(value)

    def memory_bytes(self) -> int:
        # hnswlib reports no memory figure; its serialised size is its arrays for the slots in use.
        return int(self.index.index_file_size()) if self.index is not None else 0

    def contains(self, ukeys: np.ndarray) -> np.ndarray:
        at = np.searchsorted(self.live, ukeys)
        found = at < len(self.live)
        found[found] = self.live[at[found]] == ukeys[found]
        return found

    def keys(self) -> np.ndarray:
        return self.live.copy()

    def get(self, ukeys: np.ndarray) -> np.ndarray:
        if len(ukeys) == 0:
            return np.empty((0, self.dim), np.float32)
        return np.asarray(self.index.get_items(ukeys, return_type="numpy"), dtype=np.float32)

    def add(self, ukeys: np.ndarray, matrix: np.ndarray) -> None:
        if self.index is None:
            self.index = self._new(max(self._FIRST_CAPACITY, len(ukeys)))
            self._configure()
        in_place = self.contains(ukeys)
        removed_slots = self.index.element_count - len(self.live)
        if removed_slots:
            in_table = np.asarray(self.index.get_ids_list(), dtype=np.uint64)
            revive = ~in_place & np.isin(ukeys, np.setdiff1d(in_table, self.live))
            for key in ukeys[revive].tolist():
                self.index.unmark_deleted(key)
            removed_slots -= int(revive.sum())
            in_place |= revive
        if in_place.any():
            self.index.add_items(matrix[in_place], ukeys[in_place], num_threads=self.threads)
        new = ~in_place
        if new.any():
            needed = self.index.element_count + max(0, int(new.sum()) - removed_slots)
            if needed > self.index.max_elements:
                self.index.resize_index(max(needed, int(self.index.max_elements * self._GROWTH)))
            self.index.add_items(matrix[new], ukeys[new], num_threads=self.threads, replace_deleted=True)
        self.live = np.union1d(self.live, ukeys)

    def remove(self, present: np.ndarray) -> None:
        for key in present.tolist():
            self.index.mark_deleted(key)
        self.live = np.setdiff1d(self.live, present)

    def search(self, queries: np.ndarray, width: int):  # noqa: ANN201
        try:
            labels, distances = self.index.knn_query(queries, k=width, num_threads=self.threads)
        except RuntimeError:  # "Cannot return the results in a contiguous 2D array": fewer than k found
            return None
        return labels.astype(np.int64), distances, None

    def search_one(self, query: np.ndarray, width: int):  # noqa: ANN201
        """One (dim,) query: (int64 keys, float32 distances, width), or None as `search`. Positional arguments
        (pybind11's keyword matching costs ~0.3 µs) and the labels reinterpreted, not copied: keys are < 2**63."""
        try:
            labels, distances = self.index.knn_query(query, width, self.threads)
        except RuntimeError:
            return None
        return labels[0].view(np.int64), distances[0], width

    def save(self) -> bytes:
        """uint64 count of removed labels still in hnswlib's table, those labels, then save_index's file."""
        index = self.index if self.index is not None else self._new(1)
        if self.index is None:
            index.set_num_threads(self.threads)
        removed = (
            np.setdiff1d(np.asarray(index.get_ids_list(), dtype=np.uint64), self.live)
            if index.element_count
            else np.empty(0, np.uint64)
        )
        import tempfile  # here: a TV that loads its saved index never saves one (tempfile imports shutil, random)

        with tempfile.TemporaryDirectory(prefix="omega-hnsw-") as tmp:
            raw = Path(tmp) / "index.hnsw"
            index.save_index(str(raw))
            body = raw.read_bytes()
        return struct.pack("<Q", len(removed)) + removed.astype("<u8").tobytes() + body

    def load_from(self, handle, size: int) -> None:  # noqa: ANN001
        """Restore from the next `size` bytes of an open file (what `save` returned), the rest of the file:
        hnswlib reads only a path, so its part is copied to one (`_path_of_rest`) in chunks, never held whole."""
        if size < 8:
            raise ValueError("payload too short")
        (n_removed,) = struct.unpack("<Q", handle.read(8))
        end = 8 + 8 * n_removed
        if end > size:
            raise ValueError("payload too short for its removed-label list")
        removed = np.frombuffer(handle.read(8 * n_removed), dtype="<u8").astype(np.uint64)
        index = self._new(0)
        with _path_of_rest(handle) as raw:
            index.load_index(raw, max_elements=0, allow_replace_deleted=True)
        if index.dim != self.dim:
            raise ValueError(f"hnswlib index holds {index.dim}-d vectors")
        self.index = index
        self._configure()
        labels = np.sort(np.asarray(index.get_ids_list(), dtype=np.uint64))  # hnswlib's table: each label once
        # = np.setdiff1d(labels, removed); without removed labels (a TV's catalog) no np.unique, which imports numpy.ma
        self.live = np.setdiff1d(labels, removed) if len(removed) else labels


#: how much of the index file `_path_of_rest` copies at a time
_CHUNK = 1 << 20


@contextmanager
def _path_of_rest(handle) -> Iterator[str]:  # noqa: ANN001
    """A path to a file holding the rest of `handle`, for hnswlib, which loads an index only from a path.

    On Linux an anonymous in-memory file (memfd, opened by hnswlib through /proc/self/fd) that is gone when closed:
    a TV's start writes nothing to a disk and needs no writable temporary directory, and loads neither tempfile
    nor shutil (with bz2, lzma and random, ~0.9 MB of a TV's RSS for this copy alone). Elsewhere, or where
    memfd or /proc is missing, a file in a temporary directory as before."""
    fd = -1
    if hasattr(os, "memfd_create"):
        try:
            fd = os.memfd_create("omega-hnsw", os.MFD_CLOEXEC)
        except OSError:
            fd = -1
    if fd >= 0 and os.path.exists(f"/proc/self/fd/{fd}"):
        try:
            with open(fd, "wb", closefd=False) as out:
                _copy_rest(handle, out)
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    if fd >= 0:
        os.close(fd)
    import tempfile

    with tempfile.TemporaryDirectory(prefix="omega-hnsw-") as tmp:
        raw = Path(tmp) / "index.hnsw"
        with raw.open("wb") as out:
            _copy_rest(handle, out)
        yield str(raw)


def _copy_rest(handle, out) -> None:  # noqa: ANN001
    while chunk := handle.read(_CHUNK):
        out.write(chunk)
