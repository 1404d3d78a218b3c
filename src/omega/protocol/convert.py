"""Mapping between the typed messages and the generated protobuf classes.

Transition batches travel delta-encoded (see proto/omega.proto,
TransitionBatch): sorted src as gaps, dst as gaps within a run of equal src.
"""

from __future__ import annotations

from omega.protocol import omega_pb2 as pb
from omega.protocol.errors import FrameTooLarge, InvalidPattern, MalformedFrame
from omega.protocol.messages import (
    BODY_KINDS,
    MAX_ERROR_MESSAGE_CHARS,
    MAX_COWATCH_PER_PUSH,
    MAX_PATTERNS_PER_PUSH,
    MAX_TRANSITIONS,
    WEIGHT_SCALE,
    Body,
    ConsolidatedPattern,
    EmbeddingPattern,
    ErrorReply,
    Frame,
    Heartbeat,
    HeartbeatAck,
    Pull,
    PullReply,
    Push,
    PushAck,
    Rejection,
    Transition,
    TransitionBatch,
)
from omega.protocol.quantize import QuantizedEmbedding

_U32 = (1 << 32) - 1


# --------------------------------------------------------------------------- to protobuf


def _transitions_to_pb(batch: TransitionBatch, out: pb.TransitionBatch) -> None:
    out.keyspace = int(batch.keyspace)
    out.codebook_version = batch.codebook_version
    prev_src = prev_dst = 0
    for i, e in enumerate(batch.edges):  # already sorted and unique
        same_src = i > 0 and e.src == prev_src
        out.src_delta.append(e.src - prev_src)
        out.dst.append(e.dst - prev_dst if same_src else e.dst)
        out.weight.append(round(e.weight * WEIGHT_SCALE))
        prev_src, prev_dst = e.src, e.dst
    if any(e.support for e in batch.edges):
        out.support.extend(e.support for e in batch.edges)


def _embedding_to_pb(e: QuantizedEmbedding, out: pb.EmbeddingPattern | pb.ConsolidatedPattern) -> None:
    out.q, out.bits, out.scale, out.offset = e.q, e.bits, e.scale, e.offset


def _embedding_from_pb(m: pb.EmbeddingPattern | pb.ConsolidatedPattern) -> QuantizedEmbedding:
    return QuantizedEmbedding(q=m.q, bits=m.bits, scale=m.scale, offset=m.offset)


def _pattern_to_pb(p: EmbeddingPattern, out: pb.EmbeddingPattern) -> None:
    out.id = p.id
    out.version = p.version
    _embedding_to_pb(p.embedding, out)
    out.success_rate = p.success_rate
    out.uses = p.uses
    out.successes = p.successes
    out.task_type = int(p.task_type)
    out.cell_plus_one = 0 if p.cell is None else p.cell + 1
    out.codebook_version = p.codebook_version


def _consolidated_to_pb(p: ConsolidatedPattern, out: pb.ConsolidatedPattern) -> None:
    out.cluster_id = p.cluster_id
    out.version = p.version
    _embedding_to_pb(p.embedding, out)
    out.task_type = int(p.task_type)
    out.success_rate = p.success_rate
    out.support = p.support
    out.trend_score = p.trend_score


def _body_to_pb(body: Body, out: pb.Frame) -> None:
    m = getattr(out, BODY_KINDS[type(body)])
    m.SetInParent()  # marks the oneof even when every field has its default, e.g. Pull()
    if isinstance(body, Push):
        m.batch_id = body.batch_id
        for p in body.patterns:
            _pattern_to_pb(p, m.patterns.add())
        if body.transitions is not None:
            _transitions_to_pb(body.transitions, m.transitions)
        if body.cowatch is not None:
            _transitions_to_pb(body.cowatch, m.cowatch)
    elif isinstance(body, Pull):
        m.since = body.since
        m.max_bytes = body.max_bytes
        m.codebook_version = body.codebook_version
        m.refined_since = body.refined_since
    elif isinstance(body, Heartbeat):
        m.tier = int(body.tier)
        m.outbox = body.outbox
        m.patterns = body.patterns
    elif isinstance(body, PushAck):
        m.batch_id = body.batch_id
        m.accepted = body.accepted
        for r in body.rejected:
            m.rejected.add(index=r.index, reason=r.reason)
        m.duplicate = body.duplicate
    elif isinstance(body, PullReply):
        m.cursor = body.cursor
        m.more = body.more
        for p in body.patterns:
            _consolidated_to_pb(p, m.patterns.add())
        if body.transitions is not None:
            _transitions_to_pb(body.transitions, m.transitions)
        if body.pairs is not None:
            _transitions_to_pb(body.pairs, m.pairs)
        if body.refined is not None:
            _transitions_to_pb(body.refined, m.refined)
        m.refined_cursor = body.refined_cursor
        m.reset = body.reset
    elif isinstance(body, HeartbeatAck):
        m.server_time_ms = body.server_time_ms
        m.next_sync_s = body.next_sync_s
        m.retry_after_s = body.retry_after_s
    else:
        m.code = body.code
        m.message = body.message
        m.retry_after_s = body.retry_after_s


def frame_to_pb(frame: Frame) -> pb.Frame:
    """The protobuf form of a typed frame."""
    out = pb.Frame(device_id=frame.device_id, timestamp_ms=frame.timestamp_ms, seq=frame.seq, key_id=frame.key_id)
    _body_to_pb(frame.body, out)
    return out


# --------------------------------------------------------------------------- from protobuf


def _transitions_from_pb(m: pb.TransitionBatch, limit: int = MAX_TRANSITIONS) -> TransitionBatch:
    n = len(m.src_delta)
    if n > limit:  # counted on the raw message: no object is built for an oversize batch
        raise FrameTooLarge(f"{n} transitions in one batch; at most {limit}")
    if len(m.dst) != n or len(m.weight) != n or len(m.support) not in (0, n):
        raise MalformedFrame("transition arrays src_delta/dst/weight/support differ in length")
    edges = []
    src = dst = 0
    # Plain lists: indexing the protobuf containers costs a call per element.
    gaps, dsts, weights, supports = list(m.src_delta), list(m.dst), list(m.weight), list(m.support) or [0] * n
    # Every value is a uint32 field, so weight / WEIGHT_SCALE is in range and on the grid, and support in
    # range: with the two sums checked below, each edge is what Transition's checks let through, and the
    # gaps give (src, dst) in increasing order, so the batch is sorted and unique without checking again.
    in_range = Transition._in_range
    for i in range(n):
        gap = gaps[i]
        if i > 0 and gap == 0:
            if dsts[i] == 0:
                raise InvalidPattern(f"transition ({src} -> {dst}) appears twice")
            dst += dsts[i]
        else:
            src += gap
            dst = dsts[i]
        if src > _U32 or dst > _U32:
            raise InvalidPattern("transition id beyond uint32")
        edges.append(in_range(src, dst, weights[i] / WEIGHT_SCALE, supports[i]))
    return TransitionBatch._in_order(m.keyspace, tuple(edges), m.codebook_version)


def _pattern_from_pb(m: pb.EmbeddingPattern) -> EmbeddingPattern:
    return EmbeddingPattern(
        id=m.id,
        version=m.version,
        embedding=_embedding_from_pb(m),
        success_rate=m.success_rate,
        uses=m.uses,
        successes=m.successes,
        task_type=m.task_type,
        cell=None if m.cell_plus_one == 0 else m.cell_plus_one - 1,
        codebook_version=m.codebook_version,
    )


def _consolidated_from_pb(m: pb.ConsolidatedPattern) -> ConsolidatedPattern:
    return ConsolidatedPattern(
        cluster_id=m.cluster_id,
        version=m.version,
        embedding=_embedding_from_pb(m),
        task_type=m.task_type,
        success_rate=m.success_rate,
        support=m.support,
        trend_score=m.trend_score,
    )


def _body_from_pb(frame: pb.Frame) -> Body:
    kind = frame.WhichOneof("body")
    if kind == "push":
        m = frame.push
        if len(m.patterns) > MAX_PATTERNS_PER_PUSH:  # before any pattern object is built
            raise FrameTooLarge(f"{len(m.patterns)} patterns in one push; at most {MAX_PATTERNS_PER_PUSH}")
        return Push(
            batch_id=m.batch_id,
            patterns=tuple(_pattern_from_pb(p) for p in m.patterns),
            transitions=_transitions_from_pb(m.transitions) if m.HasField("transitions") else None,
            cowatch=_transitions_from_pb(m.cowatch, MAX_COWATCH_PER_PUSH) if m.HasField("cowatch") else None,
        )
    if kind == "pull":
        m = frame.pull
        return Pull(since=m.since, max_bytes=m.max_bytes, codebook_version=m.codebook_version, refined_since=m.refined_since)
    if kind == "heartbeat":
        m = frame.heartbeat
        return Heartbeat(tier=m.tier, outbox=m.outbox, patterns=m.patterns)
    if kind == "push_ack":
        m = frame.push_ack
        return PushAck(
            batch_id=m.batch_id,
            accepted=m.accepted,
            rejected=tuple(Rejection(index=r.index, reason=r.reason) for r in m.rejected),
            duplicate=m.duplicate,
        )
    if kind == "pull_reply":
        m = frame.pull_reply
        return PullReply(
            cursor=m.cursor,
            more=m.more,
            patterns=tuple(_consolidated_from_pb(p) for p in m.patterns),
            transitions=_transitions_from_pb(m.transitions) if m.HasField("transitions") else None,
            pairs=_transitions_from_pb(m.pairs) if m.HasField("pairs") else None,
            refined=_transitions_from_pb(m.refined) if m.HasField("refined") else None,
            refined_cursor=m.refined_cursor,
            reset=m.reset,
        )
    if kind == "heartbeat_ack":
        m = frame.heartbeat_ack
        return HeartbeatAck(server_time_ms=m.server_time_ms, next_sync_s=m.next_sync_s, retry_after_s=m.retry_after_s)
    if kind == "error":
        m = frame.error
        if len(m.message) > MAX_ERROR_MESSAGE_CHARS:  # our encoder never sends more
            raise MalformedFrame(f"error message longer than {MAX_ERROR_MESSAGE_CHARS} characters")
        return ErrorReply(code=m.code, message=m.message, retry_after_s=m.retry_after_s)
    raise MalformedFrame("frame has no body")


def frame_from_pb(frame: pb.Frame, *, authenticated: bool = True) -> Frame:
    """The typed frame of a parsed protobuf; ProtocolError if any field is out of range."""
    return Frame(
        device_id=frame.device_id,
        seq=frame.seq,
        timestamp_ms=frame.timestamp_ms,
        key_id=frame.key_id,
        body=_body_from_pb(frame),
        authenticated=authenticated,
    )
