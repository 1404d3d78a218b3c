"""Settings of one sync server: defaults < config file (TOML/JSON) < environment < CLI flags.

Every value is validated here, so a bad setting is one clear `OmegaError`
before anything opens. Secrets:

- `OMEGA_SECRET` (text, ≥ 16 bytes) is the server secret of key id 1 (or
  `OMEGA_KEY_ID`); `OMEGA_SECRETS="1:HEX,2:HEX"` holds several for rotation,
  with `OMEGA_ACTIVE_KEY_ID` naming the one new tokens are issued under. Old
  key ids keep verifying as long as they stay listed.
- Neither set and a `sqlite:` store: a random secret is generated once into
  `omega-secret` beside the store file (a development convenience, logged).
  With any other store the secret is required.
- The aggregation salt (`OMEGA_SALT`, hex) defaults to a value derived from the
  secret of the LOWEST key id, so rotating to a new key keeps the salt as long
  as the old key stays listed; retiring it needs OMEGA_SALT set explicitly
  (the store refuses a different salt rather than double-counting support).
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import logging
import math
import os
import re
import secrets as _random
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omega.constellation.privacy import DEFAULT_K_MIN, DEFAULT_W_MAX, check_k_min
from omega.errors import OmegaError

log = logging.getLogger("omega.serve")

MIN_SECRET_BYTES = 16
SECRET_FILE = "omega-secret"
_SALT_LABEL = b"omega/aggregation-salt/v1"
_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,64}")
_SUBJECT_PREFIX = re.compile(r"[A-Za-z0-9_-]{1,64}(\.[A-Za-z0-9_-]{1,64}){0,7}")


#: Shipped staleness bound of pulls, seconds (`pull_snapshot_s`): a pull reflects every push acknowledged
#: at least this long before it; later ones reach the TV at its next sync (a delay, never a skip). Measured
#: with `omega bench sync` (bench/README.md): pulls from one cursor share one cached page, and a TV already
#: at the served head costs no store read. A TV syncs every 60 s at the most, so 5 s is within its own jitter.
PULL_SNAPSHOT_S = 5.0


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8700
    store: str = "sqlite:omega-constellation.db"
    redis: str | None = None
    nats: str | None = None
    shard_id: str | None = None  # None: the store keeps the origin it was created with
    region: str = "local"
    # federation (over --nats, else embedded in-process) and trends
    federation_interval_s: float = 60.0  # one round: publish own changes, merge the global broadcast
    federation_prefix: str = "omega.fed"  # subject prefix (tests use their own)
    federation_stream_prefix: str = "OMEGA"  # JetStream stream names: <prefix>_SHARD, _REGION, _BROADCAST
    federation_replicas: int = 1  # stream replicas when this server creates them (3 on a 3-node cluster)
    trend_window_s: float = 3600.0  # distinct-device counts per cell per window, scored against an EWMA
    codebook: str | None = None  # .npz from `omega codebook build`; None: a seeded placeholder codebook
    secrets: dict[int, bytes] = field(default_factory=dict, repr=False)
    active_key_id: int = 1
    salt: bytes | None = field(default=None, repr=False)
    # validation
    replay_window_s: float = 300.0
    rate_per_s: float = 10.0
    rate_burst: int = 20
    min_samples: int = 10
    max_frame_bytes: int = 16 * 1024
    pull_max_bytes: int = 5000
    #: Pulls see the store head as it was at most this long ago (0: the live head). Every TV pulling from
    #: the same cursor within it gets the same cached page, and a TV at that head costs no store read.
    pull_snapshot_s: float = PULL_SNAPSHOT_S
    #: Transition edges one push may carry here (a TV sends 48 by default); sizes the push inflate cap.
    max_push_edges: int = 1024
    # hostile load: deadlines and connection caps
    request_timeout_s: float = 10.0  # a connection must deliver a complete HTTP request within this
    ws_auth_timeout_s: float = 10.0  # a WebSocket must send an authenticated first frame within this
    max_connections: int = 16_000  # open connections (HTTP + WebSocket); also kept below the fd limit
    max_connections_per_ip: int = 512  # 0: no per-address cap (behind a proxy every peer is the proxy)
    #: Bearer token for /metrics, /dashboard and the read-only /v1/* JSON; None: loopback peers only.
    admin_token: str | None = field(default=None, repr=False)
    # aggregation. The store's pull index is built for k_min: a server started with another one rebuilds it once
    # (ConstellationStore.set_pull_floor; 17-91 ms per 200,000 served keys, bench/results/pull-scan-*.json).
    k_min: int = DEFAULT_K_MIN
    w_max: float = DEFAULT_W_MAX
    # differential privacy at publication (ε, δ per TV per day; 0 = off: k_min only). See privacy.py.
    dp_epsilon: float = 0.0
    dp_delta: float = 1e-6
    # tiers: the interval a heartbeat ack asks for (seconds)
    premium_sync_s: int = 60
    active_sync_s: int = 300
    casual_sync_s: int = 900
    # housekeeping and lifecycle
    prune_interval_s: float = 60.0
    drain_timeout_s: float = 10.0
    cache_entries: int = 4096
    cache_ttl_s: float = 30.0
    redis_cooldown_s: float = 5.0
    redis_timeout_s: float = 0.25
    log_level: str = "info"
    #: Worker processes serving one port (SO_REUSEPORT); more than one needs PostgreSQL, and Redis unless pinned.
    workers: int = 1
    #: Devices pinned to a worker by a proxy that hashes the X-Omega-Device header (omega.protocol.routing):
    #: every sync request must carry the header, and with workers > 1 worker i listens on port + i (no shared
    #: port), so each worker's in-process replay window and rate limit see all of its devices' frames.
    pinned: bool = False
    # transport: serve https/wss with this certificate chain and private key (PEM files); both or neither
    tls_cert: str | None = None
    tls_key: str | None = None

    def __post_init__(self) -> None:
        _check(isinstance(self.host, str) and self.host != "", "host must be a non-empty string")
        _check(isinstance(self.port, int) and 0 <= self.port <= 65535, f"port must be in 0..65535, got {self.port!r}")
        _check(isinstance(self.store, str) and self.store.startswith(("sqlite:", "postgresql://", "postgres://")),
               f"store must be sqlite:PATH or postgresql://..., got {self.store!r}")  # fmt: skip
        if self.redis is not None:
            _check(self.redis.startswith(("redis://", "rediss://", "unix://")), f"redis must be a redis:// URL, got {self.redis!r}")
        if self.nats is not None:
            _check(all(u.strip().startswith(("nats://", "tls://")) for u in self.nats.split(",")),
                   f"nats must be nats://host:port[,nats://...], got {self.nats!r}")  # fmt: skip
        # Shard and region names are NATS subject tokens in federation.
        if self.shard_id is not None:
            _check(isinstance(self.shard_id, str) and _TOKEN.fullmatch(self.shard_id) is not None,
                   f"shard id must be 1..64 characters of A-Z a-z 0-9 _ -, got {self.shard_id!r}")  # fmt: skip
        _check(isinstance(self.region, str) and _TOKEN.fullmatch(self.region) is not None,
               f"region must be 1..64 characters of A-Z a-z 0-9 _ -, got {self.region!r}")  # fmt: skip
        _check(isinstance(self.federation_prefix, str) and _SUBJECT_PREFIX.fullmatch(self.federation_prefix) is not None,
               f"federation_prefix must be dot-separated tokens of A-Z a-z 0-9 _ -, got {self.federation_prefix!r}")  # fmt: skip
        _check(isinstance(self.federation_stream_prefix, str) and _TOKEN.fullmatch(self.federation_stream_prefix) is not None,
               f"federation_stream_prefix must be 1..64 characters of A-Z a-z 0-9 _ -, got {self.federation_stream_prefix!r}")  # fmt: skip
        for kid, secret in self.secrets.items():
            _check(isinstance(kid, int) and 0 <= kid <= 0xFFFFFFFF, f"key id must be in 0..4294967295, got {kid!r}")
            _check(isinstance(secret, bytes) and len(secret) >= MIN_SECRET_BYTES,
                   f"secret of key id {kid} must be at least {MIN_SECRET_BYTES} bytes")  # fmt: skip
        if self.secrets:
            _check(self.active_key_id in self.secrets, f"active key id {self.active_key_id} has no secret")
        if self.salt is not None:
            _check(len(self.salt) >= 16, "salt must be at least 16 bytes")
        for name in ("replay_window_s", "rate_per_s", "w_max", "prune_interval_s", "drain_timeout_s",
                     "cache_ttl_s", "redis_cooldown_s", "redis_timeout_s", "federation_interval_s",
                     "trend_window_s", "request_timeout_s", "ws_auth_timeout_s"):  # fmt: skip
            value = getattr(self, name)
            _check(isinstance(value, (int, float)) and math.isfinite(value) and value > 0, f"{name} must be a positive number")
        for name, lo in (("rate_burst", 1), ("min_samples", 1), ("max_frame_bytes", 64),
                         ("pull_max_bytes", 600), ("cache_entries", 1), ("premium_sync_s", 1),
                         ("active_sync_s", 1), ("casual_sync_s", 1), ("federation_replicas", 1), ("max_push_edges", 1), ("max_connections", 1),
                         ("max_connections_per_ip", 0)):  # fmt: skip
            value = getattr(self, name)
            _check(isinstance(value, int) and not isinstance(value, bool) and value >= lo, f"{name} must be an integer >= {lo}")
        if self.admin_token is not None:
            _check(isinstance(self.admin_token, str) and len(self.admin_token) >= 16 and self.admin_token.isprintable()
                   and " " not in self.admin_token, "admin token must be at least 16 printable characters, no spaces")  # fmt: skip
        _check(isinstance(self.pull_snapshot_s, (int, float)) and math.isfinite(self.pull_snapshot_s)
               and 0 <= self.pull_snapshot_s <= 3600, "pull_snapshot_s must be in 0..3600 seconds")  # fmt: skip
        _check(isinstance(self.dp_epsilon, (int, float)) and (self.dp_epsilon == 0 or 0 < self.dp_epsilon <= 100),
               f"dp_epsilon must be 0 (off) or in (0, 100], got {self.dp_epsilon!r}")  # fmt: skip
        _check(isinstance(self.dp_delta, (int, float)) and 0 < self.dp_delta < 1e-2,
               f"dp_delta must be in (0, 0.01), got {self.dp_delta!r}")  # fmt: skip
        check_k_min(self.k_min)
        _check(self.log_level in ("critical", "error", "warning", "info", "debug"), f"unknown log level {self.log_level!r}")
        _check((self.tls_cert is None) == (self.tls_key is None), "tls_cert and tls_key go together: give both or neither")
        _check(isinstance(self.workers, int) and not isinstance(self.workers, bool) and 1 <= self.workers <= 64,
               f"workers must be an integer in 1..64, got {self.workers!r}")  # fmt: skip
        _check(isinstance(self.pinned, bool), f"pinned must be true or false, got {self.pinned!r}")
        if self.workers > 1:
            # A device's frames must all meet one replay window and token bucket (else a captured frame is
            # accepted once per worker): shared through Redis, or each worker on a port of its own behind a
            # proxy that pins devices. Workers sharing one port without Redis get connections at random.
            _check(self.redis is not None or self.pinned, "workers > 1 needs --redis (rate limit and replay window "
                   "shared by every worker) or --pinned (a port per worker, devices pinned by a proxy)")  # fmt: skip
            _check(not self.store.startswith("sqlite:"), "workers > 1 needs a postgresql:// store: a SQLite file "
                   "has one writer")  # fmt: skip
            if self.pinned and self.port != 0:
                _check(self.port + self.workers - 1 <= 65535, f"pinned workers listen on ports {self.port}.."
                       f"{self.port + self.workers - 1}: past 65535")  # fmt: skip

    @property
    def scheme(self) -> str:
        """`https` when the server has a TLS certificate, else `http`."""
        return "https" if self.tls_cert is not None else "http"

    @property
    def store_dir(self) -> Path | None:
        """Folder of a sqlite store file (where the dev secret goes), else None."""
        if not self.store.startswith("sqlite:"):
            return None
        from omega.constellation.store import sqlite_path

        path = sqlite_path(self.store)
        return None if path == ":memory:" else Path(path).resolve().parent

    def aggregation_salt(self) -> bytes:
        if self.salt is not None:
            return self.salt
        if not self.secrets:
            raise OmegaError("no server secret: set OMEGA_SECRET or OMEGA_SECRETS")
        lowest = self.secrets[min(self.secrets)]
        return hmac.new(lowest, _SALT_LABEL, hashlib.sha256).digest()


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise OmegaError(message)


_FIELDS = {f.name: f for f in dataclasses.fields(ServerSettings)}
_SIMPLE = {n for n in _FIELDS if n not in ("secrets", "salt")}
_DEFAULTS = ServerSettings()


_BOOLS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}


def _coerce(name: str, value: Any) -> Any:
    """A raw value (text from env/flags, or a TOML/JSON value) as the type of field `name`."""
    default = getattr(_DEFAULTS, name)
    if value is None:
        return None
    try:
        if isinstance(default, bool):
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.strip().lower() in _BOOLS:
                return _BOOLS[value.strip().lower()]
            raise TypeError
        if isinstance(default, int) and not isinstance(value, bool):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if isinstance(default, float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            return value
    except (TypeError, ValueError):
        pass
    raise OmegaError(f"setting {name} has a bad value: {value!r}")


def parse_secrets(text: str) -> dict[int, bytes]:
    """`"1:HEX,2:HEX"` → {1: bytes, 2: bytes}."""
    out: dict[int, bytes] = {}
    for part in text.split(","):
        kid, sep, hexed = part.strip().partition(":")
        try:
            if not sep:
                raise ValueError
            key_id, secret = int(kid), bytes.fromhex(hexed.strip())
        except ValueError:
            raise OmegaError("OMEGA_SECRETS must look like 1:HEX,2:HEX") from None
        if key_id in out:
            raise OmegaError(f"OMEGA_SECRETS lists key id {key_id} twice")
        out[key_id] = secret
    return out


def _read_config(path: Path) -> dict[str, Any]:
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise OmegaError(f"cannot read config {path}: {exc.strerror or exc}") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise OmegaError(f"config {path} is not valid {'JSON' if path.suffix == '.json' else 'TOML'}: {exc}") from None
    if not isinstance(data, dict):
        raise OmegaError(f"config {path} must hold a table of settings")
    if "secrets" in data:  # {"1": "hex", ...} in a file
        raw = data.pop("secrets")
        if not isinstance(raw, dict):
            raise OmegaError("config 'secrets' must be a table of key id = hex secret")
        data["secrets"] = parse_secrets(",".join(f"{k}:{v}" for k, v in raw.items()))
    if "salt" in data:
        try:
            data["salt"] = bytes.fromhex(str(data["salt"]))
        except ValueError:
            raise OmegaError("config 'salt' must be hex") from None
    unknown = sorted(set(data) - set(_FIELDS))
    if unknown:
        raise OmegaError(f"config {path} has unknown settings: {', '.join(unknown)}")
    return {k: (v if k in ("secrets", "salt") else _coerce(k, v)) for k, v in data.items()}


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in _SIMPLE:
        value = env.get(f"OMEGA_{name.upper()}")
        if value not in (None, ""):
            out[name] = _coerce(name, value)
    if env.get("OMEGA_SECRETS"):
        out["secrets"] = parse_secrets(env["OMEGA_SECRETS"])
    elif env.get("OMEGA_SECRET"):
        key_id = _coerce("active_key_id", env.get("OMEGA_KEY_ID") or "1")
        out["secrets"] = {key_id: env["OMEGA_SECRET"].encode("utf-8")}
        out.setdefault("active_key_id", key_id)
    if env.get("OMEGA_SALT"):
        try:
            out["salt"] = bytes.fromhex(env["OMEGA_SALT"])
        except ValueError:
            raise OmegaError("OMEGA_SALT must be hex") from None
    return out


def load_settings(
    config: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> ServerSettings:
    """Merge defaults, a config file, the environment and flags (None values in `overrides` are ignored)."""
    env = os.environ if env is None else env
    merged: dict[str, Any] = {}
    config_path = config or env.get("OMEGA_CONFIG")
    if config_path:
        merged.update(_read_config(Path(config_path)))
    merged.update(_from_env(env))
    for name, value in (overrides or {}).items():
        if name not in _FIELDS:
            raise OmegaError(f"unknown setting {name!r}")
        if value is not None:
            merged[name] = value if name in ("secrets", "salt") else _coerce(name, value)
    if merged.get("secrets") and "active_key_id" not in merged:
        merged["active_key_id"] = max(merged["secrets"])  # the newest key issues tokens
    return ServerSettings(**merged)


def with_dev_secret(settings: ServerSettings, *, create: bool = True) -> ServerSettings:
    """`settings` with a secret: as configured, else from (or, if `create`, into) the file beside a sqlite store."""
    if settings.secrets:
        return settings
    folder = settings.store_dir
    if folder is None:
        raise OmegaError("no server secret: set OMEGA_SECRET (or OMEGA_SECRETS, or 'secrets' in --config)")
    path = folder / SECRET_FILE
    if path.exists():
        try:
            secret = bytes.fromhex(path.read_text().strip())
        except (OSError, ValueError) as exc:
            raise OmegaError(f"cannot read the server secret {path}: {exc}") from None
        if len(secret) < MIN_SECRET_BYTES:
            raise OmegaError(f"server secret {path} is too short")
    elif create:
        if not folder.is_dir():
            raise OmegaError(f"store directory does not exist: {folder}")
        secret = _random.token_bytes(32)
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secret.hex() + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        log.warning("no OMEGA_SECRET set: generated a development secret in %s (key id 1)", path)
    else:
        raise OmegaError(f"no server secret: set OMEGA_SECRET, or run `omega serve` once to create {path}")
    return dataclasses.replace(settings, secrets={1: secret}, active_key_id=1)
