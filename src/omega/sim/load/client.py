"""A simulated TV on the wire: its own device id, key, seq and pull cursor, and the frames it sends.

Shared by `omega bench sync` and `omega load`. Traffic is what a TV's sync
agent sends: pushes of 1–3 embedding patterns (4-bit) plus ~10 item
transitions, delta pulls from the device's own committed cursor, heartbeats
naming its tier. Replies are verified with the device key.
"""

from __future__ import annotations

import random
import secrets
from dataclasses import dataclass, field

from omega.protocol import (
    DEVICE_HEADER,
    DOWNLINK,
    EMBEDDING_DIM,
    Body,
    EmbeddingPattern,
    ErrorReply,
    Frame,
    Heartbeat,
    HeartbeatAck,
    Keyspace,
    Pull,
    PullReply,
    Push,
    PushAck,
    TaskType,
    Tier,
    Transition,
    TransitionBatch,
    decode_frame,
    derive_device_key,
    device_header_value,
    encode_frame,
    now_ms,
    quantize,
)

#: Bodies a device sends, by the name the statistics use.
KINDS = ("push", "pull", "heartbeat")


@dataclass
class ReplyTally:
    """What the replies said, summed over devices."""

    errors: dict[str, int] = field(default_factory=dict)
    accepted: int = 0
    rejected: int = 0
    pull_items: int = 0
    pull_bytes: list[int] = field(default_factory=list)

    def error(self, kind: str, n: int = 1) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + n


def pattern_pool(rng: random.Random, n: int = 256) -> list[EmbeddingPattern]:
    """`n` random high-quality 4-bit embedding patterns to draw pushes from."""
    import numpy as np

    gen = np.random.default_rng(rng.randrange(1 << 30))
    pool = []
    for _ in range(n):
        v = gen.standard_normal(EMBEDDING_DIM)
        uses = int(gen.integers(10, 200))
        pool.append(EmbeddingPattern(id=secrets.token_bytes(16), version=1, embedding=quantize(v / np.linalg.norm(v), 4),
                                     success_rate=0.8, uses=uses, successes=int(uses * 0.8),
                                     task_type=TaskType.CONTENT_MATCH))  # fmt: skip
    return pool


class SimDevice:
    """One TV's credentials and protocol state (device key derived from the server secret, as issued)."""

    __slots__ = ("device_id", "key", "key_id", "seq", "cursor", "pool", "rng", "next_sync_s")

    def __init__(self, secret: bytes, pool: list[EmbeddingPattern], rng: random.Random, key_id: int = 1) -> None:
        self.device_id = rng.randbytes(16)
        self.key_id = key_id
        self.key = derive_device_key(secret, self.device_id, key_id)
        self.seq = 0
        self.cursor = 0
        self.pool = pool
        self.rng = rng
        #: interval the server asked for in its last heartbeat ack (0: not told yet)
        self.next_sync_s = 0

    def headers(self) -> dict[str, str]:
        """The request headers a TV sends with its frames: its device in X-Omega-Device (omega.protocol.routing)."""
        return {DEVICE_HEADER: device_header_value(self.device_id)}

    def frame(self, body: Body) -> bytes:
        """`body` in a signed frame with the next sequence number."""
        self.seq += 1
        return encode_frame(Frame(self.device_id, self.seq, now_ms(), body, key_id=self.key_id), self.key)

    def push(self) -> Push:
        rng = self.rng
        edges = {(rng.randrange(1, 2000), rng.randrange(1, 2000)) for _ in range(10)}
        batch = TransitionBatch(Keyspace.ITEM, tuple(Transition(s, d, 1.0 + rng.randrange(8) / 4) for s, d in edges))
        patterns = tuple(rng.sample(self.pool, rng.randint(1, 3)))
        return Push(batch_id=rng.randbytes(16), patterns=patterns, transitions=batch)

    def pull(self) -> Pull:
        return Pull(since=self.cursor)

    def heartbeat(self, tier: Tier) -> Heartbeat:
        return Heartbeat(tier, outbox=0, patterns=100)

    def random_body(self) -> tuple[str, Body]:
        """A frame of bench sync's steady mix: 40 % push, 40 % pull, 20 % heartbeat."""
        roll = self.rng.random()
        if roll < 0.4:
            return "push", self.push()
        if roll < 0.8:
            return "pull", self.pull()
        return "heartbeat", self.heartbeat(Tier.ACTIVE)

    def session(self, tier: Tier, push_probability: float = 0.4, *, sync: bool = True) -> list[tuple[str, Body]]:
        """One sync session of a TV: heartbeat, delta pull, and sometimes a push of new patterns.

        sync=False: the heartbeat alone (isolates what holding a connection costs from the sync path).
        """
        bodies: list[tuple[str, Body]] = [("heartbeat", self.heartbeat(tier))]
        if not sync:
            return bodies
        bodies.append(("pull", self.pull()))
        if self.rng.random() < push_probability:
            bodies.append(("push", self.push()))
        return bodies

    def absorb(self, reply: bytes, tally: ReplyTally) -> bool:
        """Check and apply one reply (cursor, interval); False if it was an error reply."""
        body = decode_frame(reply, self.key, expect=DOWNLINK).body
        if isinstance(body, ErrorReply):
            tally.error(f"reply_{body.code}")
            return False
        if isinstance(body, PushAck):
            tally.accepted += body.accepted
            tally.rejected += len(body.rejected)
        elif isinstance(body, PullReply):
            tally.pull_bytes.append(len(reply))
            tally.pull_items += len(body.patterns) + (len(body.transitions.edges) if body.transitions else 0)
            self.cursor = body.cursor
        elif isinstance(body, HeartbeatAck):
            self.next_sync_s = body.next_sync_s
        return True
