"""Every message kind survives encode -> decode unchanged, compressed or not."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from protocol_strategies import bodies, downlink_bodies, error_replies, frames, keys, uplink_bodies

from omega.protocol import (
    DOWNLINK,
    UPLINK,
    BadSignature,
    ErrorReply,
    Frame,
    Pull,
    decode_frame,
    encode_error_reply,
    encode_frame,
    encode_prepared,
    omega_pb2,
    peek_frame,
    peek_header,
    prepare_body,
)
from omega.protocol.convert import frame_from_pb, frame_to_pb

FAST = settings(max_examples=80, deadline=None)


@FAST
@given(frame=frames(), key=keys, compress=st.sampled_from([None, True, False]))
def test_frame_round_trip(frame: Frame, key: bytes, compress: bool | None) -> None:
    data = encode_frame(frame, key, compress=compress)
    decoded = decode_frame(data, key)
    assert decoded == frame
    assert decoded.authenticated
    header = peek_frame(data)
    assert (header.device_id, header.key_id, header.seq, header.timestamp_ms) == (
        frame.device_id,
        frame.key_id,
        frame.seq,
        frame.timestamp_ms,
    )
    assert header.kind == frame.kind
    assert header.signed and header.size == len(data)
    if compress is not None:
        assert header.compressed == compress


@FAST
@given(frame=frames())
def test_auto_compression_never_makes_a_frame_bigger(frame: Frame) -> None:
    key = bytes(32)
    auto = encode_frame(frame, key)
    assert len(auto) <= len(encode_frame(frame, key, compress=False))
    assert len(auto) <= len(encode_frame(frame, key, compress=True))


@FAST
@given(frame=frames())
def test_protobuf_mapping_round_trip(frame: Frame) -> None:
    wire = frame_to_pb(frame).SerializeToString()
    parsed = omega_pb2.Frame.FromString(wire)
    assert frame_from_pb(parsed) == frame


@FAST
@given(frame=frames(uplink_bodies))
def test_expect_uplink_accepts_tv_messages_only(frame: Frame) -> None:
    key = bytes(range(32))
    assert decode_frame(encode_frame(frame, key), key, expect=UPLINK) == frame


@FAST
@given(frame=frames(downlink_bodies))
def test_expect_downlink_accepts_cloud_messages_only(frame: Frame) -> None:
    key = bytes(range(32))
    assert decode_frame(encode_frame(frame, key), key, expect=DOWNLINK) == frame


@FAST
@given(reply=error_replies, key=keys)
def test_unsigned_error_reply_decodes_as_unauthenticated(reply: ErrorReply, key: bytes) -> None:
    data = encode_error_reply(reply.code, reply.message, retry_after_s=reply.retry_after_s, timestamp_ms=7)
    decoded = decode_frame(data, key, expect=DOWNLINK)
    assert decoded.body == reply
    assert decoded.authenticated is False
    assert decoded.device_id == bytes(16)
    assert peek_frame(data).signed is False


def test_signed_error_reply_is_authenticated() -> None:
    key, device = b"k" * 32, b"d" * 16
    data = encode_error_reply("rate_limited", "slow down", key=key, device_id=device, key_id=3, retry_after_s=30)
    frame = decode_frame(data, key)
    assert frame.authenticated and frame.device_id == device and frame.key_id == 3
    assert frame.body == ErrorReply("rate_limited", "slow down", 30)


def test_long_error_messages_are_cut_not_refused() -> None:
    reply = ErrorReply("internal", "x" * 10_000)
    assert len(reply.message) == 256
    frame = Frame(b"d" * 16, 1, 2, reply)
    assert decode_frame(encode_frame(frame, b"k" * 32), b"k" * 32) == frame


def test_pull_max_bytes_zero_means_default() -> None:
    assert Pull(max_bytes=0).max_bytes == 5000
    frame = Frame(b"d" * 16, 1, 2, Pull())
    assert decode_frame(encode_frame(frame, b"k" * 32), b"k" * 32).body.max_bytes == 5000


@FAST
@given(body=bodies)
def test_kind_names_match_the_protobuf_oneof(body: object) -> None:
    frame = Frame(b"d" * 16, 0, 0, body)  # type: ignore[arg-type]
    assert frame_to_pb(frame).WhichOneof("body") == frame.kind


@FAST
@given(frame=frames(downlink_bodies), key=keys, compress=st.sampled_from([None, True, False]))
def test_a_prepared_body_frames_like_encode_frame(frame: Frame, key: bytes, compress: bool | None) -> None:
    """A body serialised (and deflated) once, framed per device, is the frame `encode_frame` makes."""
    prepared = prepare_body(frame.body, compress=compress)
    data = encode_prepared(frame.device_id, frame.seq, frame.timestamp_ms, frame.key_id, prepared, key)
    assert decode_frame(data, key) == frame
    assert peek_header(data).kind == frame.kind
    if prepared.packed is None:
        assert compress is not True
        assert data == encode_frame(frame, key, compress=False)  # byte for byte
    else:
        assert compress is not False
        assert data[2] == 0x01  # the compressed flag
        if compress is None:  # deflated only because that is smaller
            assert len(data) < len(encode_frame(frame, key, compress=False))
    tampered = data[:-1] + bytes([data[-1] ^ 1])
    with pytest.raises(BadSignature):
        decode_frame(tampered, key)
