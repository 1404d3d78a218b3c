"""The sync service: one uplink frame in, one downlink frame out (transport-agnostic).

Both transports (HTTP polling and WebSocket) call `SyncService.handle`, so every
rule lives here, in this order:

1. size, then `peek_header` (who claims to send it, under which key id, which
   kind: only the first bytes of the body are inflated);
2. derive that device's key and check the tag (`verify_frame`): nothing else
   is inflated or parsed before it verifies;
3. a request or WebSocket is bound to the device of its X-Omega-Device header, else a WebSocket to its
   first authenticated device (routes.py): others → unauthorized;
4. draining → unavailable; then admission (admission.py: per-device token
   bucket → rate_limited, replay window → replay), in-process or shared
   through Redis — all before the body is decoded;
5. `decode_frame` with an inflate cap per frame kind (what a legitimate frame
   of that kind needs; pattern and edge counts are checked on the raw message
   before objects are built);
6. push / pull / heartbeat.

Error replies are signed with the device key once the tag has verified, and
unsigned before. Every refusal — of a frame or of one pushed item — is counted
in `omega_rejections_total{reason}`.

Push rejections carry the index of the refused item: patterns are numbered
0..P-1 as in the push, transitions P.. in the batch's (sorted) edge order, then the co-watched pairs
P+T.. in theirs.

"Now" — the replay window, reply timestamps, the rate limiter's buckets, the
aggregation epoch and housekeeping — comes from one injectable `clock`
(seconds, default `time.time`; the rate limiter then uses `time.monotonic`), so
a simulation can run the real service on a simulated clock.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace

from omega.constellation.admission import Admission, LocalAdmission
from omega.constellation.aggregation import Aggregator, Contribution
from omega.constellation.aggregation import Transition as EdgeIn
from omega.constellation.cache import PullCache
from omega.constellation.item_graph import RefinedRelease
from omega.constellation.keyring import Keyring
from omega.constellation.metrics import ServerMetrics
from omega.constellation.pull_pages import PageBuilder
from omega.constellation.settings import ServerSettings
from omega.constellation.store.base import PruneStats
from omega.constellation.validation import STALE_CODEBOOK, TOO_FEW_SAMPLES
from omega.protocol import (
    UPLINK,
    EMBEDDING_DIM,
    MAX_PATTERNS_PER_PUSH,
    Frame,
    Heartbeat,
    HeartbeatAck,
    Keyspace,
    PreparedBody,
    ProtocolError,
    Pull,
    PullReply,
    Push,
    PushAck,
    Rejection,
    Tier,
    decode_frame,
    encode_error_reply,
    encode_frame,
    encode_prepared,
    peek_header,
    prepare_body,
    verify_frame,
)
from omega.protocol import ErrorReply as ErrorBody

log = logging.getLogger("omega.serve")

#: HTTP status of each error code (the transport contract).
STATUS = {
    "malformed": 400,
    "unsupported_version": 400,
    "bad_signature": 401,
    "unauthorized": 401,
    "too_large": 413,
    "rate_limited": 429,
    "unavailable": 503,
    "internal": 500,
    "replay": 200,
    "invalid_pattern": 200,
}
#: Smallest pull page honoured (one 8-bit pattern plus the frame must fit).
MIN_PULL_BYTES = 600
_U32 = (1 << 32) - 1
DRAIN_RETRY_S = 5
#: Inflated bytes of the frame header (device id, timestamp, seq, key id) and a body's tag and length.
_HEADER_BODY_BYTES = 64
#: Inflated bytes of one pushed pattern at most: 8-bit codes of every dimension plus its fields and tags.
_PATTERN_BYTES = EMBEDDING_DIM + 80
#: Inflated bytes of one pushed edge at most: three uint32 varints (src gap, dst, weight) and a support.
_EDGE_BYTES = 20


def body_caps(max_push_edges: int) -> dict[str, int]:
    """Largest inflated body of each uplink kind that a legitimate frame can have (the inflate cap).

    A heartbeat or pull is a few varints; a push is at most MAX_PATTERNS_PER_PUSH 8-bit patterns, a
    batch id and `max_push_edges` edges. A frame claiming more inflates no further than this.
    """
    push = _HEADER_BODY_BYTES + 32 + MAX_PATTERNS_PER_PUSH * _PATTERN_BYTES + 32 + max_push_edges * _EDGE_BYTES
    return {"push": push, "pull": _HEADER_BODY_BYTES + 48, "heartbeat": _HEADER_BODY_BYTES + 48}


@dataclass(frozen=True, slots=True)
class Reply:
    """What a transport sends back: HTTP status (WS ignores it), one frame, and facts about the exchange."""

    status: int
    body: bytes
    retry_after: int | None = None
    #: The authenticated sender (None when the frame could not be authenticated).
    device_id: bytes | None = None
    kind: str = "error"  # push, pull, heartbeat, or error
    code: str | None = None  # error code of an error reply
    tier: str | None = None  # from a heartbeat


@dataclass(frozen=True, slots=True)
class _Sender:
    key: bytes
    device_id: bytes
    key_id: int
    seq: int


class SyncService:
    def __init__(
        self,
        aggregator: Aggregator,
        keyring: Keyring,
        settings: ServerSettings,
        metrics: ServerMetrics,
        cache: PullCache,
        *,
        head: int = 0,
        page_key: bytes,
        clock: Callable[[], float] = time.time,
        admission: Admission | None = None,
    ) -> None:
        self.aggregator = aggregator
        self.keyring = keyring
        self.settings = settings
        self.metrics = metrics
        self.cache = cache
        self.head = head
        self.draining = False
        self.clock = clock
        # The wall clock may step, so by default the token buckets run on the monotonic clock; an injected
        # clock (a simulation's) is used for both.
        self._bucket_clock = time.monotonic if clock is time.time else clock
        self.admission: Admission = admission or LocalAdmission(
            settings.rate_per_s, settings.rate_burst, int(settings.replay_window_s * 1000)
        )
        self._body_caps = body_caps(settings.max_push_edges)
        # The head pulls are served at (see ServerSettings.pull_snapshot_s) and when it was taken.
        self._served_head = head
        self._served_at = -math.inf
        self._page_key = page_key  # signs cached pages (they may sit in a shared Redis)
        self._acks: OrderedDict[tuple[bytes, bytes], PushAck] = OrderedDict()
        self._ack_entries = 50_000
        self._next_sync = {
            Tier.PREMIUM: settings.premium_sync_s,
            Tier.ACTIVE: settings.active_sync_s,
            Tier.CASUAL: settings.casual_sync_s,
        }
        # Prepared pull pages by their signed blob: a cache hit on a page this process already
        # built or verified costs a dict lookup, not a tag check, a parse, a serialisation and a deflate.
        self._pages: OrderedDict[bytes, PreparedBody] = OrderedDict()
        self._page_entries = 1024
        # Pages being looked up or read, by (served head, cursor, budget, reset): see _pull.
        self._building: dict[tuple[int, int, int, bool], asyncio.Future[PreparedBody]] = {}
        self.page_builder = PageBuilder(page_key, lambda: self.codebook_version, self.now_ms)
        # Refined neighbours (EASE over the published pairs), recomputed by a periodic job (lifespan).
        self.refined = RefinedRelease(aggregator.published, cowatch=aggregator.published_cowatch)
        # Labelled metric children, resolved once (labels() takes a lock and builds a tuple per call).
        self._m_bytes_in = metrics.bytes.labels("in")
        self._m_bytes_out = metrics.bytes.labels("out")
        self._m_syncs: dict[str, object] = {}
        self._m_rejections: dict[str, object] = {}
        self._m_latency: dict[str, object] = {}
        self._m_apply = metrics.store_latency.labels("apply")
        self._m_changes = metrics.store_latency.labels("changes")

    @property
    def codebook_version(self) -> int:
        return self.aggregator.codebook.version

    def now_ms(self) -> int:
        """The service's "now" in milliseconds (the unit of frame timestamps)."""
        return int(self.clock() * 1000)

    # ------------------------------------------------------------------ entry point
    async def handle(self, data: bytes, *, peer_device: bytes | None = None) -> Reply:
        started = time.perf_counter()
        self._m_bytes_in.inc(len(data))
        try:
            reply = await self._handle(bytes(data), peer_device)
        except Exception:  # a bug or a failing store: one 500 with an unsigned error frame, logged
            log.exception("internal error while answering a frame")
            reply = self._error("internal", "internal server error")
        self._m_bytes_out.inc(len(reply.body))
        if reply.code is not None:
            self._rejected(reply.code)
        else:
            child = self._m_syncs.get(reply.kind)
            if child is None:
                child = self._m_syncs[reply.kind] = self.metrics.syncs.labels(reply.kind)
            child.inc()  # type: ignore[attr-defined]
        child = self._m_latency.get(reply.kind)
        if child is None:
            child = self._m_latency[reply.kind] = self.metrics.sync_latency.labels(reply.kind)
        child.observe(time.perf_counter() - started)  # type: ignore[attr-defined]
        return reply

    def _rejected(self, reason: str) -> None:
        child = self._m_rejections.get(reason)
        if child is None:
            child = self._m_rejections[reason] = self.metrics.rejections.labels(reason)
        child.inc()  # type: ignore[attr-defined]

    async def _handle(self, data: bytes, peer_device: bytes | None) -> Reply:
        limit = self.settings.max_frame_bytes
        if len(data) > limit:
            return self._error("too_large", f"frame of {len(data)} bytes exceeds {limit} bytes")
        try:
            header = peek_header(data, max_size=limit)
        except ProtocolError as exc:
            return self._error(exc.code, str(exc))
        if not header.signed:
            return self._error("bad_signature", "uplink frames must be signed")
        if not self.keyring.knows(header.key_id):
            return self._error("unauthorized", f"key id {header.key_id} is not accepted by this server")
        device = header.device_id
        key = self.keyring.device_key(device, header.key_id)
        if not verify_frame(data, key, max_size=limit):
            return self._error("bad_signature", "authentication tag does not match the device key")
        # The tag covers the header: device, seq and timestamp are now authentic, so refusals are signed.
        sender = _Sender(key, device, header.key_id, header.seq)
        if peer_device is not None and device != peer_device:
            return self._error("unauthorized", "this connection belongs to another device (its X-Omega-Device "
                               "header or first frame)", sender)
        if self.draining:
            return self._error("unavailable", "server is shutting down", sender, retry_after=DRAIN_RETRY_S)
        now = self.now_ms()
        refusal = await self.admission.admit(device, header.seq, header.timestamp_ms, now, self._bucket_clock())
        if refusal is not None:
            return self._error(refusal.code, refusal.message, sender, retry_after=refusal.retry_after)
        cap = self._body_caps.get(header.kind)
        if cap is None:
            return self._error("malformed", f"unexpected {header.kind or 'empty'} frame here", sender)
        try:
            frame = decode_frame(data, key, expect=UPLINK, max_size=limit, max_body=cap)
        except ProtocolError as exc:
            return self._error(exc.code, str(exc), sender)
        await self.cache.add_device(device, now)
        body = frame.body
        tier = None
        compress = None
        if isinstance(body, Pull):
            # The page's body was serialised (and deflated) once for every device: only the header is ours.
            page = await self._pull(body)
            data = encode_prepared(device, frame.seq, self.now_ms(), frame.key_id, page, key)
            return Reply(200, data, device_id=device, kind="pull")
        if isinstance(body, Push):
            out, kind = await self._push(device, body, now), "push"
            if len(out.rejected) < 2:
                # A batch id, a count and at most one refusal: nothing repeats, so deflating it never pays
                # (70-90 bytes either way), and trying costs a zlib stream per push (~11 us of 20 to encode).
                compress = False
        else:
            assert isinstance(body, Heartbeat)
            out, kind = self._heartbeat(body, now), "heartbeat"
            compress = False  # three varints: deflating them never pays
            tier = body.tier.label if body.tier is not Tier.UNSPECIFIED else None
        reply = Frame(device_id=device, seq=frame.seq, timestamp_ms=self.now_ms(), body=out, key_id=frame.key_id)
        return Reply(200, encode_frame(reply, key, compress=compress), device_id=device, kind=kind, tier=tier)

    def _error(self, code: str, message: str, sender: _Sender | None = None, *, retry_after: int | None = None) -> Reply:
        if sender is None:
            body = encode_error_reply(code, message, retry_after_s=retry_after or 0)
            return Reply(STATUS.get(code, 400), body, retry_after, None, "error", code)
        frame = Frame(sender.device_id, sender.seq, self.now_ms(), ErrorBody(code, message, retry_after or 0), sender.key_id)
        return Reply(STATUS.get(code, 400), encode_frame(frame, sender.key), retry_after, sender.device_id, "error", code)

    # ------------------------------------------------------------------ push
    async def _push(self, device: bytes, push: Push, now: int) -> PushAck:
        rejected: list[tuple[int, str]] = []
        contributions: list[Contribution] = []
        pattern_at: list[int] = []
        version = self.codebook_version
        for i, p in enumerate(push.patterns):
            if p.uses < self.settings.min_samples:
                rejected.append((i, TOO_FEW_SAMPLES))
                continue
            hint = p.cell if p.cell is not None and p.codebook_version == version else None
            contributions.append(
                Contribution(p.embedding.dequantize(), p.success_rate, p.uses, p.successes, int(p.task_type), hint)
            )
            pattern_at.append(i)
        edges: list[EdgeIn] = []
        edge_at: list[int] = []
        base = len(push.patterns)
        batch = push.transitions
        if batch is not None:
            if batch.keyspace is Keyspace.CELL and batch.codebook_version != version:
                rejected += [(base + j, STALE_CODEBOOK) for j in range(len(batch.edges))]
            else:
                for j, e in enumerate(batch.edges):
                    edges.append(EdgeIn(int(batch.keyspace), e.src, e.dst, e.weight))
                    edge_at.append(base + j)
        if push.cowatch is not None:  # their own keyspace: counted per pair, never served (aggregation)
            base += len(batch.edges) if batch is not None else 0
            cowatch = int(Keyspace.COWATCH)
            for j, e in enumerate(push.cowatch.edges):
                edges.append(EdgeIn(cowatch, e.src, e.dst, e.weight))
                edge_at.append(base + j)
        slot = (device, push.batch_id)
        started = time.perf_counter()
        result = await self.aggregator.apply(device, push.batch_id, contributions, edges, now)
        self._m_apply.observe(time.perf_counter() - started)
        if result.duplicate:
            previous = self._acks.get(slot)
            if previous is not None:
                return replace(previous, duplicate=True)
            # Applied before this process's memory of acks (a restart): the deterministic part only.
            return PushAck(push.batch_id, 0, tuple(Rejection(i, r) for i, r in sorted(rejected)), duplicate=True)
        for r in result.rejections:
            rejected.append((pattern_at[r.index] if r.kind == "pattern" else edge_at[r.index], r.reason))
        rejected.sort()
        for _, reason in rejected:
            self._rejected(reason)
        self.head = await self.cache.note_head(result.cursor)
        self.metrics.aggregation_lag.set(max(0.0, (self.now_ms() - now) / 1000.0))
        ack = PushAck(push.batch_id, accepted=result.accepted, rejected=tuple(Rejection(i, r) for i, r in rejected))
        self._acks[slot] = ack
        if len(self._acks) > self._ack_entries:
            self._acks.popitem(last=False)
        return ack

    # ------------------------------------------------------------------ pull
    async def _pull(self, pull: Pull) -> PreparedBody:
        """The page for `pull`, serialised (and deflated when that is smaller) once, shared by every device."""
        budget = max(MIN_PULL_BYTES, min(pull.max_bytes, self.settings.pull_max_bytes))
        found = self.refined.page(pull.refined_since, budget - 64)
        if found is not None:  # a TV behind on the refined release gets it first, then the changes
            return prepare_body(self.page_builder.refined(pull.since, found[0], found[1]))
        head = self._pull_head()
        reset = self.aggregator.resets(pull.since)
        if pull.since >= head and head > 0 and not reset:
            # Already at the newest change this worker serves: nothing to read. (Another worker's
            # newer pushes, or this one's within the snapshot interval, show up once the served head
            # moves: a delay, never a skip. A cursor past it came from a page read after it.)
            return prepare_body(PullReply(cursor=pull.since, more=False), compress=False)
        # One lookup (and, on a miss, one read of the store) per page at a time: TVs that pull the same
        # page while it is being read wait for that read instead of starting their own. Without this, every
        # pull arriving before the first one's read finished read the same changes again; under load the
        # reads queue, so the later a read finishes the more copies of it are queued behind it.
        key = (head, pull.since, budget, reset)
        building = self._building.get(key)
        if building is None:
            building = self._building[key] = asyncio.ensure_future(self._page(head, pull.since, budget, reset))
            building.add_done_callback(lambda task: self._page_done(key, task))
        # shield: a caller that goes away (its connection closed) does not cancel the read the others wait for
        return await asyncio.shield(building)

    def _page_done(self, key: tuple[int, int, int, bool], task: asyncio.Future[PreparedBody]) -> None:
        if self._building.get(key) is task:
            del self._building[key]
        if not task.cancelled():
            task.exception()  # retrieved: a failed read is each waiter's error (answered as internal), not a log line

    async def _page(self, head: int, since: int, budget: int, reset: bool) -> PreparedBody:
        blob = await self.cache.get_page(head, since, budget)
        if blob is not None:
            known = self._pages.get(blob)
            if known is not None:  # byte-identical to a page this process signed or verified
                return known
            try:
                cached = decode_frame(blob, self._page_key, expect=(PullReply,), max_size=1 << 20)
            except ProtocolError:
                log.warning("ignoring a corrupt cached pull page")
            else:
                return self._remember_page(blob, cached.body)  # type: ignore[arg-type]
        started = time.perf_counter()
        items, cursor, more = await self.aggregator.changes_since(since, budget - 64)
        self._m_changes.observe(time.perf_counter() - started)
        reply, blob = self.page_builder.build(items, cursor, more, budget, reset=reset)
        if cursor > self.head and not more:
            self.head = await self.cache.note_head(cursor)
        await self.cache.put_page(head, since, budget, blob)
        return self._remember_page(blob, reply)

    def _pull_head(self) -> int:
        """The head pulls are served at: the live head, or a snapshot of it at most pull_snapshot_s old."""
        interval = self.settings.pull_snapshot_s
        if interval <= 0:
            return self.head
        now = time.monotonic()
        if now - self._served_at >= interval or self._served_head > self.head:
            self._served_head, self._served_at = self.head, now
        return self._served_head

    def _remember_page(self, blob: bytes, reply: PullReply) -> PreparedBody:
        # Serialised and deflated (when smaller: the codec's rule) once per page; per device only the
        # header fields are encoded and the frame signed.
        pages = self._pages
        pages[blob] = prepared = prepare_body(reply)
        if len(pages) > self._page_entries:
            pages.popitem(last=False)
        return prepared

    def page(self, items: list, cursor: int, more: bool, budget: int) -> PullReply:
        """A PullReply of `items` whose signed frame fits `budget` (see `PageBuilder.page`)."""
        return self.page_builder.build(items, cursor, more, budget)[0]

    # ------------------------------------------------------------------ heartbeat
    def _heartbeat(self, hb: Heartbeat, now: int) -> HeartbeatAck:
        return HeartbeatAck(server_time_ms=now, next_sync_s=self._next_sync.get(hb.tier, 0))

    # ------------------------------------------------------------------ housekeeping
    async def prune(self) -> PruneStats:
        """Expire what left the contribution window by now and move the served head past the changes that
        made: the store's part of `housekeeping`, without its gauges' counts (a simulation runs it on its
        own clock, once per epoch)."""
        pruned = await self.aggregator.prune(self.now_ms())
        if pruned.keys:
            self.head = await self.cache.note_head(pruned.head)
        return pruned

    async def housekeeping(self) -> None:
        """Prune idempotency keys and epoch marks, sweep in-process windows, refresh gauges."""
        now = self.now_ms()
        started = time.perf_counter()
        await self.aggregator.prune(now)
        self.metrics.store_latency.labels("prune").observe(time.perf_counter() - started)
        self.admission.sweep(now, self._bucket_clock())
        started = time.perf_counter()
        stats = await self.aggregator.store.stats()
        self.metrics.store_latency.labels("stats").observe(time.perf_counter() - started)
        self.metrics.consolidated.set(stats.cells)
        # Under DP TVs pull the day's release: a new day's is served from here on, without waiting for a push.
        release = await self.aggregator.release_head()
        self.head = await self.cache.note_head(stats.head if release is None else release)
