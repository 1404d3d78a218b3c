"""What one held connection costs the sync server in RSS, at equal data (issue 15).

A fresh `omega serve` child (the shipped server: uvicorn, uvloop, httptools, websockets-sansio,
sqlite store in a temp folder) per measurement; after the warm-up, N connections of one kind are
opened from this process (raw asyncio protocols, so the client takes little of the shared cores)
and each does what a TV does on it, then stays idle:

- `ws`: WebSocket handshake on /v1/ws, one signed heartbeat, its reply; then idle (a premium TV
  between syncs, heartbeat-only at the seed's rates);
- `http`: one signed heartbeat `POST /v1/sync` and its reply on a keep-alive connection; then idle
  (uvicorn closes it after its keep-alive timeout, 5 s, so the sample is taken while it is open);
- `tcp`: connected, nothing sent (what an idle or hostile socket costs until the request deadline).

No push is sent, so the store and aggregator hold no more data than after the warm-up: the RSS
growth over the connections the server says it holds (`omega_connections_open`, HTTP and WebSocket)
is the cost of a connection (with its device's replay and rate-limit state), not of data.

    .venv/bin/python bench/conn_memory.py --kinds ws,http,tcp --n 2000,5000,10000 --json
    # A/B, alternating: the server from another tree (e.g. `git archive main src | tar -x -C /tmp/old`)
    .venv/bin/python bench/conn_memory.py --kinds ws --n 5000 --repeat 3 --server A=src --server B=/tmp/old/src
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import re
import sys
import tempfile
import time
from pathlib import Path

from omega.protocol import Tier
from omega.sim.load.client import SimDevice, pattern_pool
from omega.sim.load.runner import new_secret, server_counts, warm_up
from omega.sim.load.server_process import start_server
from omega.sim.load.config import Target
from omega.sim.load.worker import raise_nofile_limit

IN_FLIGHT = 200  # connection set-ups in flight at once
SETTLE_S = 1.0


class _Conn(asyncio.Protocol):
    """One client connection: sends `first` (if any) once connected, `then` after a 101, waits for `want` replies."""

    def __init__(self, first: bytes, then: bytes | None, done: asyncio.Future) -> None:
        self.first, self.then, self.done = first, then, done
        self.buf = b""
        self.upgraded = then is None
        self.transport: asyncio.Transport | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.transport = transport
        if self.first:
            transport.write(self.first)
        elif not self.done.done():
            self.done.set_result(True)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.upgraded:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head, self.buf = self.buf[:end], self.buf[end + 4 :]
            if b" 101 " not in head.split(b"\r\n", 1)[0]:
                return self._finish(False)
            self.upgraded = True
            assert self.transport is not None and self.then is not None
            self.transport.write(self.then)
        if self.then is None:  # HTTP: a status line, headers with Content-Length, the body
            end = self.buf.find(b"\r\n\r\n")
            if end >= 0:
                m = re.search(rb"content-length:\s*(\d+)", self.buf[:end], re.I)
                if m and len(self.buf) >= end + 4 + int(m.group(1)):
                    self._finish(self.buf.startswith(b"HTTP/1.1 200"))
        elif len(self.buf) >= 2:  # one unmasked binary frame from the server
            n = self.buf[1] & 0x7F
            hdr = 2 + (2 if n == 126 else 8 if n == 127 else 0)
            if n >= 126 and len(self.buf) >= hdr:
                n = int.from_bytes(self.buf[2:hdr], "big")
            if len(self.buf) >= hdr + n:
                self._finish(self.buf[0] == 0x82)
                self.buf = b""

    def _finish(self, ok: bool) -> None:
        if not self.done.done():
            self.done.set_result(ok)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._finish(False)


def _ws_frame(payload: bytes) -> bytes:
    mask = os.urandom(4)
    n = len(payload)
    head = bytes([0x82, 0x80 | n]) if n < 126 else bytes([0x82, 0x80 | 126]) + n.to_bytes(2, "big")
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + masked


def _requests(kind: str, dev: SimDevice, port: int) -> tuple[bytes, bytes | None]:
    host = f"127.0.0.1:{port}"
    if kind == "tcp":
        return b"", None
    frame = dev.frame(dev.heartbeat(Tier.PREMIUM if kind == "ws" else Tier.CASUAL))
    if kind == "http":
        return (b"POST /v1/sync HTTP/1.1\r\nhost: %s\r\ncontent-type: application/octet-stream\r\n"
                b"content-length: %d\r\n\r\n%s" % (host.encode(), len(frame), frame)), None  # fmt: skip
    key = base64.b64encode(os.urandom(16))
    upgrade = (b"GET /v1/ws HTTP/1.1\r\nhost: %s\r\nupgrade: websocket\r\nconnection: Upgrade\r\n"
               b"sec-websocket-key: %s\r\nsec-websocket-version: 13\r\n\r\n" % (host.encode(), key))  # fmt: skip
    return upgrade, _ws_frame(frame)


def _metrics_open(port: int) -> int | None:
    counts = server_counts(f"http://127.0.0.1:{port}")
    return counts.open if counts is not None else None


async def _open_all(kind: str, n: int, port: int, secret: bytes, server, samples: list) -> dict:  # noqa: ANN001
    loop = asyncio.get_running_loop()
    rng = random.Random(n)
    pool = pattern_pool(rng, 8)
    devices = [SimDevice(secret, pool, random.Random(rng.getrandbits(64))) for _ in range(n)]
    sem = asyncio.Semaphore(IN_FLIGHT)
    conns: list[_Conn] = []
    failed = 0

    async def one(dev: SimDevice) -> None:
        nonlocal failed
        first, then = _requests(kind, dev, port)
        async with sem:
            done = loop.create_future()
            try:
                _, proto = await loop.create_connection(lambda: _Conn(first, then, done), "127.0.0.1", port)
                conns.append(proto)
                if not await asyncio.wait_for(done, 30):
                    failed += 1
            except (OSError, TimeoutError):
                failed += 1

    async def sampler() -> None:  # http: the keep-alive timeout closes them; keep the sample with the most open
        while True:
            await asyncio.sleep(0.25)
            opened, rss = await asyncio.to_thread(_metrics_open, port), server.rss_kib()
            if opened is not None and rss is not None:
                samples.append((opened, rss))

    t0, cpu0 = time.perf_counter(), server.cpu_seconds()
    watch = asyncio.create_task(sampler()) if kind == "http" else None
    await asyncio.gather(*(one(d) for d in devices))
    set_up_s = time.perf_counter() - t0
    set_up_cpu_s = server.cpu_seconds() - cpu0
    if watch is None:
        await asyncio.sleep(SETTLE_S)
        opened, rss = _metrics_open(port), server.rss_kib()
        samples.append((opened or 0, rss or 0))
    else:
        await asyncio.sleep(0.5)
        watch.cancel()
    out = {"set_up_s": round(set_up_s, 2), "failed": failed, "client_open_at_end": sum(not c.closed for c in conns),
           # what the server spent on setting them up (connect, handshake, first frame): CPU, so less load-dependent
           "server_cpu_ms_per_set_up": round(1000 * set_up_cpu_s / n, 3)}
    for c in conns:
        if c.transport is not None:
            c.transport.close()
    for _ in range(40):  # until the server has let them go
        await asyncio.sleep(0.25)
        if not await asyncio.to_thread(_metrics_open, port):
            break
    await asyncio.sleep(1.0)
    out["server_rss_after_close_kib"] = server.rss_kib()
    return out


def measure(kind: str, n: int, server_src: str | None) -> dict:
    secret = new_secret()
    env = {"OMEGA_MAX_CONNECTIONS_PER_IP": "0"}
    if server_src:
        env["PYTHONPATH"] = str(Path(server_src).resolve())
    with tempfile.TemporaryDirectory(prefix="omega-conn-mem-") as tmp:
        store = f"sqlite:{Path(tmp) / 'constellation.db'}"
        with start_server(Path(tmp), store, secret.decode(), shard_id="conn", env=env) as server:
            asyncio.run(warm_up(Target("127.0.0.1", server.port), secret, 1))
            time.sleep(0.5)
            rss0 = server.rss_kib() or 0
            samples: list[tuple[int, int]] = []
            import uvloop

            extra = uvloop.run(_open_all(kind, n, server.port, secret, server, samples))
            opened, rss = max(samples, key=lambda s: (s[0], s[1])) if samples else (0, 0)
    return {
        "kind": kind, "n": n, "server_src": server_src, "server_rss_before_kib": rss0, "server_rss_at_sample_kib": rss,
        "connections_open_at_sample": opened, **extra,
        "kib_per_connection": round((rss - rss0) / opened, 2) if opened else None,
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kinds", default="ws,http,tcp")
    ap.add_argument("--n", default="2000,5000,10000")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--server", action="append", default=[],
                    help="LABEL=SRC_DIR (PYTHONPATH of the server); repeat for A/B")  # fmt: skip
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    raise_nofile_limit()
    servers = [tuple(s.split("=", 1)) for s in args.server] or [("shipped", None)]
    rows = []
    for rep in range(args.repeat):
        for kind in args.kinds.split(","):
            for n in (int(x) for x in args.n.split(",")):
                for label, src in servers:
                    row = {"label": label, "rep": rep, **measure(kind, n, src)}
                    rows.append(row)
                    print(json.dumps(row), file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps({"rows": rows}))


if __name__ == "__main__":
    main()
