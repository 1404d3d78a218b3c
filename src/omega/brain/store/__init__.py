"""The TV brain's durable local memory in SQLite (docs/architecture.md §2, PatternStore): the one owner of its SQL.

`BrainStore` is the API (its plumbing and transactions in `database`, the sync
outbox's rows in `outbox`); `migrations` holds the numbered schema (append a
`@migration(N)` function there to add a table).
"""

from __future__ import annotations

from omega.brain.store.brain_store import MAX_PATTERNS, BrainStore, pattern_utility
from omega.brain.store.database import is_bad_data
from omega.brain.store.migrations import FORMAT_MARKER, latest_version
from omega.brain.store.opening import Synchronous
from omega.brain.store.outbox import OutboxRow, OutboxTable, QueuedPattern

__all__ = [
    "MAX_PATTERNS", "FORMAT_MARKER", "BrainStore", "OutboxRow", "OutboxTable", "QueuedPattern", "Synchronous",
    "is_bad_data", "latest_version", "pattern_utility",
]
