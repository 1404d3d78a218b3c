"""A tiny real protocol peer for the sync agent's transport tests (no tests of its own).

It speaks the wire protocol with the real codec over real sockets (uvicorn in a
thread: HTTP POST /v1/sync and WebSocket /v1/ws), keeps the contract's rules
that matter to a TV (batch dedupe, replay by seq, paged pulls by cursor) and
can be told to misbehave: drop the connection mid-reply, answer slowly, 429 /
503 with Retry-After (signed, as the real server's), unsigned or signed error
replies, hints of absurd size, and replays of replies it sent earlier.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import uvicorn

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
    Transition,
    TransitionBatch,
    decode_frame,
    derive_device_key,
    encode_error_reply,
    encode_frame,
    format_token,
    now_ms,
    peek_frame,
)

SECRET = b"peer-secret-0123456789abcdef-xyz"
KEY_ID = 7


def token_for(device_id: bytes) -> str:
    return format_token(KEY_ID, derive_device_key(SECRET, device_id, KEY_ID))


@dataclass
class Peer:
    """State and behaviour of the peer. Faults are consumed one per uplink frame, in order."""

    changes: list[ConsolidatedPattern] = field(default_factory=list)
    edges: list[Transition] = field(default_factory=list)
    page_size: int = 2
    #: A pull from this cursor is answered with a snapshot from the start, flagged reset (PullReply.reset).
    reset_since: int | None = None
    next_sync_s: int = 0
    heartbeat_retry_after_s: int = 0
    faults: deque = field(default_factory=deque)
    acks: dict[bytes, PushAck] = field(default_factory=dict)
    received_batches: list[bytes] = field(default_factory=list)
    accepted: dict[tuple[bytes, int], int] = field(default_factory=dict)
    edge_weight: dict[tuple[int, int], float] = field(default_factory=dict)
    seqs: dict[bytes, int] = field(default_factory=dict)
    kinds: list[str] = field(default_factory=list)
    ws_connections: int = 0
    #: ("http" | "websocket", the X-Omega-Device header's values) of every request and WebSocket upgrade.
    device_headers: list[tuple[str, list[bytes]]] = field(default_factory=list)
    #: The peer's clock (ms), e.g. a test's simulated one.
    clock_ms: Callable[[], int] = now_ms
    #: (time ms, outbox, patterns) of every heartbeat received.
    heartbeats: list[tuple[int, int, int]] = field(default_factory=list)
    #: Every signed reply sent, by kind of the uplink frame it answered (and "invalid"), for replaying.
    sent: dict[str, list[bytes]] = field(default_factory=dict)

    # ------------------------------------------------------------------ protocol

    def _page(self, since: int) -> PullReply:
        reset = since == self.reset_since
        if reset:
            since = 0
        rest = self.changes[since:]
        page = rest[: self.page_size]
        cursor = since + len(page)
        transitions = None
        if since == 0 and self.edges:
            transitions = TransitionBatch(Keyspace.ITEM, tuple(self.edges))
        return PullReply(cursor=cursor, more=cursor < len(self.changes), patterns=tuple(page), transitions=transitions,
                         reset=reset)  # fmt: skip

    def answer(self, data: bytes, fault: object = None) -> tuple[int, bytes, int]:
        """(HTTP status, reply frame, retry-after seconds) for one uplink frame."""
        try:
            header = peek_frame(data)
        except ProtocolError as exc:
            return 400, encode_error_reply(exc.code, str(exc)), 0
        key = derive_device_key(SECRET, header.device_id, header.key_id)
        try:
            frame = decode_frame(data, key, expect=UPLINK)
        except ProtocolError as exc:
            return (401 if exc.code == "bad_signature" else 400), encode_error_reply(exc.code, str(exc)), 0
        self.kinds.append(frame.kind)
        if isinstance(frame.body, Push):
            self.received_batches.append(frame.body.batch_id)

        def signed(body, kind: str | None = None) -> bytes:
            stamp = self.clock_ms() - 3_600_000 if fault == "stale-ts" else self.clock_ms()
            out = encode_frame(Frame(frame.device_id, frame.seq, stamp, body, key_id=frame.key_id), key)
            self.sent.setdefault(kind or frame.kind, []).append(out)
            return out

        if isinstance(fault, str) and fault.startswith("replay:"):  # a captured reply, sent again
            return 200, self.sent[fault.split(":", 1)[1]][0], 0
        if fault in ("429", "503"):  # the real server signs these (the tag verified before it refuses)
            code, status = ("rate_limited", 429) if fault == "429" else ("unavailable", 503)
            return status, signed(ErrorReply(code, "try later", 3), "error"), 3
        if fault == "429-unsigned":
            return 429, encode_error_reply("rate_limited", "try later", retry_after_s=3), 3
        if fault == "huge-unsigned":  # e.g. forged on the path: 2^32-1 s in the frame, ~31 years in the header
            return 503, encode_error_reply("unavailable", "go away", retry_after_s=2**32 - 1), 999_999_999
        if fault == "huge-signed":
            return 503, signed(ErrorReply("unavailable", "go away", 2**32 - 1), "error"), 999_999_999
        if fault == "unsigned":
            return 400, encode_error_reply("malformed", "unsigned refusal"), 0
        if fault == "invalid":
            return 200, signed(ErrorReply("invalid_pattern", "bad vector"), "invalid"), 0
        if frame.seq <= self.seqs.get(frame.device_id, 0):
            return 200, signed(ErrorReply("replay", f"seq {frame.seq} seen")), 0
        self.seqs[frame.device_id] = frame.seq
        body = frame.body
        if isinstance(body, Push):
            ack = self.acks.get(body.batch_id)
            if ack is not None:
                return 200, signed(replace(ack, duplicate=True)), 0
            for p in body.patterns:
                self.accepted[(p.id, p.version)] = self.accepted.get((p.id, p.version), 0) + 1
            if body.transitions is not None:
                for e in body.transitions.edges:
                    self.edge_weight[(e.src, e.dst)] = self.edge_weight.get((e.src, e.dst), 0.0) + e.weight
            ack = PushAck(body.batch_id, accepted=len(body.patterns))
            self.acks[body.batch_id] = ack
            return 200, signed(ack), 0
        if isinstance(body, Pull):
            return 200, signed(self._page(body.since)), 0
        assert isinstance(body, Heartbeat)
        self.heartbeats.append((frame.timestamp_ms, body.outbox, body.patterns))
        ack = HeartbeatAck(server_time_ms=self.clock_ms(), next_sync_s=self.next_sync_s, retry_after_s=self.heartbeat_retry_after_s)
        return 200, signed(ack), 0

    # ------------------------------------------------------------------ ASGI

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            return
        self.device_headers.append((scope["type"], [v for k, v in scope["headers"] if k == b"x-omega-device"]))
        if scope["type"] == "http":
            data = b""
            while True:
                msg = await receive()
                data += msg.get("body", b"")
                if not msg.get("more_body"):
                    break
            fault = self.faults.popleft() if self.faults else None
            if fault == "slow":
                await asyncio.sleep(1.5)
            status, reply, retry = self.answer(data, fault)
            if fault == "hang":  # applied, but the reply never comes
                await asyncio.sleep(60)
            headers = [(b"content-type", b"application/octet-stream"), (b"content-length", str(len(reply)).encode())]
            if retry:
                headers.append((b"retry-after", str(retry).encode()))
            await send({"type": "http.response.start", "status": status, "headers": headers})
            # "drop": the server applied the frame but the connection dies mid-reply.
            await send({"type": "http.response.body", "body": reply[: len(reply) // 2] if fault == "drop" else reply})
            return
        assert scope["type"] == "websocket"
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        self.ws_connections += 1
        while True:
            msg = await receive()
            if msg["type"] == "websocket.disconnect":
                return
            fault = self.faults.popleft() if self.faults else None
            if fault == "slow":
                await asyncio.sleep(1.5)
            status, reply, _ = self.answer(msg.get("bytes") or b"", fault)
            if fault == "drop":
                await send({"type": "websocket.send", "bytes": reply[: len(reply) // 2]})
                await send({"type": "websocket.close", "code": 1011})
                return
            await send({"type": "websocket.send", "bytes": reply})
            if fault == "going_away":
                await send({"type": "websocket.close", "code": 1001})
                return


class InProcessPeer:
    """The peer without sockets: each frame goes straight to `Peer.answer` (a transport for the agent)."""

    def __init__(self, peer: Peer) -> None:
        self.peer = peer

    async def exchange(self, data: bytes):  # noqa: ANN201  (transport.Reply)
        from omega.brain.sync.transport import Reply

        fault = self.peer.faults.popleft() if self.peer.faults else None
        status, reply, retry = self.peer.answer(data, fault)
        return Reply(reply, status, float(retry))

    async def close(self) -> None:
        pass


class RunningPeer:
    """The peer served by uvicorn on an ephemeral loopback port, in a background thread."""

    def __init__(self, peer: Peer, *, tls_cert: str | None = None, tls_key: str | None = None) -> None:
        self.peer = peer
        self.scheme = "https" if tls_cert else "http"
        config = uvicorn.Config(
            peer, host="127.0.0.1", port=0, http="h11", ws="websockets-sansio", ws_per_message_deflate=False,
            lifespan="off", log_level="critical", timeout_graceful_shutdown=2,
            ssl_certfile=tls_cert, ssl_keyfile=tls_key,
        )  # fmt: skip
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> RunningPeer:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("test peer did not start")
            time.sleep(0.01)
        return self

    @property
    def url(self) -> str:
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"{self.scheme}://127.0.0.1:{port}"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
