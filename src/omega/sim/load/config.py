"""What one `omega load` run is: its target (loopback only), its numbers and tier mix, and its plan of worker processes."""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass
from urllib.parse import urlsplit

from omega.errors import OmegaError
from omega.sim.load.worker import TIERS, WorkerSpec, devices_per_worker

MAX_CONNECTIONS = 200_000
MAX_DURATION_S = 900.0
MAX_PROCESSES = 64
#: the seed's fleet (§5.3): 10 % premium, 40 % active, 50 % casual
DEFAULT_MIX = "1:4:5"
#: connections per source address: well inside the 28,232 ports of the default ephemeral range
PER_SOURCE_ADDRESS = 20_000
#: file descriptors a worker keeps for itself (loop, pipes, imports)
FD_RESERVE = 256
SETTLE_S = 1.0  # after the ramp, before the steady phase is measured


@dataclass(frozen=True)
class Target:
    host: str  # an IP literal on loopback
    port: int

    @property
    def base_url(self) -> str:
        return f"http://[{self.host}]:{self.port}" if ":" in self.host else f"http://{self.host}:{self.port}"


@dataclass(frozen=True)
class LoadConfig:
    """One run. `target` None: start a sync server as a child (`store`, default sqlite in a temp folder)."""

    connections: int
    devices: dict[str, int]
    duration_s: float
    secret: bytes
    target: Target | None = None
    store: str | None = None
    key_id: int = 1
    time_scale: float = 1.0
    ramp_rate: float = 1000.0
    processes: int = 0  # 0: as many as the file-descriptor limit needs, at least 2
    seed: int = 7
    heartbeat_only: bool = False  # sessions without pull/push: measures holding connections, not syncing


def loopback_target(url: str) -> Target:
    """The host and port of `url` (http:// or ws://), refusing anything that is not this machine's loopback."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise OmegaError(f"--url is not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "ws") or not parts.hostname:
        raise OmegaError(f"--url must be http://HOST:PORT or ws://HOST:PORT on loopback, got {url!r}")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise OmegaError(f"--url must name only the server (http://HOST:PORT), got {url!r}")
    host = parts.hostname
    if host.lower() == "localhost":
        host = "127.0.0.1"
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise OmegaError(f"the load generator only targets loopback (127.0.0.0/8, ::1, localhost), not {parts.hostname!r}")
    return Target(host, port if port is not None else 8700)


def parse_mix(text: str) -> dict[str, float]:
    """`premium:active:casual` ratios, e.g. `1:4:5` or `1:0:0`."""
    parts = text.strip().split(":")
    if len(parts) != 3:
        raise OmegaError(f"--mix must be three ratios premium:active:casual (e.g. {DEFAULT_MIX}), got {text!r}")
    try:
        ratios = [float(p) for p in parts]
    except ValueError:
        raise OmegaError(f"--mix must be three numbers premium:active:casual, got {text!r}") from None
    if any(not math.isfinite(r) or r < 0 for r in ratios) or sum(ratios) <= 0:
        raise OmegaError(f"--mix ratios must be non-negative with a positive sum, got {text!r}")
    return dict(zip(TIERS, ratios, strict=True))


def split_mix(connections: int, mix: dict[str, float]) -> dict[str, int]:
    """`connections` TVs shared out by the ratios (largest remainder, so they add up exactly)."""
    total = sum(mix.values())
    exact = {t: connections * r / total for t, r in mix.items()}
    counts = {t: int(v) for t, v in exact.items()}
    for t in sorted(mix, key=lambda t: exact[t] - counts[t], reverse=True)[: connections - sum(counts.values())]:
        counts[t] += 1
    return counts


def check_numbers(connections: int, duration_s: float, time_scale: float, ramp_rate: float, processes: int) -> None:
    """One clear error for an out-of-range run parameter."""
    if not 1 <= connections <= MAX_CONNECTIONS:
        raise OmegaError(f"--connections must be in 1..{MAX_CONNECTIONS}, got {connections}")
    if not (math.isfinite(duration_s) and 1.0 <= duration_s <= MAX_DURATION_S):
        raise OmegaError(f"--duration must be in 1..{MAX_DURATION_S:g} seconds, got {duration_s:g}")
    if not (math.isfinite(time_scale) and 0.001 <= time_scale <= 1.0):
        raise OmegaError(f"--time-scale must be in 0.001..1, got {time_scale:g}")
    if not (math.isfinite(ramp_rate) and 1.0 <= ramp_rate <= 100_000):
        raise OmegaError(f"--ramp-rate must be in 1..100000 connections per second, got {ramp_rate:g}")
    if not 0 <= processes <= MAX_PROCESSES:
        raise OmegaError(f"--processes must be in 0..{MAX_PROCESSES} (0: automatic), got {processes}")


@dataclass(frozen=True)
class Plan:
    workers: list[WorkerSpec]
    ramp_s: float


def plan_workers(config: LoadConfig, target: Target, nofile: int, start_at: float) -> Plan:
    """Worker processes, their TVs and source addresses, and the shared timeline."""
    sockets = sum(config.devices.values())  # a WebSocket or an HTTP connection per TV at once, at most
    per_process = max(1, nofile - FD_RESERVE)
    processes = config.processes or max(2, math.ceil(sockets / per_process))
    processes = min(processes, config.connections)
    shares = devices_per_worker(config.devices, processes)
    worst = max(sum(s.values()) for s in shares)
    if worst > per_process:
        raise OmegaError(f"{worst} connections per process exceed the file-descriptor limit ({nofile}); "
                         f"use --processes {math.ceil(sockets / per_process)} or more")  # fmt: skip
    ipv4 = ":" not in target.host
    next_octet = 2
    rate = config.ramp_rate / processes
    ramp_s = max(sum(s.values()) for s in shares) / rate
    end_at = start_at + config.duration_s
    specs = []
    for w, share in enumerate(shares):
        addresses: tuple[str, ...] = ()
        if ipv4:  # ::1 is a single address: the kernel picks ports for it
            n = max(1, math.ceil(sum(share.values()) / PER_SOURCE_ADDRESS))
            if next_octet + n > 255:
                raise OmegaError("not enough 127.0.0.x source addresses for this many connections")
            addresses = tuple(f"127.0.0.{next_octet + i}" for i in range(n))
            next_octet += n
        specs.append(WorkerSpec(
            index=w, host=target.host, port=target.port, source_addresses=addresses, secret=config.secret,
            key_id=config.key_id, devices=share, time_scale=config.time_scale, ramp_rate=rate,
            start_at=start_at, end_at=end_at, hold_from=min(end_at, start_at + ramp_s + SETTLE_S),
            seed=config.seed * 1_000_003 + w, heartbeat_only=config.heartbeat_only,
        ))  # fmt: skip
    return Plan(specs, ramp_s)
