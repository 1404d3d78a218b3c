"""What every constellation store does, whatever its SQL: the backends only read and write rows.

- A push: `check_push` (the store's own validation, the same on every backend) →
  `member_rows` → `GroupWrites.push` (the per-epoch flood check against the member
  marks the backend looked up, then new own accumulators, served-view increments,
  member marks and log rows, every change numbered from the head, merged per key
  over a group of pushes) → `GroupWrites.rows`.
  Latest wins per member per key: a member's row holds what it counts in its key's
  accumulator (its last contribution), and its next contribution, in a later epoch,
  replaces it (the old one is subtracted) instead of adding to it. So a device moves
  a key by one capped contribution however often it pushes (issue 14).
- A merge: `base.merge_guard` (codebook version; this shard's own entries are
  never overwritten from outside) → `plan_merge` (CRDT: an entry replaces the held one
  only if it wins) → rows with each touched key's new global support.
- A pull: `Page` (the byte budget over the scanned change index) →
  `consolidate_rows` (global weighted means of the chosen keys) and `removal`
  (a key that was published and no longer is: support 0 on the wire, so the TV drops it).

Rows keep one column order on every backend:
cell state `(origin, task_type, cell, sum_w, sum_wx, support, successes, trials, version)`,
edge state `(origin, keyspace, src, dst, weight, support, version)`,
served `(kind, k1, k2, k3, seq, support)` (+ `peak`, the highest global support the key ever had:
a key whose peak reached k_min was published, and leaving the published state is sent as a removal),
member `(kind, k1, k2, k3, member, epoch, weight, successes, trials, embedding)` (what the member
counts: its last contribution; a cell's embedding float16, an edge's counts and embedding NULL; weight
NULL for a member marked before the replace rule, whose contributions the log's `legacy` rows hold),
contribution log `(epoch, kind, k1, k2, k3, weight, successes, trials, embedding)` (cells only since the
replace rule: the day's DP release reads it; rows from before it are `legacy`, subtracted when they expire).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from omega.constellation import crdt
from omega.constellation.crdt import CellKey, CellState, EdgeKey, EdgeState, FederatedState
from omega.constellation.store import window
from omega.constellation.store.base import (
    KIND_CELL,
    KIND_EDGE,
    EdgeContribution,
    PageBudget,
    PreparedPush,
    PushOutcome,
)
from omega.errors import OmegaError
from omega.protocol import EMBEDDING_DIM, Keyspace

#: The served rows a pull may read: every key but the co-watched pairs (Keyspace.COWATCH: the input of the refined
#: neighbours, counted like edges but never sent to a TV; read by `cowatch_sql`). SQL over `served` columns.
PULLED_KEYS = f"NOT (kind = {KIND_EDGE} AND k1 = {int(Keyspace.COWATCH)})"


def cowatch_sql(served: str, param: str) -> str:
    """The query of the co-watched pairs with global support >= the parameter `param`: (a, b, support)."""
    return f"SELECT k2, k3, support FROM {served} WHERE kind = {KIND_EDGE} AND k1 = {int(Keyspace.COWATCH)} " \
           f"AND support >= {param} ORDER BY k2, k3"


CELL_COLUMNS = "origin, task_type, cell, sum_w, sum_wx, support, successes, trials, version"
EDGE_COLUMNS = "origin, keyspace, src, dst, weight, support, version"
#: Rows of the change index read per scan step of a pull.
PAGE_SCAN = 128


MemberRow = tuple[int, int, int, int, bytes]  # (kind, k1, k2, k3, member)
#: A member's mark: its member row as stored (kind, k1, k2, k3, member, epoch of its last contribution, and what
#: that contribution counts: weight, successes, trials, float16 embedding). weight None: marked before the
#: replace rule (its contributions are legacy log rows).
Held = tuple[Any, ...]
CellTable = dict[CellKey, dict[str, CellState]]  # key -> origin -> entry
EdgeTable = dict[EdgeKey, dict[str, EdgeState]]


# ---------------------------------------------------------------------------- rows ↔ entries
def vec(blob: bytes) -> np.ndarray:
    """A stored `sum_wx` (little-endian float64) as an array."""
    return np.frombuffer(blob, dtype="<f8")


def cell_entry(row: Sequence[Any]) -> tuple[str, CellKey, CellState]:
    """A cell state row (CELL_COLUMNS order) as (origin, key, entry)."""
    return row[0], CellKey(row[1], row[2]), CellState(row[3], vec(row[4]), row[5], row[6], row[7], row[8])


def edge_entry(row: Sequence[Any]) -> tuple[str, EdgeKey, EdgeState]:
    """An edge state row (EDGE_COLUMNS order) as (origin, key, entry)."""
    return row[0], EdgeKey(row[1], row[2], row[3]), EdgeState(row[4], row[5], row[6])


def cell_row(origin: str, key: CellKey, s: CellState) -> tuple:
    return (origin, key.task_type, key.cell, s.sum_w, s.sum_wx.astype("<f8").tobytes(), s.support,
            s.successes, s.trials, s.version)  # fmt: skip


def edge_row(origin: str, key: EdgeKey, e: EdgeState) -> tuple:
    return (origin, key.keyspace, key.src, key.dst, e.weight, e.support, e.version)


def served_row(key: CellKey | EdgeKey, seq: int, support: int) -> tuple[int, int, int, int, int, int]:
    if isinstance(key, CellKey):
        return (KIND_CELL, key.task_type, key.cell, 0, seq, support)
    return (KIND_EDGE, key.keyspace, key.src, key.dst, seq, support)


def table_of(entries: Iterable[tuple[str, Any, Any]], keys: Iterable[Any] = ()) -> dict[Any, dict[str, Any]]:
    """Entries grouped by key then origin; every key of `keys` is present (empty if nothing is held)."""
    table: dict[Any, dict[str, Any]] = {k: {} for k in keys}
    for origin, key, entry in entries:
        table.setdefault(key, {})[origin] = entry
    return table


def export_state(codebook_version: int, cells: Iterable[tuple], edges: Iterable[tuple]) -> FederatedState:
    """A FederatedState from cell and edge state rows."""
    state = FederatedState(codebook_version)
    for origin, key, s in map(cell_entry, cells):
        state.cells[(origin, key)] = s
    for origin, key, e in map(edge_entry, edges):
        state.edges[(origin, key)] = e
    return state


# ---------------------------------------------------------------------------- binding
def binding(codebook_fingerprint: str, codebook_version: int, salt_check: bytes) -> dict[str, str | bytes]:
    """The meta values a store is bound to (codebook and server salt)."""
    return {
        "codebook_fingerprint": str(codebook_fingerprint),
        "codebook_version": str(int(codebook_version)),
        "salt_check": bytes(salt_check),
    }


def binding_mismatch(where: str, key: str) -> OmegaError:
    what = "server salt" if key == "salt_check" else key.replace("_", " ")
    return OmegaError(f"store {where} was built with a different {what}")


# ---------------------------------------------------------------------------- pushes
def _packs(fmt: str, *values: object) -> bool:
    """Whether `values` are integers that fit `fmt` (struct checks type and range in one C call)."""
    try:
        struct.pack(fmt, *values)
    except struct.error:
        return False
    return True


def _finite(*values: object) -> bool:
    try:
        return all(map(math.isfinite, values))  # type: ignore[arg-type]
    except TypeError:  # not a number
        return False


def _finite_vector(emb: np.ndarray) -> bool:
    try:
        # One reduction in the common case; a sum that overflows is told apart from inf/NaN by the exact test.
        return math.isfinite(emb.sum(dtype=np.float64)) or bool(np.isfinite(emb).all())
    except (TypeError, ValueError):  # not numbers
        return False


def check_push(push: PreparedPush) -> None:
    """Refuse a push no backend can store faithfully (the aggregator never builds one): OmegaError.

    Keys must be integers of the stores' column types (task type int32, the others int64),
    numbers finite, members bytes.
    """
    for c in push.cells:
        emb = np.asarray(c.embedding)
        if emb.shape != (EMBEDDING_DIM,) or not _finite_vector(emb):
            raise OmegaError(f"pattern {c.index}: embedding must be {EMBEDDING_DIM} finite numbers")
        if not _finite(c.weight, c.successes, c.trials):
            raise OmegaError(f"pattern {c.index}: weight and counts must be finite")
        if not _packs("<iq", c.task_type, c.cell):
            raise OmegaError(f"pattern {c.index}: task type and cell must be integers in range")
        if not isinstance(c.member, bytes):
            raise OmegaError(f"pattern {c.index}: member must be bytes")
    if push.edges and not _plain_edges(push.edges):
        for e in push.edges:  # find the first bad one, for the message
            if not _packs("<3q", e.keyspace, e.src, e.dst):
                raise OmegaError(f"transition {e.index}: keyspace and ids must be integers in range")
            if not _finite(e.weight):
                raise OmegaError(f"transition {e.index}: weight must be finite")
            if not isinstance(e.member, bytes):
                raise OmegaError(f"transition {e.index}: member must be bytes")


def _plain_edges(edges: list[EdgeContribution]) -> bool:
    """All edges at once (a push carries tens): int64 ids, finite weights, bytes members."""
    return (
        _packs(f"<{3 * len(edges)}q", *[v for e in edges for v in (e.keyspace, e.src, e.dst)])
        and _finite(*[e.weight for e in edges])
        and {type(e.member) for e in edges} == {bytes}
    )


def member_rows(push: PreparedPush) -> list[MemberRow]:
    """One member key per contribution, cells then edges (the order of `GroupWrites.push`)."""
    rows: list[MemberRow] = [(KIND_CELL, c.task_type, c.cell, 0, c.member) for c in push.cells]
    rows += [(KIND_EDGE, e.keyspace, e.src, e.dst, e.member) for e in push.edges]
    return rows


GroupResults = list[PushOutcome | Exception | None]


def check_group(pushes: Sequence[PreparedPush]) -> tuple[GroupResults, list[int], dict[bytes, int]]:
    """A group's pushes sorted before any SQL: (results with each refused push's error, the indices of the
    valid ones, push key → the index of its first valid push; a key twice in the group: the second is a
    duplicate)."""
    results: GroupResults = [None] * len(pushes)
    valid: list[int] = []
    for i, push in enumerate(pushes):
        try:
            check_push(push)
        except OmegaError as exc:
            results[i] = exc  # refused alone
            continue
        valid.append(i)
    first: dict[bytes, int] = {}
    for i in valid:
        first.setdefault(bytes(pushes[i].push_key), i)
    return results, valid, first


class GroupRows(NamedTuple):
    """A group's rows as written (change numbers absolute)."""

    cells: list[tuple]  # own accumulator rows (CELL_COLUMNS order): each replaces the stored one
    edges: list[tuple]  # (origin, keyspace, src, dst, weight, support, version): weight and support ADDED
    served: list[tuple]  # (kind, k1, k2, k3, seq, support): seq replaces, support ADDED
    members: list[tuple]  # member rows: the mark (epoch, what it holds) replaces
    log: list[tuple]  # contribution log rows (patterns)

    @property
    def dirty(self) -> list[tuple[int, int, int]]:
        """The changed cells' dirty marks (`dirty_marks`), for a store that keeps them."""
        return dirty_marks(self.served)


def dirty_marks(served: Iterable[Sequence[int]]) -> list[tuple[int, int, int]]:
    """(task_type, cell, seq) of the served cell rows (kind, k1, k2, k3, seq, …): their ANN vectors are due
    for a refresh."""
    return [(r[1], r[2], r[4]) for r in served if r[0] == KIND_CELL]


class GroupWrites:
    """The writes of a group of pushes, classified and accumulated push by push, merged per key.

    Per-epoch flood check: a member already marked for the push's epoch (or twice in the push) is
    refused. Every accepted contribution takes the next change number, cells first, then edges, in
    push order; a key's state and served row carry the number of its last contribution. Latest wins:
    a member's contribution replaces what it held (the accumulator gains the new one minus the held
    one), and support counts only new members. So each table is written once per group, one row per
    key, with the result of applying the pushes one after the other.

    Change numbers are those of the `head` handed to `push`; `rows(base)` adds `base` (the PostgreSQL
    store learns its head only at the end of the group).

    The own accumulators (`own_rows`) may come late: `push(..., own_rows=None)` classifies and numbers
    the push and keeps its cell contributions, and `settle(own_rows)` adds them, push by push in the
    same order and with the same arithmetic. So the PostgreSQL store reads its cells' accumulators only
    once it holds the head row, which makes that row the one lock two workers' groups on the same cell
    wait for (pg_engine.py).
    """

    def __init__(self, origin: str) -> None:
        self.origin = origin
        # Per served key (kind, k1, k2, k3): a cell's [state row, members added, seq], an edge's [weight
        # added, members added, seq]. One entry gives both the state row and the served row.
        self._cells: dict[tuple, list] = {}
        self._edges: dict[tuple, list] = {}
        self.members: dict[MemberRow, tuple] = {}  # member row by its key: the last mark replaces
        self.log: list[tuple] = []
        #: per push whose own accumulators were not given yet: its cell contributions (see `settle`)
        self._unsettled: list[list[tuple]] = []

    def push(
        self, push: PreparedPush, rows: list[MemberRow], known: dict[MemberRow, Held],
        own_rows: dict[tuple[int, int], tuple] | None, head: int,
    ) -> PushOutcome:  # fmt: skip
        """Classify and accumulate one push on what the pushes before it wrote; its outcome (head: the change
        number after it).

        `rows`: `member_rows(push)`. `known` (member marks) and `own_rows` (this origin's cell state rows by
        (task type, cell)) are what the store read for the group; both are updated in place, so a later
        contribution of the same member (in this push: refused) or key sees this one. `own_rows` None: the
        cells are accumulated by `settle` (the outcome does not depend on them).
        """
        accepted_cells: list[int] = []
        flooded_cells: list[int] = []
        cells = len(push.cells)
        if cells:
            contributions = self._classify_cells(push, rows[:cells], known, head, accepted_cells, flooded_cells)
            head += len(contributions)
            if own_rows is None:
                self._unsettled.append(contributions)
            else:
                self._accumulate(contributions, own_rows)
        epoch, members, edges = push.epoch, self.members, self._edges
        accepted: list[int] = []
        flooded: list[int] = []
        for row, e in zip(rows[cells:] if cells else rows, push.edges, strict=True):
            held = known.get(row)
            if held is None:
                change, new = e.weight, 1
            elif held[5] == epoch:
                flooded.append(e.index)
                continue
            else:  # replaces what this member counts (nothing if marked before the replace rule)
                change, new = e.weight - (held[6] if held[6] is not None else 0.0), 0
            head += 1
            accepted.append(e.index)
            # The member row holds the weight, so a later contribution or the window subtracts it (store/window.py).
            members[row] = known[row] = (*row, epoch, e.weight, None, None, None)
            key = row[:4]
            acc = edges.get(key)
            if acc is None:
                edges[key] = [change, new, head]
            else:
                acc[0] += change
                acc[1] += new
                acc[2] = head
        return PushOutcome(duplicate=False, accepted_cells=accepted_cells, accepted_edges=accepted,
                           flooded_cells=flooded_cells, flooded_edges=flooded, head=head)  # fmt: skip

    def _classify_cells(
        self, push: PreparedPush, rows: list[MemberRow], known: dict[MemberRow, Held], head: int,
        accepted: list[int], flooded: list[int],
    ) -> list[tuple]:  # fmt: skip
        """The flood check, member marks and log rows of a push's cells; its accepted contributions as
        (key, dw, x, new, ds, dt, change number): what they add to their keys' own accumulators."""
        epoch = push.epoch
        out = []
        for row, c in zip(rows, push.cells, strict=True):
            held = known.get(row)
            if held is not None and held[5] == epoch:
                flooded.append(c.index)
                continue
            head += 1
            accepted.append(c.index)
            blob = np.asarray(c.embedding, dtype="<f2").tobytes()
            self.members[row] = known[row] = (*row, epoch, c.weight, c.successes, c.trials, blob)
            self.log.append((epoch, KIND_CELL, c.task_type, c.cell, 0, c.weight, c.successes, c.trials, blob))
            x = np.asarray(c.embedding, dtype=np.float64) * c.weight
            dw, ds, dt, new = c.weight, c.successes, c.trials, int(held is None)
            if held is not None and held[6] is not None:  # replaces what this member counts
                w0, s0, t0, e0 = held[6:10]
                dw, ds, dt = dw - w0, ds - s0, dt - t0
                x = x - window.log_embedding(e0) * w0
            out.append(((c.task_type, c.cell), dw, x, new, ds, dt, head))
        return out

    def settle(self, own_rows: dict[tuple[int, int], tuple]) -> None:
        """Add the cell contributions of the pushes given no `own_rows` to these accumulators (updated in
        place), push by push in order: the same sums as had they been given to `push`."""
        for contributions in self._unsettled:
            self._accumulate(contributions, own_rows)
        self._unsettled.clear()

    def unsettled_keys(self) -> list[tuple[int, int]]:
        """(task type, cell) of the contributions `settle` is due to add, sorted."""
        return sorted({c[0] for contributions in self._unsettled for c in contributions})

    def _accumulate(self, contributions: list[tuple], own_rows: dict[tuple[int, int], tuple]) -> None:
        """One push's accepted cell contributions onto the own accumulators (`own_rows`, updated in place)."""
        sums: dict[tuple[int, int], list] = {}  # -> [sum_w, sum_wx, support, successes, trials, seq, new members]
        for key, dw, x, new, ds, dt, head in contributions:
            acc = sums.get(key)
            if acc is None and key not in own_rows:  # a fresh key starts at this contribution, exactly
                sums[key] = [dw, x, new, ds, dt, head, new]
                continue
            if acc is None:
                _, _, _, sum_w, sum_wx, support, successes, trials, _ = own_rows[key]
                acc = sums[key] = [sum_w, vec(sum_wx), support, successes, trials, head, 0]
            acc[0] += dw
            acc[1] = acc[1] + x
            acc[2] += new
            acc[3] += ds
            acc[4] += dt
            acc[5] = head
            acc[6] += new
        for key, (sum_w, sum_wx, support, successes, trials, seq, new) in sums.items():
            state = own_rows[key] = (self.origin, *key, sum_w, sum_wx.astype("<f8").tobytes(), support, successes,
                                     trials, seq)  # fmt: skip
            served = (KIND_CELL, *key, 0)
            acc = self._cells.get(served)
            if acc is None:
                self._cells[served] = [state, new, seq]
            else:
                acc[0], acc[1], acc[2] = state, acc[1] + new, seq

    def rows(self, base: int = 0, order: Iterable[MemberRow] | None = None) -> GroupRows:
        """The group's rows, change numbers `base` + the ones `push` gave.

        `order`: member keys covering every member row of the group (others are skipped), sorted by key: then
        every table's rows come in key order (a served key is a member key's first four fields), so consecutive
        rows land on the same B-tree pages, without sorting each table's rows."""
        if self._unsettled:
            raise ValueError("cell contributions not settled: call settle(own_rows) first")
        marks = self.members
        if order is None:
            keys: Iterable[tuple] = [*self._cells, *self._edges]
            members = list(marks.values())
        else:
            members = [marks[r] for r in order if r in marks]
            if len(members) != len(marks):
                raise ValueError("the order does not name every member of the group")
            keys = dict.fromkeys([r[:4] for r in order])
        cells, edges, served = [], [], []
        origin, cell_acc, edge_acc = self.origin, self._cells, self._edges
        for key in keys:
            acc = edge_acc.get(key)
            if acc is not None:
                weight, new, seq = acc
                edges.append((origin, key[1], key[2], key[3], weight, new, seq + base))
                served.append((*key, seq + base, new))
                continue
            acc = cell_acc.get(key)
            if acc is not None:
                state, new, seq = acc
                cells.append((*state[:8], seq + base) if base else state)
                served.append((*key, seq + base, new))
        return GroupRows(cells, edges, served, members, self.log)


# ---------------------------------------------------------------------------- merges
@dataclass
class MergeWrites:
    changed: int = 0  # entries that won
    cell_states: list[tuple] = field(default_factory=list)  # rows replacing the stored entries
    edge_states: list[tuple] = field(default_factory=list)
    served: list[tuple] = field(default_factory=list)  # served rows: seq and global support replace
    head: int = 0


def plan_merge(cells: CellTable, edges: EdgeTable, incoming: tuple[list, list], head: int) -> MergeWrites:
    """Merge remote entries into the held tables (all origins' entries of the keys they touch).

    A touched key takes the next change number and its new global support.
    """
    out = MergeWrites()
    for table, entries, rows, to_row in (
        (cells, incoming[0], out.cell_states, cell_row),
        (edges, incoming[1], out.edge_states, edge_row),
    ):
        touched = set()
        for origin, key, entry in entries:
            held = table.setdefault(key, {})
            if crdt.wins(entry, held.get(origin)):
                held[origin] = entry
                touched.add(key)
                rows.append(to_row(origin, key, entry))
        for key in sorted(touched):
            head += 1
            out.served.append(served_row(key, head, sum(s.support for s in table[key].values())))
    out.changed = len(out.cell_states) + len(out.edge_states)
    out.head = head
    return out


# ---------------------------------------------------------------------------- pulls
def scan_floor(cursor: int, head: int, k_min: int) -> int:
    """The `peak` a scanned row needs (beside support ≥ k_min) to be served as a removal.

    A TV at cursor 0 (or at a cursor of another store: it gets everything again) holds nothing to
    remove, so it gets no removals. Otherwise every key that was published (peak ≥ k_min) and has
    changed since the cursor is served: present if its support is still ≥ k_min, else as a removal.
    A key that never reached k_min is never served at all, not even as a removal."""
    return k_min if 0 < cursor <= head else _NO_REMOVALS


_NO_REMOVALS = 1 << 62


def indexed_floor(pull_floor: int, k_min: int) -> int | None:
    """The peak a pull with `k_min` may require of every row it scans, on a store whose served keys are indexed
    from `pull_floor` up (the published keys' index, sqlite_schema/pg_schema): `pull_floor` when k_min is at
    least that (every row such a pull serves has support or peak ≥ k_min, and peak ≥ support), so the scan
    reads that index alone; None when k_min is lower: the scan reads every served row."""
    return pull_floor if k_min >= pull_floor else None


def removal(row: Sequence[int]) -> crdt.ConsolidatedCell | crdt.ConsolidatedEdge:
    """The item of a served row (kind, k1, k2, k3, seq, …) whose key left the published state: support 0
    (and weight 0, a zero embedding), which the TV takes as "drop this key" (omega.protocol.PullReply)."""
    kind, k1, k2, k3, seq = row[:5]
    if kind == KIND_CELL:
        return crdt.ConsolidatedCell(k2, np.zeros(EMBEDDING_DIM, dtype=np.float32), k1, 0.0, 0, 0.0, seq)
    return crdt.ConsolidatedEdge(k1, k2, k3, 0.0, 0, seq)


class Page:
    """The published changes after a cursor that fit a byte budget (at least one when any is pending)."""

    def __init__(self, cursor: int, head: int, budget: PageBudget) -> None:
        self.head = head
        self.last = 0 if cursor > head else cursor  # a cursor from a wiped or other store: resend everything
        self.chosen: list[Sequence[int]] = []  # served rows (kind, k1, k2, k3, seq, support)
        self.more = False
        self._used = 0
        self._budget = budget

    def take(self, rows: Sequence[Sequence[int]]) -> bool:
        """Take scanned rows (in seq order, PAGE_SCAN at most) within the budget; True: scan on from `last`."""
        max_bytes, pattern_bytes, edge_bytes = self._budget
        chosen, used = self.chosen, self._used
        for row in rows:
            size = pattern_bytes if row[0] == KIND_CELL else edge_bytes
            if chosen and used + size > max_bytes:
                self.more = True
                break
            chosen.append(row)
            used += size
        self._used = used
        if chosen:
            self.last = chosen[-1][4]
        return not self.more and len(rows) == PAGE_SCAN

    @property
    def cursor(self) -> int:
        return self.last if self.more else self.head


def consolidate_rows(
    chosen: Sequence[Sequence[int]], cells: CellTable, edges: EdgeTable
) -> list[crdt.ConsolidatedCell | crdt.ConsolidatedEdge | None]:
    """The global item of each chosen served row (None for a cell without usable weight)."""
    items: list[crdt.ConsolidatedCell | crdt.ConsolidatedEdge | None] = []
    for kind, k1, k2, k3, seq, *_ in chosen:
        if kind == KIND_CELL:
            key = CellKey(k1, k2)
            items.append(crdt.consolidate_cell(key, _global_cell(cells.get(key, {})), version=seq))
        else:
            edge = EdgeKey(k1, k2, k3)
            held = edges.get(edge, {})
            items.append(crdt.consolidate_edge(edge, crdt.combine_edges(held[o] for o in sorted(held)), seq))
    return items


def mean_embedding(key: CellKey, held: Mapping[str, CellState]) -> np.ndarray | None:
    """The normalised global mean of a cell (None without usable weight)."""
    pattern = crdt.consolidate_cell(key, _global_cell(held))
    return None if pattern is None else pattern.embedding


def _global_cell(held: Mapping[str, CellState]) -> CellState:
    # Origins summed in sorted order, as everywhere, so every replica rounds alike.
    return crdt.combine_cells(held[o] for o in sorted(held))
