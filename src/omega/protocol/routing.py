"""The device header: which device a request or WebSocket carries frames of, readable without the frame.

A TV names its device id in `X-Omega-Device` (32 lowercase hex digits) on every `POST /v1/sync` and on its
WebSocket upgrade. The id also sits inside each signed frame, where a proxy cannot read it; the header lets
one pin a device to one worker (HAProxy `balance hdr(X-Omega-Device)`), so that worker's in-process replay
window and rate limit see all of that device's frames. The header is not authenticated by itself: the
server checks that it names the device of every signed frame on that request or connection, so changing
it steers a captured frame nowhere but to a refusal.
"""

from __future__ import annotations

from omega.protocol.auth import DEVICE_ID_BYTES

DEVICE_HEADER = "X-Omega-Device"
#: As ASGI servers hand header names over: lowercase bytes.
DEVICE_HEADER_KEY = DEVICE_HEADER.lower().encode("ascii")


def device_header_value(device_id: bytes) -> str:
    """The header's value for `device_id`: its hex digits (lowercase), the form a proxy hashes."""
    return device_id.hex()


def parse_device_header(value: bytes | str) -> bytes | None:
    """The device id a header value names, or None unless it is exactly 2 x DEVICE_ID_BYTES lowercase hex digits.

    Only the one spelling a TV sends is accepted: a proxy hashes the header's text, so "AB…" and "ab…" (same
    device) could reach different workers, and a replay window kept per worker would see the frame twice.
    """
    text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
    if len(text) != 2 * DEVICE_ID_BYTES or not _LOWER_HEX.issuperset(text):
        return None
    return bytes.fromhex(text)


_LOWER_HEX = frozenset("0123456789abcdef")
