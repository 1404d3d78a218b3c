"""DP mode's publication: one release a day of every key's noised distinct support.

With `AggregationPolicy.dp_epsilon` set, TVs pull the day's release instead of the
store's changes: computed at the first push or pull of an epoch (OpenDP, through
`omega.constellation.privacy`), then fixed for that epoch. A pull cursor into a
release is DP_CURSOR_BASE + (epoch << 24) + position, so a page the server cuts to
its byte budget resumes right after its last item, and a cursor of another day (or
of the store) starts the day's release from its beginning.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

from omega.constellation.crdt import ConsolidatedEdge
from omega.constellation.store.base import EDGE_WIRE_BYTES, ConstellationStore

if TYPE_CHECKING:
    from omega.constellation.aggregation import AggregationPolicy

#: Pull cursors of DP releases: base + (release epoch << 24) + position in the release.
DP_CURSOR_BASE = 1 << 62
_DP_POSITION_BITS = 24


class DailyRelease:
    """The day's DP release over a store's exact distinct supports."""

    def __init__(self, store: ConstellationStore, policy: AggregationPolicy, clock_ms: Callable[[], int]) -> None:
        self._store = store
        self._policy = policy
        self._clock_ms = clock_ms
        self._current: tuple[int, list[ConsolidatedEdge]] | None = None
        self._lock = asyncio.Lock()

    async def current(self) -> tuple[int, list[ConsolidatedEdge]]:
        """(epoch, items) of the day's release (computed at its first use in an epoch, then fixed)."""
        epoch = self._clock_ms() // self._policy.epoch_ms
        if self._current is not None and self._current[0] == epoch:
            return self._current
        async with self._lock:
            if self._current is None or self._current[0] != epoch:
                self._current = (epoch, await self._make(epoch))
            return self._current

    async def head(self) -> int:
        """The cursor right after the day's whole release."""
        epoch, items = await self.current()
        return _cursor(epoch, len(items))

    async def page(self, cursor: int, max_bytes: int) -> tuple[list[ConsolidatedEdge], int, bool]:
        """A page of the day's release after `cursor` (a cursor of another day or of the store: from its start)."""
        epoch, items = await self.current()
        start = 0
        if cursor >= DP_CURSOR_BASE and (cursor - DP_CURSOR_BASE) >> _DP_POSITION_BITS == epoch:
            start = min((cursor - DP_CURSOR_BASE) & ((1 << _DP_POSITION_BITS) - 1), len(items))
        count = max(1, max_bytes // EDGE_WIRE_BYTES)
        page = items[start : start + count]
        end = start + len(page)
        return list(page), _cursor(epoch, end), end < len(items)

    async def _make(self, epoch: int) -> list[ConsolidatedEdge]:
        from omega.constellation import privacy

        supports: dict[tuple[int, int, int], int] = {}
        cursor, more = 0, True
        while more:
            page = await self._store.changes_since(cursor, 1, 1 << 30)
            for e in page.items:
                if isinstance(e, ConsolidatedEdge):
                    supports[(e.keyspace, e.src, e.dst)] = e.support
            cursor, more = page.cursor, page.more
        policy = self._policy
        release = privacy.calibrate(float(policy.dp_epsilon or 0.0), policy.dp_delta, policy.dp_max_keys)
        noised = await asyncio.to_thread(release.release, supports)
        # Embedding patterns are not released under DP (their weighted means carry no noise yet).
        # An item's version is the cursor right after it: a page the server cuts resumes there.
        ranked = enumerate(sorted(noised.items()))
        return [ConsolidatedEdge(k[0], k[1], k[2], float(n), n, _cursor(epoch, i + 1)) for i, (k, n) in ranked]


def _cursor(epoch: int, position: int) -> int:
    return DP_CURSOR_BASE + (epoch << _DP_POSITION_BITS) + position
