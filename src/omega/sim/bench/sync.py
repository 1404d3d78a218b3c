"""`omega bench sync`: a real sync server (one worker, subprocess) under concurrent loopback clients.

Traffic per client (a TV with its own device id, key and seq): pushes of 1–3
patterns at 4 bits + ~10 item transitions, delta pulls from the client's own
committed cursor, heartbeats; like a TV, each names its device in X-Omega-Device. Half the clients hold a
WebSocket, half poll over
HTTP (keep-alive, `omega.sim.load.http1`: httpx cost the clients several times the
server's CPU per request on the shared cores). The clients run in `client_processes` processes (uvloop each), so the
client side is not the bottleneck of one server process; they still share the
machine's cores with the server, so `syncs_per_server_cpu_s` (syncs per
CPU-second the server used) is reported beside the wall-clock rate.

In the same run, the same harness drives the ceiling of the stack first: an
echo server on the same uvicorn + httptools + Starlette stack
(`omega.sim.bench.echo`) that answers every frame with itself. `ceiling` holds
its figures and `ratio_to_ceiling` is frames/s of the service over frames/s of
the echo: what the service itself costs.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import random
import secrets
import statistics
import sys
import tempfile
import time
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from omega.constellation.settings import PULL_SNAPSHOT_S, load_settings
from omega.progress import Notes, quiet
from omega.protocol import device_header_value
from omega.sim.bench.prefill import check_prefill
from omega.sim.bench.prefill import prefill as run_prefill
from omega.sim.load.client import KINDS, ReplyTally, SimDevice, pattern_pool
from omega.sim.load.http1 import Http1Pool, header_lines
from omega.sim.load.server_process import ServerProcess, start_server

#: bench clients fire back to back, far above a TV's rate: the server's per-device limit would throttle them
_UNTHROTTLED = {"OMEGA_RATE_PER_S": "100000", "OMEGA_RATE_BURST": "100000", "OMEGA_MAX_CONNECTIONS_PER_IP": "0"}
_ECHO_COMMAND = (sys.executable, "-m", "omega.sim.bench.echo")
_WARM_UP_S = 1.0
_START_DELAY_S = 4.0  # client processes start (spawn, imports) before the shared start time


# ------------------------------------------------------------------ the clients


@dataclass
class _Stats(ReplyTally):
    latency: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in KINDS})
    push_bytes: list[int] = field(default_factory=list)
    heartbeat_bytes: list[int] = field(default_factory=list)
    connections: int = 0
    #: CPU seconds the client processes used (they share the cores with the server)
    cpu_s: float = 0.0
    #: measured frames answered by transport ("ws", "http")
    frames_by_transport: dict[str, int] = field(default_factory=lambda: {"ws": 0, "http": 0})

    def merge(self, other: _Stats) -> None:
        for k in KINDS:
            self.latency[k] += other.latency[k]
        self.push_bytes += other.push_bytes
        self.heartbeat_bytes += other.heartbeat_bytes
        self.pull_bytes += other.pull_bytes
        self.accepted += other.accepted
        self.rejected += other.rejected
        self.pull_items += other.pull_items
        self.connections += other.connections
        self.cpu_s += other.cpu_s
        for k, v in other.frames_by_transport.items():
            self.frames_by_transport[k] += v
        for k, v in other.errors.items():
            self.error(k, v)


def pinned_port(ports: list[int], device_id: bytes) -> int:
    """The worker port a device is pinned to (`--pinned`): a hash of its X-Omega-Device value, as the proxy in
    front of pinned workers does (HAProxy's consistent hash maps differently; any fixed map plays the same role)."""
    return ports[zlib.crc32(device_header_value(device_id).encode()) % len(ports)]


async def _run_clients(ports: list[int], secret: bytes, ids: range, start_at: float, duration_s: float,
                       echo: bool) -> _Stats:  # fmt: skip
    from websockets.asyncio.client import connect

    pool = pattern_pool(random.Random(7))
    stats = _Stats()
    pools = {port: Http1Pool("127.0.0.1", port, max_connections=len(ids), timeout_s=30) for port in ports}

    async def one(i: int) -> None:
        client = SimDevice(secret, pool, random.Random(i))
        port = pinned_port(ports, client.device_id)
        http = pools[port]
        extra = header_lines(client.headers())
        ws = None
        if i % 2 == 0:
            ws = await connect(f"ws://127.0.0.1:{port}/v1/ws", compression=None, max_size=1 << 16,
                               additional_headers=client.headers())  # fmt: skip
        await asyncio.sleep(max(0.0, start_at - time.time()))
        warm_end = time.perf_counter() + _WARM_UP_S
        end = warm_end + duration_s
        if ws is not None:
            stats.connections += 1
        try:
            while True:
                if time.perf_counter() >= end:
                    break
                kind, body = client.random_body()
                data = client.frame(body)
                t0 = time.perf_counter()
                if ws is not None:
                    await ws.send(data)
                    reply = await ws.recv()
                else:
                    _, reply, _ = await http.post("/v1/sync", data, extra)
                elapsed = time.perf_counter() - t0
                if t0 >= warm_end:
                    stats.latency[kind].append(elapsed)
                    stats.frames_by_transport["http" if ws is None else "ws"] += 1
                    if kind == "push":
                        stats.push_bytes.append(len(data))
                    elif kind == "heartbeat":
                        stats.heartbeat_bytes.append(len(data))
                    if echo:
                        if reply != data:
                            stats.error("echo_mismatch")
                    else:
                        client.absorb(bytes(reply), stats)
        finally:
            if ws is not None:
                await ws.close()

    try:
        await asyncio.gather(*(one(i) for i in ids))
    finally:
        for http in pools.values():
            await http.aclose()
    return stats


def _client_process(ports: list[int], secret: bytes, ids: range, start_at: float, duration_s: float,
                    echo: bool) -> _Stats:  # fmt: skip
    import uvloop

    cpu0 = time.process_time()
    stats = uvloop.run(_run_clients(ports, secret, ids, start_at, duration_s, echo))
    stats.cpu_s = time.process_time() - cpu0  # includes the connects and the wait for the start: a bound
    return stats


def _drive(ports: list[int], secret: bytes, clients: int, processes: int, duration_s: float, echo: bool) -> _Stats:
    """Run `clients` clients split over `processes` processes against `ports` (each device pinned to one,
    `pinned_port`); their merged stats."""
    processes = max(1, min(processes, clients))
    share = [range(p, clients, processes) for p in range(processes)]
    start_at = time.time() + _START_DELAY_S
    stats = _Stats()
    with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_client_process, ports, secret, ids, start_at, duration_s, echo) for ids in share]
        for f in futures:
            stats.merge(f.result())
    return stats


def _measure_ceiling(folder: Path, clients: int, processes: int, duration_s: float) -> dict:
    echo = ServerProcess(folder / "echo", secret="unused-by-the-echo-server", command=_ECHO_COMMAND)
    (folder / "echo").mkdir()
    echo.start()
    try:
        stats = _drive([echo.port], b"ceiling-secret-0123456789abcdef", clients, processes, duration_s, echo=True)
    finally:
        echo.stop()
    lat = stats.latency["push"] + stats.latency["pull"] + stats.latency["heartbeat"]
    return {
        "frames_per_s": round(len(lat) / duration_s, 1),
        "p50_ms": round(_pct(lat, 0.5) * 1000, 2),
        "p99_ms": round(_pct(lat, 0.99) * 1000, 2),
        "errors": stats.errors,
        "client_cpu_s": round(stats.cpu_s, 2),
        "frames_by_transport": stats.frames_by_transport,
    }


def _pct(samples: list[float], q: float) -> float:
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_sync_bench(
    *, store: str | None = None, clients: int = 64, duration_s: float = 10.0, redis: str | None = None,
    client_processes: int = 2, ceiling: bool = True, pull_snapshot_s: float | None = None, workers: int = 1,
    pinned: bool = False, prefill: int = 0, progress: Notes = quiet,
) -> dict:
    """The echo ceiling (unless `ceiling` is False), then a server driven for `duration_s`; one report.

    workers > 1: `omega serve --workers N` (needs a postgresql:// store and redis); CPU is the workers' sum.
    pinned: `omega serve --pinned` (no redis needed): worker i on port + i, and each client sends all its
    frames to the port its device is pinned to (`pinned_port`, in place of the proxy).
    pull_snapshot_s None: the shipped default (settings.PULL_SNAPSHOT_S).
    prefill: N pushes from N other devices through the real push path into the (SQLite) store before the server
    starts (`omega.sim.bench.prefill`): a grown store, as a worker in production has, instead of an empty one.
    """
    if pull_snapshot_s is None:
        pull_snapshot_s = PULL_SNAPSHOT_S
    secret = secrets.token_hex(24)
    with tempfile.TemporaryDirectory(prefix="omega-bench-sync-") as tmp:
        folder = Path(tmp)
        url = store or f"sqlite:{folder / 'constellation.db'}"
        # A shard id of this run's own: the server's Redis namespace (replay window, pull cache) derives from
        # it, and the simulated devices' ids and seqs repeat from run to run.
        shard_id = f"bench-{secret[:8]}"
        env = {**_UNTHROTTLED, "OMEGA_PULL_SNAPSHOT_S": repr(float(pull_snapshot_s)),
               "OMEGA_WORKERS": str(workers), "OMEGA_PINNED": "1" if pinned else "0"}  # fmt: skip
        if prefill:  # refused before the ceiling's seconds, if it must be
            # The settings the server will read from the same variables: the fill opens the store as it will.
            settings = load_settings(env={**env, "OMEGA_SECRET": secret, "OMEGA_STORE": url,
                                          "OMEGA_SHARD_ID": shard_id, **({"OMEGA_REDIS": redis} if redis else {})})
            check_prefill(settings, prefill)
        top = None
        if ceiling:
            progress(f"ceiling: {clients} clients in {client_processes} processes against an echo server on the same stack")
            top = _measure_ceiling(folder, clients, client_processes, duration_s)
            progress(f"ceiling: {top['frames_per_s']:g} frames/s, p99 {top['p99_ms']:g} ms")
        t_fill = time.perf_counter()
        facts = asyncio.run(run_prefill(settings, prefill, progress)) if prefill else None
        fill_s = time.perf_counter() - t_fill
        progress(f"starting a server ({workers} worker{'s' if workers > 1 else ''}{', pinned' if pinned else ''}) "
                 f"on {url.split('@')[-1]}")  # fmt: skip
        server = start_server(folder, url, secret, redis=redis, shard_id=shard_id, env=env)
        ports = [server.port + i for i in range(workers)] if pinned else [server.port]
        try:
            cpu0 = server.cpu_seconds()
            progress(f"{clients} clients ({(clients + 1) // 2} WebSocket, {clients // 2} HTTP) in {client_processes} "
                     f"processes for {_WARM_UP_S:g} s warm-up + {duration_s:g} s")  # fmt: skip
            t0 = time.perf_counter()
            stats = _drive(ports, secret.encode(), clients, client_processes, duration_s, echo=False)
            wall = time.perf_counter() - t0
            cpu = server.cpu_seconds() - cpu0
        finally:
            server.stop()
    measured = duration_s
    held = stats.connections
    pushes, pulls, beats = (len(stats.latency[k]) for k in ("push", "pull", "heartbeat"))
    all_lat = stats.latency["push"] + stats.latency["pull"] + stats.latency["heartbeat"]
    syncs = pushes + pulls
    frames_per_s = (syncs + beats) / measured
    progress(f"{syncs + beats} frames in {measured:g} s; server CPU {cpu:.1f} s of {wall:.1f} s wall")
    return {
        "push_bytes_p50": int(statistics.median(stats.push_bytes)) if stats.push_bytes else None,
        "pull_bytes_p50": int(statistics.median(stats.pull_bytes)) if stats.pull_bytes else None,
        "heartbeat_bytes": int(statistics.median(stats.heartbeat_bytes)) if stats.heartbeat_bytes else None,
        "syncs_per_s": round(syncs / measured, 1),
        "p50_ms": round(_pct(all_lat, 0.5) * 1000, 2),
        "p99_ms": round(_pct(all_lat, 0.99) * 1000, 2),
        "connections_held": held,
        "frames_per_s": round(frames_per_s, 1),
        "ceiling": top,
        "ratio_to_ceiling": round(frames_per_s / top["frames_per_s"], 3) if top and top["frames_per_s"] else None,
        "syncs_per_server_cpu_s": round(syncs / cpu, 1) if cpu > 0 else None,
        "server_cpu_s": round(cpu, 2),
        "client_cpu_s": round(stats.cpu_s, 2),
        "frames_by_transport": stats.frames_by_transport,
        "latency_ms": {k: {"p50": round(_pct(v, 0.5) * 1000, 2), "p99": round(_pct(v, 0.99) * 1000, 2)}
                       for k, v in stats.latency.items()},  # fmt: skip
        "pushes": pushes,
        "pulls": pulls,
        "heartbeats": beats,
        "patterns_accepted": stats.accepted,
        "items_rejected": stats.rejected,
        "pull_items": stats.pull_items,
        "pull_bytes_max": max(stats.pull_bytes) if stats.pull_bytes else None,
        "errors": stats.errors,
        "clients": clients,
        "client_processes": client_processes,
        "pull_snapshot_s": pull_snapshot_s,
        "duration_s": duration_s,
        "store": (store or "sqlite").split("://")[0].split(":")[0],
        "workers": workers,
        "pinned": pinned,
        "cpu_cores": os.cpu_count(),
        # What the store held when the server started (--prefill; 0 and an empty file without it).
        "store_pushes_before": prefill,
        "store_rows": facts["store_rows"] if facts else {},
        "store_file_bytes": facts["store_file_bytes"] if facts else 0,
        "prefill_s": round(fill_s, 1),
    }
