"""Each reason a frame is refused, with its error class and code."""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest

from omega.protocol import (
    DOWNLINK,
    UPLINK,
    BadSignature,
    EmbeddingPattern,
    ErrorReply,
    Frame,
    FrameTooLarge,
    Heartbeat,
    InvalidPattern,
    Keyspace,
    MAX_COWATCH_PER_PUSH,
    MAX_TRANSITIONS,
    MalformedFrame,
    ProtocolError,
    Pull,
    PullReply,
    Push,
    PushAck,
    QuantizedEmbedding,
    TaskType,
    Tier,
    Transition,
    TransitionBatch,
    UnsupportedVersion,
    compute_tag,
    decode_frame,
    encode_frame,
    omega_pb2,
    peek_frame,
    quantize,
)

KEY = b"K" * 32
DEVICE = b"D" * 16


def _signed(body: bytes, *, flags: int = 0, version: int = 1, key: bytes = KEY) -> bytes:
    data = bytes((0xCE, version, flags)) + body
    return data + compute_tag(key, data)


def _deflate(body: bytes) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    return c.compress(body) + c.flush()


def _pb_frame(**body: object) -> omega_pb2.Frame:
    return omega_pb2.Frame(device_id=DEVICE, timestamp_ms=1, seq=1, key_id=0, **body)


def _pb_pattern(**overrides: object) -> omega_pb2.EmbeddingPattern:
    fields: dict[str, object] = dict(
        id=b"P" * 16, version=1, q=bytes(384), bits=8, scale=0.01, offset=-1.0,
        success_rate=0.9, uses=10, successes=9, task_type=1,
    )
    fields.update(overrides)
    return omega_pb2.EmbeddingPattern(**fields)


def _push_with(*patterns: omega_pb2.EmbeddingPattern) -> bytes:
    return _pb_frame(push=omega_pb2.Push(batch_id=b"B" * 16, patterns=list(patterns))).SerializeToString()


def _raises(data: bytes, error: type[ProtocolError], code: str, **kwargs: object) -> ProtocolError:
    with pytest.raises(error) as info:
        decode_frame(data, KEY, **kwargs)  # type: ignore[arg-type]
    assert info.value.code == code
    assert str(info.value)
    return info.value


def _heartbeat_frame() -> bytes:
    return encode_frame(Frame(DEVICE, 1, 2, Heartbeat(Tier.CASUAL)), KEY)


def test_the_valid_baselines_decode() -> None:
    # The crafted frames below differ from these in one thing only.
    assert decode_frame(_signed(_push_with(_pb_pattern())), KEY).kind == "push"
    assert decode_frame(_heartbeat_frame(), KEY).kind == "heartbeat"


def test_bad_magic() -> None:
    data = bytearray(_heartbeat_frame())
    data[0] = 0x7B
    _raises(bytes(data), MalformedFrame, "malformed")


def test_unknown_version_is_reported_before_anything_else() -> None:
    err = _raises(_signed(b"whatever", version=2), UnsupportedVersion, "unsupported_version")
    assert "version 2" in str(err)
    with pytest.raises(UnsupportedVersion):
        peek_frame(_signed(b"", version=0))


def test_unknown_flags() -> None:
    _raises(_signed(_pb_frame(pull=omega_pb2.Pull()).SerializeToString(), flags=0x80), MalformedFrame, "malformed")


@pytest.mark.parametrize("cut", [0, 2, 3, 10, 18])
def test_truncated(cut: int) -> None:
    _raises(_heartbeat_frame()[:cut], ProtocolError, "malformed" if cut < 19 else "bad_signature")


def test_truncated_after_the_header_fails_the_tag() -> None:
    data = _heartbeat_frame()
    _raises(data[:-1], BadSignature, "bad_signature")


def test_appended_junk_fails_the_tag() -> None:
    _raises(_heartbeat_frame() + b"\x00", BadSignature, "bad_signature")


def test_bad_tag_and_wrong_key() -> None:
    data = bytearray(_heartbeat_frame())
    data[-1] ^= 1
    _raises(bytes(data), BadSignature, "bad_signature")
    with pytest.raises(BadSignature):
        decode_frame(_heartbeat_frame(), b"X" * 32)


def test_unsigned_frames_other_than_errors_are_refused() -> None:
    body = _pb_frame(heartbeat=omega_pb2.Heartbeat(tier=1)).SerializeToString()
    _raises(bytes((0xCE, 1, 0x02)) + body, BadSignature, "bad_signature")
    with pytest.raises(BadSignature):
        encode_frame(Frame(DEVICE, 1, 2, Heartbeat(Tier.CASUAL)), None)


def test_frame_over_the_size_limit() -> None:
    data = _heartbeat_frame()
    _raises(data, FrameTooLarge, "too_large", max_size=len(data) - 1)
    _raises(data + bytes(20_000), FrameTooLarge, "too_large")


def test_encoder_refuses_frames_the_peer_would_refuse() -> None:
    rng = np.random.default_rng(0)
    page = tuple(
        EmbeddingPattern(bytes([i]) * 16, 1, quantize(rng.standard_normal(384), 8), 0.9, 10, 9) for i in range(10)
    )
    frame = Frame(DEVICE, 1, 2, Push(b"B" * 16, page))
    with pytest.raises(FrameTooLarge):
        encode_frame(frame, KEY, max_size=1024)


def test_zip_bomb_is_refused() -> None:
    body = _pb_frame(error=omega_pb2.Error(code="x", message="")).SerializeToString() + bytes(200_000)
    bomb = _deflate(body)
    assert len(bomb) < 1000
    _raises(_signed(bomb, flags=0x01), FrameTooLarge, "too_large")


def test_corrupt_or_trailing_compressed_body() -> None:
    body = _deflate(_pb_frame(pull=omega_pb2.Pull()).SerializeToString())
    _raises(_signed(body[:-2], flags=0x01), MalformedFrame, "malformed")
    _raises(_signed(body + b"tail", flags=0x01), MalformedFrame, "malformed")
    _raises(_signed(b"\xff\xff\xff", flags=0x01), MalformedFrame, "malformed")


def test_unparsable_body() -> None:
    _raises(_signed(b"\x0a\xff\xff"), MalformedFrame, "malformed")


def test_frame_without_body() -> None:
    _raises(_signed(_pb_frame().SerializeToString()), MalformedFrame, "malformed")


@pytest.mark.parametrize("size", [0, 15, 17])
def test_device_id_must_be_16_bytes(size: int) -> None:
    body = omega_pb2.Frame(device_id=b"d" * size, pull=omega_pb2.Pull()).SerializeToString()
    _raises(_signed(body), MalformedFrame, "malformed")
    with pytest.raises(MalformedFrame):
        peek_frame(_signed(body))


def test_more_than_ten_patterns() -> None:
    pats = [_pb_pattern(id=bytes([i]) * 16) for i in range(11)]
    _raises(_signed(_push_with(*pats)), FrameTooLarge, "too_large", max_size=1 << 20)
    with pytest.raises(FrameTooLarge):
        Push(b"B" * 16, tuple(EmbeddingPattern(bytes([i]) * 16, 1, QuantizedEmbedding(bytes(384), 8, 1, 0), 1, 1, 1)
                              for i in range(11)))


@pytest.mark.parametrize(("bits", "length"), [(8, 192), (8, 383), (4, 384), (4, 191), (8, 0)])
def test_embedding_of_the_wrong_length_for_its_bits(bits: int, length: int) -> None:
    _raises(_signed(_push_with(_pb_pattern(bits=bits, q=bytes(length)))), InvalidPattern, "invalid_pattern")


@pytest.mark.parametrize(
    "override",
    [
        {"bits": 2, "q": bytes(96)},
        {"bits": 16, "q": bytes(768)},
        {"scale": math.nan},
        {"scale": -0.5},
        {"offset": math.inf},
        {"success_rate": math.nan},
        {"success_rate": 1.5},
        {"successes": 11},
        {"task_type": 99},
        {"id": b"short"},
    ],
    ids=lambda o: ",".join(f"{k}={v!r}"[:24] for k, v in o.items()),
)
def test_invalid_pattern_fields(override: dict[str, object]) -> None:
    _raises(_signed(_push_with(_pb_pattern(**override))), InvalidPattern, "invalid_pattern")


def test_transition_arrays_must_line_up() -> None:
    tb = omega_pb2.TransitionBatch(keyspace=1, src_delta=[1, 2], dst=[3], weight=[16, 16])
    body = _pb_frame(push=omega_pb2.Push(batch_id=b"B" * 16, transitions=tb)).SerializeToString()
    _raises(_signed(body), MalformedFrame, "malformed")


def test_duplicate_transition_on_the_wire() -> None:
    tb = omega_pb2.TransitionBatch(keyspace=1, src_delta=[5, 0], dst=[3, 0], weight=[16, 16])
    body = _pb_frame(push=omega_pb2.Push(batch_id=b"B" * 16, transitions=tb)).SerializeToString()
    _raises(_signed(body), InvalidPattern, "invalid_pattern")


def test_transition_ids_beyond_uint32() -> None:
    tb = omega_pb2.TransitionBatch(keyspace=1, src_delta=[2**32 - 1, 1], dst=[3, 3], weight=[16, 16])
    body = _pb_frame(push=omega_pb2.Push(batch_id=b"B" * 16, transitions=tb)).SerializeToString()
    _raises(_signed(body), InvalidPattern, "invalid_pattern")


def test_transition_support_is_not_for_tvs_to_claim() -> None:
    tb = omega_pb2.TransitionBatch(keyspace=1, src_delta=[1], dst=[2], weight=[16], support=[1000])
    body = _pb_frame(push=omega_pb2.Push(batch_id=b"B" * 16, transitions=tb)).SerializeToString()
    _raises(_signed(body), InvalidPattern, "invalid_pattern")


def test_transition_keyspace_must_be_named() -> None:
    tb = omega_pb2.TransitionBatch(keyspace=0, src_delta=[1], dst=[2], weight=[16])
    body = _pb_frame(push=omega_pb2.Push(batch_id=b"B" * 16, transitions=tb)).SerializeToString()
    _raises(_signed(body), InvalidPattern, "invalid_pattern")


def _cowatch_push(tb: omega_pb2.TransitionBatch) -> bytes:
    return _signed(_pb_frame(push=omega_pb2.Push(batch_id=b"B" * 16, cowatch=tb)).SerializeToString())


def test_cowatch_pairs_round_trip_and_hostile_ones_are_refused() -> None:
    ok = omega_pb2.TransitionBatch(keyspace=int(Keyspace.COWATCH), src_delta=[3, 0, 4], dst=[5, 2, 9], weight=[16] * 3)
    push = decode_frame(_cowatch_push(ok), KEY).body
    assert isinstance(push, Push) and [(e.src, e.dst) for e in push.cowatch.edges] == [(3, 5), (3, 7), (7, 9)]
    n = MAX_COWATCH_PER_PUSH + 1  # counted on the raw message: refused before any object is built
    big = omega_pb2.TransitionBatch(keyspace=int(Keyspace.COWATCH), src_delta=[1] * n, dst=[2] * n, weight=[16] * n)
    _raises(_cowatch_push(big), FrameTooLarge, "too_large")
    for bad in (
        dict(keyspace=int(Keyspace.ITEM), src_delta=[1], dst=[2], weight=[16]),  # not the co-watch keyspace
        dict(keyspace=int(Keyspace.COWATCH), src_delta=[5], dst=[2], weight=[16]),  # src > dst: forged order
        dict(keyspace=int(Keyspace.COWATCH), src_delta=[5], dst=[5], weight=[16]),  # a title with itself
        dict(keyspace=int(Keyspace.COWATCH), src_delta=[1], dst=[2], weight=[48]),  # a weight that tells more
        dict(keyspace=int(Keyspace.COWATCH), src_delta=[1], dst=[2], weight=[16], support=[9]),  # claimed support
    ):
        _raises(_cowatch_push(omega_pb2.TransitionBatch(**bad)), InvalidPattern, "invalid_pattern")
    # Co-watched pairs never ride in `transitions`, and never come down in a pull reply.
    tb = omega_pb2.TransitionBatch(keyspace=int(Keyspace.COWATCH), src_delta=[1], dst=[2], weight=[16])
    _raises(_signed(_pb_frame(push=omega_pb2.Push(batch_id=b"B" * 16, transitions=tb)).SerializeToString()),
            InvalidPattern, "invalid_pattern")  # fmt: skip
    with pytest.raises(InvalidPattern):
        PullReply(cursor=1, transitions=TransitionBatch(Keyspace.COWATCH, (Transition(1, 2, 1.0),)))


def test_a_decoded_batch_is_what_the_checked_constructors_build() -> None:
    """Decoding builds a batch's edges without running Transition's checks again (the uint32 wire fields and
    the decoder's own checks are what they would test): the edges, their types and the batch are exactly
    those of the constructors, at the extremes of every field and in random batches."""
    import random

    from omega.protocol.convert import _transitions_from_pb, _transitions_to_pb

    top = 2**32 - 1
    rng = random.Random(3)
    batches = [[(0, 0, 0.0, 0), (0, top, top / 16, top), (top, 0, 1 / 16, 1), (top, top, 0.0625, 0)]]
    batches += [[(rng.randrange(50), rng.randrange(50), rng.randrange(400) / 16, rng.choice([0, 0, 7, top]))
                 for _ in range(rng.randrange(1, 30))] for _ in range(300)]  # fmt: skip
    for i, raw in enumerate(batches):
        unique = {(s, d): (w, sup) for s, d, w, sup in raw}
        edges = tuple(Transition(s, d, w, sup) for (s, d), (w, sup) in unique.items())
        built = TransitionBatch(Keyspace(1 + i % 4), edges, codebook_version=i * 7919 % (top + 1))
        wire = omega_pb2.TransitionBatch()
        _transitions_to_pb(built, wire)
        decoded = _transitions_from_pb(omega_pb2.TransitionBatch.FromString(wire.SerializeToString()))
        assert decoded == built and decoded.keyspace is built.keyspace
        assert [tuple(map(type, (e.src, e.dst, e.weight, e.support))) for e in decoded.edges] == [
            (int, int, float, int)] * len(built.edges)
    for keyspace, version, edges in ((0, 0, 1), (9, 0, 1), (1, 0, MAX_TRANSITIONS + 1)):
        wire = omega_pb2.TransitionBatch(keyspace=keyspace, codebook_version=version, src_delta=[1] * edges,
                                         dst=[2] * edges, weight=[16] * edges)  # fmt: skip
        with pytest.raises((InvalidPattern, FrameTooLarge)):
            _transitions_from_pb(wire)


def test_pull_reply_keeps_pairs_apart_from_ordered_edges() -> None:
    pairs = TransitionBatch(Keyspace.PAIR, (Transition(1, 2, 1.0, 3),))
    items = TransitionBatch(Keyspace.ITEM, (Transition(1, 2, 1.0, 3),))
    assert PullReply(cursor=1, transitions=items, pairs=pairs).pairs is pairs
    with pytest.raises(InvalidPattern, match="pairs go in"):
        PullReply(cursor=1, transitions=pairs)
    with pytest.raises(InvalidPattern, match="keyspace PAIR"):
        PullReply(cursor=1, pairs=items)
    refined = TransitionBatch(Keyspace.REFINED, (Transition(1, 2, 1.0),))
    assert PullReply(cursor=1, refined=refined, refined_cursor=5).refined is refined
    with pytest.raises(InvalidPattern):
        PullReply(cursor=1, refined=items)
    with pytest.raises(InvalidPattern):
        PullReply(cursor=1, transitions=refined)


def test_message_constructors_validate() -> None:
    with pytest.raises(InvalidPattern):
        TransitionBatch(Keyspace.ITEM, (Transition(1, 2, 1.0), Transition(1, 2, 3.0)))
    with pytest.raises(InvalidPattern):
        Transition(1, 2, -1.0)
    with pytest.raises(InvalidPattern):
        Transition(1, 2, math.nan)
    with pytest.raises(MalformedFrame):
        Push(b"short", ())
    with pytest.raises(MalformedFrame):
        Frame(b"D" * 15, 0, 0, Pull())
    with pytest.raises(MalformedFrame):
        Frame(DEVICE, -1, 0, Pull())
    with pytest.raises(MalformedFrame):
        Frame(DEVICE, 0, 0, "not a body")  # type: ignore[arg-type]
    with pytest.raises(MalformedFrame):
        ErrorReply("")
    with pytest.raises(InvalidPattern):
        EmbeddingPattern(b"P" * 16, 1, QuantizedEmbedding(bytes(384), 8, 1, 0), 0.5, 1, 1, task_type=42)  # type: ignore[arg-type]


def test_transition_weights_snap_to_sixteenths() -> None:
    assert Transition(1, 2, 0.03).weight == 0.0
    assert Transition(1, 2, 0.04).weight == 0.0625


def test_cloud_messages_are_refused_where_tv_messages_are_expected() -> None:
    ack = encode_frame(Frame(DEVICE, 1, 2, PushAck(b"B" * 16, accepted=1)), KEY)
    _raises(ack, MalformedFrame, "malformed", expect=UPLINK)
    _raises(_heartbeat_frame(), MalformedFrame, "malformed", expect=DOWNLINK)


def test_pattern_task_types_round_trip_by_number() -> None:
    pb = _pb_pattern(task_type=int(TaskType.CONTINUATION), cell_plus_one=8)
    frame = decode_frame(_signed(_push_with(pb)), KEY)
    (pattern,) = frame.body.patterns  # type: ignore[union-attr]
    assert pattern.task_type is TaskType.CONTINUATION and pattern.cell == 7


def test_counts_are_checked_on_the_raw_message_before_objects_are_built(monkeypatch: pytest.MonkeyPatch) -> None:
    import omega.protocol.convert as convert

    built = []
    real = convert.Transition
    monkeypatch.setattr(convert, "Transition", lambda *a: built.append(1) or real(*a))
    n = 21_000
    batch = omega_pb2.TransitionBatch(keyspace=1, src_delta=[1] * n, dst=[1] * n, weight=[16] * n)
    body = _pb_frame(push=omega_pb2.Push(batch_id=b"b" * 16, transitions=batch)).SerializeToString()
    _raises(_signed(_deflate(body), flags=0x01), FrameTooLarge, "too_large")
    assert built == []  # refused on the count, not after 21,000 objects


def test_peek_header_reads_only_the_header_and_agrees_with_peek_frame() -> None:
    from omega.protocol import peek_header

    frame = Frame(DEVICE, 77, 1_790_000_000_123, Pull(since=5), key_id=9)
    for compress in (True, False):
        data = encode_frame(frame, KEY, compress=compress)
        assert peek_header(data) == peek_frame(data)
    # A 64 KiB body claiming to be a push: the peek inflates 64 bytes of it and no more.
    n = 21_000
    batch = omega_pb2.TransitionBatch(keyspace=1, src_delta=[1] * n, dst=[1] * n, weight=[16] * n)
    body = _pb_frame(push=omega_pb2.Push(batch_id=b"b" * 16, transitions=batch)).SerializeToString()
    header = peek_header(_signed(_deflate(body), flags=0x01))
    assert header.kind == "push" and header.device_id == DEVICE


def test_decoded_transitions_equal_checked_ones_at_the_extremes() -> None:
    """Decoded edges carry the values and types the checked constructor gives, up to uint32 ids and the
    largest weight."""
    top = (1 << 32) - 1
    batch = omega_pb2.TransitionBatch(keyspace=int(Keyspace.ITEM), src_delta=[0, 0, top], dst=[1, 5, top],
                                      weight=[0, 1, top])  # fmt: skip
    frame = decode_frame(_signed(_pb_frame(pull_reply=omega_pb2.PullReply(transitions=batch)).SerializeToString()),
                         KEY)  # fmt: skip
    edges = frame.body.transitions.edges  # type: ignore[union-attr]
    expected = (Transition(0, 1, 0.0), Transition(0, 6, 1 / 16), Transition(top, top, top / 16))
    assert edges == expected
    assert [tuple(map(type, (e.src, e.dst, e.weight, e.support))) for e in edges] == [(int, int, float, int)] * 3
