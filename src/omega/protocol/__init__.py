"""The wire format shared by TV and cloud: schema, codec, quantisation (sans-I/O).

Bytes in, typed messages out; no sockets, no asyncio. The schema is
proto/omega.proto; `omega_pb2` is generated from it by scripts/gen_proto.

The codec's names (and with them protobuf and `omega_pb2`) load on first use
(`__getattr__` below): every brain module reads a constant from this package,
and a TV that only ranks never encodes a frame (protobuf's import is ~2.3 MB of
its RSS). `from omega.protocol import decode_frame` works as before.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from omega.protocol.auth import (
    DEVICE_ID_BYTES,
    DEVICE_KEY_BYTES,
    TAG_BYTES,
    compute_tag,
    derive_device_key,
    format_token,
    parse_token,
    verify_tag,
)
from omega.protocol.errors import (
    ERROR_CODES,
    BadSignature,
    FrameTooLarge,
    InvalidPattern,
    MalformedFrame,
    ProtocolError,
    Unauthorized,
    UnsupportedVersion,
)
from omega.protocol.messages import (
    BODY_KINDS,
    DEFAULT_PULL_BYTES,
    DOWNLINK,
    EMBEDDING_DIM,
    MAX_COWATCH_PER_PUSH,
    MAX_PATTERNS_PER_PUSH,
    MAX_TRANSITIONS,
    REFINED_WANTED,
    SUPPORT_FLOOR_C,
    SYNC_TIERS,
    UPLINK,
    WEIGHT_SCALE,
    Body,
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
    Rejection,
    TaskType,
    Tier,
    Transition,
    TransitionBatch,
    passes_support_floor,
    refined_cursor,
    refined_release_of,
)
from omega.protocol.quantize import QuantizedEmbedding, dequantize, quantize
from omega.protocol.routing import DEVICE_HEADER, DEVICE_HEADER_KEY, device_header_value, parse_device_header

if TYPE_CHECKING:  # for type checkers and readers; at run time `__getattr__` loads them
    from omega.protocol.codec import (
        DEFAULT_MAX_BODY_BYTES,
        DEFAULT_MAX_FRAME_BYTES,
        PROTOCOL_VERSION,
        FrameHeader,
        PreparedBody,
        decode_frame,
        encode_error_reply,
        encode_frame,
        encode_prepared,
        now_ms,
        peek_frame,
        peek_header,
        prepare_body,
        verify_frame,
    )

#: names loaded on first use, and the module that defines them
_LAZY = dict.fromkeys(
    (
        "DEFAULT_MAX_BODY_BYTES", "DEFAULT_MAX_FRAME_BYTES", "PROTOCOL_VERSION", "FrameHeader", "PreparedBody",
        "decode_frame", "encode_error_reply", "encode_frame", "encode_prepared", "now_ms", "peek_frame", "peek_header",
        "prepare_body", "verify_frame",
    ),
    "omega.protocol.codec",
)  # fmt: skip

__all__ = [
    "BODY_KINDS", "DEFAULT_MAX_BODY_BYTES",
    "DEVICE_HEADER", "DEVICE_HEADER_KEY", "DEFAULT_MAX_FRAME_BYTES", "DEFAULT_PULL_BYTES",
    "DEVICE_ID_BYTES", "DEVICE_KEY_BYTES", "DOWNLINK", "EMBEDDING_DIM", "ERROR_CODES",
    "MAX_COWATCH_PER_PUSH",
    "MAX_PATTERNS_PER_PUSH", "MAX_TRANSITIONS", "PROTOCOL_VERSION", "REFINED_WANTED", "SUPPORT_FLOOR_C", "SYNC_TIERS", "TAG_BYTES", "UPLINK",
    "WEIGHT_SCALE",
    "BadSignature", "Body", "ConsolidatedPattern", "EmbeddingPattern", "ErrorReply", "Frame",
    "FrameHeader", "FrameTooLarge", "Heartbeat", "HeartbeatAck", "InvalidPattern", "Keyspace",
    "MalformedFrame", "PreparedBody", "ProtocolError", "Pull", "PullReply", "Push", "PushAck", "QuantizedEmbedding",
    "Rejection", "TaskType", "Tier", "Transition", "TransitionBatch", "Unauthorized",
    "UnsupportedVersion",
    "device_header_value", "parse_device_header",
    "compute_tag", "decode_frame", "dequantize", "derive_device_key", "encode_error_reply",
    "encode_frame", "encode_prepared", "format_token", "now_ms", "parse_token", "peek_frame", "peek_header", "prepare_body", "quantize",
    "passes_support_floor", "refined_cursor", "refined_release_of", "verify_frame", "verify_tag",
]


def __getattr__(name: str) -> Any:
    """A lazy name (`_LAZY`): import its module once, then it is an ordinary attribute of the package."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
