"""Device keys, printable tokens and frame tags (HMAC-SHA256).

A device key is derived from a server secret, so the cloud stores no per-device
keys: it re-derives the key from (secret[key_id], device_id) for every frame.
Rotating the secret means issuing tokens under a new key_id while the old one
is still accepted.
"""

from __future__ import annotations

import base64
import hmac
import re

from omega.protocol.errors import Unauthorized

DEVICE_ID_BYTES = 16
DEVICE_KEY_BYTES = 32
TAG_BYTES = 16
MIN_SECRET_BYTES = 16
MAX_KEY_ID = 0xFFFFFFFF

try:  # OpenSSL's HMAC object (what hmac.HMAC wraps): a private CPython module, so probed once and the public
    # hmac API taken instead if it is absent (a Python without OpenSSL) or behaves otherwise than 3.11-3.13's
    from _hashlib import hmac_new as _openssl_hmac

    if _openssl_hmac(b"k", b"m", digestmod="sha256").copy().digest() != hmac.digest(b"k", b"m", "sha256"):
        _openssl_hmac = None  # pragma: no cover
except Exception:  # noqa: BLE001  # pragma: no cover - ImportError, or another signature
    _openssl_hmac = None

_DERIVE_LABEL = b"omega/device-key/v1"
_TOKEN_PREFIX = "omega1"
_TOKEN_RE = re.compile(r"omega1\.(0|[1-9][0-9]{0,9})\.([A-Za-z0-9_-]{43})")


def _check_key_id(key_id: int) -> None:
    if isinstance(key_id, bool) or not isinstance(key_id, int) or not 0 <= key_id <= MAX_KEY_ID:
        raise Unauthorized(f"key_id must be an integer in [0, {MAX_KEY_ID}], got {key_id!r}")


def derive_device_key(secret: bytes, device_id: bytes, key_id: int) -> bytes:
    """The 32-byte key of `device_id` under the server secret numbered `key_id`."""
    if not isinstance(secret, bytes) or len(secret) < MIN_SECRET_BYTES:
        raise Unauthorized(f"server secret must be at least {MIN_SECRET_BYTES} bytes")
    if not isinstance(device_id, bytes) or len(device_id) != DEVICE_ID_BYTES:
        raise Unauthorized(f"device id must be {DEVICE_ID_BYTES} bytes")
    _check_key_id(key_id)
    msg = _DERIVE_LABEL + key_id.to_bytes(4, "big") + device_id
    return hmac.digest(secret, msg, "sha256")


def format_token(key_id: int, key: bytes) -> str:
    """A printable device token, `omega1.<key_id>.<base64url key>`."""
    _check_key_id(key_id)
    if not isinstance(key, bytes) or len(key) != DEVICE_KEY_BYTES:
        raise Unauthorized(f"device key must be {DEVICE_KEY_BYTES} bytes")
    b64 = base64.urlsafe_b64encode(key).rstrip(b"=").decode("ascii")
    return f"{_TOKEN_PREFIX}.{key_id}.{b64}"


def parse_token(token: str) -> tuple[int, bytes]:
    """(key_id, device key) from a token made by `format_token`; Unauthorized if it is not one."""
    if not isinstance(token, str):
        raise Unauthorized("device token must be a string")
    match = _TOKEN_RE.fullmatch(token.strip())
    if match is None:
        raise Unauthorized("device token is not of the form omega1.<key_id>.<43 base64url characters>")
    key_id = int(match.group(1))
    _check_key_id(key_id)
    b64 = match.group(2)
    key = base64.urlsafe_b64decode(b64 + "=")
    # 43 characters carry 258 bits; a token whose last 2 bits are not zero is not canonical.
    if base64.urlsafe_b64encode(key).rstrip(b"=").decode("ascii") != b64:
        raise Unauthorized("device token has a non-canonical key encoding")
    return key_id, key


def new_mac(key: bytes, data: bytes | None = None):  # noqa: ANN201 - an HMAC-SHA256 object (OpenSSL's, or hmac.HMAC)
    """An HMAC-SHA256 object keyed with `key` (and fed `data`): `.update`, `.copy`, `.digest` as hmac.HMAC's."""
    if _openssl_hmac is not None:
        return _openssl_hmac(key, data, digestmod="sha256")
    return hmac.new(key, data, "sha256")


def compute_tag(key: bytes, data: bytes) -> bytes:
    """HMAC-SHA256(key, data) truncated to 16 bytes."""
    # Not hmac.digest: CPython 3.11's one-shot releases the GIL around every HMAC, so on a server whose
    # SQLite writer thread waits for the GIL each frame's two tags were two hand-offs (and the loop waited to
    # get it back); it also fetches the MAC algorithm per call. OpenSSL's HMAC object keeps the GIL below
    # 2 KiB and costs ~2.4 instead of ~3.9 us for a 600-byte frame. Same bytes.
    return new_mac(key, data).digest()[:TAG_BYTES]


def verify_tag(key: bytes, data: bytes, tag: bytes) -> bool:
    """Whether `tag` authenticates `data` under `key` (constant-time comparison)."""
    return hmac.compare_digest(compute_tag(key, data), tag)
