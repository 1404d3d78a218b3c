"""Sync state kept among the brain store's named values (`get_state`): seq counter, pull cursor, device identity.

The seq counter is advanced in its own committed transaction *before* a frame
is sent, so a crash or restart can never send the same seq twice (the cloud's
replay window would reject it).
"""

from __future__ import annotations

import uuid

from omega.brain.store import BrainStore
from omega.errors import OmegaError
from omega.protocol import DEVICE_ID_BYTES, ProtocolError, parse_token

SEQ_KEY = "sync.seq"
CURSOR_KEY = "sync.cursor"
REFINED_KEY = "sync.refined_cursor"
DEVICE_ID_KEY = "sync.device_id"
TOKEN_KEY = "sync.token"
TIER_KEY = "sync.tier"
SERVER_KEY = "sync.server_url"

_U64 = (1 << 64) - 1


def _read_int(store: BrainStore, key: str) -> int:
    found = store.get_state(key)
    if found is None:
        return 0
    try:
        value = int(found)
    except ValueError:
        raise OmegaError(f"sync state {key} holds {found!r}, not an integer") from None
    if not 0 <= value <= _U64:
        raise OmegaError(f"sync state {key} is out of range: {value}")
    return value


def allocate_seq(store: BrainStore) -> int:
    """The next frame sequence number, committed before it is used."""
    with store.transaction():
        seq = _read_int(store, SEQ_KEY) + 1
        if seq > _U64:
            raise OmegaError("frame sequence numbers are exhausted")
        store.set_state(SEQ_KEY, str(seq))
    return seq


def last_seq(store: BrainStore) -> int:
    return _read_int(store, SEQ_KEY)


def cursor(store: BrainStore) -> int:
    """The cursor of the last PullReply this TV committed (0: nothing pulled yet)."""
    return _read_int(store, CURSOR_KEY)


def set_cursor(store: BrainStore, value: int) -> None:
    """Advance the cursor; call it inside the transaction that merged the page, so both commit together."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _U64:
        raise OmegaError(f"pull cursor must be a uint64, got {value!r}")
    store.set_state(CURSOR_KEY, str(value))


def refined_cursor(store: BrainStore) -> int:
    """Where this TV stands in the cloud's refined-neighbour release (0: nothing pulled yet)."""
    return _read_int(store, REFINED_KEY)


def set_refined_cursor(store: BrainStore, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _U64:
        raise OmegaError(f"refined cursor must be a uint64, got {value!r}")
    store.set_state(REFINED_KEY, str(value))


def parse_device_id(text: str) -> bytes:
    """A device id given as a UUID (any standard spelling) or 32 hex digits -> 16 bytes."""
    try:
        return uuid.UUID(str(text).strip()).bytes
    except ValueError:
        raise OmegaError(f"device id must be a UUID (32 hex digits), got {text!r}") from None


def check_token(token: str) -> tuple[int, bytes]:
    """(key_id, key) of a device token, or OmegaError with the reason."""
    try:
        return parse_token(token)
    except ProtocolError as exc:
        raise OmegaError(f"bad device token: {exc}") from None


def save_identity(store: BrainStore, device_id: bytes, token: str) -> None:
    """Remember the device id and token, so later syncs need neither."""
    if not isinstance(device_id, bytes) or len(device_id) != DEVICE_ID_BYTES:
        raise OmegaError(f"device id must be {DEVICE_ID_BYTES} bytes")
    check_token(token)
    with store.transaction():
        store.set_state(DEVICE_ID_KEY, str(uuid.UUID(bytes=device_id)))
        store.set_state(TOKEN_KEY, token.strip())


def load_identity(store: BrainStore) -> tuple[bytes, str] | None:
    """(device id, token) stored by `save_identity`, or None."""
    device = store.get_state(DEVICE_ID_KEY)
    token = store.get_state(TOKEN_KEY)
    if device is None or token is None:
        return None
    return parse_device_id(device), token
