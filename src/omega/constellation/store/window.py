"""The contribution window: what a store's state forgets when contributions grow old (issue 14).

A key's own accumulator holds only the contributions of the last `window_epochs`
epochs (`AggregationPolicy.window_epochs`, default 30 days), and its distinct
support counts only the members (per-key keyed hashes of a device) whose last
contribution is inside the window. So repetition cannot accumulate (a device
pushing a key every day holds one member and at most `window_epochs` capped
contributions, as an honest daily viewer does), and when a key's supporters go
silent for longer than the window its support falls to 0 and it leaves the
published state. Within the window, latest wins per member (logic.GroupWrites): a
device's later contribution to a key replaces its earlier one, so the key holds at
most one capped contribution of it, whatever it pushed before.

`prune` (every backend) deletes the member rows and the contributions-log rows
older than the window and applies `plan_expiry`: each touched key's own
accumulator minus what its expired members hold (each member's last contribution,
the only one still counted) and minus its expired `legacy` log rows (contributions
from before the replace rule, which no member row holds), support minus its
expired members. A key
left without members is set to exact zeros (so float rounding of the
subtractions never leaves a ghost direction). Each touched key takes a new
change number, which is also the new version of this origin's CRDT entry: the
origin is the single writer of its entries, so regions and hubs simply take the
newer entry and the merge stays commutative, associative and idempotent.

Rows in (kind, k1, k2, k3, …) order as in logic.py: expired legacy log rows and
expired members are both `(kind, k1, k2, k3, weight, successes, trials, embedding)`
(one row per member; a member's weight NULL: marked before the replace rule, it
holds nothing, its legacy log rows do).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from omega.constellation.store.base import KIND_CELL, KIND_EDGE
from omega.protocol import EMBEDDING_DIM

_Key = tuple[int, int, int, int]


@dataclass
class ExpiryWrites:
    """The rows one expiry writes (head: the change sequence after it)."""

    cell_states: list[tuple] = field(default_factory=list)  # own accumulators, replacing the stored ones
    edge_states: list[tuple] = field(default_factory=list)
    # Served rows: seq replaces, support is ADDED (a delta <= 0), as for a push.
    served: list[tuple] = field(default_factory=list)
    head: int = 0

    @property
    def keys(self) -> int:
        return len(self.cell_states) + len(self.edge_states)


def log_embedding(blob: bytes | None) -> np.ndarray:
    """A contributions-log embedding (float16, as the aggregator rounded it before adding it) as float64."""
    if blob is None:
        return np.zeros(EMBEDDING_DIM, dtype=np.float64)
    return np.frombuffer(blob, dtype="<f2").astype(np.float64)


def plan_expiry(
    origin: str,
    own_cells: Iterable[Sequence[Any]],
    own_edges: Iterable[Sequence[Any]],
    expired_log: Iterable[Sequence[Any]],
    expired_members: Iterable[Sequence[Any]],
    head: int,
) -> ExpiryWrites:
    """New own accumulators of the keys whose members or legacy log rows left the window.

    `own_cells` / `own_edges`: this origin's state rows (logic.CELL_COLUMNS / EDGE_COLUMNS
    order) of those keys; a key without an own row has nothing to forget.
    """
    gone_w: dict[_Key, list] = {}  # key -> [weight, weight·x, successes, trials]

    def forget(kind: int, k1: int, k2: int, k3: int, weight: float, successes: Any, trials: Any, emb: Any) -> None:
        acc = gone_w.setdefault((kind, k1, k2, k3), [0.0, np.zeros(EMBEDDING_DIM), 0.0, 0.0])
        acc[0] += weight
        if kind == KIND_CELL:
            acc[1] = acc[1] + log_embedding(emb) * weight
            acc[2] += successes or 0.0
            acc[3] += trials or 0.0

    for row in expired_log:
        forget(*row)
    gone_m: dict[_Key, int] = {}
    for row in expired_members:
        key = tuple(row[:4])
        gone_m[key] = gone_m.get(key, 0) + 1  # type: ignore[index]
        if row[4] is not None:
            forget(*row)
    cells = {(KIND_CELL, r[1], r[2], 0): r for r in own_cells}
    edges = {(KIND_EDGE, r[1], r[2], r[3]): r for r in own_edges}
    out = ExpiryWrites(head=head)
    for key in sorted(set(gone_w) | set(gone_m)):
        row = cells.get(key) if key[0] == KIND_CELL else edges.get(key)
        if row is None:
            continue
        w, wx, succ, trials = gone_w.get(key, (0.0, None, 0.0, 0.0))
        out.head += 1
        if key[0] == KIND_CELL:
            _, task_type, cell, sum_w, sum_wx, support, successes, trials_held, _ = row
            new_support = max(int(support) - gone_m.get(key, 0), 0)
            if new_support == 0:
                state = (0.0, np.zeros(EMBEDDING_DIM), 0.0, 0.0)
            else:
                vec = np.frombuffer(sum_wx, dtype="<f8") - (0.0 if wx is None else wx)
                state = (max(sum_w - w, 0.0), vec, max(successes - succ, 0.0), max(trials_held - trials, 0.0))
            out.cell_states.append((origin, task_type, cell, state[0], state[1].astype("<f8").tobytes(), new_support,
                                    min(state[2], state[3]), state[3], out.head))  # fmt: skip
        else:
            _, keyspace, src, dst, weight, support, _ = row
            new_support = max(int(support) - gone_m.get(key, 0), 0)
            new_weight = max(weight - w, 0.0) if new_support else 0.0
            out.edge_states.append((origin, keyspace, src, dst, new_weight, new_support, out.head))
        out.served.append((*key, out.head, new_support - int(support)))
    return out
