"""The server's device-key ring: secrets by key id, derived device keys, token issuing.

The cloud stores no per-device keys: a device key is HMAC(secret[key_id], device_id),
re-derived per frame. Derivations are memoised (bounded) because a connected TV
sends many frames.
"""

from __future__ import annotations

from collections import OrderedDict

from omega.errors import OmegaError
from omega.protocol import DEVICE_ID_BYTES, derive_device_key, format_token


class Keyring:
    def __init__(self, secrets: dict[int, bytes], active_key_id: int, *, cache_size: int = 65_536) -> None:
        if not secrets:
            raise OmegaError("the keyring needs at least one server secret")
        if active_key_id not in secrets:
            raise OmegaError(f"active key id {active_key_id} has no secret")
        self._secrets = dict(secrets)
        self.active_key_id = active_key_id
        self._cache: OrderedDict[tuple[int, bytes], bytes] = OrderedDict()
        self._cache_size = cache_size

    @property
    def key_ids(self) -> frozenset[int]:
        return frozenset(self._secrets)

    def knows(self, key_id: int) -> bool:
        return key_id in self._secrets

    def device_key(self, device_id: bytes, key_id: int) -> bytes:
        """The key of `device_id` under secret `key_id`; KeyError if that key id is not configured."""
        slot = (key_id, device_id)
        key = self._cache.get(slot)
        if key is not None:
            self._cache.move_to_end(slot)
            return key
        key = derive_device_key(self._secrets[key_id], device_id, key_id)
        self._cache[slot] = key
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return key

    def token(self, device_id: bytes, key_id: int | None = None) -> str:
        """The printable token a TV holds (`omega1.<key_id>.<key>`)."""
        if not isinstance(device_id, bytes) or len(device_id) != DEVICE_ID_BYTES:
            raise OmegaError(f"device id must be {DEVICE_ID_BYTES} bytes")
        kid = self.active_key_id if key_id is None else key_id
        if kid not in self._secrets:
            raise OmegaError(f"key id {kid} is not configured (known: {sorted(self._secrets)})")
        return format_token(kid, self.device_key(device_id, kid))


def parse_device_id(text: str) -> bytes:
    """A device id given as a UUID (with or without dashes) or 32 hex digits → 16 bytes."""
    import uuid

    try:
        return uuid.UUID(text.strip()).bytes
    except (ValueError, AttributeError):
        raise OmegaError(f"device id must be a UUID or 32 hex digits, got {text!r}") from None
