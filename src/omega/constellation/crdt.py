"""The federation CRDT: per-origin accumulators merged by highest version.

Each shard (an *origin*) is the single writer of its own per-cell and per-edge
accumulators. A region or hub keeps, per (origin, key), the entry with the
highest version; the global value of a key is the sum over origins. Because an
entry is replaced only by a strictly "greater" one under a total order
(version first, then the canonical bytes of the entry), merge is commutative,
associative and idempotent: replayed, duplicated or reordered messages change
nothing, and any two replicas that saw the same messages agree bit for bit
(global sums are taken in sorted origin order, so even float rounding agrees).

Delta wire format (little-endian, all of it `struct` + raw float64 arrays)::

    header  "<4sBII"   magic b"OCRD", format 1, codebook version, entry count
    entry   "<BB"      kind (1 = cell, 2 = edge), origin length, origin UTF-8
      cell  "<iIQdQdd" task_type, cell, version, sum_w, support, successes, trials
            + 384 × "<f8" sum_wx
      edge  "<IIIQdQ"  keyspace, src, dst, version, weight, support

float64 keeps a round trip exact, so a replica that re-encodes what it received
produces the same bytes. A cell entry is ~3.1 KB, an edge entry ~40 B + origin.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from omega.constellation.privacy import DEFAULT_K_MIN
from omega.errors import OmegaError
from omega.protocol import EMBEDDING_DIM

MAGIC = b"OCRD"
FORMAT_VERSION = 1

_HEADER = struct.Struct("<4sBII")
_ENTRY = struct.Struct("<BB")
_CELL = struct.Struct("<iIQdQdd")
_EDGE = struct.Struct("<IIIQdQ")
_VEC_BYTES = EMBEDDING_DIM * 8
#: Entry kinds of the delta format above (the store's `kind` column is another thing: store.base.KIND_CELL).
ENTRY_CELL = 1
ENTRY_EDGE = 2


class CellKey(NamedTuple):
    """A codebook cell, separately per task type (a pattern's meaning depends on its task)."""

    task_type: int
    cell: int


class EdgeKey(NamedTuple):
    """A transition edge "after src, dst" in a keyspace (item ids or codebook cells)."""

    keyspace: int
    src: int
    dst: int


@dataclass(frozen=True, eq=False)
class CellState:
    """One origin's accumulator for one cell: quality-weighted sums and distinct-device support."""

    sum_w: float
    sum_wx: np.ndarray
    support: int
    successes: float
    trials: float
    version: int

    def __post_init__(self) -> None:
        vec = np.ascontiguousarray(self.sum_wx, dtype=np.float64)
        if vec.shape != (EMBEDDING_DIM,):
            raise OmegaError(f"sum_wx must have shape ({EMBEDDING_DIM},), got {vec.shape}")
        vec.setflags(write=False)
        object.__setattr__(self, "sum_wx", vec)

    def canonical(self) -> bytes:
        return _CELL.pack(0, 0, self.version, self.sum_w, self.support, self.successes, self.trials) + (
            self.sum_wx.astype("<f8").tobytes()
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CellState) and self.canonical() == other.canonical()


@dataclass(frozen=True)
class EdgeState:
    """One origin's accumulator for one edge: summed quality-weighted count and distinct-device support."""

    weight: float
    support: int
    version: int

    def canonical(self) -> bytes:
        return _EDGE.pack(0, 0, 0, self.version, self.weight, self.support)


@dataclass(frozen=True, eq=False)
class ConsolidatedCell:
    """The global pattern of one cell, as published to TVs (the ReasoningBank record of docs/architecture.md §2)."""

    cluster_id: int
    embedding: np.ndarray
    task_type: int
    success_rate: float
    support: int
    trend_score: float
    version: int

    @property
    def key(self) -> CellKey:
        return CellKey(self.task_type, self.cluster_id)


@dataclass(frozen=True)
class ConsolidatedEdge:
    """The global transition edge as published: weight = distinct-device support (see `consolidate_edge`)."""

    keyspace: int
    src: int
    dst: int
    weight: float
    support: int
    version: int

    @property
    def key(self) -> EdgeKey:
        return EdgeKey(self.keyspace, self.src, self.dst)


def _rank(entry: CellState | EdgeState) -> tuple[int, bytes]:
    return (entry.version, entry.canonical())


def wins(new: CellState | EdgeState, old: CellState | EdgeState | None) -> bool:
    """True when `new` must replace `old` in a merge: higher version, ties broken by canonical bytes."""
    return old is None or _rank(new) > _rank(old)


def combine_cells(states: Iterable[CellState]) -> CellState:
    """Sum of accumulators; callers pass them in sorted origin order so the float result is reproducible."""
    parts = list(states)
    sum_wx = np.zeros(EMBEDDING_DIM, dtype=np.float64)
    for s in parts:
        sum_wx += s.sum_wx
    # sum() from 0.0 adds left to right: the same float result as a running total.
    return CellState(sum((s.sum_w for s in parts), 0.0), sum_wx, sum(s.support for s in parts),
                     sum((s.successes for s in parts), 0.0), sum((s.trials for s in parts), 0.0),
                     sum(s.version for s in parts))  # fmt: skip


def combine_edges(states: Iterable[EdgeState]) -> EdgeState:
    parts = list(states)
    return EdgeState(sum((s.weight for s in parts), 0.0), sum(s.support for s in parts), sum(s.version for s in parts))


def consolidate_cell(key: CellKey, total: CellState, version: int | None = None) -> ConsolidatedCell | None:
    """Weighted mean direction of a cell (None when it has no usable weight)."""
    if total.sum_w <= 0.0:
        return None
    mean = total.sum_wx / total.sum_w
    norm = float(np.linalg.norm(mean))
    if not np.isfinite(norm) or norm <= 1e-12:
        return None
    rate = total.successes / total.trials if total.trials > 0 else 0.0
    return ConsolidatedCell(
        cluster_id=key.cell,
        embedding=(mean / norm).astype(np.float32),
        task_type=key.task_type,
        success_rate=float(min(max(rate, 0.0), 1.0)),
        support=total.support,
        trend_score=0.0,
        version=total.version if version is None else version,
    )


def consolidate_edge(key: EdgeKey, total: EdgeState, version: int | None = None) -> ConsolidatedEdge:
    """The published edge: its weight IS its distinct support (how many TVs), never the summed weight.

    Summed weights let one device id count like many viewings (issue 14: three ids at the weight
    cap outranked 30 honest TVs); a distinct count moves by at most 1 per device. The state's
    `weight` (capped per contribution) stays for diagnostics and federation, and is not published.
    """
    return ConsolidatedEdge(
        key.keyspace, key.src, key.dst, float(total.support), total.support,
        total.version if version is None else version,
    )


@dataclass
class FederatedState:
    """Map (origin, key) → highest-version entry, for cells and edges of one codebook version."""

    codebook_version: int = 0
    cells: dict[tuple[str, CellKey], CellState] = field(default_factory=dict)
    edges: dict[tuple[str, EdgeKey], EdgeState] = field(default_factory=dict)

    # ---- building and merging -------------------------------------------------
    def put_cell(self, origin: str, key: CellKey, state: CellState) -> bool:
        """Offer one entry; keeps it if it wins. Returns whether the state changed."""
        return _put(self.cells, (origin, CellKey(*key)), state)

    def put_edge(self, origin: str, key: EdgeKey, state: EdgeState) -> bool:
        return _put(self.edges, (origin, EdgeKey(*key)), state)

    def merge(self, other: FederatedState) -> FederatedState:
        """Merge `other` into self in place (and return self). Commutative, associative, idempotent."""
        if other.codebook_version != self.codebook_version and (other.cells or other.edges):
            if self.cells or self.edges:
                raise OmegaError(
                    f"cannot merge states of codebook version {other.codebook_version} "
                    f"into codebook version {self.codebook_version}"
                )
            self.codebook_version = other.codebook_version
        for (origin, key), cell in other.cells.items():
            self.put_cell(origin, key, cell)
        for (origin, key), edge in other.edges.items():
            self.put_edge(origin, key, edge)
        return self

    def copy(self) -> FederatedState:
        return FederatedState(self.codebook_version, dict(self.cells), dict(self.edges))

    # ---- reading --------------------------------------------------------------
    def origins(self) -> set[str]:
        return {o for o, _ in self.cells} | {o for o, _ in self.edges}

    def max_version(self, origin: str) -> int:
        """The watermark to ask `origin` for: the highest version held from it."""
        versions = [s.version for (o, _), s in self.cells.items() if o == origin]
        versions += [s.version for (o, _), s in self.edges.items() if o == origin]
        return max(versions, default=0)

    def global_cell(self, key: CellKey) -> CellState | None:
        """Sum over origins of one cell (None if no origin has it)."""
        return next((total for _, total in _totals(self.cells, combine_cells, only=CellKey(*key))), None)

    def global_edge(self, key: EdgeKey) -> EdgeState | None:
        return next((total for _, total in _totals(self.edges, combine_edges, only=EdgeKey(*key))), None)

    def consolidated(self, k_min: int = DEFAULT_K_MIN) -> list[ConsolidatedCell]:
        """Published global patterns: weighted mean per cell where distinct support ≥ k_min, sorted by key."""
        patterns = (consolidate_cell(key, total) for key, total in _totals(self.cells, combine_cells)
                    if total.support >= k_min)  # fmt: skip
        return [p for p in patterns if p is not None]

    def consolidated_edges(self, k_min: int = DEFAULT_K_MIN) -> list[ConsolidatedEdge]:
        totals = _totals(self.edges, combine_edges)
        return [consolidate_edge(key, total) for key, total in totals if total.support >= k_min]

    # ---- serialisation --------------------------------------------------------
    def delta(self, since: int | Mapping[str, int] = 0) -> FederatedState:
        """Entries with version > the watermark (one for all origins, or one per origin; missing = 0)."""

        def after(origin: str, version: int) -> bool:
            mark = since if isinstance(since, int) else since.get(origin, 0)
            return version > mark

        return FederatedState(
            self.codebook_version,
            {k: s for k, s in self.cells.items() if after(k[0], s.version)},
            {k: s for k, s in self.edges.items() if after(k[0], s.version)},
        )

    def to_bytes(self) -> bytes:
        """Canonical encoding (entries sorted), so equal states encode to equal bytes."""
        return encode_entries(self.codebook_version, sorted(self.cells.items()), sorted(self.edges.items()))

    def encode_delta(self, since: int | Mapping[str, int] = 0) -> bytes:
        return self.delta(since).to_bytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> FederatedState:
        return decode_delta(data)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FederatedState) and self.to_bytes() == other.to_bytes()


def _put(table: dict, at: tuple, entry: CellState | EdgeState) -> bool:
    if wins(entry, table.get(at)):
        table[at] = entry
        return True
    return False


def _totals(
    table: Mapping[tuple, Any], combine: Callable[[Iterable[Any]], Any], only: tuple | None = None
) -> list[tuple[Any, Any]]:
    """(key, sum over origins) per key (or for key `only`), sorted by key; origins are summed in sorted order."""
    by_key: dict[Any, list[tuple[str, Any]]] = {}
    for (origin, key), entry in table.items():
        if only is None or key == only:
            by_key.setdefault(key, []).append((origin, entry))
    return [(key, combine(e for _, e in sorted(parts, key=lambda p: p[0]))) for key, parts in sorted(by_key.items())]


def _origin_bytes(origin: str) -> bytes:
    raw = origin.encode("utf-8")
    if not 0 < len(raw) <= 255:
        raise OmegaError(f"origin name must be 1..255 UTF-8 bytes, got {origin!r}")
    return raw


def encode_entries(
    codebook_version: int,
    cells: Iterable[tuple[tuple[str, CellKey], CellState]],
    edges: Iterable[tuple[tuple[str, EdgeKey], EdgeState]],
) -> bytes:
    parts: list[bytes] = []
    count = 0
    for (origin, key), s in cells:
        raw = _origin_bytes(origin)
        parts.append(_ENTRY.pack(ENTRY_CELL, len(raw)) + raw)
        parts.append(_CELL.pack(key.task_type, key.cell, s.version, s.sum_w, s.support, s.successes, s.trials))
        parts.append(s.sum_wx.astype("<f8").tobytes())
        count += 1
    for (origin, key), e in edges:
        raw = _origin_bytes(origin)
        parts.append(_ENTRY.pack(ENTRY_EDGE, len(raw)) + raw)
        parts.append(_EDGE.pack(key.keyspace, key.src, key.dst, e.version, e.weight, e.support))
        count += 1
    try:
        header = _HEADER.pack(MAGIC, FORMAT_VERSION, codebook_version, count)
    except struct.error as exc:
        raise OmegaError(f"cannot encode federation delta: {exc}") from exc
    return header + b"".join(parts)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise OmegaError(f"malformed federation delta: {message}")


def _iter_entries(data: bytes) -> Iterator[tuple[int, str, tuple, object]]:
    view = memoryview(data)
    _check(len(view) >= _HEADER.size, "shorter than its header")
    magic, fmt, _, count = _HEADER.unpack_from(view, 0)
    _check(magic == MAGIC, "bad magic")
    _check(fmt == FORMAT_VERSION, f"unknown format version {fmt}")
    pos = _HEADER.size
    for _ in range(count):
        _check(len(view) >= pos + _ENTRY.size, "truncated entry")
        kind, olen = _ENTRY.unpack_from(view, pos)
        pos += _ENTRY.size
        _check(olen > 0 and len(view) >= pos + olen, "truncated origin")
        try:
            origin = bytes(view[pos : pos + olen]).decode("utf-8")
        except UnicodeDecodeError:
            raise OmegaError("malformed federation delta: origin is not UTF-8") from None
        pos += olen
        if kind == ENTRY_CELL:
            _check(len(view) >= pos + _CELL.size + _VEC_BYTES, "truncated cell entry")
            task_type, cell, version, sum_w, support, successes, trials = _CELL.unpack_from(view, pos)
            pos += _CELL.size
            vec = np.frombuffer(view[pos : pos + _VEC_BYTES], dtype="<f8").astype(np.float64)
            pos += _VEC_BYTES
            _check(
                bool(np.isfinite(vec).all()) and all(np.isfinite((sum_w, successes, trials))),
                "non-finite cell sums",
            )
            _check(sum_w >= 0 and trials >= 0 and 0 <= successes <= trials * (1 + 1e-9) + 1e-9, "cell sums out of range")
            yield kind, origin, (task_type, cell), CellState(sum_w, vec, support, successes, trials, version)
        elif kind == ENTRY_EDGE:
            _check(len(view) >= pos + _EDGE.size, "truncated edge entry")
            keyspace, src, dst, version, weight, support = _EDGE.unpack_from(view, pos)
            pos += _EDGE.size
            _check(bool(np.isfinite(weight)) and weight >= 0, "edge weight out of range")
            yield kind, origin, (keyspace, src, dst), EdgeState(weight, support, version)
        else:
            _check(False, f"unknown entry kind {kind}")
    _check(pos == len(view), f"{len(view) - pos} trailing bytes")


def decode_delta(data: bytes) -> FederatedState:
    """Parse bytes from `encode_delta`/`to_bytes`; anything malformed raises OmegaError, nothing partial."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise OmegaError("federation delta must be bytes")
    codebook_version = _HEADER.unpack_from(data, 0)[2] if len(data) >= _HEADER.size else 0
    state = FederatedState(codebook_version)
    for kind, origin, key, entry in _iter_entries(bytes(data)):
        if kind == ENTRY_CELL:
            state.put_cell(origin, CellKey(*key), entry)  # type: ignore[arg-type]
        else:
            state.put_edge(origin, EdgeKey(*key), entry)  # type: ignore[arg-type]
    return state
