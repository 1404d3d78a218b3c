"""Frames on the wire, sans-I/O: typed frame -> bytes -> typed frame.

Layout (proto/omega.proto has the normative description):
`magic | version | flags | body | tag`, where body is a serialised
`omega.v1.Frame`, raw-DEFLATE compressed when that makes the frame smaller,
and tag = HMAC-SHA256(device key, everything before it)[:16].

The cloud calls `peek_frame` to learn device_id and key_id (to derive the
key) and then `decode_frame`; a TV calls `decode_frame` with its own key.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from omega.protocol import omega_pb2 as pb
from omega.protocol.auth import TAG_BYTES, compute_tag, verify_tag
from omega.protocol.convert import frame_from_pb, frame_to_pb
from omega.protocol.errors import BadSignature, FrameTooLarge, MalformedFrame, UnsupportedVersion
from omega.protocol.messages import UUID_BYTES, Body, ErrorReply, Frame

MAGIC = 0xCE
PROTOCOL_VERSION = 1
SUPPORTED_VERSIONS: frozenset[int] = frozenset({PROTOCOL_VERSION})
FLAG_COMPRESSED = 0x01
FLAG_UNSIGNED = 0x02
_KNOWN_FLAGS = FLAG_COMPRESSED | FLAG_UNSIGNED
HEADER_BYTES = 3
#: Largest frame accepted on the wire.
DEFAULT_MAX_FRAME_BYTES = 16 * 1024
#: Largest body after inflating (zip-bomb guard).
DEFAULT_MAX_BODY_BYTES = 64 * 1024
#: Shortest key accepted for signing (device keys are 32 bytes).
MIN_KEY_BYTES = 16
_ZERO_DEVICE = bytes(UUID_BYTES)


@dataclass(frozen=True, slots=True)
class FrameHeader:
    """What a frame says about itself before its tag is checked: enough to find the key."""

    version: int
    compressed: bool
    signed: bool
    device_id: bytes
    key_id: int
    seq: int
    timestamp_ms: int
    #: Body kind: push, pull, heartbeat, push_ack, pull_reply, heartbeat_ack, error ("" if none).
    kind: str
    #: Total size on the wire.
    size: int


def now_ms() -> int:
    """Wall-clock milliseconds, the unit of `Frame.timestamp_ms`."""
    return time.time_ns() // 1_000_000


def _check_key(key: object) -> bytes:
    if not isinstance(key, bytes) or len(key) < MIN_KEY_BYTES:
        raise BadSignature(f"signing key must be at least {MIN_KEY_BYTES} bytes")
    return key


#: zlib level of outgoing frames: 6 deflates our frames (incompressible embedding codes, varint arrays)
#: to within a few bytes of 9 at a fraction of the CPU (see bench/README.md, "Profile of the sync server").
DEFLATE_LEVEL = 6
#: Inflated bytes `peek_header` reads: the header fields (<= 47 bytes) and the body's tag.
_PEEK_BYTES = 64


def _deflate(body: bytes) -> bytes:
    c = zlib.compressobj(DEFLATE_LEVEL, zlib.DEFLATED, -15)  # raw DEFLATE: no zlib header/checksum (the tag covers it)
    return c.compress(body) + c.flush()


def _inflate(data: bytes, limit: int) -> bytes:
    d = zlib.decompressobj(-15)
    try:
        out = d.decompress(data, limit + 1)
    except zlib.error as exc:
        raise MalformedFrame(f"compressed body is corrupt: {exc}") from None
    if len(out) > limit:
        raise FrameTooLarge(f"compressed body inflates beyond {limit} bytes")
    if not d.eof or d.unused_data:
        raise MalformedFrame("compressed body is truncated or has trailing bytes")
    return out


def encode_frame(
    frame: Frame,
    key: bytes | None,
    *,
    compress: bool | None = None,
    max_size: int = DEFAULT_MAX_FRAME_BYTES,
) -> bytes:
    """Serialise and sign `frame` with `key`.

    compress: None compresses only when that makes the frame smaller; True and
    False force it on or off. key=None makes an unsigned frame, allowed only
    for an ErrorReply (see `encode_error_reply`). Raises FrameTooLarge when
    the frame would exceed `max_size` (the peer would refuse it).
    """
    if not isinstance(frame, Frame):
        raise MalformedFrame(f"encode_frame needs a Frame, got {type(frame).__name__}")
    if key is None and not isinstance(frame.body, ErrorReply):
        raise BadSignature("only error replies may be sent unsigned")
    body = frame_to_pb(frame).SerializeToString()
    flags = 0
    if compress is not False:
        if len(body) > DEFAULT_MAX_BODY_BYTES:
            raise FrameTooLarge(f"body of {len(body)} bytes exceeds {DEFAULT_MAX_BODY_BYTES} bytes")
        packed = _deflate(body)
        if compress or len(packed) < len(body):
            body, flags = packed, FLAG_COMPRESSED
    if key is None:
        flags |= FLAG_UNSIGNED
    data = bytes((MAGIC, PROTOCOL_VERSION, flags)) + body
    if key is not None:
        data += compute_tag(_check_key(key), data)
    if len(data) > max_size:
        raise FrameTooLarge(f"frame of {len(data)} bytes exceeds {max_size} bytes")
    return data


@dataclass(frozen=True, slots=True)
class PreparedBody:
    """A frame body serialised (and deflated) once, to be framed for many devices by `encode_prepared`.

    `field` is the body as its field of `omega.v1.Frame`; `packed`, when not None, is `field` as a
    final raw-DEFLATE stream: `encode_prepared` puts the per-device header fields before it in a
    stored (uncompressed) DEFLATE block, so one deflate serves every device.
    """

    field: bytes
    packed: bytes | None


#: A stored DEFLATE block of up to 65,535 bytes: header byte (BFINAL 0, BTYPE 00), LEN, NLEN.
_STORED_BLOCK_BYTES = 5


def prepare_body(body: Body, *, compress: bool | None = None) -> PreparedBody:
    """`body` serialised once; deflated when that makes it smaller (compress=None), always (True) or never."""
    pb_frame = frame_to_pb(Frame(_ZERO_DEVICE, 0, 0, body))
    pb_frame.ClearField("device_id")
    field = pb_frame.SerializeToString()
    if len(field) > DEFAULT_MAX_BODY_BYTES:
        raise FrameTooLarge(f"body of {len(field)} bytes exceeds {DEFAULT_MAX_BODY_BYTES} bytes")
    packed = None
    if compress is not False:
        packed = _deflate(field)
        if not compress and len(packed) + _STORED_BLOCK_BYTES >= len(field):
            packed = None
    return PreparedBody(field, packed)


def encode_prepared(
    device_id: bytes, seq: int, timestamp_ms: int, key_id: int, body: PreparedBody, key: bytes,
    *, max_size: int = DEFAULT_MAX_FRAME_BYTES,
) -> bytes:  # fmt: skip
    """The same frame `encode_frame` makes of these header fields and `body`, signed with `key`.

    Uncompressed, byte for byte what `encode_frame(..., compress=False)` returns (our encoder writes
    the header fields first); compressed, an equally valid raw-DEFLATE body that a decoder inflates to
    the same bytes.
    """
    header = pb.Frame(device_id=device_id, timestamp_ms=timestamp_ms, seq=seq, key_id=key_id).SerializeToString()
    if body.packed is None:
        data = bytes((MAGIC, PROTOCOL_VERSION, 0)) + header + body.field
    else:
        n = len(header)  # < 64 bytes: one stored block
        stored = bytes((0, n & 0xFF, n >> 8, ~n & 0xFF, (~n >> 8) & 0xFF)) + header
        data = bytes((MAGIC, PROTOCOL_VERSION, FLAG_COMPRESSED)) + stored + body.packed
    data += compute_tag(_check_key(key), data)
    if len(data) > max_size:
        raise FrameTooLarge(f"frame of {len(data)} bytes exceeds {max_size} bytes")
    return data


def _split(data: object, max_size: int) -> tuple[int, int, bytes, bytes, bytes]:
    """(version, flags, signed part, body, tag) after the checks that need no key."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise MalformedFrame(f"a frame is binary data, got {type(data).__name__}")
    data = bytes(data)
    if len(data) > max_size:
        raise FrameTooLarge(f"frame of {len(data)} bytes exceeds {max_size} bytes")
    if len(data) < HEADER_BYTES:
        raise MalformedFrame(f"frame of {len(data)} bytes is shorter than its header")
    magic, version, flags = data[0], data[1], data[2]
    if magic != MAGIC:
        raise MalformedFrame(f"not an omega frame (magic byte 0x{magic:02x})")
    if version not in SUPPORTED_VERSIONS:
        raise UnsupportedVersion(f"protocol version {version} is not supported (this side speaks {PROTOCOL_VERSION})")
    if flags & ~_KNOWN_FLAGS:
        raise MalformedFrame(f"unknown flags 0x{flags:02x}")
    if flags & FLAG_UNSIGNED:
        return version, flags, data, data[HEADER_BYTES:], b""
    if len(data) < HEADER_BYTES + TAG_BYTES:
        raise MalformedFrame("frame is truncated: no room for its authentication tag")
    signed = data[:-TAG_BYTES]
    return version, flags, signed, signed[HEADER_BYTES:], data[-TAG_BYTES:]


def _parse(body: bytes, flags: int, max_body: int) -> pb.Frame:
    if flags & FLAG_COMPRESSED:
        body = _inflate(body, max_body)
    elif len(body) > max_body:
        raise FrameTooLarge(f"body of {len(body)} bytes exceeds {max_body} bytes")
    msg = pb.Frame()
    try:
        msg.ParseFromString(body)
    except (DecodeError, RuntimeWarning, ValueError) as exc:
        raise MalformedFrame(f"body is not a valid omega.v1.Frame: {exc}") from None
    return msg


def peek_frame(
    data: bytes,
    *,
    max_size: int = DEFAULT_MAX_FRAME_BYTES,
    max_body: int = DEFAULT_MAX_BODY_BYTES,
) -> FrameHeader:
    """Read who sent a frame and what it is, WITHOUT checking its tag.

    Nothing here may be trusted except to choose the key for `decode_frame`.
    """
    version, flags, _, body, _ = _split(data, max_size)
    msg = _parse(body, flags, max_body)
    if len(msg.device_id) != UUID_BYTES:
        raise MalformedFrame(f"device_id must be {UUID_BYTES} bytes, got {len(msg.device_id)}")
    return FrameHeader(
        version=version,
        compressed=bool(flags & FLAG_COMPRESSED),
        signed=not flags & FLAG_UNSIGNED,
        device_id=msg.device_id,
        key_id=msg.key_id,
        seq=msg.seq,
        timestamp_ms=msg.timestamp_ms,
        kind=msg.WhichOneof("body") or "",
        size=len(data),
    )


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    """(value, next index) of the varint at buf[i]; IndexError when buf ends inside it."""
    value = shift = 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, i
        shift += 7
        if shift > 63:
            raise MalformedFrame("varint longer than 10 bytes in the frame header")


_BODY_FIELDS = {5: "push", 6: "pull", 7: "heartbeat", 8: "push_ack", 9: "pull_reply", 10: "heartbeat_ack", 11: "error"}


def peek_header(data: bytes, *, max_size: int = DEFAULT_MAX_FRAME_BYTES) -> FrameHeader:
    """`peek_frame` that inflates and reads only the first bytes of the body (the server's first step).

    Our encoder writes the header fields (device, timestamp, seq, key id) before the body, so their
    values and the body's kind sit in the first `_PEEK_BYTES` inflated bytes: choosing the key costs
    no full inflate or parse, whatever the frame claims to hold. A frame laid out otherwise (legal
    protobuf, not ours) falls back to `peek_frame`.
    """
    version, flags, _, body, _ = _split(data, max_size)
    if flags & FLAG_COMPRESSED:
        try:
            prefix = zlib.decompressobj(-15).decompress(body, _PEEK_BYTES)
        except zlib.error as exc:
            raise MalformedFrame(f"compressed body is corrupt: {exc}") from None
    else:
        prefix = body[:_PEEK_BYTES]
    fields: dict[int, object] = {}
    kind = None
    i = 0
    try:
        while i < len(prefix):
            tag, i = _varint(prefix, i)
            number, wire = tag >> 3, tag & 7
            if number in _BODY_FIELDS and wire == 2:
                kind = _BODY_FIELDS[number]
                break
            if number == 1 and wire == 2:
                n, i = _varint(prefix, i)
                if i + n > len(prefix):
                    raise IndexError
                fields[1], i = prefix[i : i + n], i + n
            elif number in (2, 3, 4) and wire == 0:
                fields[number], i = _varint(prefix, i)
            else:
                break  # another layout: let the full parse judge it
    except IndexError:
        kind = None
    if kind is None:
        return peek_frame(data, max_size=max_size)
    device_id = fields.get(1, b"")
    if len(device_id) != UUID_BYTES:  # type: ignore[arg-type]
        raise MalformedFrame(f"device_id must be {UUID_BYTES} bytes, got {len(device_id)}")  # type: ignore[arg-type]
    key_id = int(fields.get(4, 0))  # type: ignore[call-overload]
    if key_id > 0xFFFFFFFF:
        raise MalformedFrame("key_id beyond uint32")
    return FrameHeader(
        version=version,
        compressed=bool(flags & FLAG_COMPRESSED),
        signed=not flags & FLAG_UNSIGNED,
        device_id=device_id,  # type: ignore[arg-type]
        key_id=key_id,
        seq=int(fields.get(3, 0)),  # type: ignore[call-overload]
        timestamp_ms=int(fields.get(2, 0)),  # type: ignore[call-overload]
        kind=kind,
        size=len(data),
    )


def verify_frame(data: bytes, key: bytes, *, max_size: int = DEFAULT_MAX_FRAME_BYTES) -> bool:
    """Whether `data` is a signed frame whose tag matches `key` (nothing is inflated or parsed)."""
    _, flags, signed, _, tag = _split(data, max_size)
    return not flags & FLAG_UNSIGNED and verify_tag(_check_key(key), signed, tag)


def decode_frame(
    data: bytes,
    key: bytes,
    *,
    expect: tuple[type, ...] | None = None,
    max_size: int = DEFAULT_MAX_FRAME_BYTES,
    max_body: int = DEFAULT_MAX_BODY_BYTES,
) -> Frame:
    """Check and parse one frame signed with `key`; ProtocolError (with a `code`) on any fault.

    expect: the body classes acceptable here, e.g. UPLINK on the cloud and
    DOWNLINK on a TV. An unsigned frame is accepted only if it holds an
    ErrorReply; it comes back with `authenticated=False`.
    """
    _, flags, signed, body, tag = _split(data, max_size)
    unsigned = bool(flags & FLAG_UNSIGNED)
    if not unsigned and not verify_tag(_check_key(key), signed, tag):
        raise BadSignature("authentication tag does not match the device key")
    frame = frame_from_pb(_parse(body, flags, max_body), authenticated=not unsigned)
    if unsigned and not isinstance(frame.body, ErrorReply):
        raise BadSignature(f"unsigned {frame.kind} frame; only error replies may be unsigned")
    if expect is not None and not isinstance(frame.body, expect):
        raise MalformedFrame(f"unexpected {frame.kind} frame here")
    return frame


def encode_error_reply(
    code: str,
    message: str = "",
    *,
    key: bytes | None = None,
    device_id: bytes | None = None,
    key_id: int = 0,
    seq: int = 0,
    retry_after_s: int = 0,
    timestamp_ms: int | None = None,
) -> bytes:
    """An error reply; signed when the device key is known, else unsigned.

    An unsigned error (e.g. for "malformed" or "unauthorized", when the cloud
    cannot tell or check who sent the frame) proves nothing, so a TV may only
    back off on it and must never change state. device_id defaults to zeros
    when unknown.
    """
    frame = Frame(
        device_id=device_id if device_id is not None else _ZERO_DEVICE,
        seq=seq,
        timestamp_ms=now_ms() if timestamp_ms is None else timestamp_ms,
        key_id=key_id,
        body=ErrorReply(code=code, message=message, retry_after_s=retry_after_s),
    )
    return encode_frame(frame, key)

