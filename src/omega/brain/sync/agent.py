"""`SyncAgent`: push sealed patterns, pull consolidated deltas, heartbeat — over the tier's transport.

One sync: (1) when the contribution schedule says so (`omega.brain.sync.schedule`:
once a day at a random moment, never right after a viewing), seal what was
learned into new outbox batches (<= 10 patterns); send what waits in the outbox,
oldest first; (2) pull pages since the persisted cursor,
merging each page and advancing the cursor in ONE transaction; (3) heartbeat.
Every frame gets a seq committed to SQLite before it is sent. A reply is
trusted only when it verifies under the device key AND answers this very frame
(its seq, and a timestamp within `reply_skew_s` of the request's): a captured
reply replayed later is refused. An unsigned ErrorReply can only make the agent
back off, and never for longer than its normal backoff; signed hints are
obeyed up to the tier's `max_hint_s` (at most an hour). Outbox batches are
retired before the cloud's idempotency window ends (`Outbox.expire`). A pulled
item this TV cannot store (a cluster id beyond int64) is skipped with one line
in the report; the rest of the page is merged and the cursor moves on, so it
never blocks later pulls. Transport failures — and the TV's own store
refusing a write, e.g. a full disk — raise `SyncFailed` and leave the outbox
and cursor exactly as they were.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable

from omega.brain.config import BrainConfig
from omega.brain.records import ConsolidatedRecord, TransitionStat
from omega.brain.store import BrainStore, is_bad_data
from omega.brain.sync import state
from omega.brain.sync.config import SyncConfig
from omega.brain.sync.outbox import Outbox, SealedBatch
from omega.brain.sync.report import SyncFailed, SyncReport
from omega.brain.sync.schedule import ContributionSchedule
from omega.brain.sync.tiers import TierPolicy, TransportKind, policy_for
from omega.brain.sync.transport import Transport, TransportError, check_server_url, open_transport
from omega.errors import OmegaError
from omega.protocol import (
    DOWNLINK,
    REFINED_WANTED,
    Body,
    ErrorReply,
    Frame,
    Heartbeat,
    HeartbeatAck,
    Keyspace,
    ProtocolError,
    Pull,
    PullReply,
    Push,
    PushAck,
    Tier,
    decode_frame,
    encode_frame,
    refined_release_of,
)

log = logging.getLogger("omega.brain.sync")

_U32 = (1 << 32) - 1
#: The largest id the TV's SQLite (int64) can store.
_MAX_STORABLE_ID = (1 << 63) - 1
def _to_record(p) -> ConsolidatedRecord:  # protocol ConsolidatedPattern -> ReasoningBank record
    return ConsolidatedRecord(
        cluster_id=p.cluster_id,
        embedding=p.embedding.dequantize(),
        task_type=int(p.task_type),
        success_rate=p.success_rate,
        support=p.support,
        trend_score=p.trend_score,
        version=p.version,
    )


class SyncAgent:
    """The TV's sync agent (see module docstring). `sync_once()` for one sync, `run(stop)` as a daemon."""

    def __init__(
        self,
        store_or_brain: object,
        *,
        server_url: str,
        device_id: bytes,
        token: str,
        tier: Tier = Tier.ACTIVE,
        config: SyncConfig | None = None,
        policy: TierPolicy | None = None,
        brain_config: BrainConfig | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        transport: Transport | None = None,
        ca_file: str | None = None,
        insecure: bool = False,
        new_batch_id: Callable[[], bytes] | None = None,
    ) -> None:
        if isinstance(store_or_brain, BrainStore):
            self._brain = None
            self.store = store_or_brain
        elif isinstance(getattr(store_or_brain, "store", None), BrainStore) and hasattr(store_or_brain, "apply_consolidated"):
            self._brain = store_or_brain
            self.store = store_or_brain.store  # type: ignore[attr-defined]
            brain_config = brain_config or getattr(store_or_brain, "config", None)
        else:
            raise OmegaError(f"SyncAgent needs a Brain or a BrainStore, got {type(store_or_brain).__name__}")
        if not isinstance(device_id, bytes) or len(device_id) != 16:
            raise OmegaError("device id must be 16 bytes")
        self.device_id = device_id
        self.key_id, self._key = state.check_token(token)
        self.tier = Tier(tier)
        self.policy = policy or policy_for(self.tier)
        self.config = config or SyncConfig()
        thresholds = brain_config or BrainConfig()
        self._pull_refined = thresholds.pull_refined
        self._clock = clock
        self._rng = rng or random.Random()
        self.outbox = Outbox(
            self.store,
            self.config,
            min_success=thresholds.high_quality_success,
            min_uses=thresholds.high_quality_min_uses,
            clock=clock,
            **({"new_batch_id": new_batch_id} if new_batch_id is not None else {}),  # default: os.urandom
        )
        check_server_url(server_url, insecure=insecure)  # also when a transport is given: one rule for the URL
        self.schedule = ContributionSchedule(
            self.store, self.config.contribution_period_s, clock=clock, rng=self._rng
        )
        self.transport: Transport = transport or open_transport(
            self.policy, server_url, timeout_s=self.config.request_timeout_s, ca_file=ca_file, insecure=insecure,
            device_id=device_id,
        )
        self.server_url = server_url

    # ------------------------------------------------------------------ one frame

    async def _exchange(self, body: Body, report: SyncReport) -> tuple[Frame, int, int]:
        """Send one uplink frame, return the verified downlink frame and (bytes up, bytes down)."""
        seq = state.allocate_seq(self.store)  # committed before sending: never reused
        frame = Frame(
            device_id=self.device_id, seq=seq, timestamp_ms=int(self._clock() * 1000), key_id=self.key_id, body=body
        )
        data = encode_frame(frame, self._key)
        report.bytes_up += len(data)
        try:
            reply = await self.transport.exchange(data)
        except TransportError as exc:
            code = "tls" if exc.tls else "transport"
            raise SyncFailed(str(exc), code=code, retry_after_s=exc.retry_after_s, report=report) from None
        report.bytes_down += len(reply.data)
        try:
            answer = decode_frame(reply.data, self._key, expect=DOWNLINK)
        except ProtocolError as exc:
            raise SyncFailed(
                f"unusable reply from the server (HTTP {reply.status}): {exc}",
                code="bad_reply",  # not the server refusing us: a reply we cannot trust or read
                retry_after_s=reply.retry_after_s,
                report=report,
            ) from None
        if answer.authenticated:
            self._check_reply(frame, answer, report)
        if isinstance(answer.body, ErrorReply):
            err = answer.body
            # Signed, the body's hint is the server's; unsigned, neither it nor the HTTP header proves anything.
            signed = answer.authenticated
            retry = float(err.retry_after_s) if signed else max(float(err.retry_after_s), reply.retry_after_s)
            # Unsigned, it proves nothing: only back off. Signed, only a push's invalid_pattern is an answer.
            if not signed or not (isinstance(body, Push) and err.code == "invalid_pattern"):
                why = f" (unsigned {err.code}: {err.message})" if not signed else f": {err.code}: {err.message}"
                raise SyncFailed(
                    f"server refused the {frame.kind}{why}", code=err.code, retry_after_s=retry, report=report, signed=signed
                )
        return answer, len(data), len(reply.data)

    def _check_reply(self, request: Frame, answer: Frame, report: SyncReport) -> None:
        """A signed reply must answer THIS request: same device, same seq, a timestamp near the request's.

        Seqs are never reused, so a captured reply replayed later (a signed invalid_pattern that would
        drop a batch, an old PullReply that would roll the cursor back) names another seq and is refused.
        """
        if answer.device_id != self.device_id:
            raise SyncFailed("the server answered for another device", code="malformed", report=report)
        if answer.seq != request.seq:
            raise SyncFailed(
                f"refused a reply for seq {answer.seq} to request seq {request.seq} (stale or replayed)",
                code="bad_reply", report=report,
            )  # fmt: skip
        skew_ms = int(self.config.reply_skew_s * 1000)
        now_ms = int(self._clock() * 1000)
        if not request.timestamp_ms - skew_ms <= answer.timestamp_ms <= max(now_ms, request.timestamp_ms) + skew_ms:
            off = (answer.timestamp_ms - request.timestamp_ms) / 1000
            raise SyncFailed(
                f"refused a reply stamped {off:+.0f} s from its request (allowed +-{self.config.reply_skew_s:g} s; stale or replayed)",
                code="bad_reply", report=report,
            )  # fmt: skip

    # ------------------------------------------------------------------ push

    async def _send_batch(self, batch: SealedBatch, report: SyncReport) -> None:
        self.outbox.record_attempt(batch.batch_id)  # before sending: once out, the cloud may have applied it
        try:
            answer, up, _ = await self._exchange(batch.push, report)
        except SyncFailed as exc:
            self.outbox.record_error(batch.batch_id, f"{exc.code}: {exc}"[:200])
            raise
        report.push_bytes += up
        body = answer.body
        if isinstance(body, ErrorReply):  # signed invalid_pattern: the whole batch is bad; resending won't help
            self.outbox.acknowledge(batch.batch_id)
            report.rejected_patterns += batch.patterns
            report.errors.append(f"batch {batch.batch_id.hex()} rejected: {body.code}: {body.message}")
            log.warning("push %s rejected as %s: %s", batch.batch_id.hex(), body.code, body.message)
            return
        if not isinstance(body, PushAck) or body.batch_id != batch.batch_id:
            self.outbox.record_error(batch.batch_id, "reply was not this batch's ack")
            raise SyncFailed(f"server answered a push with {answer.kind}, not its ack", code="malformed", report=report)
        self.outbox.acknowledge(batch.batch_id)
        report.batches_acked += 1
        report.pushed_patterns += batch.patterns
        report.pushed_edges += batch.edges
        if body.duplicate:
            report.duplicates += 1
        if body.rejected:
            report.rejected_patterns += len(body.rejected)
            reasons = ", ".join(f"#{r.index}: {r.reason}" for r in body.rejected)
            report.errors.append(f"batch {batch.batch_id.hex()}: {len(body.rejected)} pattern(s) rejected ({reasons})")
            log.warning("push %s: rejected %s", batch.batch_id.hex(), reasons)

    async def _push(self, report: SyncReport) -> None:
        """Seal this window's contribution when it is due, then send what waits in the outbox, oldest first."""
        renewed, expired = self.outbox.expire()
        report.batches_renewed += renewed
        report.batches_expired += expired
        if expired:
            report.errors.append(f"{expired} outbox batch(es) expired unacknowledged before the cloud's idempotency window ended")
        if self.schedule.due():
            self._seal_contribution()
            report.contributed = True
        for batch in self.outbox.pending()[: self.config.max_batches_per_sync]:
            await self._send_batch(batch, report)

    def _seal_contribution(self) -> None:
        """Seal what was learned, all at this one moment: up to max_batches_per_sync pushes of <= 10 patterns."""
        budget = self.config.max_patterns_per_sync
        for _ in range(self.config.max_batches_per_sync):
            if budget <= 0 or (batch := self.outbox.seal(max_patterns=budget)) is None:
                break
            budget -= batch.patterns
            if batch.patterns == 0:  # transitions only: what remains waits for the next contribution
                break
        self.schedule.contributed()

    # ------------------------------------------------------------------ pull

    def _merge(self, reply: PullReply, report: SyncReport) -> None:
        patterns: list[ConsolidatedRecord] = []
        unusable: list[str] = []
        for p in reply.patterns:
            if p.cluster_id > _MAX_STORABLE_ID:
                unusable.append(f"cluster id {p.cluster_id} > 2^63-1")
                continue
            try:
                patterns.append(_to_record(p))
            except OmegaError as exc:
                unusable.append(f"cluster {p.cluster_id}: {exc}")
        if unusable:  # skipped, so that they never block the pulls after them
            report.skipped_items += len(unusable)
            report.errors.append(
                f"skipped {len(unusable)} pulled pattern(s) this TV cannot store (e.g. {unusable[0]})"
            )
            log.warning("skipped %d pulled pattern(s) this TV cannot store (e.g. %s)", len(unusable), unusable[0])
        transitions: list[TransitionStat] = []
        if reply.transitions is not None:
            if reply.transitions.keyspace is Keyspace.ITEM:
                transitions = [TransitionStat(e.src, e.dst, e.weight, e.support) for e in reply.transitions.edges]
            else:  # cell-keyed edges need the global codebook, which this brain does not hold
                report.errors.append(f"skipped {len(reply.transitions.edges)} codebook-cell transitions")
        pairs: list[TransitionStat] = []
        if reply.pairs is not None:
            pairs = [TransitionStat(e.src, e.dst, e.weight, e.support) for e in reply.pairs.edges]
        refined: list[TransitionStat] = []
        if reply.refined is not None:
            refined = [TransitionStat(e.src, e.dst, e.weight, 0) for e in reply.refined.edges]
        try:
            with self.store.transaction():
                if reply.refined is not None:
                    # A page of another release than the one held starts that release: the old one goes.
                    held = refined_release_of(state.refined_cursor(self.store))[0]
                    self.store.put_refined(refined, fresh=held != refined_release_of(reply.refined_cursor)[0])
                    state.set_refined_cursor(self.store, reply.refined_cursor)
                # reset: the server cannot name what left since this TV's cursor; the page starts a snapshot.
                self._merge_pulled(patterns, transitions, pairs, fresh=reply.reset)
                state.set_cursor(self.store, reply.cursor)
        except (OmegaError, OverflowError) as exc:  # the transaction rolled back: nothing of the page is kept
            if not is_bad_data(exc):
                # The TV's own store refused the write (disk full, I/O error): not the server's fault.
                raise SyncFailed(f"cannot merge a pulled page: local store: {exc}", code="local_store", report=report) from exc
            # A value this store refuses (a constraint): the page cannot be stored, now or ever. Skip it
            # (the cursor moves past it) so that it never blocks the pulls after it. A reset page still drops
            # what the TV held: past its cursor no removal will name what left.
            with self.store.transaction():
                if reply.reset:
                    self._merge_pulled([], [], [], fresh=True)
                state.set_cursor(self.store, reply.cursor)
                if reply.refined is not None:
                    state.set_refined_cursor(self.store, reply.refined_cursor)
            skipped = len(patterns) + len(transitions) + len(pairs) + len(refined)
            report.skipped_items += skipped
            report.errors.append(f"skipped a pulled page of {skipped} item(s) this TV cannot store: {exc}")
            log.warning("skipped a pulled page (cursor %d) this TV cannot store: %s", reply.cursor, exc)
            report.cursor = reply.cursor
            return
        report.pulled_patterns += len(patterns)
        report.pulled_edges += len(transitions) + len(pairs) + len(refined)
        report.cursor = reply.cursor

    def _merge_pulled(self, patterns: list, transitions: list, pairs: list, *, fresh: bool) -> None:
        """Store a pulled page (through the brain when there is one, so its caches follow); `fresh`: drop first
        every pattern, edge and pair pulled before."""
        if self._brain is not None:
            self._brain.apply_consolidated(patterns, transitions, pairs=pairs, fresh=fresh)  # type: ignore[attr-defined]
        else:
            self.store.merge_pulled(patterns, transitions, pairs, fresh=fresh)

    def _refined_since(self) -> int:
        """Where the refined pull stands; 0 (never sent refined pages) when this TV opted out of them."""
        if not self._pull_refined:
            return 0
        return state.refined_cursor(self.store) or REFINED_WANTED

    async def _pull(self, report: SyncReport) -> None:
        report.cursor = state.cursor(self.store)
        for _ in range(self.config.max_pull_pages):
            answer, _, down = await self._exchange(
                Pull(since=report.cursor, max_bytes=self.config.pull_max_bytes,
                     refined_since=self._refined_since()), report
            )
            if not isinstance(answer.body, PullReply):
                raise SyncFailed(f"server answered a pull with {answer.kind}", code="malformed", report=report)
            report.pull_bytes += down
            report.pull_pages += 1
            self._merge(answer.body, report)
            report.pull_more = answer.body.more
            if not answer.body.more:
                return

    # ------------------------------------------------------------------ heartbeat

    async def _heartbeat(self, report: SyncReport) -> None:
        # Both counters move only with contributions (sealed batches waiting, patterns at the last one),
        # never with a viewing: a live count would date each viewing to the sync after it.
        body = Heartbeat(
            tier=self.tier,
            outbox=min(self.outbox.pending_count(), _U32),
            patterns=min(self.schedule.reported_patterns(), _U32),
        )
        answer, up, _ = await self._exchange(body, report)
        if not isinstance(answer.body, HeartbeatAck):
            raise SyncFailed(f"server answered a heartbeat with {answer.kind}", code="malformed", report=report)
        report.heartbeat_bytes += up
        # Signed hints, obeyed up to the tier's limit (never more than an hour).
        report.next_sync_s = self.policy.clamp_hint(answer.body.next_sync_s)
        report.retry_after_s = self.policy.clamp_hint(answer.body.retry_after_s)

    # ------------------------------------------------------------------ one sync, and the daemon

    async def sync_once(self) -> SyncReport:
        """Push, pull, heartbeat. Raises SyncFailed (with the partial report) when the server is unusable."""
        report = SyncReport()
        started = time.monotonic()
        try:
            newest_episode = self.store.last_episode_id()  # a viewing after this is "since this sync"
            await self._push(report)
            await self._pull(report)
            await self._heartbeat(report)
            self.schedule.mark(newest_episode)
            report.next_contribution_at = self.schedule.next_at()
        except SyncFailed:
            await self.transport.close()  # a half-finished exchange leaves the connection out of step
            raise
        except OmegaError as exc:
            # The TV's own store refused a write (e.g. disk full): every transaction rolled back, so the
            # outbox and cursor are as they were. A SyncFailed lets the daemon back off and retry later.
            await self.transport.close()
            raise SyncFailed(f"local store: {exc}", code="local_store", report=report) from exc
        finally:
            report.duration_s = time.monotonic() - started
            report.outbox_pending = self.outbox.pending_count()
        if self.policy.transport is not TransportKind.WS_PERSISTENT:
            await self.transport.close()  # on-demand WebSocket / polling: nothing stays open
        return report

    async def run(
        self,
        stop: asyncio.Event,
        *,
        on_sync: Callable[[SyncReport | None, SyncFailed | None, float], None] | None = None,
        start_jitter: bool = True,
    ) -> None:
        """Sync by the tier's schedule until `stop` is set; back off (full jitter) on failures.

        on_sync(report, error, next_delay_s) is called after every attempt.
        """
        backoff = self.policy.backoff(self._rng)
        delay = self.policy.first_sync_delay(self._rng) if start_jitter else 0.0
        try:
            while not stop.is_set():
                if await self._idle(delay, stop):
                    break
                try:
                    report = await self.sync_once()
                except SyncFailed as exc:
                    delay = backoff.next_delay(
                        self._retry_pause(exc), trusted=exc.signed, max_pause_s=self.policy.max_hint_s
                    )
                    log.warning("sync failed (%s); retrying in %.1f s", exc, delay)
                    if on_sync is not None:
                        on_sync(exc.report, exc, delay)
                    continue
                backoff.reset()
                delay = self.policy.next_sync_delay(self._rng, report.next_sync_s)
                if report.retry_after_s > 0:
                    delay = max(delay, report.retry_after_s)
                if on_sync is not None:
                    on_sync(report, None, delay)
        finally:
            await self.close()

    def _retry_pause(self, exc: SyncFailed) -> float:
        """The least pause the server asked for before the next sync (the backoff adds jitter on top).

        The server's Retry-After for `rate_limited` is the wait for ONE frame (its token bucket refills
        one token in that time), but the retry is a whole new sync: the pushes still in the outbox, a
        pull and a heartbeat. Waiting retry_after x those frames lets the bucket refill enough for the
        whole sync, instead of being refused again at the next frame. Other refusals (e.g. a draining
        server's `unavailable`) are about the server, not our budget, and keep the hint as given.
        """
        if exc.code != "rate_limited" or exc.retry_after_s <= 0:
            return exc.retry_after_s
        pushes = self.outbox.pending_count() + (1 if self.outbox.queued_patterns() else 0)
        frames = min(pushes, self.config.max_batches_per_sync) + 2  # + at least one pull page and the heartbeat
        return exc.retry_after_s * frames

    async def _idle(self, delay: float, stop: asyncio.Event) -> bool:
        """Wait `delay` seconds; True if stopped. A persistent connection that drops cuts the wait short."""
        waits = [asyncio.ensure_future(stop.wait())]
        transport = self.transport
        if self.policy.transport is TransportKind.WS_PERSISTENT:
            # only this tier's agent imports it: a polling TV never loads websockets (see transport.py)
            from omega.brain.sync.ws_transport import WebSocketTransport

            if isinstance(transport, WebSocketTransport) and transport.is_open:
                waits.append(asyncio.ensure_future(transport.wait_closed()))
        try:
            await asyncio.wait(waits, timeout=max(0.0, delay), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
        return stop.is_set()

    async def close(self) -> None:
        await self.transport.close()
