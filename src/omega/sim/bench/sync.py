"""`omega bench sync`: a real sync server (one worker, subprocess) under concurrent loopback clients.

Traffic per client (a TV with its own device id, key and seq): pushes of 1–3
patterns at 4 bits + ~10 item transitions, delta pulls from the client's own
committed cursor, heartbeats. Half the clients hold a WebSocket, half poll over
HTTP. The clients run in this process and share the machine's cores with the
server, so `syncs_per_server_cpu_s` (syncs per CPU-second the server used) is
reported beside the wall-clock rate.
"""

from __future__ import annotations

import asyncio
import os
import random
import secrets
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from omega.progress import Notes, quiet
from omega.sim.load.client import KINDS, ReplyTally, SimDevice, pattern_pool
from omega.sim.load.server_process import start_server

#: bench clients fire back to back, far above a TV's rate: the server's per-device limit would throttle them
_UNTHROTTLED = {"OMEGA_RATE_PER_S": "100000", "OMEGA_RATE_BURST": "100000", "OMEGA_MAX_CONNECTIONS_PER_IP": "0"}


# ------------------------------------------------------------------ the clients


@dataclass
class _Stats(ReplyTally):
    latency: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in KINDS})
    push_bytes: list[int] = field(default_factory=list)
    heartbeat_bytes: list[int] = field(default_factory=list)


async def _run_clients(port: int, secret: bytes, n_clients: int, duration_s: float) -> tuple[_Stats, int, float]:
    import httpx
    from websockets.asyncio.client import connect

    rng = random.Random(7)
    pool = pattern_pool(rng)
    stats = _Stats()
    warmup_end = time.perf_counter() + 1.0
    end = warmup_end + duration_s
    held = [0]
    http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30,
                             limits=httpx.Limits(max_connections=n_clients, max_keepalive_connections=n_clients))  # fmt: skip

    async def one(i: int) -> None:
        client = SimDevice(secret, pool, random.Random(i))
        use_ws = i % 2 == 0
        ws = None
        if use_ws:
            ws = await connect(f"ws://127.0.0.1:{port}/v1/ws", compression=None, max_size=1 << 16)
            held[0] += 1
        try:
            while True:
                now = time.perf_counter()
                if now >= end:
                    break
                kind, body = client.random_body()
                data = client.frame(body)
                t0 = time.perf_counter()
                if ws is not None:
                    await ws.send(data)
                    reply = await ws.recv()
                else:
                    resp = await http.post("/v1/sync", content=data, headers={"content-type": "application/octet-stream"})
                    reply = resp.content
                elapsed = time.perf_counter() - t0
                if t0 >= warmup_end:
                    stats.latency[kind].append(elapsed)
                    if kind == "push":
                        stats.push_bytes.append(len(data))
                    elif kind == "heartbeat":
                        stats.heartbeat_bytes.append(len(data))
                    client.absorb(bytes(reply), stats)
        finally:
            if ws is not None:
                await ws.close()

    try:
        tasks = [asyncio.create_task(one(i)) for i in range(n_clients)]
        await asyncio.sleep(max(0.0, warmup_end + duration_s / 2 - time.perf_counter()))
        connections_mid = held[0]
        await asyncio.gather(*tasks)
    finally:
        await http.aclose()
    return stats, connections_mid, duration_s


def _pct(samples: list[float], q: float) -> float:
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_sync_bench(
    *, store: str | None = None, clients: int = 64, duration_s: float = 10.0, redis: str | None = None,
    progress: Notes = quiet,
) -> dict:
    """Start a server, drive it for `duration_s`, stop it; the docs/architecture.md §6 keys plus details."""
    secret = secrets.token_hex(24)
    with tempfile.TemporaryDirectory(prefix="omega-bench-sync-") as tmp:
        folder = Path(tmp)
        url = store or f"sqlite:{folder / 'constellation.db'}"
        progress(f"starting a server on {url.split('@')[-1]}")
        server = start_server(folder, url, secret, redis=redis, env=_UNTHROTTLED)
        port = server.port
        try:
            cpu0 = server.cpu_seconds()
            progress(f"{clients} clients ({(clients + 1) // 2} WebSocket, {clients // 2} HTTP) for 1 s warm-up + {duration_s:g} s")
            t0 = time.perf_counter()
            stats, held, measured = asyncio.run(_run_clients(port, secret.encode(), clients, duration_s))
            wall = time.perf_counter() - t0
            cpu = server.cpu_seconds() - cpu0
        finally:
            server.stop()
    pushes, pulls, beats = (len(stats.latency[k]) for k in ("push", "pull", "heartbeat"))
    all_lat = stats.latency["push"] + stats.latency["pull"] + stats.latency["heartbeat"]
    syncs = pushes + pulls
    progress(f"{syncs + beats} frames in {measured:g} s; server CPU {cpu:.1f} s of {wall:.1f} s wall")
    return {
        "push_bytes_p50": int(statistics.median(stats.push_bytes)) if stats.push_bytes else None,
        "pull_bytes_p50": int(statistics.median(stats.pull_bytes)) if stats.pull_bytes else None,
        "heartbeat_bytes": int(statistics.median(stats.heartbeat_bytes)) if stats.heartbeat_bytes else None,
        "syncs_per_s": round(syncs / measured, 1),
        "p50_ms": round(_pct(all_lat, 0.5) * 1000, 2),
        "p99_ms": round(_pct(all_lat, 0.99) * 1000, 2),
        "connections_held": held,
        "frames_per_s": round((syncs + beats) / measured, 1),
        "syncs_per_server_cpu_s": round(syncs / cpu, 1) if cpu > 0 else None,
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
        "duration_s": duration_s,
        "store": (store or "sqlite").split("://")[0].split(":")[0],
        "workers": 1,
        "cpu_cores": os.cpu_count(),
    }
