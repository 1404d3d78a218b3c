"""Typed errors of the wire protocol.

Every failure to accept bytes or build a message raises a `ProtocolError`
subclass; its `code` is the machine-readable reason sent back in an Error
reply (see `ERROR_CODES`).
"""

from __future__ import annotations

#: Every code an Error reply may carry (proto/omega.proto, message Error).
ERROR_CODES: tuple[str, ...] = (
    "malformed",
    "too_large",
    "unsupported_version",
    "bad_signature",
    "unauthorized",
    "rate_limited",
    "replay",
    "invalid_pattern",
    "internal",
)


class ProtocolError(ValueError):
    """A frame that cannot be accepted. `code` is the machine-readable reason sent in error replies."""

    code: str = "malformed"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class MalformedFrame(ProtocolError):
    """Bytes that are not a well-formed frame: bad magic, truncated, unparsable, wrong field sizes."""

    code = "malformed"


class FrameTooLarge(ProtocolError):
    """A frame, inflated body or list longer than the protocol allows."""

    code = "too_large"


class UnsupportedVersion(ProtocolError):
    """A frame of a protocol version this side does not speak."""

    code = "unsupported_version"


class BadSignature(ProtocolError):
    """The authentication tag does not match the device key (or is missing)."""

    code = "bad_signature"


class Unauthorized(ProtocolError):
    """A device token or key that cannot be used at all."""

    code = "unauthorized"


class InvalidPattern(ProtocolError):
    """A pattern or embedding whose values are out of range (NaN, wrong length, rate > 1...)."""

    code = "invalid_pattern"
