"""A shard's aggregator: validated contributions → codebook cells → quality-weighted sums → deltas.

Poisoning bounds. A contribution's quality weight is `success_rate × uses`,
clipped to `w_max`; its trial count is clipped to `w_max` too (successes scaled
alike). `w_max` (8, privacy.DEFAULT_W_MAX) is the least an honest TV pushes: a TV
sends a pattern only at success ≥ 0.8 over ≥ 10 uses, so every honest
contribution is clipped to the same 8 and every device — honest or not — weighs
the same in a cell (bench/pattern_weights.py: honest pushes weigh 10 at p10, 26 at
the median on the validation split). A device contributes to a given cell or
edge at most once per epoch (default one day; more are rejected as
`duplicate_flood`), and latest wins per member per key (store/logic.py): its
contribution in a later epoch replaces the one it made before instead of adding
to it. So however often it pushes, one device holds one capped contribution per
key: it moves a consolidated pattern by at most w_max / (W + w_max) of the
distance between the honest mean and its vector (W: the honest weight, w_max per
honest TV: 1/(n + 1) beside n honest TVs, what one more honest TV moves it), its
success rate by at most w_max / (T + w_max), and an edge's weight by one
`edge_w_max`. Contributions count only inside the window (`window_epochs`,
default 30 days; store/window.py): a device holds at most 1 of a key's support,
and a key whose supporters went silent leaves the published state.
bench/pattern_steer.py: beside 23 honest TVs, 1 / 3 / 10 ids pushing on 5 days
move a pattern's direction 4 / 11 / 30 % of the way toward theirs (37 / 65 / 87 %
with w_max 50 and contributions summed over the window).
(Many fake devices are the job of device authentication — signed device tokens —
not of aggregation.)

Privacy floor (docs/architecture.md §4). Raw device ids never reach the store. What is kept:
- idempotency keys HMAC(salt, device ‖ batch_id) with the push time — deleted by
  `prune` after the replay window;
- per key (cell or edge) the set of member hashes HMAC(salt, key ‖ device)[:8]
  with the epoch of the member's last contribution and what that contribution
  counts (weight; for a cell its clipped counts and float16 embedding), for exact
  distinct support in the window and so that the member's next contribution
  replaces it. The hash differs per key, so the rows of two cells cannot be joined
  to build a device profile without the server salt; `prune` deletes a member
  once its last contribution leaves the window;
- the pattern contributions log of the window (the DP release's input): key,
  weight, counts and float16 embedding, and epoch — no device id, no pseudonym,
  no finer time.
A consolidated pattern or edge is published only with distinct support ≥ k_min.
The salt is the server's secret (e.g. derived from OMEGA_SECRET); the store only
keeps a check value HMAC(salt, …) so a restart with another salt is refused
instead of silently double-counting support.
"""

from __future__ import annotations

import asyncio
import math
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from omega.constellation.codebook import Codebook
from omega.constellation.crdt import CellKey, ConsolidatedCell, ConsolidatedEdge, FederatedState
from omega.constellation.dp_release import DP_CURSOR_BASE, DailyRelease
from omega.constellation.privacy import DEFAULT_K_MIN, DEFAULT_W_MAX, check_k_min
from omega.constellation.store.base import (
    CellContribution,
    ConstellationStore,
    EdgeContribution,
    PreparedPush,
    PruneStats,
)
from omega.errors import OmegaError
from omega.protocol import EMBEDDING_DIM
from omega.protocol.auth import new_mac
from omega.protocol.messages import Keyspace

if TYPE_CHECKING:
    from omega.constellation.trends import TrendTracker

DAY_MS = 86_400_000
DEVICE_ID_BYTES = 16
MAX_BATCH_ID_BYTES = 64
MEMBER_BYTES = 8
_U32 = 2**32
_I32 = 2**31

# Per-item rejection reasons (machine-readable; the server passes them to the TV).
BAD_EMBEDDING = "bad_embedding"  # wrong shape, NaN/inf, or norm far from 1
BAD_SUCCESS_RATE = "bad_success_rate"
BAD_COUNTS = "bad_counts"  # uses < 1, successes outside 0..uses
BAD_TASK_TYPE = "bad_task_type"
ZERO_WEIGHT = "zero_weight"  # success_rate × uses == 0: nothing to learn from
BAD_TRANSITION = "bad_transition"  # ids out of range, weight not finite and > 0, a pushed pair, an item self-loop
# or a co-watched pair not in order (src < dst)
DUPLICATE_FLOOD = "duplicate_flood"  # this device already contributed to that cell/edge this epoch
OVER_DAILY_KEYS = "over_daily_keys"  # (DP) this device already added to dp_max_keys keys this epoch



@dataclass(frozen=True, eq=False)
class Contribution:
    """One embedding pattern from a TV (already dequantised from the wire)."""

    embedding: np.ndarray
    success_rate: float
    uses: int
    successes: int
    task_type: int
    cell_hint: int | None = None


class Transition(NamedTuple):
    keyspace: int
    src: int
    dst: int
    weight: float


@dataclass(frozen=True)
class Rejection:
    kind: str  # "pattern" or "transition"
    index: int  # position in the push's list of that kind
    reason: str


@dataclass(frozen=True)
class ApplyResult:
    accepted: int  # patterns + transitions accepted
    rejections: list[Rejection] = field(default_factory=list)
    duplicate: bool = False  # this (device, batch_id) was applied before: nothing changed
    cursor: int = 0  # the store's change sequence after this push
    hints_ignored: int = 0  # cell hints that disagreed with the codebook


#: Longest contribution window a policy takes (days at the default epoch): 100 years, more than any
#: replayed data set spans (MovieLens ml-latest-small: 1996-2018).
MAX_WINDOW_EPOCHS = 36_500


@dataclass(frozen=True)
class AggregationPolicy:
    k_min: int = DEFAULT_K_MIN  # distinct devices before a pattern/edge is published
    w_max: float = DEFAULT_W_MAX  # cap on one contribution's quality weight and trial count (privacy.py says why)
    # Cap on one transition's weight: one honest viewing's (reward <= 1). Published edges carry
    # distinct support, so this only bounds the diagnostic summed weight of the state.
    edge_w_max: float = 1.0
    epoch_ms: int = DAY_MS  # one contribution per device per cell/edge per epoch
    # The contribution window (store/window.py): a key holds only the contributions of the last
    # window_epochs epochs, and its support only the devices that contributed in them. A served shard
    # keeps the 30-day default (ServerSettings does not expose it); up to MAX_WINDOW_EPOCHS is for
    # simulations that replay decades of viewings on one clock (sim/fleet: a window that spans the data).
    window_epochs: int = 30
    replay_window_ms: int = DAY_MS  # how long idempotency keys are kept
    norm_tolerance: float = 0.1  # |‖x‖ - 1| allowed (uint8 quantisation error is far below)
    # Differential privacy at publication (omega.constellation.privacy): None = off (k_min only).
    # With ε set, each day's release is every key's distinct support with Gaussian noise, published
    # when the noised support passes the threshold; a device adds to ≤ dp_max_keys keys per day.
    dp_epsilon: float | None = None
    dp_delta: float = 1e-6
    dp_max_keys: int = 64

    def __post_init__(self) -> None:
        check_k_min(self.k_min)
        if not (self.w_max > 0 and self.edge_w_max > 0 and math.isfinite(self.w_max + self.edge_w_max)):
            raise OmegaError("w_max and edge_w_max must be positive and finite")
        if self.dp_epsilon is not None and not (math.isfinite(self.dp_epsilon) and 0 < self.dp_epsilon <= 100):
            raise OmegaError(f"dp_epsilon must be in (0, 100], got {self.dp_epsilon!r}")
        if not (0 < self.dp_delta < 1e-2) or not (1 <= self.dp_max_keys <= 10_000):
            raise OmegaError("dp_delta must be in (0, 0.01) and dp_max_keys in 1..10000")
        if self.epoch_ms < 1 or self.replay_window_ms < 0:
            raise OmegaError("epoch_ms must be >= 1 and replay_window_ms >= 0")
        if isinstance(self.window_epochs, bool) or not isinstance(self.window_epochs, int) or not (
            1 <= self.window_epochs <= MAX_WINDOW_EPOCHS
        ):
            raise OmegaError(f"window_epochs must be an integer in 1..{MAX_WINDOW_EPOCHS}, got {self.window_epochs!r}")


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


#: The member hash's message of an edge: b"omega/edge" + (keyspace, src, dst) as <III + device.
_EDGE_IDS = struct.Struct("<III")


class Aggregator:
    """One shard's aggregation over a `ConstellationStore`. Build with `await Aggregator.open(...)`."""

    def __init__(
        self, store: ConstellationStore, codebook: Codebook, salt: bytes, policy: AggregationPolicy | None = None,
        *, clock_ms: Callable[[], int] | None = None,
    ) -> None:
        if not isinstance(salt, (bytes, bytearray)) or len(salt) < 16:
            raise OmegaError("the server salt must be at least 16 bytes")
        self.store = store
        self.codebook = codebook
        self.policy = policy or AggregationPolicy()
        # The keyed state after absorbing the salt, copied per hash (saves re-keying every call). OpenSSL's
        # HMAC object itself when there is one: a push hashes ~25 keys, and hmac.HMAC's Python wrapper
        # costs 2.5 times as much per copy-update-digest.
        self._mac = new_mac(bytes(salt))
        # Optional trend detection: fed the accepted cells' member hashes, read into served patterns.
        self.trends: TrendTracker | None = None
        # DP mode: the day's release (its clock is this aggregator's `_clock_ms`, the server's clock when it
        # runs on another one; kept in the store).
        self._release = DailyRelease(store, self.policy, lambda: self._clock_ms())
        self._clock_ms: Callable[[], int] = clock_ms or (lambda: int(time.time() * 1000))
        # Pushes whose patterns wait to be prepared together (`_cells`): (device, patterns, future).
        self._waiting: list[tuple[bytes, Sequence[Contribution], asyncio.Future]] = []
        self.cell_batches = 0  # preparations run (pushes with patterns / this = pushes prepared together)

    @classmethod
    async def open(
        cls, store: ConstellationStore, codebook: Codebook, salt: bytes, policy: AggregationPolicy | None = None,
        *, clock_ms: Callable[[], int] | None = None,
    ) -> Aggregator:
        """Bind the store to this codebook and salt (refused if it was built with others)."""
        agg = cls(store, codebook, salt, policy, clock_ms=clock_ms)
        await store.bind(codebook.fingerprint, codebook.version, agg._keyed(b"omega/salt-check", 16))
        await store.set_pull_floor(agg.policy.k_min)  # pulls read only what reached it (store.base)
        return agg

    @property
    def origin(self) -> str:
        return self.store.origin

    def _keyed(self, message: bytes, size: int) -> bytes:
        """HMAC-SHA256(salt, message) truncated to `size` bytes."""
        mac = self._mac.copy()
        mac.update(message)
        return mac.digest()[:size]

    def _edge_member(self, keyspace: int, src: int, dst: int, device: bytes) -> bytes:
        """The member hash of a device's edge or pair (the store keeps these: the formula never changes)."""
        mac = self._mac.copy()
        mac.update(b"omega/edge" + _EDGE_IDS.pack(keyspace, src, dst) + device)
        return mac.digest()[:MEMBER_BYTES]

    # ---- pushes --------------------------------------------------------------------
    async def apply(
        self,
        device: bytes,
        batch_id: bytes,
        patterns: Sequence[Contribution],
        transitions: Sequence[Transition | tuple[int, int, int, float]],
        now_ms: int,
    ) -> ApplyResult:
        """Apply one push atomically and durably; a retried (device, batch_id) changes nothing."""
        if not isinstance(device, (bytes, bytearray)) or len(device) != DEVICE_ID_BYTES:
            raise OmegaError(f"device id must be {DEVICE_ID_BYTES} bytes")
        if not isinstance(batch_id, (bytes, bytearray)) or not 0 < len(batch_id) <= MAX_BATCH_ID_BYTES:
            raise OmegaError(f"batch id must be 1..{MAX_BATCH_ID_BYTES} bytes")
        if not _is_int(now_ms) or now_ms < 0:
            raise OmegaError("now_ms must be a non-negative integer")
        device = bytes(device)
        rejections: list[Rejection] = []
        cells, hints_ignored = await self._cells(device, patterns, rejections)
        edges = self._prepare_edges(device, transitions, rejections)
        n_pushed = len(transitions)
        edges += self._derive_pairs(device, edges, first_index=n_pushed)
        # Co-watched pairs last (stable): under DP a device-day's key budget goes to its edges and pairs first.
        edges.sort(key=lambda e: e.keyspace == Keyspace.COWATCH)
        push_key = self._keyed(b"omega/push" + device + bytes(batch_id), 16)
        if self.policy.dp_epsilon is not None:
            cells, edges = await self._within_daily_keys(device, int(now_ms), cells, edges, n_pushed, rejections,
                                                         push_key)  # fmt: skip
        push = PreparedPush(
            push_key=push_key,
            epoch=int(now_ms) // self.policy.epoch_ms,
            now_ms=int(now_ms),
            cells=cells,
            edges=edges,
        )
        outcome = await self.store.apply_push(push)
        if outcome.duplicate:
            return ApplyResult(accepted=0, duplicate=True, cursor=outcome.head)
        if self.trends is not None and outcome.accepted_cells:
            accepted = set(outcome.accepted_cells)
            # The member hash is a per-cell pseudonym of the device: distinct counts without a device id.
            seen = [(CellKey(c.task_type, c.cell), c.member) for c in cells if c.index in accepted]
            await self.trends.observe_many(seen, int(now_ms))
        # Derived pair contributions sit after the pushed edges: the TV never hears of them.
        rejections += [Rejection("pattern", i, DUPLICATE_FLOOD) for i in outcome.flooded_cells]
        rejections += [Rejection("transition", i, DUPLICATE_FLOOD) for i in outcome.flooded_edges if i < n_pushed]
        rejections.sort(key=lambda r: (r.kind, r.index))
        cursor = await self.release_head()
        if cursor is None:
            cursor = outcome.head
        return ApplyResult(
            accepted=len(outcome.accepted_cells) + sum(i < n_pushed for i in outcome.accepted_edges),
            rejections=rejections,
            cursor=cursor,
            hints_ignored=hints_ignored,
        )

    async def _within_daily_keys(
        self, device: bytes, now_ms: int, cells: list[CellContribution], edges: list[EdgeContribution],
        n_pushed: int, rejections: list[Rejection], push_key: bytes,
    ) -> tuple[list[CellContribution], list[EdgeContribution]]:  # fmt: skip
        """DP mode: a device adds to at most dp_max_keys keys per epoch (the L0 bound of the release).

        Counted in the store, so a restart or another worker on the same store keeps the bound; a
        retried batch (same push_key) is granted what its first attempt was, and uses nothing more."""
        epoch = now_ms // self.policy.epoch_ms
        tag = self._keyed(b"omega/day" + struct.pack("<q", epoch) + device, MEMBER_BYTES)
        budget = await self.store.use_day_keys(epoch, tag, len(edges) + len(cells), self.policy.dp_max_keys,
                                               push_key)  # fmt: skip
        kept_edges = []
        for e in edges:  # pushed edges, then their pairs; then cells
            if budget > 0:
                kept_edges.append(e)
                budget -= 1
            elif e.index < n_pushed:
                rejections.append(Rejection("transition", e.index, OVER_DAILY_KEYS))
        kept_cells = []
        for c in cells:
            if budget > 0:
                kept_cells.append(c)
                budget -= 1
            else:
                rejections.append(Rejection("pattern", c.index, OVER_DAILY_KEYS))
        return kept_cells, kept_edges

    def _check_pattern(self, p: Contribution, embedding_ok: bool) -> str | None:
        if not embedding_ok:
            return BAD_EMBEDDING
        if not isinstance(p.success_rate, (int, float, np.number)) or not 0.0 <= float(p.success_rate) <= 1.0:
            return BAD_SUCCESS_RATE  # NaN fails the range test too
        if not (_is_int(p.uses) and _is_int(p.successes) and p.uses >= 1 and 0 <= p.successes <= p.uses):
            return BAD_COUNTS
        if not _is_int(p.task_type) or not 0 <= p.task_type < _I32:
            return BAD_TASK_TYPE
        if float(p.success_rate) * p.uses <= 0.0:
            return ZERO_WEIGHT
        return None

    async def _cells(
        self, device: bytes, patterns: Sequence[Contribution], rejections: list[Rejection]
    ) -> tuple[list[CellContribution], int]:
        """`_prepare_cells` of this push, run once for every push that reached here in the same turn of
        the event loop: its numpy calls (checks, float16 rounding, codebook assignment) cost about as
        much for one vector as for a hundred, and pushes arrive together (the store's writer groups
        them the same way). Refused patterns are added to `rejections`. A push without patterns waits
        too when a pass is pending, so pushes reach the store in the order they came here."""
        if not patterns and not self._waiting:
            return [], 0
        loop = asyncio.get_running_loop()
        if not self._waiting:
            loop.call_soon(self._prepare_waiting)
        future: asyncio.Future[tuple[list[CellContribution], int, list[Rejection]]] = loop.create_future()
        self._waiting.append((device, patterns, future))
        cells, hints_ignored, refused = await future
        rejections += refused
        return cells, hints_ignored

    def _prepare_waiting(self) -> None:
        jobs, self._waiting = self._waiting, []
        try:
            prepared: list = self._prepare_cells([(d, p) for d, p, _ in jobs])
        except Exception:  # noqa: BLE001 - input numpy cannot take: each push alone, so only its own fails
            prepared = []
            for d, p, _ in jobs:
                try:
                    prepared += self._prepare_cells([(d, p)])
                except Exception as exc:  # noqa: BLE001 - raised in the push's own apply
                    prepared.append(exc)
        for (*_, future), out in zip(jobs, prepared, strict=True):
            if future.done():  # its push was cancelled
                continue
            if isinstance(out, Exception):
                future.set_exception(out)
            else:
                future.set_result(out)

    def _prepare_cells(
        self, pushes: Sequence[tuple[bytes, Sequence[Contribution]]]
    ) -> list[tuple[list[CellContribution], int, list[Rejection]]]:
        """Each push's (device, patterns) → (its cell contributions, hints ignored, refused patterns),
        the vectors of all of them checked, rounded and assigned in one pass (row by row the same
        values as push by push)."""
        flat = [p for _, patterns in pushes for p in patterns]
        # Embedding checks for every pattern at once: shape, then finiteness and norm.
        arrays = [np.asarray(p.embedding) for p in flat]
        shaped = [a.shape == (EMBEDDING_DIM,) and np.issubdtype(a.dtype, np.number) for a in arrays]
        if all(shaped):  # one stacking call instead of a copy per row
            x = np.array(arrays, dtype=np.float64).reshape(len(arrays), EMBEDDING_DIM)
        else:
            x = np.zeros((len(arrays), EMBEDDING_DIM), dtype=np.float64)
            for row, (a, ok) in enumerate(zip(arrays, shaped, strict=True)):
                if ok:
                    x[row] = a
        with np.errstate(all="ignore"):
            norms = np.linalg.norm(x, axis=1)
        emb_ok = (np.isfinite(x).all(axis=1) & (np.abs(norms - 1.0) <= self.policy.norm_tolerance)).tolist()
        checked: list[tuple[list[tuple[int, Contribution]], list[Rejection]]] = []
        rows: list[int] = []
        row = 0
        for _, patterns in pushes:
            kept, refused = [], []
            for i, p in enumerate(patterns):
                reason = self._check_pattern(p, shaped[row] and emb_ok[row])
                if reason is None:
                    kept.append((i, p))
                    rows.append(row)
                else:
                    refused.append(Rejection("pattern", i, reason))
                row += 1
            checked.append((kept, refused))
        # Rounded to float16, as the contributions log keeps it, so that what leaves the window
        # subtracts exactly what was added (far finer than the wire's uint8 quantisation anyway).
        x32 = (x[rows] / norms[rows, None]).astype(np.float16).astype(np.float32)
        assigned = iter(zip(self.codebook.assign(x32).tolist(), x32, strict=True))
        w_max = self.policy.w_max
        out = []
        for (device, _), (kept, refused) in zip(pushes, checked, strict=True):
            cells = []
            hints_ignored = 0
            for i, p in kept:
                cell, emb = next(assigned)
                if p.cell_hint is not None and p.cell_hint != cell:
                    hints_ignored += 1  # the codebook decides; a hint is only ever a cross-check
                trials = min(float(p.uses), w_max)
                cells.append(
                    CellContribution(
                        index=i,
                        task_type=int(p.task_type),
                        cell=cell,
                        member=self._keyed(b"omega/cell" + struct.pack("<iI", p.task_type, cell) + device,
                                           MEMBER_BYTES),
                        weight=min(float(p.success_rate) * p.uses, w_max),
                        embedding=emb,
                        successes=trials * (p.successes / p.uses),
                        trials=trials,
                    )
                )
            out.append((cells, hints_ignored, refused))
        self.cell_batches += 1
        return out

    def _prepare_edges(
        self, device: bytes, transitions: Sequence[Transition | tuple], rejections: list[Rejection]
    ) -> list[EdgeContribution]:
        out = []
        w_max = self.policy.edge_w_max
        item, pair, refined, cowatch = Keyspace.ITEM, Keyspace.PAIR, Keyspace.REFINED, Keyspace.COWATCH
        for i, t in enumerate(transitions):
            try:
                keyspace, src, dst, weight = t
            except (TypeError, ValueError):
                rejections.append(Rejection("transition", i, BAD_TRANSITION))
                continue
            if type(keyspace) is int and type(src) is int and type(dst) is int:  # what the service hands (fast)
                ids_ok = 0 <= keyspace < _U32 and 0 <= src < _U32 and 0 <= dst < _U32
            else:
                ids_ok = all(_is_int(v) and 0 <= v < _U32 for v in (keyspace, src, dst))
            w_ok = isinstance(weight, (int, float, np.number)) and math.isfinite(weight) and weight > 0
            # Pairs are derived here from item edges; one pushed as such would be counted twice. Refined
            # neighbours are computed here from what is published: a TV never sends them.
            # "After a, a" says nothing about what to watch next: item self-loops are refused.
            # Co-watched pairs are unordered: src < dst, so each pair has one key.
            if (not (ids_ok and w_ok) or keyspace == pair or keyspace == refined or (keyspace == item and src == dst)
                    or (keyspace == cowatch and src >= dst)):
                rejections.append(Rejection("transition", i, BAD_TRANSITION))
                continue
            keyspace, src, dst = int(keyspace), int(src), int(dst)
            member = self._edge_member(keyspace, src, dst, device)
            out.append(EdgeContribution(i, keyspace, src, dst, member, min(float(weight), w_max)))
        return out

    def _derive_pairs(self, device: bytes, edges: list[EdgeContribution], first_index: int) -> list[EdgeContribution]:
        """One unordered-pair contribution per item pair of this push (a→b and b→a summed).

        "Watched near each other" is a coarser fact than "watched b after a", so more pairs reach
        k_min distinct TVs: on ml-latest-small (610 viewers, k_min 3) this channel lifts the TV's
        NDCG@10 by ~11-20 % over directed edges alone (bench/quality.py --grid pairs).
        """
        sums: dict[tuple[int, int], float] = {}
        item = Keyspace.ITEM
        for e in edges:
            if e.keyspace == item and e.src != e.dst:
                key = (e.src, e.dst) if e.src < e.dst else (e.dst, e.src)
                sums[key] = sums.get(key, 0.0) + e.weight
        out = []
        w_max, pair = self.policy.edge_w_max, int(Keyspace.PAIR)
        for j, ((lo, hi), weight) in enumerate(sorted(sums.items())):
            member = self._edge_member(pair, lo, hi, device)
            out.append(EdgeContribution(first_index + j, pair, lo, hi, member, min(weight, w_max)))
        return out

    # ---- delta pull ----------------------------------------------------------------
    async def changes_since(
        self, cursor: int, max_bytes: int = 5000
    ) -> tuple[list[ConsolidatedCell | ConsolidatedEdge], int, bool]:
        """Published patterns/edges changed after `cursor`, in change order, within ~max_bytes.

        Returns (items, new_cursor, more). Pulling again with new_cursor never skips a change:
        an item that changes again gets a later position and is sent again. An item of support 0
        is a removal: its key was published before and no longer is (window expiry, or not
        re-selected by the day's DP release), so a TV holding it drops it. A pull from cursor 0
        gets no removals.
        """
        if not _is_int(cursor) or cursor < 0:
            raise OmegaError("cursor must be a non-negative integer")
        if not _is_int(max_bytes) or max_bytes < 1:
            raise OmegaError("max_bytes must be a positive integer")
        if self.policy.dp_epsilon is not None:
            return await self._release.page(int(cursor), int(max_bytes))
        page = await self.store.changes_since(int(cursor), self.policy.k_min, int(max_bytes))
        items = page.items
        if self.trends is not None:
            score = self.trends.trend_score
            out = []
            for p in items:
                if isinstance(p, ConsolidatedCell) and p.support > 0:
                    s = score(p.key)
                    if s != p.trend_score:  # most cells are not trending: keep the (cached) item as is
                        p = replace(p, trend_score=s)
                out.append(p)
            items = out
        return items, page.cursor, page.more

    def resets(self, cursor: int) -> bool:
        """Whether the page for a pull from `cursor` starts a full snapshot the TV must take in place of all it
        holds (PullReply.reset): under DP, a cursor the day's removals cannot bring up to date
        (`DailyRelease.stale`: older than the window, or a store cursor). Without DP, a cursor of a DP release
        (DP was on when the TV last pulled): the store's changes cannot name what that release held and no
        longer is published. A store cursor never: its changes name every key that left (support 0)."""
        if self.policy.dp_epsilon is None:
            return int(cursor) >= DP_CURSOR_BASE
        return self._release.stale(int(cursor))

    async def release_head(self) -> int | None:
        """Under DP, the cursor right after the day's release (TVs pull it, not the store's changes);
        None without DP."""
        if self.policy.dp_epsilon is None:
            return None
        return await self._release.head()

    async def published(self) -> list[ConsolidatedCell | ConsolidatedEdge]:
        """Every currently published item (a full pull from cursor 0; removals left out)."""
        items, cursor, more = await self.changes_since(0, max_bytes=1 << 30)
        while more:
            page, cursor, more = await self.changes_since(cursor, max_bytes=1 << 30)
            items += page
        return [item for item in items if item.support > 0]

    async def published_cowatch(self) -> list[tuple[int, int, int]]:
        """The co-watched pairs with >= k_min distinct TVs: (a, b, support), the refined neighbours' input. None
        under DP: their supports are exact counts, and the day's DP release is all that may leave the store."""
        if self.policy.dp_epsilon is not None:
            return []
        return await self.store.published_cowatch(self.policy.k_min)

    # ---- housekeeping and federation -----------------------------------------------
    async def prune(self, now_ms: int) -> PruneStats:
        """Drop idempotency keys older than the replay window, and members and contributions older
        than the contribution window (their keys' accumulators and supports shrink: store/window.py)."""
        if not _is_int(now_ms) or now_ms < 0:
            raise OmegaError("now_ms must be a non-negative integer")
        first_kept = int(now_ms) // self.policy.epoch_ms - self.policy.window_epochs + 1
        return await self.store.prune(now_ms - self.policy.replay_window_ms, first_kept)

    async def export_state(self, since_version: int = 0, origins: list[str] | None = None) -> FederatedState:
        """CRDT entries for federation (default: this shard's own and every origin it holds)."""
        return await self.store.export_entries(since_version, origins)

    async def merge_remote(self, state: FederatedState) -> int:
        """Merge other origins' entries into the served global view; returns how many entries changed."""
        return await self.store.merge_entries(state)
