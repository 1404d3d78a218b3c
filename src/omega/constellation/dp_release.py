"""DP mode's publication: one release a day of every key's noised distinct support.

With `AggregationPolicy.dp_epsilon` set, TVs pull the day's release instead of the
store's changes: computed at the first push or pull of an epoch (OpenDP, through
`omega.constellation.privacy`), then fixed for that epoch. The release is kept in
the store (`keep_dp_release`: the first one drawn for an epoch wins), so a restarted
server or a second worker on the same store serves the same noised values instead of
a fresh draw — averaging draws of one day's supports would cancel the noise. The
stored releases of the window, with their calibration, are the accountant's state:
`budget` composes them with dp-accounting.

A pull cursor into a release is DP_CURSOR_BASE + (epoch << 24) + position, so a
page the server cuts to its byte budget resumes right after its last item, and a
cursor of another day (or of the store) starts the day's release from its beginning.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import TYPE_CHECKING

from omega.constellation.crdt import ConsolidatedEdge
from omega.constellation.store.base import EDGE_WIRE_BYTES, ConstellationStore
from omega.errors import OmegaError

if TYPE_CHECKING:
    from omega.constellation.aggregation import AggregationPolicy
    from omega.constellation.privacy import DPRelease

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

    async def budget(self) -> float:
        """ε per TV spent by the releases stored for the window (dp-accounting over their calibrations)."""
        from omega.constellation import privacy

        epoch = self._clock_ms() // self._policy.epoch_ms
        stored = await self._store.dp_releases(epoch - self._policy.window_epochs + 1, epoch)
        return privacy.budget_of([decode_release(blob)[0] for blob in stored.values()])

    async def _make(self, epoch: int) -> list[ConsolidatedEdge]:
        blob = (await self._store.dp_releases(epoch, epoch)).get(epoch)
        if blob is None:
            blob = await self._store.keep_dp_release(epoch, await self._draw())  # another worker's may win
        _, noised = decode_release(blob)
        # An item's version is the cursor right after it: a page the server cuts resumes there.
        return [
            ConsolidatedEdge(k[0], k[1], k[2], float(n), n, _cursor(epoch, i + 1)) for i, (k, n) in enumerate(noised)
        ]

    async def _draw(self) -> bytes:
        """A fresh release of the store's exact supports, encoded."""
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
        return encode_release(release, noised)


def encode_release(release: DPRelease, noised: dict) -> bytes:
    """A release as stored: its calibration and the published (keyspace, src, dst, noised support), sorted."""
    head = {k: getattr(release, k) for k in ("epsilon", "delta", "max_keys", "scale", "threshold")}
    items = [[int(k[0]), int(k[1]), int(k[2]), int(n)] for k, n in sorted(noised.items())]
    return json.dumps({**head, "items": items}, separators=(",", ":")).encode()


def decode_release(blob: bytes) -> tuple[DPRelease, list[tuple[tuple[int, int, int], int]]]:
    """(calibration, sorted items) of a stored release; OmegaError if it is not one."""
    from omega.constellation.privacy import DPRelease

    try:
        raw = json.loads(blob)
        release = DPRelease(float(raw["epsilon"]), float(raw["delta"]), int(raw["max_keys"]), float(raw["scale"]),
                            int(raw["threshold"]))  # fmt: skip
        items = [((int(a), int(b), int(c)), int(n)) for a, b, c, n in raw["items"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise OmegaError(f"stored DP release is corrupt: {exc}") from None
    return release, items


def _cursor(epoch: int, position: int) -> int:
    return DP_CURSOR_BASE + (epoch << _DP_POSITION_BITS) + position
