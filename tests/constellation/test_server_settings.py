"""Settings, keyring, replay window, rate limiter and the in-process cache (no server)."""

from __future__ import annotations

import pytest

from omega.constellation.cache import LocalCache
from omega.constellation.keyring import Keyring, parse_device_id
from omega.constellation.settings import load_settings, with_dev_secret
from omega.constellation.validation import RateLimiter, ReplayGuard
from omega.errors import OmegaError
from omega.protocol import derive_device_key, parse_token

SECRET = "a-server-secret-of-some-length-000"


def test_priority_defaults_file_env_flags(tmp_path) -> None:  # noqa: ANN001
    cfg = tmp_path / "omega.toml"
    cfg.write_text('port = 9000\nregion = "from-file"\nrate_burst = 5\nmin_samples = 4\n')
    s = load_settings(cfg, env={"OMEGA_SECRET": SECRET, "OMEGA_REGION": "from-env", "OMEGA_RATE_BURST": "7"},
                      overrides={"region": "from-flag", "port": None})  # fmt: skip
    assert (s.port, s.region, s.rate_burst, s.min_samples, s.host) == (9000, "from-flag", 7, 4, "127.0.0.1")
    assert s.secrets == {1: SECRET.encode()} and s.active_key_id == 1


def test_rotation_secrets_and_salt_stability() -> None:
    one = load_settings(env={"OMEGA_SECRETS": f"1:{'11' * 32}"})
    two = load_settings(env={"OMEGA_SECRETS": f"1:{'11' * 32},2:{'22' * 32}"})
    assert two.active_key_id == 2  # the newest issues tokens; key 1 still verifies
    assert one.aggregation_salt() == two.aggregation_salt()  # rotation keeps the store's salt
    assert load_settings(env={"OMEGA_SECRETS": f"1:{'11' * 32},2:{'22' * 32}", "OMEGA_ACTIVE_KEY_ID": "1"}).active_key_id == 1


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"OMEGA_PORT": "70000"}, "port"),
        ({"OMEGA_PORT": "eighty"}, "port"),
        ({"OMEGA_STORE": "mysql://x"}, "store"),
        ({"OMEGA_SECRET": "short"}, "at least 16"),
        ({"OMEGA_SECRETS": "1:zz"}, "OMEGA_SECRETS"),
        ({"OMEGA_SECRETS": f"1:{'11' * 32}", "OMEGA_ACTIVE_KEY_ID": "3"}, "active key id"),
        ({"OMEGA_REDIS": "http://x"}, "redis"),
        ({"OMEGA_RATE_PER_S": "-1"}, "rate_per_s"),
        ({"OMEGA_PULL_MAX_BYTES": "10"}, "pull_max_bytes"),
    ],
)
def test_bad_settings_are_one_clear_error(env: dict, message: str) -> None:
    with pytest.raises(OmegaError, match=message):
        load_settings(env=env)


def test_bad_config_files(tmp_path) -> None:  # noqa: ANN001
    bad = tmp_path / "bad.toml"
    bad.write_text("port = [")
    with pytest.raises(OmegaError, match="not valid TOML"):
        load_settings(bad, env={})
    unknown = tmp_path / "u.json"
    unknown.write_text('{"prot": 1}')
    with pytest.raises(OmegaError, match="unknown settings: prot"):
        load_settings(unknown, env={})
    with pytest.raises(OmegaError, match="cannot read config"):
        load_settings(tmp_path / "missing.toml", env={})
    nul = tmp_path / "nul.json"  # JSON can carry a NUL byte into a path (it was a ValueError, "internal error")
    nul.write_text('{"store": "sqlite:' + str(tmp_path) + '/a\\u0000b.db"}')
    with pytest.raises(OmegaError, match="NUL byte"):
        with_dev_secret(load_settings(nul, env={}))


def test_dev_secret_is_generated_once_beside_a_sqlite_store(tmp_path) -> None:  # noqa: ANN001
    s = load_settings(env={}, overrides={"store": f"sqlite:{tmp_path / 'c.db'}"})
    with pytest.raises(OmegaError, match="no server secret"):
        with_dev_secret(s, create=False)
    first = with_dev_secret(s)
    assert (tmp_path / "omega-secret").stat().st_mode & 0o777 == 0o600
    assert with_dev_secret(s).secrets == first.secrets
    pg = load_settings(env={}, overrides={"store": "postgresql://u@h/db"})
    with pytest.raises(OmegaError, match="OMEGA_SECRET"):
        with_dev_secret(pg)


def test_keyring_tokens_match_the_protocol_derivation() -> None:
    ring = Keyring({1: b"k" * 32, 2: b"j" * 32}, 2)
    device = parse_device_id("01234567-89ab-cdef-0123-456789abcdef")
    key_id, key = parse_token(ring.token(device))
    assert key_id == 2 and key == derive_device_key(b"j" * 32, device, 2)
    assert parse_token(ring.token(device, 1))[1] == derive_device_key(b"k" * 32, device, 1)
    with pytest.raises(OmegaError, match="not configured"):
        ring.token(device, 5)
    with pytest.raises(OmegaError, match="UUID"):
        parse_device_id("not-a-uuid")


def test_replay_guard_window_and_seq() -> None:
    guard = ReplayGuard(window_ms=300_000)
    d = b"d" * 16
    assert guard.check(d, 5, 1_000_000, 1_000_000) is None
    assert "seq 5" in guard.check(d, 5, 1_000_000, 1_000_100)
    assert "seq 4" in guard.check(d, 4, 1_000_000, 1_000_100)
    assert guard.check(d, 6, 1_000_000, 1_000_100) is None
    assert "window" in guard.check(d, 7, 1_000_000 - 300_001, 1_000_000)
    assert "window" in guard.check(d, 7, 1_000_000 + 300_001, 1_000_000)
    assert guard.check(b"e" * 16, 1, 1_000_000, 1_000_000) is None  # seqs are per device
    assert guard.sweep(2_000_000) == 2 and len(guard) == 0


def test_rate_limiter_bucket() -> None:
    limiter = RateLimiter(rate=2.0, burst=3)
    d = b"d" * 16
    assert [limiter.take(d, 10.0) for _ in range(4)] == [0, 0, 0, 1]
    assert limiter.take(d, 10.5) == 0  # half a second refills one token at 2/s
    assert limiter.take(d, 10.5) == 1
    assert limiter.sweep(100.0) == 1


async def test_local_cache_lru_and_devices() -> None:
    cache = LocalCache(entries=2, ttl_s=60)
    await cache.put_page(1, 0, 5000, b"a")
    await cache.put_page(1, 5, 5000, b"b")
    await cache.put_page(2, 0, 5000, b"c")
    assert await cache.get_page(1, 0, 5000) is None  # evicted (LRU)
    assert await cache.get_page(2, 0, 5000) == b"c"
    assert await cache.note_head(7) == 7 and await cache.note_head(3) == 7
    for n in range(5):
        await cache.add_device(bytes([n]) * 16, 3_600_000 * 10 + n)
    await cache.add_device(bytes([0]) * 16, 3_600_000 * 10)
    assert await cache.distinct_devices(3_600_000 * 10) == 5
    assert await cache.distinct_devices(3_600_000 * 11) == 0
