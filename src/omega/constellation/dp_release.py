"""DP mode's publication: one release a day of every key's noised distinct support.

With `AggregationPolicy.dp_epsilon` set, TVs pull the day's release instead of the
store's changes: computed at the first push or pull of an epoch (OpenDP, through
`omega.constellation.privacy`), then fixed for that epoch. It holds every edge and
pair whose noised distinct support passes the threshold, and every embedding pattern
(codebook cell) whose noised count of the previous day's contributions passes it,
published as the direction of its noised sum of unit vectors (each clipped to norm 1)
with the noised mean of their success rates — one day's contributions, so one TV-day
moves each of these by at most 1 (`privacy.PARTS_PER_KEY`). The release is kept in
the store (`keep_dp_release`: the first one drawn for an epoch wins), so a restarted
server or a second worker on the same store serves the same noised values instead of
a fresh draw — averaging draws of one day's supports would cancel the noise. The
stored releases of the window, with their calibration, are the accountant's state:
`budget` composes them with dp-accounting.

A pull cursor into a release is DP_CURSOR_BASE + (epoch << 24) + position, so a
page the server cuts to its byte budget resumes right after its last item, and a
cursor of another day (or of the store) starts the day's release from its beginning.

Retraction: after the day's patterns and edges the release lists, as removals
(support 0), every key of the window's earlier stored releases that today's does
not hold (its noised support fell under the threshold, or its supporters left
the window), so a TV drops what is no longer published. That is post-processing
of published releases only: it costs no privacy budget. A TV starting from cursor
0 holds nothing to remove and is not sent them. Nor is a TV whose cursor is stale
(`stale`): a release older than the window (it was offline longer; keys dropped before
the window's releases would never be named) or a cursor of the store (the server moved
to DP). Its first page is the start of the day's release flagged `reset`: it drops every
pattern, edge and pair it holds and takes the release whole.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from omega.constellation.crdt import ConsolidatedCell, ConsolidatedEdge
from omega.constellation.store.base import EDGE_WIRE_BYTES, PATTERN_WIRE_BYTES, ConstellationStore
from omega.constellation.store.window import log_embedding
from omega.errors import OmegaError
from omega.protocol import EMBEDDING_DIM

if TYPE_CHECKING:
    from omega.constellation.aggregation import AggregationPolicy
    from omega.constellation.privacy import DPRelease

#: Pull cursors of DP releases: base + (release epoch << 24) + position in the release.
DP_CURSOR_BASE = 1 << 62
_DP_POSITION_BITS = 24


Item = ConsolidatedCell | ConsolidatedEdge
#: (task_type, cell) -> (contributions, sum of clipped unit vectors, sum of success rates)
CellSums = dict[tuple[int, int], tuple[int, np.ndarray, float]]


class DailyRelease:
    """The day's DP release over a store's exact distinct supports and the previous day's patterns."""

    def __init__(self, store: ConstellationStore, policy: AggregationPolicy, clock_ms: Callable[[], int]) -> None:
        self._store = store
        self._policy = policy
        self._clock_ms = clock_ms
        self._current: tuple[int, list[Item], int] | None = None  # (epoch, items, how many are not removals)
        self._lock = asyncio.Lock()

    async def current(self) -> tuple[int, list[Item]]:
        """(epoch, items) of the day's release (computed at its first use in an epoch, then fixed),
        its removals last."""
        epoch, items, _ = await self._day()
        return epoch, items

    async def _day(self) -> tuple[int, list[Item], int]:
        epoch = self._clock_ms() // self._policy.epoch_ms
        if self._current is not None and self._current[0] == epoch:
            return self._current
        async with self._lock:
            if self._current is None or self._current[0] != epoch:
                self._current = (epoch, *await self._make(epoch))
            return self._current

    async def head(self) -> int:
        """The cursor right after the day's whole release."""
        epoch, items = await self.current()
        return _cursor(epoch, len(items))

    def stale(self, cursor: int) -> bool:
        """Whether a TV pulling from `cursor` may hold keys the day's removals do not name, so it must drop
        what it holds and take the release whole: a store cursor (not 0, which holds nothing), or a release
        older than the window whose releases the removals come from."""
        if cursor == 0:
            return False
        if cursor < DP_CURSOR_BASE:
            return True
        epoch = self._clock_ms() // self._policy.epoch_ms
        return (cursor - DP_CURSOR_BASE) >> _DP_POSITION_BITS <= epoch - self._policy.window_epochs

    async def page(self, cursor: int, max_bytes: int) -> tuple[list[Item], int, bool]:
        """A page of the day's release after `cursor` (a cursor of another day or of the store: from its start)."""
        epoch, items, live = await self._day()
        start = 0
        if cursor >= DP_CURSOR_BASE and (cursor - DP_CURSOR_BASE) >> _DP_POSITION_BITS == epoch:
            start = min((cursor - DP_CURSOR_BASE) & ((1 << _DP_POSITION_BITS) - 1), len(items))
        # A TV from cursor 0 holds nothing to remove; one from a stale cursor drops all it holds (`stale`).
        stop = live if cursor == 0 or self.stale(cursor) else len(items)
        end, used = start, 0
        while end < stop:  # at least one item, then as many as the budget holds
            size = PATTERN_WIRE_BYTES if isinstance(items[end], ConsolidatedCell) else EDGE_WIRE_BYTES
            if end > start and used + size > max_bytes:
                break
            used += size
            end += 1
        if end >= stop:
            return list(items[start:end]), _cursor(epoch, len(items)), False
        return list(items[start:end]), _cursor(epoch, end), True

    async def budget(self) -> float:
        """ε per TV spent by the releases stored for the window (dp-accounting over their calibrations)."""
        from omega.constellation import privacy

        epoch = self._clock_ms() // self._policy.epoch_ms
        stored = await self._store.dp_releases(epoch - self._policy.window_epochs + 1, epoch)
        return privacy.budget_of([decode_release(blob)[0] for blob in stored.values()])

    async def _make(self, epoch: int) -> tuple[list[Item], int]:
        """The day's items (patterns, edges, then removals) and how many come before the removals."""
        blob = (await self._store.dp_releases(epoch, epoch)).get(epoch)
        if blob is None:
            blob = await self._store.keep_dp_release(epoch, await self._draw(epoch))  # another worker's may win
        _, edges, cells = decode_release(blob)
        # Patterns first, then edges; an item's version is the cursor right after it, so a page the
        # server cuts resumes there.
        items: list[Item] = [
            ConsolidatedCell(c, emb, t, rate, n, 0.0, _cursor(epoch, i + 1))
            for i, ((t, c), n, rate, emb) in enumerate(cells)
        ]
        items += [
            ConsolidatedEdge(k[0], k[1], k[2], float(n), n, _cursor(epoch, len(cells) + i + 1))
            for i, (k, n) in enumerate(edges)
        ]
        live = len(items)
        gone_cells, gone_edges = await self._withdrawn(epoch, {k for k, *_ in cells}, {k for k, _ in edges})
        zero = np.zeros(EMBEDDING_DIM, dtype=np.float32)
        items += [ConsolidatedCell(c, zero, t, 0.0, 0, 0.0, _cursor(epoch, live + i + 1))
                  for i, (t, c) in enumerate(gone_cells)]  # fmt: skip
        items += [ConsolidatedEdge(k[0], k[1], k[2], 0.0, 0, _cursor(epoch, len(items) + i + 1))
                  for i, k in enumerate(gone_edges)]  # fmt: skip
        return items, live

    async def _withdrawn(self, epoch: int, cells: set, edges: set) -> tuple[list, list]:
        """Sorted keys (cells, edges) of the window's earlier stored releases that today's does not hold."""
        earlier = await self._store.dp_releases(epoch - self._policy.window_epochs + 1, epoch - 1)
        gone_cells: set = set()
        gone_edges: set = set()
        for blob in earlier.values():
            _, old_edges, old_cells = decode_release(blob)
            gone_cells.update(k for k, *_ in old_cells if k not in cells)
            gone_edges.update(k for k, _ in old_edges if k not in edges)
        return sorted(gone_cells), sorted(gone_edges)

    async def _draw(self, epoch: int) -> bytes:
        """A fresh release (of the store's exact supports and the previous day's patterns), encoded."""
        from omega.constellation import privacy

        supports: dict[tuple, int] = {}
        cursor, more = 0, True
        while more:
            page = await self._store.changes_since(cursor, 1, 1 << 30)
            for e in page.items:
                if isinstance(e, ConsolidatedEdge) and e.support > 0:  # support 0: a removal
                    supports[(e.keyspace, e.src, e.dst)] = e.support
            cursor, more = page.cursor, page.more
        sums = cell_sums(await self._store.cell_contributions(epoch - 1))
        supports.update({("cell", t, c): n for (t, c), (n, _, _) in sums.items()})
        policy = self._policy
        release = privacy.calibrate(float(policy.dp_epsilon or 0.0), policy.dp_delta, policy.dp_max_keys)
        noised = await asyncio.to_thread(release.release, supports)
        kept = sorted((k[1], k[2]) for k in noised if k[0] == "cell")
        flat = [v for key in kept for v in (*sums[key][1].tolist(), sums[key][2])]
        noisy = await asyncio.to_thread(release.noise_sums, flat)
        cells = []
        for i, key in enumerate(kept):
            part = np.asarray(noisy[i * (EMBEDDING_DIM + 1) : (i + 1) * (EMBEDDING_DIM + 1)], dtype=np.float64)
            norm = float(np.linalg.norm(part[:EMBEDDING_DIM]))
            if norm > 0:
                n = noised[("cell", *key)]
                rate = min(max(float(part[EMBEDDING_DIM]) / n, 0.0), 1.0)
                cells.append((key, n, rate, (part[:EMBEDDING_DIM] / norm).astype(np.float32)))
        edges = {k: n for k, n in noised.items() if k[0] != "cell"}
        return encode_release(release, edges, cells)


def cell_sums(rows: list[tuple[int, int, float, float, bytes]]) -> CellSums:
    """Per cell: contributions, sum of their unit vectors clipped to norm 1, sum of their success rates."""
    out: dict[tuple[int, int], list] = {}
    for task_type, cell, successes, trials, emb in rows:
        x = log_embedding(emb)
        x = x / max(1.0, float(np.linalg.norm(x)))  # float16 rounding may leave a norm just above 1
        acc = out.setdefault((task_type, cell), [0, np.zeros(EMBEDDING_DIM), 0.0])
        acc[0] += 1
        acc[1] = acc[1] + x
        acc[2] += min(max(successes / trials, 0.0), 1.0) if trials > 0 else 0.0
    return {k: (n, v, r) for k, (n, v, r) in out.items()}


def encode_release(release: DPRelease, edges: dict, cells: list) -> bytes:
    """A release as stored: its calibration, the published (keyspace, src, dst, noised support) and
    the published patterns (task_type, cell, noised count, noised rate, float32 unit direction), sorted."""
    head = {k: getattr(release, k) for k in ("epsilon", "delta", "max_keys", "scale", "threshold")}
    items = [[int(k[0]), int(k[1]), int(k[2]), int(n)] for k, n in sorted(edges.items())]
    patterns = [[int(t), int(c), int(n), float(rate), base64.b64encode(emb.astype("<f4").tobytes()).decode()]
                for (t, c), n, rate, emb in cells]  # fmt: skip
    return json.dumps({**head, "items": items, "patterns": patterns}, separators=(",", ":")).encode()


def decode_release(blob: bytes) -> tuple[DPRelease, list, list]:
    """(calibration, sorted edges ((keyspace, src, dst), n), patterns ((task_type, cell), n, rate, unit
    vector)) of a stored release; OmegaError if it is not one."""
    from omega.constellation.privacy import DPRelease

    try:
        raw = json.loads(blob)
        release = DPRelease(float(raw["epsilon"]), float(raw["delta"]), int(raw["max_keys"]), float(raw["scale"]),
                            int(raw["threshold"]))  # fmt: skip
        edges = [((int(a), int(b), int(c)), int(n)) for a, b, c, n in raw["items"]]
        cells = []
        for t, c, n, rate, emb in raw.get("patterns", []):
            vec = np.frombuffer(base64.b64decode(emb, validate=True), dtype="<f4").astype(np.float32)
            if vec.shape != (EMBEDDING_DIM,):
                raise ValueError("pattern embedding of the wrong size")
            cells.append(((int(t), int(c)), int(n), float(rate), vec))
    except (ValueError, KeyError, TypeError) as exc:
        raise OmegaError(f"stored DP release is corrupt: {exc}") from None
    return release, edges, cells


def _cursor(epoch: int, position: int) -> int:
    return DP_CURSOR_BASE + (epoch << _DP_POSITION_BITS) + position
