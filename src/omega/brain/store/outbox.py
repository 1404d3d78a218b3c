"""The sync outbox's rows: the push queue and the sealed batches waiting for their ack.

The queue is the store itself: a pattern whose `version > pushed_version` was
queued by the very transaction that changed it, and a transition whose
`weight > pushed_weight` holds an unsent delta. `add_batch` marks what a push
took and keeps the push in `sync_outbox`, in one transaction, until `delete`
(on its verified ack). What goes into a push, and when, is decided by the sync
agent (`omega.brain.sync.outbox`); this module only keeps the rows.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import numpy as np

from omega.brain.store.database import Database
from omega.brain.store.rows import blob_vector


class OutboxRow(NamedTuple):
    """One sealed push waiting for its ack, as stored."""

    batch_id: bytes
    frame: bytes  # the Push, as a locally sealed frame
    patterns: int
    edges: int
    created_at: float
    attempts: int
    next_attempt_at: float
    last_error: str | None


class QueuedPattern(NamedTuple):
    """A pattern version not yet sealed, with what was last pushed of it (None: never pushed)."""

    id: uuid.UUID
    embedding: np.ndarray
    task_type: int
    success_rate: float
    uses: int
    successes: int
    version: int
    pushed_embedding: np.ndarray | None
    pushed_uses: int
    pushed_success_rate: float


Edge = tuple[int, int, float]  # (src, dst, weight)

_QUEUED = "FROM patterns WHERE version > pushed_version AND success_rate >= ? AND uses >= ?"


class OutboxTable:
    """The push queue and the `sync_outbox` table of one brain store (`BrainStore.outbox`)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    # ------------------------------------------------------------------ sealed batches

    def batches(self) -> list[OutboxRow]:
        """Sealed batches not yet acknowledged, oldest first."""
        found = self._db._query(
            "SELECT batch_id, push, patterns, edges, created_at, attempts, next_attempt_at, last_error "
            "FROM sync_outbox ORDER BY id"
        )
        return [OutboxRow(bytes(r[0]), bytes(r[1]), *r[2:]) for r in found]

    def count(self) -> int:
        return int(self._db._scalar("SELECT COUNT(*) FROM sync_outbox"))  # type: ignore[arg-type]

    def add_batch(
        self, batch_id: bytes, frame: bytes, *, patterns: Sequence[uuid.UUID], edges: Sequence[Edge], created_at: float,
        cowatch: Sequence[tuple[int, int]] = (),
    ) -> None:
        """Keep a sealed push and mark what it took as sealed, atomically: nothing is sealed twice.

        Each pattern's current version, vector and statistics become what was pushed; each edge's
        weight is added to what was sent of it.
        """
        with self._db.transaction() as db:
            db.executemany(
                "UPDATE patterns SET pushed_version = version, pushed_embedding = embedding, "
                "pushed_uses = uses, pushed_success_rate = success_rate WHERE id = ?",
                [(p.bytes,) for p in patterns],
            )
            db.executemany(
                "UPDATE transitions SET pushed_weight = pushed_weight + ? WHERE src = ? AND dst = ?",
                [(w, s, d) for s, d, w in edges],
            )
            db.executemany("UPDATE cowatch SET sealed = 1 WHERE a = ? AND b = ?", cowatch)
            db.execute(
                "INSERT INTO sync_outbox (batch_id, push, patterns, edges, created_at, attempts, next_attempt_at) "
                "VALUES (?, ?, ?, ?, ?, 0, ?)",
                (batch_id, frame, len(patterns), len(edges), created_at, created_at),
            )

    def record_attempt(self, batch_id: bytes, error: str | None, next_attempt_at: float) -> None:
        """Count a send of `batch_id` (and why it failed, if it did)."""
        with self._db.transaction() as db:
            db.execute(
                "UPDATE sync_outbox SET attempts = attempts + 1, last_error = ?, next_attempt_at = ? WHERE batch_id = ?",
                (error, next_attempt_at, batch_id),
            )

    def note_error(self, batch_id: bytes, error: str | None) -> None:
        """Why the last send of `batch_id` failed (the send itself was counted before it went out)."""
        with self._db.transaction() as db:
            db.execute("UPDATE sync_outbox SET last_error = ? WHERE batch_id = ?", (error, batch_id))

    def renew(self, batch_id: bytes, new_id: bytes, frame: bytes, created_at: float) -> bool:
        """Give a never-sent batch a new id (its push re-sealed under it) and a new creation time."""
        with self._db.transaction() as db:
            return db.execute(
                "UPDATE sync_outbox SET batch_id = ?, push = ?, created_at = ?, next_attempt_at = ? "
                "WHERE batch_id = ? AND attempts = 0",
                (new_id, frame, created_at, created_at, batch_id),
            ).rowcount > 0

    def delete(self, batch_id: bytes) -> bool:
        """Forget a batch (its ack arrived); False if it was not pending."""
        with self._db.transaction() as db:
            return db.execute("DELETE FROM sync_outbox WHERE batch_id = ?", (batch_id,)).rowcount > 0

    # ------------------------------------------------------------------ the queue

    def queued_pattern_count(self, min_success: float, min_uses: int) -> int:
        """High-quality patterns with an unsealed version."""
        return int(self._db._scalar(f"SELECT COUNT(*) {_QUEUED}", (min_success, min_uses)))  # type: ignore[arg-type]

    def queued_patterns(self, min_success: float, min_uses: int, limit: int) -> list[QueuedPattern]:
        """High-quality patterns with an unsealed version, best first (success rate, uses, freshness)."""
        found = self._db._query(
            "SELECT id, embedding, task_type, success_rate, uses, successes, version, "
            f"pushed_embedding, pushed_uses, pushed_success_rate {_QUEUED} "
            "ORDER BY success_rate DESC, uses DESC, updated_at DESC, id LIMIT ?",
            (min_success, min_uses, limit),
        )
        return [
            QueuedPattern(
                uuid.UUID(bytes=bytes(id_)), blob_vector(blob), task, rate, uses, successes, version,
                None if pushed is None else blob_vector(pushed), pushed_uses, pushed_rate,
            )  # fmt: skip
            for id_, blob, task, rate, uses, successes, version, pushed, pushed_uses, pushed_rate in found
        ]

    def absorb(self, versions: Iterable[tuple[uuid.UUID, int]]) -> None:
        """These pattern versions did not change enough to push: leave the queue without being sent.

        Only `pushed_version` moves, so later versions are still compared with what was really pushed.
        """
        with self._db.transaction() as db:
            db.executemany(
                "UPDATE patterns SET pushed_version = ? WHERE id = ?", [(v, p.bytes) for p, v in versions]
            )

    def unsent_edges(self, min_delta: float, max_id: int, limit: int) -> list[Edge]:
        """The largest unsent transition deltas (>= min_delta) between ids in 0..max_id: (src, dst, delta)."""
        found = self._db._query(
            "SELECT src, dst, weight - pushed_weight AS delta FROM transitions "
            "WHERE weight - pushed_weight >= ? AND src BETWEEN 0 AND ? AND dst BETWEEN 0 AND ? "
            "ORDER BY delta DESC, src, dst LIMIT ?",
            (min_delta, max_id, max_id, limit),
        )
        return [(int(s), int(d), float(delta)) for s, d, delta in found]

    def has_unsent_edges(self, min_delta: float) -> bool:
        """Whether some transition holds an unsent delta of at least `min_delta`."""
        return bool(self._db._query("SELECT 1 FROM transitions WHERE weight - pushed_weight >= ? LIMIT 1", (min_delta,)))

    def queue_cowatch(self, item: int, recent: Sequence[int]) -> int:
        """Queue the co-watched pairs of `item` with each of `recent` (ids other than it) that this TV never
        queued before; returns how many were new."""
        rows = [(min(item, r), max(item, r)) for r in recent if r != item]
        with self._db.transaction() as db:
            before = db.total_changes
            db.executemany("INSERT OR IGNORE INTO cowatch (a, b) VALUES (?, ?)", rows)
            return db.total_changes - before

    def unsent_cowatch(self, limit: int) -> list[tuple[int, int]]:
        """Up to `limit` queued co-watched pairs not yet sealed into a push, in key order."""
        found = self._db._query("SELECT a, b FROM cowatch WHERE sealed = 0 ORDER BY a, b LIMIT ?", (limit,))
        return [(int(a), int(b)) for a, b in found]

    def has_unsent_cowatch(self) -> bool:
        return bool(self._db._query("SELECT 1 FROM cowatch WHERE sealed = 0 LIMIT 1"))

    def sent_edge_weights(self) -> dict[tuple[int, int], float]:
        """Weight sealed so far of every transition that had some (an audit of what the pushes carried)."""
        found = self._db._query("SELECT src, dst, pushed_weight FROM transitions WHERE pushed_weight > 0")
        return {(s, d): w for s, d, w in found}
