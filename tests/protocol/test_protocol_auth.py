"""Device keys, tokens and tags."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from omega.protocol import (
    Frame,
    Heartbeat,
    Tier,
    Unauthorized,
    compute_tag,
    decode_frame,
    derive_device_key,
    encode_frame,
    format_token,
    parse_token,
    verify_tag,
)

SECRET = b"server-secret-0123456789abcdef"
DEVICE = bytes(range(16))


def test_derivation_is_deterministic_and_separates_devices_keys_and_secrets() -> None:
    key = derive_device_key(SECRET, DEVICE, 1)
    assert len(key) == 32 and key == derive_device_key(SECRET, DEVICE, 1)
    others = {
        derive_device_key(SECRET, bytes(16), 1),
        derive_device_key(SECRET, DEVICE, 2),
        derive_device_key(SECRET + b"!", DEVICE, 1),
    }
    assert key not in others and len(others) == 3


@pytest.mark.parametrize(
    ("secret", "device", "key_id"),
    [(b"short", DEVICE, 0), (SECRET, b"x" * 15, 0), (SECRET, DEVICE, -1), (SECRET, DEVICE, 2**32), ("str", DEVICE, 0)],
)
def test_derivation_rejects_bad_arguments(secret: bytes, device: bytes, key_id: int) -> None:
    with pytest.raises(Unauthorized):
        derive_device_key(secret, device, key_id)


@settings(max_examples=100, deadline=None)
@given(key_id=st.integers(0, 2**32 - 1), key=st.binary(min_size=32, max_size=32))
def test_token_round_trip(key_id: int, key: bytes) -> None:
    token = format_token(key_id, key)
    assert token.isprintable() and " " not in token
    assert parse_token(token) == (key_id, key)
    assert parse_token(f"  {token}\n") == (key_id, key)


@pytest.mark.parametrize(
    "token",
    [
        "",
        "omega1.1.",
        "omega2.1." + "A" * 43,
        "omega1.01." + "A" * 43,
        "omega1.-1." + "A" * 43,
        "omega1.4294967296." + "A" * 43,
        "omega1.1." + "A" * 42,
        "omega1.1." + "A" * 44,
        "omega1.1." + "A" * 42 + "=",
        "omega1.1." + "A" * 42 + "B",  # non-canonical: stray low bits
        "omega1.1." + "A" * 42 + "+",
        "omega1 1 " + "A" * 43,
    ],
)
def test_bad_tokens(token: str) -> None:
    with pytest.raises(Unauthorized) as info:
        parse_token(token)
    assert info.value.code == "unauthorized"


def test_non_string_token() -> None:
    with pytest.raises(Unauthorized):
        parse_token(b"omega1.1.xxx")  # type: ignore[arg-type]


def test_format_token_rejects_bad_keys() -> None:
    with pytest.raises(Unauthorized):
        format_token(1, b"x" * 31)
    with pytest.raises(Unauthorized):
        format_token(-1, b"x" * 32)


def test_tags() -> None:
    tag = compute_tag(b"k" * 32, b"data")
    assert len(tag) == 16
    assert verify_tag(b"k" * 32, b"data", tag)
    assert not verify_tag(b"k" * 32, b"datA", tag)
    assert not verify_tag(b"K" * 32, b"data", tag)
    assert not verify_tag(b"k" * 32, b"data", tag[:15])


@pytest.mark.parametrize("openssl_object", [True, False])
def test_tags_are_truncated_hmac_sha256_through_either_hmac(openssl_object: bool, monkeypatch) -> None:  # noqa: ANN001
    """compute_tag uses OpenSSL's HMAC object (it keeps the GIL) when the probe found it, else the hmac module."""
    import hmac

    from omega.protocol import auth

    if not openssl_object:
        monkeypatch.setattr(auth, "_openssl_hmac", None)
    key = bytes(range(32))
    for size in (0, 1, 54, 607, 2047, 2048, 9000):  # 2 KiB: where OpenSSL's object starts releasing the GIL
        data = bytes((i * 7) % 256 for i in range(size))
        want = hmac.digest(key, data, "sha256")[:16]
        assert compute_tag(key, data) == want
        assert compute_tag(key, bytearray(data)) == want
        assert verify_tag(key, data, want)
    mac = auth.new_mac(key)
    mac.update(b"omega")
    assert mac.copy().digest() == hmac.digest(key, b"omega", "sha256")


def test_server_and_tv_agree_through_the_token() -> None:
    """The cloud derives the key from (secret, device, key_id); the TV holds it as a token."""
    key_id, tv_key = parse_token(format_token(7, derive_device_key(SECRET, DEVICE, 7)))
    data = encode_frame(Frame(DEVICE, 1, 2, Heartbeat(Tier.PREMIUM), key_id=key_id), tv_key)
    from omega.protocol import peek_frame

    header = peek_frame(data)
    server_key = derive_device_key(SECRET, header.device_id, header.key_id)
    assert decode_frame(data, server_key).body == Heartbeat(Tier.PREMIUM)
