"""Byte sizes of representative frames, for `omega bench sync` and the capacity model.

Embeddings are random unit vectors (incompressible, like real MiniLM codes),
ids are random, so the figures are an honest upper side of real traffic.
"""

from __future__ import annotations

import numpy as np

from omega.protocol.auth import derive_device_key
from omega.protocol.codec import encode_frame
from omega.protocol.messages import (
    EMBEDDING_DIM,
    Body,
    ConsolidatedPattern,
    EmbeddingPattern,
    Frame,
    Heartbeat,
    Keyspace,
    PullReply,
    Push,
    TaskType,
    Tier,
    Transition,
    TransitionBatch,
)
from omega.protocol.quantize import quantize

#: A plausible wall-clock time (2026) so timestamps have their real varint width.
_TIMESTAMP_MS = 1_790_000_000_000
#: Realistic catalog-id range (MovieLens ids go up to ~200k).
_ITEM_IDS = 200_000


def _unit(rng: np.random.Generator) -> np.ndarray:
    v = rng.standard_normal(EMBEDDING_DIM)
    return v / np.linalg.norm(v)


def _pattern(rng: np.random.Generator, bits: int) -> EmbeddingPattern:
    uses = int(rng.integers(10, 200))
    return EmbeddingPattern(
        id=rng.bytes(16),
        version=int(rng.integers(1, 50)),
        embedding=quantize(_unit(rng), bits),
        success_rate=0.8 + 0.2 * float(rng.random()),
        uses=uses,
        successes=int(uses * 0.85),
        task_type=TaskType.CONTENT_MATCH,
        cell=int(rng.integers(0, 1024)),
        codebook_version=3,
    )


def _transitions(rng: np.random.Generator, n: int, keyspace: Keyspace, id_range: int, support: bool) -> TransitionBatch:
    pairs: set[tuple[int, int]] = set()
    while len(pairs) < n:
        pairs.add((int(rng.integers(1, id_range)), int(rng.integers(1, id_range))))
    edges = [
        Transition(s, d, float(rng.integers(1, 64)) / 16, int(rng.integers(3, 5000)) if support else 0)
        for s, d in pairs
    ]
    return TransitionBatch(keyspace=keyspace, edges=tuple(edges), codebook_version=3)


def _size(body: Body, key: bytes, device_id: bytes) -> int:
    frame = Frame(device_id=device_id, seq=123_456, timestamp_ms=_TIMESTAMP_MS, key_id=1, body=body)
    return len(encode_frame(frame, key))


def push_size_report(seed: int = 0) -> dict[str, int]:
    """Bytes on the wire (header, body, tag) of representative frames."""
    rng = np.random.default_rng(seed)
    device_id = rng.bytes(16)
    key = derive_device_key(b"size-report-secret-32-bytes-long", device_id, 1)
    report = {"heartbeat": _size(Heartbeat(Tier.ACTIVE, outbox=3, patterns=2_500), key, device_id)}
    for bits in (8, 4):
        for n in (1, 5, 10):
            body = Push(batch_id=rng.bytes(16), patterns=tuple(_pattern(rng, bits) for _ in range(n)))
            report[f"push_{n}x{bits}bit"] = _size(body, key, device_id)
    for name, keyspace, id_range in (("item", Keyspace.ITEM, _ITEM_IDS), ("cell", Keyspace.CELL, 1024)):
        body = Push(batch_id=rng.bytes(16), transitions=_transitions(rng, 50, keyspace, id_range, support=False))
        report[f"push_transitions_50_{name}"] = _size(body, key, device_id)
    page = PullReply(
        cursor=987_654,
        more=True,
        patterns=tuple(
            ConsolidatedPattern(
                cluster_id=int(rng.integers(0, 1024)),
                version=int(rng.integers(1, 1000)),
                embedding=quantize(_unit(rng), 8),
                task_type=TaskType.CONTENT_MATCH,
                success_rate=0.85,
                support=int(rng.integers(3, 10_000)),
                trend_score=float(rng.normal()),
            )
            for _ in range(10)
        ),
        transitions=_transitions(rng, 100, Keyspace.CELL, 1024, support=True),
    )
    report["pull_reply_page"] = _size(page, key, device_id)
    return report
