"""The TV brain's durable local memory in SQLite (DESIGN.md §2, PatternStore).

`BrainStore` is the API; `migrations` holds the numbered schema (append a
`@migration(N)` function there to add a table, e.g. the sync outbox).
"""

from __future__ import annotations

from omega.brain.store.brain_store import MAX_PATTERNS, BrainStore, pattern_utility
from omega.brain.store.migrations import FORMAT_MARKER, latest_version

__all__ = ["MAX_PATTERNS", "FORMAT_MARKER", "BrainStore", "latest_version", "pattern_utility"]
