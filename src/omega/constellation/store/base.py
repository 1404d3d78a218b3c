"""The interface every constellation store implements (SQLite embedded, PostgreSQL at scale).

The aggregator does the thinking (validation, codebook cells, weights, keyed
hashes); a store does the durable bookkeeping, each push in ONE transaction:
idempotency key + per-epoch flood check + accumulator update + change-sequence
bump. When `apply_push` returns, the push is durable (the server acks after it).

What a push, merge or pull computes is written once, in logic.py; the backends
(sqlite.py, postgres.py) only run its SQL.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from omega.constellation.crdt import (
    CellKey,
    CellState,
    ConsolidatedEdge,
    ConsolidatedCell,
    EdgeKey,
    EdgeState,
    FederatedState,
)
from omega.constellation.privacy import check_k_min
from omega.errors import OmegaError
from omega.protocol import EMBEDDING_DIM

# Estimated wire size of one published item (the server computes exact sizes):
# a pattern is ~24 B of fields + 384 uint8 components, an edge a few varints.
PATTERN_WIRE_BYTES = 24 + EMBEDDING_DIM
EDGE_WIRE_BYTES = 8

#: The `kind` column of the store's keyed rows (served, members, contributions). Stored: never renumber.
KIND_CELL = 0
KIND_EDGE = 1

#: Remote CRDT entries as (origin, key, entry), the input of a merge.
CellEntries = list[tuple[str, CellKey, CellState]]
EdgeEntries = list[tuple[str, EdgeKey, EdgeState]]


@dataclass(frozen=True, eq=False)
class CellContribution:
    """One accepted-for-consideration embedding pattern, already mapped to its cell and weighted."""

    index: int  # position in the push's pattern list (for per-item rejections)
    task_type: int
    cell: int
    member: bytes  # keyed hash of (cell, device): distinct support without a device id
    weight: float
    embedding: np.ndarray  # unit-norm float32 (384,)
    successes: float
    trials: float


class EdgeContribution(NamedTuple):
    """One pushed (or derived pair) transition, keyed and weighted. A tuple: a push builds ~20 of them,
    and a frozen dataclass costs three times as much to construct."""

    index: int  # position in the push's transition list
    keyspace: int
    src: int
    dst: int
    member: bytes  # keyed hash of (edge, device)
    weight: float


@dataclass(frozen=True)
class PreparedPush:
    push_key: bytes  # keyed hash of (device, batch_id): the idempotency key
    epoch: int  # now_ms // epoch_ms: a member contributes to a key at most once per epoch
    now_ms: int
    cells: list[CellContribution] = field(default_factory=list)
    edges: list[EdgeContribution] = field(default_factory=list)


@dataclass(frozen=True)
class PushOutcome:
    duplicate: bool  # this push key was applied before: nothing changed
    accepted_cells: list[int] = field(default_factory=list)
    accepted_edges: list[int] = field(default_factory=list)
    flooded_cells: list[int] = field(default_factory=list)  # already contributed to that cell this epoch
    flooded_edges: list[int] = field(default_factory=list)
    head: int = 0  # change sequence after this push


class PageBudget(NamedTuple):
    max_bytes: int  # a page's estimated wire size
    pattern_bytes: int  # estimated wire size of one published pattern
    edge_bytes: int  # ... of one published edge


@dataclass(frozen=True)
class ChangePage:
    items: list[ConsolidatedCell | ConsolidatedEdge]
    cursor: int  # pass back as `cursor` to get the next page
    more: bool  # published changes remain after `cursor`


@dataclass(frozen=True)
class PruneStats:
    push_keys: int  # idempotency keys deleted
    members: int  # member rows whose last contribution left the window (store/window.py)
    contributions: int  # contributions-log rows that left the window
    keys: int  # keys whose own accumulator and support were reduced
    head: int = 0  # the change sequence after the prune (each reduced key took a new change number)


@dataclass(frozen=True)
class StoreStats:
    head: int
    cells: int  # distinct cell keys in the served view
    edges: int
    contributions: int  # rows in the append-only log
    push_keys: int
    members: int  # per-key distinct-support members


class ConstellationStore(ABC):
    """Durable state of one shard: its own accumulators, other origins' CRDT entries, the served view."""

    origin: str
    _codebook_version: int | None = None  # set by `bind`

    @abstractmethod
    async def bind(self, codebook_fingerprint: str, codebook_version: int, salt_check: bytes) -> None:
        """Record (first time) or verify the codebook and salt this store was built with; mismatch → OmegaError."""

    @abstractmethod
    async def set_pull_floor(self, k_min: int) -> None:
        """Index the pull scan for pulls with this k_min (the aggregator's): a pull then reads only the keys whose
        support ever reached it, not every key a push named. Rebuilds the index if it was built for another
        k_min (new and migrated stores: DEFAULT_K_MIN); a pull with a lower k_min scans every served key."""

    @abstractmethod
    async def apply_push(self, push: PreparedPush) -> PushOutcome:
        """Apply one push atomically and durably; a repeated push key is a no-op with duplicate=True."""

    async def changes_since(
        self,
        cursor: int,
        k_min: int,
        max_bytes: int,
        pattern_bytes: int = PATTERN_WIRE_BYTES,
        edge_bytes: int = EDGE_WIRE_BYTES,
    ) -> ChangePage:
        """Published items (global support ≥ k_min) changed after `cursor`, in change order, within the budget.

        At least one item is returned when any is pending, so a tiny budget still makes progress.
        """
        return await self._changes(cursor, k_min, PageBudget(max_bytes, pattern_bytes, edge_bytes))

    @abstractmethod
    async def _changes(self, cursor: int, k_min: int, budget: PageBudget) -> ChangePage:
        """The rows behind `changes_since` (one read snapshot, scanned with `logic.Page`)."""

    @abstractmethod
    async def published_cowatch(self, k_min: int) -> list[tuple[int, int, int]]:
        """The co-watched pairs (Keyspace.COWATCH) with global support >= k_min: (a, b, distinct TVs), a < b, in key
        order. Never in `changes_since`: they are the refined neighbours' input, not a TV's."""

    @abstractmethod
    async def nearest_consolidated(
        self, vector: np.ndarray, k: int, k_min: int, task_type: int | None = None
    ) -> list[tuple[CellKey, float]]:
        """The k published cells (global support ≥ k_min) whose consolidated embedding is most cosine-similar
        to `vector`, best first, as (cell key, cosine similarity); optionally of one task type only."""

    # ---- DP mode's state (omega.constellation.dp_release), shared by restarts and workers ----
    @abstractmethod
    async def dp_releases(self, first_epoch: int, last_epoch: int) -> dict[int, bytes]:
        """The stored daily DP releases of epochs first..last (encoded by dp_release), by epoch."""

    @abstractmethod
    async def keep_dp_release(self, epoch: int, release: bytes) -> bytes:
        """Store `release` as the epoch's unless one is stored already; returns the stored one.

        So a restart or a second worker serves the release drawn first, never a fresh draw
        (averaging two draws of the same supports would cancel the noise)."""

    @abstractmethod
    async def cell_contributions(self, epoch: int) -> list[tuple[int, int, float, float, bytes]]:
        """The embedding-pattern contributions logged in one epoch, one row each, no device:
        (task_type, cell, successes, trials, float16 embedding)."""

    @abstractmethod
    async def use_day_keys(self, epoch: int, tag: bytes, wanted: int, limit: int, push_key: bytes) -> int:
        """Grant up to `wanted` of the `limit` keys a device (`tag`: keyed hash of epoch ‖ device)
        may add to in an epoch; returns how many were granted (atomically, across workers).

        Idempotent per push (`push_key`, the push's idempotency key): a retried batch gets the grant
        of its first attempt again and uses no more of the day's keys."""

    @abstractmethod
    async def prune(self, push_keys_before_ms: int, epoch_before: int) -> PruneStats:
        """Forget idempotency keys older than a time, and members, contributions and DP state of epochs
        before `epoch_before` (the contribution window, store/window.py), in one transaction."""

    async def export_entries(self, since_version: int = 0, origins: list[str] | None = None) -> FederatedState:
        """CRDT entries (own and remote) with version > since_version, optionally of some origins only."""
        return await self._export(self._require_bound(), int(since_version), origins)

    async def merge_entries(self, state: FederatedState) -> int:
        """Merge remote origins' entries (own-origin entries are ignored); returns how many changed."""
        cells, edges = merge_guard(self.origin, self._require_bound(), state)
        if not cells and not edges:
            return 0
        return await self._merge(cells, edges)

    @abstractmethod
    async def _export(self, codebook_version: int, since_version: int, origins: list[str] | None) -> FederatedState:
        """The rows behind `export_entries`."""

    @abstractmethod
    async def _merge(self, cells: CellEntries, edges: EdgeEntries) -> int:
        """Merge entries that passed `merge_guard` (in one transaction); returns how many changed."""

    def _require_bound(self) -> int:
        if self._codebook_version is None:
            raise OmegaError("store is not bound to a codebook yet")
        return self._codebook_version

    @abstractmethod
    async def stats(self) -> StoreStats: ...

    @abstractmethod
    async def close(self) -> None: ...

    async def __aenter__(self) -> ConstellationStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def check_query(vector: object, k: object, k_min: object) -> np.ndarray:
    """Validate a `nearest_consolidated` query; returns the unit-norm float32 query vector."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise OmegaError("k must be a positive integer")
    check_k_min(k_min)
    try:
        q = np.asarray(vector, dtype=np.float64)
    except (TypeError, ValueError):
        raise OmegaError("query vector must be numeric") from None
    if q.shape != (EMBEDDING_DIM,) or not np.isfinite(q).all():
        raise OmegaError(f"query vector must be {EMBEDDING_DIM} finite numbers")
    norm = float(np.linalg.norm(q))
    if norm <= 1e-12:
        raise OmegaError("query vector must not be zero")
    return (q / norm).astype(np.float32)


def merge_guard(origin: str, codebook_version: int, state: FederatedState) -> tuple[CellEntries, EdgeEntries]:
    """The remote entries a store may merge, in sorted order; entries of another codebook are refused."""
    if (state.cells or state.edges) and state.codebook_version != codebook_version:
        raise OmegaError(
            f"federation entries are for codebook version {state.codebook_version}, "
            f"this store uses {codebook_version}"
        )
    # Our own origin's entries are authoritative here (single writer): never overwritten from outside.
    cells = [(o, CellKey(*k), s) for (o, k), s in sorted(state.cells.items()) if o != origin]
    edges = [(o, EdgeKey(*k), e) for (o, k), e in sorted(state.edges.items()) if o != origin]
    return cells, edges
