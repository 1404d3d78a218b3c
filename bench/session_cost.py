"""What each part of a TV's sync session costs the sync server in CPU (issue 15: the 10k-TV run's sessions).

A fresh `omega serve` child (the shipped server, as `omega load --spawn-server` starts it: uvicorn,
uvloop, httptools, websockets-sansio, sqlite store in a temp folder) per server tree. After a warm-up
and a preload of pushes from many devices (so pulls return real pages), each operation below runs
N times from this process, `--inflight` at once, and the server's CPU seconds (its /proc counters: the
whole process and its event-loop thread) over the operation are divided by N:

- `ws_open`: WebSocket handshake on /v1/ws, one heartbeat, close (what an active TV's session adds to
  its frames: the connection);
- `ws_hb`, `ws_pull`, `ws_push`: one frame on an open WebSocket (premium TVs between syncs); the
  pulls come from devices whose cursors are where the load client's are (0 for a first pull,
  else a page behind the head);
- `http_open`: a new TCP connection, one heartbeat `POST /v1/sync` (a casual TV's first request);
- `http_hb`: a heartbeat on a keep-alive connection;
- `session_premium`, `session_active`, `session_casual`: whole sessions as `omega load` runs them
  (heartbeat, pull, a push 40 % of the time; active on its own WebSocket, casual on its own connection).

    .venv/bin/python bench/session_cost.py --n 2000 --json
    # A/B, alternating: the server from another tree
    .venv/bin/python bench/session_cost.py --server new=src --server old=/tmp/old/src --repeat 3 --json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from omega.protocol import Tier
from omega.sim.load.client import ReplyTally, SimDevice, pattern_pool
from omega.sim.load.config import Target
from omega.sim.load.http1 import Http1Pool
from omega.sim.load.runner import new_secret, warm_up
from omega.sim.load.server_process import ServerProcess, start_server
from omega.sim.load.worker import raise_nofile_limit

OPS = ("ws_open", "ws_hb", "ws_pull", "ws_push", "http_open", "http_hb",
       "session_premium", "session_active", "session_casual")  # fmt: skip


#: seconds between one device's frames (the shipped rate limit is 10 a second)
FRAME_GAP_S = 0.12


def thread_cpu_s(pid: int, tid: int) -> float:
    fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Bench:
    def __init__(self, server: ServerProcess, secret: bytes, seed: int) -> None:
        self.server = server
        self.secret = secret
        self.rng = random.Random(seed)
        self.pool = pattern_pool(self.rng)
        self.ws_url = f"ws://127.0.0.1:{server.port}/v1/ws"
        self.tally = ReplyTally()

    def device(self) -> SimDevice:
        return SimDevice(self.secret, self.pool, random.Random(self.rng.getrandbits(64)))

    async def _connect(self):  # noqa: ANN202
        from websockets.asyncio.client import connect

        return await connect(self.ws_url, compression=None, ping_interval=None, open_timeout=30, close_timeout=5,
                             max_size=1 << 16, max_queue=4, user_agent_header=None)  # fmt: skip

    async def _frame(self, ws, dev: SimDevice, body) -> None:  # noqa: ANN001
        await ws.send(dev.frame(body))
        if not dev.absorb(bytes(await asyncio.wait_for(ws.recv(), 30)), self.tally):
            raise RuntimeError(f"error reply: {self.tally.errors}")

    async def _post(self, http: Http1Pool, dev: SimDevice, body) -> None:  # noqa: ANN001
        _, reply, _ = await http.post("/v1/sync", dev.frame(body))
        if not dev.absorb(reply, self.tally):
            raise RuntimeError(f"error reply: {self.tally.errors}")

    async def run(self, op: str, n: int, inflight: int) -> dict:
        """Prepare `inflight` lanes, then time `n` operations over them; server CPU per operation."""
        lanes = []
        for _ in range(inflight):
            dev = self.device()
            lane = {"dev": dev}
            if op.startswith("ws_") and op != "ws_open" or op == "session_premium":
                lane["ws"] = await self._connect()
                await self._frame(lane["ws"], dev, dev.heartbeat(Tier.PREMIUM))
                await self._frame(lane["ws"], dev, dev.pull())  # a first pull: the cursor a TV has after it
            if op == "http_hb":
                lane["http"] = Http1Pool("127.0.0.1", self.server.port, max_connections=1)
                await self._post(lane["http"], dev, dev.heartbeat(Tier.CASUAL))
            lanes.append(lane)
        per_lane = [n // inflight + (1 if i < n % inflight else 0) for i in range(inflight)]
        pid = self.server.pid
        await asyncio.sleep(0.3)
        print(f"measuring {op}", file=sys.stderr, flush=True)  # a profiler may attach from here
        cpu0, main0, t0 = self.server.cpu_seconds(), thread_cpu_s(pid, pid), time.perf_counter()
        await asyncio.gather(*(self._lane(op, lane, k) for lane, k in zip(lanes, per_lane, strict=True)))
        wall = time.perf_counter() - t0
        await asyncio.sleep(0.3)  # the writer's last group
        cpu1, main1 = self.server.cpu_seconds(), thread_cpu_s(pid, pid)
        for lane in lanes:
            if "ws" in lane:
                await lane["ws"].close()
            if "http" in lane:
                await lane["http"].aclose()
        return {"op": op, "n": n, "server_cpu_ms": round((cpu1 - cpu0) / n * 1000, 3),
                "loop_thread_cpu_ms": round((main1 - main0) / n * 1000, 3), "wall_s": round(wall, 2)}  # fmt: skip

    async def _lane(self, op: str, lane: dict, k: int) -> None:
        dev: SimDevice = lane["dev"]
        # the device's rate limit (10 frames/s, burst 20) is a rule of the server, not what is measured: pace
        gap = FRAME_GAP_S * (3 if op.startswith("session_") else 2 if op == "ws_open" else 1)
        last = -gap
        for _ in range(k):
            wait = last + gap - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
            last = time.perf_counter()
            if op == "ws_open":
                ws = await self._connect()
                await self._frame(ws, dev, dev.heartbeat(Tier.ACTIVE))
                await ws.close()
            elif op == "ws_hb":
                await self._frame(lane["ws"], dev, dev.heartbeat(Tier.PREMIUM))
            elif op == "ws_pull":
                await self._frame(lane["ws"], dev, dev.pull())
            elif op == "ws_push":
                await self._frame(lane["ws"], dev, dev.push())
            elif op == "http_open":
                http = Http1Pool("127.0.0.1", self.server.port, max_connections=1)
                await self._post(http, dev, dev.heartbeat(Tier.CASUAL))
                await http.aclose()
            elif op == "http_hb":
                await self._post(lane["http"], dev, dev.heartbeat(Tier.CASUAL))
            elif op == "session_premium":
                for _, body in dev.session(Tier.PREMIUM):
                    await self._frame(lane["ws"], dev, body)
            elif op == "session_active":
                ws = await self._connect()
                for _, body in dev.session(Tier.ACTIVE):
                    await self._frame(ws, dev, body)
                await ws.close()
            elif op == "session_casual":
                http = Http1Pool("127.0.0.1", self.server.port, max_connections=1)
                for _, body in dev.session(Tier.CASUAL):
                    await self._post(http, dev, body)
                await http.aclose()
            else:
                raise ValueError(op)

    async def preload(self, pushes: int, lanes: int = 50) -> None:
        """`pushes` pushes, each from a new device on its own WebSocket (one device would be rate-limited)."""

        async def lane(k: int) -> None:
            for _ in range(k):
                dev = self.device()
                ws = await self._connect()
                await self._frame(ws, dev, dev.push())
                await ws.close()

        await asyncio.gather(*(lane(pushes // lanes + (1 if i < pushes % lanes else 0)) for i in range(lanes)))


async def measure(src_name: str, server: ServerProcess, secret: bytes, ops: list[str], n: int, inflight: int,
                  preload: int, seed: int) -> list[dict]:  # fmt: skip
    bench = Bench(server, secret, seed)
    await warm_up(Target("127.0.0.1", server.port), secret, 1)
    await bench.preload(preload)
    rows = []
    for op in ops:
        row = await bench.run(op, n, inflight)
        row["server"] = src_name
        print(json.dumps(row), file=sys.stderr)
        rows.append(row)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=2000, help="operations per kind")
    ap.add_argument("--inflight", type=int, default=100, help="operations at once (devices)")
    ap.add_argument("--preload", type=int, default=300, help="pushes (each from a new device) before measuring")
    ap.add_argument("--ops", default=",".join(OPS))
    ap.add_argument("--server", action="append", default=[], help="NAME=SRC_DIR (the server's tree); repeatable")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    ops = [o for o in args.ops.split(",") if o]
    unknown = set(ops) - set(OPS)
    if unknown:
        print(f"session_cost: unknown ops {sorted(unknown)}", file=sys.stderr)
        return 2
    servers = [s.split("=", 1) for s in args.server] or [["this", "src"]]
    raise_nofile_limit()
    secret = new_secret()
    rows: list[dict] = []
    for rep in range(args.repeat):
        for name, src in servers:
            with tempfile.TemporaryDirectory() as tmp:
                os.environ["PYTHONPATH"] = str(Path(src).resolve())  # the child's interpreter imports this tree
                with start_server(Path(tmp), f"sqlite:{Path(tmp) / 'c.db'}", secret.decode(), shard_id="cost",
                                  env={"OMEGA_MAX_CONNECTIONS_PER_IP": "0"}) as server:  # fmt: skip
                    for row in asyncio.run(measure(name, server, secret, ops, args.n, args.inflight, args.preload,
                                                   args.seed + rep)):  # fmt: skip
                        row["rep"] = rep
                        row["loadavg_1m"] = round(os.getloadavg()[0], 2)
                        rows.append(row)
    summary = {}
    for name, _ in servers:
        for op in ops:
            vals = [r["server_cpu_ms"] for r in rows if r["server"] == name and r["op"] == op]
            main_vals = [r["loop_thread_cpu_ms"] for r in rows if r["server"] == name and r["op"] == op]
            summary[f"{name}:{op}"] = {"server_cpu_ms_median": round(statistics.median(vals), 3),
                                       "loop_thread_cpu_ms_median": round(statistics.median(main_vals), 3)}  # fmt: skip
    out = {"n": args.n, "inflight": args.inflight, "preload": args.preload, "rows": rows, "summary": summary}
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        for k, v in summary.items():
            print(f"{k:28s} server {v['server_cpu_ms_median']:7.3f} ms  "
                  f"loop thread {v['loop_thread_cpu_ms_median']:7.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
