"""Hypothesis strategies generating random valid protocol messages."""

from __future__ import annotations

from hypothesis import strategies as st

from omega.protocol import (
    EMBEDDING_DIM,
    WEIGHT_SCALE,
    ConsolidatedPattern,
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
    QuantizedEmbedding,
    Rejection,
    TaskType,
    Tier,
    Transition,
    TransitionBatch,
)

U32 = 2**32 - 1
U64 = 2**64 - 1

uuid16 = st.binary(min_size=16, max_size=16)
u32 = st.integers(0, U32)
u64 = st.integers(0, U64)
unit_f32 = st.floats(0.0, 1.0, width=32)
finite_f32 = st.floats(allow_nan=False, allow_infinity=False, width=32)
task_types = st.sampled_from(list(TaskType))
codes = st.text(min_size=1, max_size=32)


@st.composite
def embeddings(draw: st.DrawFn) -> QuantizedEmbedding:
    bits = draw(st.sampled_from([8, 4]))
    q = draw(st.binary(min_size=EMBEDDING_DIM * bits // 8, max_size=EMBEDDING_DIM * bits // 8))
    return QuantizedEmbedding(q=q, bits=bits, scale=draw(st.floats(0, 1e3, width=32)), offset=draw(finite_f32))


@st.composite
def embedding_patterns(draw: st.DrawFn) -> EmbeddingPattern:
    uses = draw(u32)
    return EmbeddingPattern(
        id=draw(uuid16),
        version=draw(u32),
        embedding=draw(embeddings()),
        success_rate=draw(unit_f32),
        uses=uses,
        successes=draw(st.integers(0, uses)),
        task_type=draw(task_types),
        cell=draw(st.none() | st.integers(0, U32 - 1)),
        codebook_version=draw(u32),
    )


def transition_batches(
    *, with_support: bool, max_edges: int = 200, keyspaces: tuple[Keyspace, ...] = (Keyspace.ITEM, Keyspace.CELL)
) -> st.SearchStrategy[TransitionBatch]:
    pair = st.tuples(u32, u32)
    edge = st.tuples(pair, st.integers(0, U32), u32 if with_support else st.just(0))
    return st.builds(
        lambda keyspace, edges, cbv: TransitionBatch(
            keyspace=keyspace,
            edges=tuple(Transition(s, d, w / WEIGHT_SCALE, sup) for (s, d), w, sup in edges),
            codebook_version=cbv,
        ),
        st.sampled_from(keyspaces),
        st.lists(edge, max_size=max_edges, unique_by=lambda e: e[0]),
        u32,
    )


pushes = st.builds(
    Push,
    batch_id=uuid16,
    patterns=st.lists(embedding_patterns(), max_size=10).map(tuple),
    transitions=st.none() | transition_batches(with_support=False),
)
pulls = st.builds(Pull, since=u64, max_bytes=u32, codebook_version=u32, refined_since=u64)
heartbeats = st.builds(Heartbeat, tier=st.sampled_from(list(Tier)), outbox=u32, patterns=u32)
push_acks = st.builds(
    PushAck,
    batch_id=uuid16,
    accepted=u32,
    rejected=st.lists(st.builds(Rejection, index=u32, reason=codes), max_size=10).map(tuple),
    duplicate=st.booleans(),
)
consolidated = st.builds(
    ConsolidatedPattern,
    cluster_id=u64,
    version=u32,
    embedding=embeddings(),
    task_type=task_types,
    success_rate=unit_f32,
    support=u32,
    trend_score=finite_f32,
)
pull_replies = st.builds(
    PullReply,
    cursor=u64,
    more=st.booleans(),
    patterns=st.lists(consolidated, max_size=10).map(tuple),
    transitions=st.none() | transition_batches(with_support=True),
    pairs=st.none() | transition_batches(with_support=True, keyspaces=(Keyspace.PAIR,)),
    refined=st.none() | transition_batches(with_support=False, keyspaces=(Keyspace.REFINED,)),
    refined_cursor=u64,
    reset=st.booleans(),
)
heartbeat_acks = st.builds(HeartbeatAck, server_time_ms=u64, next_sync_s=u32, retry_after_s=u32)
error_replies = st.builds(ErrorReply, code=codes, message=st.text(max_size=256), retry_after_s=u32)

uplink_bodies = st.one_of(pushes, pulls, heartbeats)
downlink_bodies = st.one_of(push_acks, pull_replies, heartbeat_acks, error_replies)
bodies = st.one_of(uplink_bodies, downlink_bodies)


def frames(body: st.SearchStrategy = bodies) -> st.SearchStrategy[Frame]:
    return st.builds(Frame, device_id=uuid16, seq=u64, timestamp_ms=u64, body=body, key_id=u32)


keys = st.binary(min_size=32, max_size=32)
