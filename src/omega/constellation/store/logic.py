"""What every constellation store does, whatever its SQL: the backends only read and write rows.

- A push: `check_push` (the store's own validation, the same on every backend) →
  `member_rows` + `classify` (the per-epoch flood check against the member marks
  the backend looked up) → `accumulate` (new own accumulators, served-view
  increments, member marks and log rows, every change numbered from the head).
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
from typing import Any

import numpy as np

from omega.constellation import crdt
from omega.constellation.crdt import CellKey, CellState, EdgeKey, EdgeState, FederatedState
from omega.constellation.store import window
from omega.constellation.store.base import (
    KIND_CELL,
    KIND_EDGE,
    CellContribution,
    EdgeContribution,
    PageBudget,
    PreparedPush,
    PushOutcome,
)
from omega.errors import OmegaError
from omega.protocol import EMBEDDING_DIM

CELL_COLUMNS = "origin, task_type, cell, sum_w, sum_wx, support, successes, trials, version"
EDGE_COLUMNS = "origin, keyspace, src, dst, weight, support, version"
#: Rows of the change index read per scan step of a pull.
PAGE_SCAN = 128


MemberRow = tuple[int, int, int, int, bytes]  # (kind, k1, k2, k3, member)
#: A member's mark: (epoch of its last contribution, and what it counts: weight, successes, trials, float16
#: embedding). weight None: marked before the replace rule (its contributions are legacy log rows).
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
    """One member key per contribution, cells then edges (the order of `classify`)."""
    rows: list[MemberRow] = [(KIND_CELL, c.task_type, c.cell, 0, c.member) for c in push.cells]
    rows += [(KIND_EDGE, e.keyspace, e.src, e.dst, e.member) for e in push.edges]
    return rows


@dataclass
class Classified:
    """A push split into flooded and accepted contributions, each with its member's mark (None: a new
    member of its key)."""

    outcome: PushOutcome
    cells: list[tuple[CellContribution, Held | None]] = field(default_factory=list)
    edges: list[tuple[EdgeContribution, Held | None]] = field(default_factory=list)

    def cell_keys(self) -> list[CellKey]:
        return sorted({CellKey(c.task_type, c.cell) for c, _ in self.cells})


def classify(push: PreparedPush, rows: list[MemberRow], known: Mapping[MemberRow, Held]) -> Classified:
    """Per-epoch flood check: a member already marked for this epoch (or twice in the push) is refused.

    `known` maps the member rows the store holds to their mark (`Held`: epoch first).
    """
    seen: set[MemberRow] = set()
    out = Classified(PushOutcome(duplicate=False))
    for row, item in zip(rows, [*push.cells, *push.edges], strict=True):
        held = known.get(row)
        flooded = row in seen or (held is not None and held[0] == push.epoch)
        seen.add(row)
        is_cell = row[0] == KIND_CELL
        if flooded:
            (out.outcome.flooded_cells if is_cell else out.outcome.flooded_edges).append(item.index)
        else:
            (out.outcome.accepted_cells if is_cell else out.outcome.accepted_edges).append(item.index)
            (out.cells if is_cell else out.edges).append((item, held))  # type: ignore[arg-type]
    return out


@dataclass
class PushWrites:
    """The rows one accepted push writes, and its outcome (head: the change sequence after it)."""

    outcome: PushOutcome
    cell_states: list[tuple] = field(default_factory=list)  # own accumulators, replacing the stored ones
    # One row per accepted edge, applied in order: weight (new minus what the member held) and support
    # are ADDED, version replaces.
    edge_increments: list[tuple] = field(default_factory=list)
    # Served rows, applied in order: seq replaces, support is ADDED.
    served: list[tuple] = field(default_factory=list)
    members: list[tuple] = field(default_factory=list)  # member rows: the mark (epoch, what it holds) replaces
    log: list[tuple] = field(default_factory=list)  # contribution log rows (patterns)


def accumulate(
    origin: str, epoch: int, classified: Classified, own_rows: Iterable[Sequence[Any]], head: int
) -> PushWrites:
    """The writes of a classified push on top of this origin's current cell accumulators.

    `own_rows`: this origin's cell state rows (CELL_COLUMNS order) of the pushed cells.

    Every accepted contribution takes the next change number; a key's state and served row
    carry the number of its last contribution. A member's contribution replaces what it held
    (latest wins): the accumulator gains the new one minus the held one, and support only counts
    new members. Increment rows are applied one after the other (executemany).
    """
    out = PushWrites(classified.outcome)
    members, served = out.members, out.served
    own = {(r[1], r[2]): r for r in own_rows}
    sums: dict[CellKey, list] = {}  # key -> [sum_w, sum_wx, support, successes, trials, seq, new members]
    for c, held in classified.cells:
        key = CellKey(c.task_type, c.cell)
        head += 1
        blob = np.asarray(c.embedding, dtype="<f2").tobytes()
        members.append((KIND_CELL, c.task_type, c.cell, 0, c.member, epoch, c.weight, c.successes, c.trials, blob))
        out.log.append((epoch, KIND_CELL, c.task_type, c.cell, 0, c.weight, c.successes, c.trials, blob))
        x = np.asarray(c.embedding, dtype=np.float64) * c.weight
        dw, ds, dt, new = c.weight, c.successes, c.trials, int(held is None)
        if held is not None and held[1] is not None:  # replaces what this member counts
            _, w0, s0, t0, e0 = held
            dw, ds, dt = dw - w0, ds - s0, dt - t0
            x = x - window.log_embedding(e0) * w0
        acc = sums.get(key)
        if acc is None and key not in own:  # a fresh key starts at this contribution, exactly
            sums[key] = [dw, x, new, ds, dt, head, new]
            continue
        if acc is None:
            _, _, _, sum_w, sum_wx, support, successes, trials, _ = own[key]
            acc = sums[key] = [sum_w, vec(sum_wx), support, successes, trials, head, 0]
        acc[0] += dw
        acc[1] = acc[1] + x
        acc[2] += new
        acc[3] += ds
        acc[4] += dt
        acc[5] = head
        acc[6] += new
    for key in sorted(sums):
        sum_w, sum_wx, support, successes, trials, seq, new = sums[key]
        out.cell_states.append((origin, key.task_type, key.cell, sum_w, sum_wx.astype("<f8").tobytes(), support,
                                successes, trials, seq))  # fmt: skip
        served.append((KIND_CELL, key.task_type, key.cell, 0, seq, new))
    increments = out.edge_increments
    for e, held in classified.edges:
        head += 1
        n = int(held is None)
        held_w = held[1] if held is not None and held[1] is not None else 0.0
        increments.append((origin, e.keyspace, e.src, e.dst, e.weight - held_w, n, head))
        served.append((KIND_EDGE, e.keyspace, e.src, e.dst, head, n))
        # The member row holds the weight, so a later contribution or the window subtracts it (store/window.py).
        members.append((KIND_EDGE, e.keyspace, e.src, e.dst, e.member, epoch, e.weight, None, None, None))
    out.outcome = _with_head(classified.outcome, head)
    return out


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


class GroupWrites:
    """The rows of a group of pushes, merged per key in push order, so each table is written once per group.

    Cell states replace (the last wins), edge and served increments add up, member marks replace.
    Each dict holds the row as it will be written (merged with the group's earlier row of its key, if any).

    Change numbers here are relative to the group's start; `shifted` adds the head once the group holds it.
    """

    def __init__(self) -> None:
        self.cells: dict[tuple[int, int], tuple] = {}  # own accumulator rows: the last one replaces
        self.edges: dict[tuple[int, int, int], tuple] = {}  # edge increment rows: weight and support added
        self.served: dict[tuple[int, int, int, int], tuple] = {}  # served rows: support added, seq replaces
        self.members: dict[tuple, tuple] = {}  # member row by its key: the last mark replaces
        self.log: list[tuple] = []

    def add(self, w: PushWrites) -> None:
        for row in w.cell_states:
            self.cells[(row[1], row[2])] = row
        edges = self.edges
        for row in w.edge_increments:  # (origin, keyspace, src, dst, weight, support, version)
            key = row[1:4]
            acc = edges.get(key)
            edges[key] = row if acc is None else (acc[0], *key, acc[4] + row[4], acc[5] + row[5], row[6])
        served = self.served
        for row in w.served:  # (kind, k1, k2, k3, seq, support)
            key = row[:4]
            acc = served.get(key)
            served[key] = row if acc is None else (*key, row[4], acc[5] + row[5])
        members = self.members
        for row in w.members:
            members[row[:5]] = row
        self.log += w.log

    def push(
        self, origin: str, push: PreparedPush, rows: list[MemberRow], known: dict[MemberRow, Held],
        own_rows: dict[tuple[int, int], tuple], head: int,
    ) -> PushWrites:  # fmt: skip
        """Classify and accumulate one push of the group on what the pushes before it wrote, and add it.

        `known` (member marks, `Held`) and `own_rows` (this origin's cell rows by (task type, cell)) are what the
        store read for the whole group; they are updated in place, so the next push sees this one's writes.
        """
        classified = classify(push, rows, known)
        mine = [own_rows[k] for k in classified.cell_keys() if k in own_rows]
        w = accumulate(origin, push.epoch, classified, mine, head)
        for row in w.cell_states:
            own_rows[(row[1], row[2])] = row
        for row in w.members:
            known[row[:5]] = row[5:]  # type: ignore[index]
        self.add(w)
        return w

    def shifted(self, base: int) -> tuple[list[tuple], list[tuple], list[tuple], list[tuple]]:
        """(cell states, edge increments, served, dirty marks) with change numbers `base` + relative."""
        if base:
            cells = [(*row[:8], row[8] + base) for row in self.cells.values()]
            edges = [(*row[:6], row[6] + base) for row in self.edges.values()]
            served = [(*row[:4], row[4] + base, row[5]) for row in self.served.values()]
        else:
            cells, edges, served = list(self.cells.values()), list(self.edges.values()), list(self.served.values())
        dirty = [(row[1], row[2], row[4]) for row in served if row[0] == KIND_CELL]
        return cells, edges, served, dirty


def _with_head(outcome: PushOutcome, head: int) -> PushOutcome:
    return PushOutcome(
        duplicate=outcome.duplicate,
        accepted_cells=outcome.accepted_cells,
        accepted_edges=outcome.accepted_edges,
        flooded_cells=outcome.flooded_cells,
        flooded_edges=outcome.flooded_edges,
        head=head,
    )


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
