"""An in-process constellation for the fleet simulator: real codec, real auth, real Aggregator, no sockets.

`LocalConstellation.handle(frame bytes) -> reply bytes` does what the sync
server does with one uplink frame: read who sent it, derive that device's key
from the server secret, verify and decode the frame, apply a Push to the
Aggregator (SQLite store), answer a Pull with a page of published deltas and a
Heartbeat with the server time — and sign the reply. `InProcessTransport` is
a `omega.brain.sync` transport that hands the bytes of a real `SyncAgent` to
it, recording every frame in a `WireTap` so tests can audit what left a TV.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from omega.brain.sync.transport import Reply
from omega.constellation.aggregation import Aggregator, Contribution
from omega.constellation.crdt import ConsolidatedEdge
from omega.constellation.crdt import ConsolidatedPattern as CellPattern
from omega.protocol import (
    UPLINK,
    ConsolidatedPattern,
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
    Rejection,
    TaskType,
    Transition,
    TransitionBatch,
    decode_frame,
    derive_device_key,
    encode_error_reply,
    encode_frame,
    format_token,
    peek_frame,
    quantize,
)

#: Bits of consolidated embeddings in pull replies (the TV's ReasoningBank needs no more).
REPLY_EMBEDDING_BITS = 8
#: Budget of one pull page; the store's size estimates run a little under the real frame.
MAX_PULL_PAGE_BYTES = 12_000


@dataclass
class WireTap:
    """Every frame that crossed the in-process wire, as bytes, per direction."""

    uplink: list[tuple[bytes, bytes]] = field(default_factory=list)  # (device id, frame)
    downlink: list[tuple[bytes, bytes]] = field(default_factory=list)

    def uplink_bytes(self, device_id: bytes) -> list[int]:
        return [len(data) for dev, data in self.uplink if dev == device_id]


class LocalConstellation:
    """One shard's sync endpoint, in process (see module docstring)."""

    def __init__(self, aggregator: Aggregator, secret: bytes, *, clock: Callable[[], float]) -> None:
        self.aggregator = aggregator
        self._secret = secret
        self._clock = clock
        self.pushes = 0
        self.rejected_transitions = 0

    def token_for(self, device_id: bytes, key_id: int = 1) -> str:
        """The device token the server would issue (`omega device token`)."""
        return format_token(key_id, derive_device_key(self._secret, device_id, key_id))

    async def handle(self, data: bytes) -> bytes:
        try:
            header = peek_frame(data)
            key = derive_device_key(self._secret, header.device_id, header.key_id)
            frame = decode_frame(data, key, expect=UPLINK)
        except ProtocolError as exc:
            return encode_error_reply(exc.code, str(exc))
        body = await self._answer(frame)
        reply = Frame(device_id=frame.device_id, seq=frame.seq, timestamp_ms=self._now_ms(), key_id=frame.key_id, body=body)
        return encode_frame(reply, key)

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    async def _answer(self, frame: Frame) -> PushAck | PullReply | HeartbeatAck | ErrorReply:
        body = frame.body
        if isinstance(body, Push):
            return await self._push(frame.device_id, body, frame.timestamp_ms)
        if isinstance(body, Pull):
            return await self._pull(body)
        assert isinstance(body, Heartbeat)
        return HeartbeatAck(server_time_ms=self._now_ms())

    async def _push(self, device_id: bytes, push: Push, timestamp_ms: int) -> PushAck:
        patterns = [
            Contribution(
                embedding=p.embedding.dequantize(), success_rate=p.success_rate, uses=p.uses,
                successes=p.successes, task_type=int(p.task_type), cell_hint=p.cell,
            )  # fmt: skip
            for p in push.patterns
        ]
        edges = []
        if push.transitions is not None:
            keyspace = int(push.transitions.keyspace)
            edges = [(keyspace, e.src, e.dst, e.weight) for e in push.transitions.edges]
        result = await self.aggregator.apply(device_id, push.batch_id, patterns, edges, timestamp_ms)
        self.pushes += 1
        self.rejected_transitions += sum(r.kind == "transition" for r in result.rejections)
        return PushAck(
            batch_id=push.batch_id,
            accepted=result.accepted,
            rejected=tuple(Rejection(r.index, r.reason) for r in result.rejections if r.kind == "pattern"),
            duplicate=result.duplicate,
        )

    async def _pull(self, pull: Pull) -> PullReply:
        budget = min(pull.max_bytes, MAX_PULL_PAGE_BYTES)
        items, cursor, more = await self.aggregator.changes_since(pull.since, max_bytes=budget)
        patterns = [
            ConsolidatedPattern(
                cluster_id=p.cluster_id, version=min(p.version, (1 << 32) - 1),
                embedding=quantize(p.embedding, REPLY_EMBEDDING_BITS), task_type=TaskType(p.task_type),
                success_rate=min(1.0, max(0.0, p.success_rate)), support=p.support, trend_score=p.trend_score,
            )  # fmt: skip
            for p in items
            if isinstance(p, CellPattern)
        ]
        # One keyspace per batch: TVs push item-keyed edges, so only those are served here.
        edges = [
            Transition(e.src, e.dst, e.weight, e.support)
            for e in items
            if isinstance(e, ConsolidatedEdge) and e.keyspace == Keyspace.ITEM
        ]
        batch = TransitionBatch(Keyspace.ITEM, tuple(edges)) if edges else None
        return PullReply(cursor=cursor, more=more, patterns=tuple(patterns), transitions=batch)


class InProcessTransport:
    """A sync transport that delivers frames to a `LocalConstellation` in the same process, tapping them."""

    def __init__(self, server: LocalConstellation, device_id: bytes, tap: WireTap | None = None) -> None:
        self.server = server
        self.device_id = device_id
        self.tap = tap

    async def exchange(self, data: bytes) -> Reply:
        if self.tap is not None:
            self.tap.uplink.append((self.device_id, data))
        reply = await self.server.handle(data)
        if self.tap is not None:
            self.tap.downlink.append((self.device_id, reply))
        return Reply(reply)

    async def close(self) -> None:
        return None
