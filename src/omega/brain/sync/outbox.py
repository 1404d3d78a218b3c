"""The offline-first outbox: queued changes sealed into durable, idempotent pushes.

The queue is the store itself (`BrainStore.outbox`, see `omega.brain.store.outbox`).
`seal()` turns part of that queue into one Push, in ONE transaction: it keeps
the Push (random 16-byte batch_id + the encoded frame) as an outbox row and
marks what it took as sealed, so nothing is sealed twice. The row is deleted only when the cloud's verified
PushAck for its batch_id arrives; a retry re-sends the same bytes under the
same batch_id (the cloud applies a batch at most once).

Patterns are pushed only when they changed enough since their last push (the
vector's cosine to the pushed one, or the success statistics); a version that
did not is absorbed (pushed_version catches up) and later versions are still
compared with what was really pushed, so drift accumulates until it counts.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from omega.brain.store import BrainStore, OutboxRow, QueuedPattern
from omega.brain.sync.config import SyncConfig
from omega.errors import OmegaError
from omega.protocol import (
    EmbeddingPattern,
    Frame,
    MAX_COWATCH_PER_PUSH,
    Keyspace,
    ProtocolError,
    Push,
    TaskType,
    Transition,
    TransitionBatch,
    WEIGHT_SCALE,
    decode_frame,
    encode_frame,
    quantize,
)

log = logging.getLogger("omega.brain.sync")

#: The outbox keeps each Push as a frame sealed under this local key: the tag
#: detects a damaged row instead of sending garbage. It authenticates nothing.
_LOCAL_KEY = hashlib.sha256(b"omega/brain/outbox/v1").digest()
_NO_DEVICE = bytes(16)
_U32 = (1 << 32) - 1
#: Header values of realistic width for sizing a push before its real header exists.
_SIZING_SEQ = 1 << 40
_SIZING_TIMESTAMP_MS = 1 << 41
#: Queued high-quality patterns examined per seal (absorbed ones leave the queue).
_CANDIDATES = 256
#: The weight every pushed transition carries. The cloud publishes an edge's distinct support
#: and reads a pushed weight only as "> 0" (omega.constellation.crdt.consolidate_edge), so a
#: finer weight would only tell it the viewing's rating, reward or repeat count (issue 14). The
#: TV keeps its own weights, and marks the delta it had as pushed (a later delta pushes again).
WIRE_EDGE_WEIGHT = 1.0


@dataclass(frozen=True, slots=True)
class SealedBatch:
    """One outbox row: a Push waiting for its ack."""

    batch_id: bytes
    push: Push
    patterns: int
    edges: int
    created_at: float
    attempts: int
    next_attempt_at: float
    last_error: str | None = None


def _local_frame(push: Push) -> bytes:
    frame = Frame(device_id=_NO_DEVICE, seq=0, timestamp_ms=0, body=push)
    return encode_frame(frame, _LOCAL_KEY, compress=False)


def _read_local_frame(blob: bytes, batch_id: bytes) -> Push:
    try:
        push = decode_frame(bytes(blob), _LOCAL_KEY, expect=(Push,)).body
    except ProtocolError as exc:
        raise OmegaError(f"outbox batch {batch_id.hex()} is damaged ({exc}); it was kept, not sent") from None
    assert isinstance(push, Push)
    if push.batch_id != batch_id:
        raise OmegaError(f"outbox batch {batch_id.hex()} holds a push for another batch id; it was kept, not sent")
    return push


def _sealed(row: OutboxRow) -> SealedBatch:
    return SealedBatch(
        row.batch_id, _read_local_frame(row.frame, row.batch_id), row.patterns, row.edges, row.created_at,
        row.attempts, row.next_attempt_at, row.last_error,
    )  # fmt: skip


def push_frame_size(push: Push) -> int:
    """Bytes the push will take on the wire (with a realistic header and the tag)."""
    frame = Frame(device_id=_NO_DEVICE, seq=_SIZING_SEQ, timestamp_ms=_SIZING_TIMESTAMP_MS, key_id=1, body=push)
    return len(encode_frame(frame, _LOCAL_KEY))


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 or nb == 0.0:
        return -1.0
    return float(np.dot(a, b) / (na * nb))


class Outbox:
    """Seals queued patterns and transition deltas into pushes and keeps them until acked."""

    def __init__(
        self,
        store: BrainStore,
        config: SyncConfig | None = None,
        *,
        min_success: float = 0.8,
        min_uses: int = 10,
        clock: Callable[[], float] = time.time,
        new_batch_id: Callable[[], bytes] = lambda: os.urandom(16),
    ) -> None:
        self.store = store
        self.config = config or SyncConfig()
        self.min_success = float(min_success)
        self.min_uses = int(min_uses)
        self._clock = clock
        self._new_batch_id = new_batch_id

    # ------------------------------------------------------------------ reading

    def pending(self) -> list[SealedBatch]:
        """Sealed batches not yet acknowledged, oldest first."""
        return [_sealed(row) for row in self.store.outbox.batches()]

    def pending_count(self) -> int:
        return self.store.outbox.count()

    def queued_patterns(self) -> int:
        """High-quality patterns with an unsealed version (what the heartbeat reports as outbox)."""
        return self.store.outbox.queued_pattern_count(self.min_success, self.min_uses)

    # ------------------------------------------------------------------ sealing

    def _due(self, queued: QueuedPattern) -> bool:
        """Whether a queued pattern moved enough since its last push to be worth the bytes."""
        if queued.pushed_embedding is None:
            return True
        cfg = self.config
        if _cosine(queued.embedding, queued.pushed_embedding) < cfg.resend_cosine:
            return True
        if abs(queued.success_rate - queued.pushed_success_rate) >= cfg.resend_success_delta:
            return True
        return queued.uses >= queued.pushed_uses * (1.0 + cfg.resend_uses_growth)

    def _edges(self) -> list[tuple[int, int, float]]:
        """Largest unsent transition deltas that the wire can carry: (src, dst, delta on the wire grid)."""
        if self.config.max_edges_per_push == 0:
            return []
        found = self.store.outbox.unsent_edges(self.config.min_edge_delta, _U32, self.config.max_edges_per_push)
        # Round down to the wire's 1/16 grid: what is sent is exactly what is marked sent,
        # and the remainder stays queued.
        edges = [(s, d, math.floor(delta * WEIGHT_SCALE) / WEIGHT_SCALE) for s, d, delta in found]
        return [(s, d, w) for s, d, w in edges if 0 < w <= _U32 / WEIGHT_SCALE]

    def _with_cowatch(self, push: Push) -> tuple[Push, list[tuple[int, int]]]:
        """`push` with as many queued co-watched pairs as fit its byte budget after its edges and patterns
        (they only take the room left: edges and patterns are sealed as without them), and those pairs."""
        budget = self.config.max_push_bytes
        pairs = self.store.outbox.unsent_cowatch(min(MAX_COWATCH_PER_PUSH, budget // 2))  # >= 2 B a pair on the wire
        if not pairs:
            return push, []
        bigger = replace(push, cowatch=_wire_cowatch(pairs))
        if push_frame_size(bigger) <= budget:
            return bigger, pairs
        # The largest prefix that fits, by bisection on the frame size (a pair is ~4 B; compression varies).
        lo, hi = 0, len(pairs)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if push_frame_size(replace(push, cowatch=_wire_cowatch(pairs[:mid]))) <= budget:
                lo = mid
            else:
                hi = mid - 1
        if lo == 0:
            if push.patterns or push.transitions is not None:
                return push, []
            lo = 1  # a push always carries at least one item
        return replace(push, cowatch=_wire_cowatch(pairs[:lo])), pairs[:lo]

    def seal(self, max_patterns: int | None = None) -> SealedBatch | None:
        """Seal the next push from the queue (None when nothing is due), in one transaction."""
        cfg = self.config
        limit = cfg.max_patterns_per_sync if max_patterns is None else max(0, min(max_patterns, cfg.max_patterns_per_sync))
        batch_id = self._new_batch_id()
        if not isinstance(batch_id, bytes) or len(batch_id) != 16:
            raise OmegaError("batch ids must be 16 bytes")
        now = self._clock()
        queue = self.store.outbox
        with self.store.transaction():
            edges = self._edges()
            push = Push(batch_id=batch_id, transitions=_wire_edges(edges))
            if push.transitions is not None and push_frame_size(push) > cfg.max_push_bytes:
                # Many edges alone exceed the budget: keep the largest that fit.
                while len(edges) > 1 and push_frame_size(push) > cfg.max_push_bytes:
                    edges = edges[: max(1, len(edges) * 3 // 4)]
                    push = Push(batch_id, transitions=_wire_edges(edges))

            sealed: list[QueuedPattern] = []
            absorbed: list[tuple] = []
            full = False
            for queued in queue.queued_patterns(self.min_success, self.min_uses, _CANDIDATES):
                if not self._due(queued):
                    absorbed.append((queued.id, queued.version))
                    continue
                if full or len(sealed) >= limit:
                    continue  # stays queued for the next push
                pattern = EmbeddingPattern(
                    id=queued.id.bytes,
                    version=min(int(queued.version), _U32),
                    embedding=quantize(queued.embedding, cfg.embedding_bits),
                    success_rate=float(queued.success_rate),
                    uses=min(int(queued.uses), _U32),
                    successes=min(int(queued.successes), _U32),
                    task_type=TaskType(int(queued.task_type)),
                )
                bigger = Push(batch_id, patterns=(*push.patterns, pattern), transitions=push.transitions)
                if push_frame_size(bigger) > cfg.max_push_bytes and (push.patterns or push.transitions):
                    full = True
                    continue
                push = bigger
                sealed.append(queued)

            # A version that did not move enough is absorbed: the next one is compared with what was pushed.
            queue.absorb(absorbed)
            push, cowatch = self._with_cowatch(push)
            if not push.patterns and push.transitions is None and push.cowatch is None:
                return None
            queue.add_batch(
                batch_id,
                _local_frame(push),
                patterns=[q.id for q in sealed],
                edges=edges if push.transitions is not None else [],
                created_at=now,
                cowatch=cowatch,
            )
        n_edges = len(push.transitions.edges) if push.transitions is not None else 0
        return SealedBatch(batch_id, push, len(push.patterns), n_edges, now, 0, now)

    # ------------------------------------------------------------------ outcome of a send

    def record_attempt(self, batch_id: bytes, error: str | None = None, next_attempt_at: float | None = None) -> None:
        """Count a send of `batch_id` (and why it failed, if it did). Called BEFORE the bytes go out, so a
        crash after sending still leaves the batch marked as possibly applied (see `expire`)."""
        self.store.outbox.record_attempt(batch_id, error, self._clock() if next_attempt_at is None else next_attempt_at)

    def record_error(self, batch_id: bytes, error: str) -> None:
        """Why the send just counted by `record_attempt` failed."""
        self.store.outbox.note_error(batch_id, error)

    def expire(self) -> tuple[int, int]:
        """Retire batches older than `batch_ttl_s`, before the cloud forgets their batch id; (renewed, dropped).

        The cloud applies a batch id at most once only within its idempotency window (a day): a retry
        after that would be applied twice. A batch never sent cannot have been applied, so it is
        re-sealed under a new id and keeps its place; one that was sent (maybe applied, ack lost) is
        dropped — its contribution is lost at worst, never counted twice. The TV's own rows stay.
        """
        now = self._clock()
        cutoff = now - self.config.batch_ttl_s
        renewed = dropped = 0
        for row in self.store.outbox.batches():
            if row.created_at >= cutoff:
                continue
            if row.attempts > 0:
                self.store.outbox.delete(row.batch_id)
                dropped += 1
                log.warning("outbox batch %s expired after %d send(s) without an ack; dropped", row.batch_id.hex(), row.attempts)
                continue
            try:
                push = _read_local_frame(row.frame, row.batch_id)
            except OmegaError:
                continue  # a damaged row stays for `pending()` to report
            new_id = self._new_batch_id()
            if self.store.outbox.renew(row.batch_id, new_id, _local_frame(replace(push, batch_id=new_id)), now):
                renewed += 1
        return renewed, dropped

    def acknowledge(self, batch_id: bytes) -> bool:
        """The cloud acknowledged `batch_id` (verified): forget it. False if it was not pending."""
        return self.store.outbox.delete(batch_id)


def _wire_edges(edges: list[tuple[int, int, float]]) -> TransitionBatch | None:
    """The pushed transitions of (src, dst, delta) edges: each at WIRE_EDGE_WEIGHT."""
    if not edges:
        return None
    return TransitionBatch(Keyspace.ITEM, tuple(Transition(s, d, WIRE_EDGE_WEIGHT) for s, d, _ in edges))


def _wire_cowatch(pairs: list[tuple[int, int]]) -> TransitionBatch:
    """The pushed co-watched pairs (a < b), each at weight 1: the cloud counts distinct TVs, nothing more."""
    return TransitionBatch(Keyspace.COWATCH, tuple(Transition(a, b, 1.0) for a, b in pairs))
