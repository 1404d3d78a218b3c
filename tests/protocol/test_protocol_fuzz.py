"""Hostile bytes: the decoder only ever raises ProtocolError, and no mutation of a
signed frame is accepted as authentic."""

from __future__ import annotations

import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from protocol_strategies import frames

from omega.protocol import ErrorReply, Frame, ProtocolError, compute_tag, decode_frame, encode_frame, peek_frame

FUZZ = settings(max_examples=300, deadline=None)
KEY = bytes(range(32))


def _decode_or_protocol_error(data: bytes) -> Frame | None:
    try:
        return decode_frame(data, KEY)
    except ProtocolError as exc:
        assert exc.code in {"malformed", "too_large", "unsupported_version", "bad_signature", "invalid_pattern"}
        return None


def _peek_or_protocol_error(data: bytes) -> None:
    try:
        peek_frame(data)
    except ProtocolError:
        pass


def _deflate(body: bytes) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    return c.compress(body) + c.flush()


@FUZZ
@given(data=st.binary(max_size=400))
def test_random_bytes(data: bytes) -> None:
    decoded = _decode_or_protocol_error(data)
    assert decoded is None or not decoded.authenticated  # an unsigned error at most
    _peek_or_protocol_error(data)


@FUZZ
@given(flags=st.integers(0, 255), body=st.binary(max_size=400))
def test_random_bodies_behind_a_valid_header_and_tag(flags: int, body: bytes) -> None:
    """Bodies that pass authentication still meet a parser that only raises ProtocolError."""
    signed = bytes((0xCE, 1, flags)) + body
    _decode_or_protocol_error(signed + compute_tag(KEY, signed))
    _peek_or_protocol_error(signed + compute_tag(KEY, signed))
    _decode_or_protocol_error(signed)


@FUZZ
@given(body=st.binary(max_size=400))
def test_random_compressed_bodies_with_a_valid_tag(body: bytes) -> None:
    signed = bytes((0xCE, 1, 0x01)) + _deflate(body)
    _decode_or_protocol_error(signed + compute_tag(KEY, signed))


@st.composite
def mutations(draw: st.DrawFn) -> tuple[Frame, bytes, bytes]:
    frame = draw(frames())
    data = encode_frame(frame, KEY)
    how = draw(st.sampled_from(["flip", "truncate", "append"]))
    if how == "flip":
        bit = draw(st.integers(0, len(data) * 8 - 1))
        mutated = bytearray(data)
        mutated[bit // 8] ^= 1 << (bit % 8)
        return frame, data, bytes(mutated)
    if how == "truncate":
        return frame, data, data[: draw(st.integers(0, len(data) - 1))]
    return frame, data, data + draw(st.binary(min_size=1, max_size=64))


@FUZZ
@given(case=mutations())
def test_mutated_signed_frames_are_never_authentic(case: tuple[Frame, bytes, bytes]) -> None:
    _, original, mutated = case
    assert mutated != original
    decoded = _decode_or_protocol_error(mutated)
    # Flipping the UNSIGNED flag of a signed error reply may leave a parsable
    # unsigned error: acceptable only as unauthenticated (a TV just backs off).
    assert decoded is None or (not decoded.authenticated and isinstance(decoded.body, ErrorReply))
    _peek_or_protocol_error(mutated)


@pytest.mark.parametrize("data", [b"", b"\xce", b"\xce\x01", b"\xce\x01\x00", bytearray(b"\xce\x01\x00" + bytes(16))])
def test_tiny_inputs(data: bytes) -> None:
    assert _decode_or_protocol_error(data) is None


def test_non_binary_input_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        decode_frame("\xce\x01\x00hello", KEY)  # type: ignore[arg-type]
    with pytest.raises(ProtocolError):
        peek_frame(None)  # type: ignore[arg-type]
