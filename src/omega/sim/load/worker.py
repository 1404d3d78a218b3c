"""One load-generator process: its share of simulated TVs on asyncio + uvloop.

Tiers (docs/architecture.md §4): a *premium* TV holds one WebSocket and syncs on it every
interval; an *active* TV opens a WebSocket, syncs and closes, every interval;
a *casual* TV polls over HTTP (its own connection) every interval. The interval is the one the
server names in its heartbeat ack (else the tier's default), times the run's
time scale. Every TV syncs once when it comes online (during the ramp), then
at a random phase of its interval, so the fleet does not beat in step.

Sockets are bound to this process's 127.0.0.x source addresses: the kernel
gives each source address its own ephemeral ports, which is how one machine
opens more loopback connections to one server port than the port range holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import random
import resource
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omega.brain.sync.tiers import TIER_NAMES, policy_for
from omega.protocol import SYNC_TIERS, ProtocolError
from omega.sim.load.client import ReplyTally, SimDevice, pattern_pool
from omega.sim.load.histogram import LatencyHistogram
from omega.sim.load.http1 import Http1Pool, header_lines

TIERS = tuple(tier.label for tier in SYNC_TIERS)
#: the tier intervals of docs/architecture.md §4 (seconds), as a TV's policy has them, when the server names none
DEFAULT_INTERVAL_S = {tier.label: policy_for(tier).interval_s for tier in SYNC_TIERS}
OPEN_TIMEOUT_S = 30.0
REPLY_TIMEOUT_S = 30.0
#: time allowed after the end of the run for sessions in flight and closing handshakes
FINISH_GRACE_S = 30.0
MAX_BACKOFF_S = 30.0
LAG_TICK_S = 0.05
WINDOW_S = 10.0


@dataclass(frozen=True)
class WorkerSpec:
    """What one process runs; times are wall-clock epochs (time.time()) shared by all processes."""

    index: int
    host: str
    port: int
    source_addresses: tuple[str, ...]  # empty: the kernel chooses
    secret: bytes
    key_id: int
    devices: dict[str, int]  # tier -> TVs of this process
    time_scale: float
    ramp_rate: float  # TVs brought online per second by this process
    start_at: float
    end_at: float
    hold_from: float  # replies after this count as the steady phase
    seed: int
    heartbeat_only: bool = False  # sessions are a heartbeat alone (no pull, no push)


@dataclass
class WorkerStats:
    """Everything a worker measured; merged by the parent (see `merge`)."""

    latency: dict[str, dict[str, LatencyHistogram]] = field(
        default_factory=lambda: {p: {k: LatencyHistogram() for k in ("push", "pull", "heartbeat")} for p in ("ramp", "hold")}
    )
    bytes_in: int = 0
    bytes_out: int = 0
    #: Steady-phase latency by tier and kind: which way of syncing waits (premium WS, active WS, casual HTTP).
    by_tier: dict[str, dict[str, LatencyHistogram]] = field(
        default_factory=lambda: {t: {k: LatencyHistogram() for k in ("push", "pull", "heartbeat")} for t in TIERS}
    )
    #: Latency of every answered frame by WINDOW_S window of the run (from its start): shows a backlog
    #: (the ramp's first syncs) draining apart from the steady state after it.
    windows: dict[int, LatencyHistogram] = field(default_factory=dict)
    #: Bytes of pull replies answered in the steady (hold) phase: the fleet's pull traffic.
    pull_bytes_hold: int = 0
    tally: ReplyTally = field(default_factory=ReplyTally)
    sessions: int = 0
    connects: int = 0
    peak_held: int = 0
    nofile_limit: int = 0
    rss_peak_kib: int = 0
    #: CPU seconds of the process (start-up included): the harness shares the cores with the server
    cpu_s: float = 0.0
    #: how late the event loop woke a 50 ms timer: a loaded client times its own lag into every reply
    loop_lag: LatencyHistogram = field(default_factory=LatencyHistogram)
    source_addresses: tuple[str, ...] = ()
    fatal: str | None = None

    def merge(self, other: WorkerStats) -> None:
        for phase, kinds in other.latency.items():
            for kind, hist in kinds.items():
                self.latency[phase][kind].merge(hist)
        for tier, kinds in other.by_tier.items():
            for kind, hist in kinds.items():
                self.by_tier[tier][kind].merge(hist)
        for window, hist in other.windows.items():
            self.windows.setdefault(window, LatencyHistogram()).merge(hist)
        self.bytes_in += other.bytes_in
        self.bytes_out += other.bytes_out
        self.pull_bytes_hold += other.pull_bytes_hold
        for kind, n in other.tally.errors.items():
            self.tally.error(kind, n)
        self.tally.accepted += other.tally.accepted
        self.tally.rejected += other.tally.rejected
        self.tally.pull_items += other.tally.pull_items
        self.tally.pull_bytes.extend(other.tally.pull_bytes)
        self.sessions += other.sessions
        self.connects += other.connects
        self.peak_held += other.peak_held
        self.rss_peak_kib += other.rss_peak_kib
        self.cpu_s += other.cpu_s
        self.loop_lag.merge(other.loop_lag)


def raise_nofile_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit; the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else 1 << 20
        with contextlib.suppress(ValueError, OSError):  # e.g. a container forbids it: keep the soft limit
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def error_kind(exc: BaseException) -> str:
    """A short, countable name for what went wrong (errno names for socket errors)."""
    from websockets.exceptions import ConnectionClosed, InvalidStatus

    if isinstance(exc, ConnectionClosed):
        rcvd = exc.rcvd
        return f"ws_closed_{rcvd.code}" if rcvd is not None else "ws_closed_abnormally"
    if isinstance(exc, InvalidStatus):
        return f"ws_status_{exc.response.status_code}"
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ProtocolError):
        return f"bad_reply_{exc.code}"
    if isinstance(exc, OSError) and exc.errno in errno.errorcode:
        return f"os_{errno.errorcode[exc.errno]}"
    module = type(exc).__module__.split(".")[0]
    return f"{module}_{type(exc).__name__}"


def interleave(devices: dict[str, int]) -> list[str]:
    """Tiers in bring-up order, mixed evenly (so every moment of the ramp has the same mix)."""
    total = sum(devices.values())
    order: list[str] = []
    given = dict.fromkeys(devices, 0)
    for i in range(total):
        # the tier furthest behind its share of the first i+1 places
        tier = max(devices, key=lambda t: devices[t] * (i + 1) / total - given[t] if given[t] < devices[t] else -1.0)
        given[tier] += 1
        order.append(tier)
    return order


def _vm_hwm_kib() -> int:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


class _Worker:
    def __init__(self, spec: WorkerSpec, held: Any, answered: Any) -> None:
        self.spec = spec
        self.shared_held = held  # multiprocessing.Array slots the parent samples
        self.shared_answered = answered
        self.stats = WorkerStats(source_addresses=spec.source_addresses)
        self.loop = asyncio.get_running_loop()
        offset = self.loop.time() - time.time()  # wall epoch -> loop clock
        self.start = spec.start_at + offset
        self.end = spec.end_at + offset
        self.hold_from = spec.hold_from + offset
        self.rng = random.Random(spec.seed)
        self.pool = pattern_pool(self.rng)
        self.held = 0
        self.answered = 0
        self.ws_url = f"ws://{_netloc(spec.host, spec.port)}/v1/ws"
        self.http: list[Http1Pool] = []  # one connection per casual TV (see casual)

    # ------------------------------------------------------------ bookkeeping

    def _record(self, kind: str, elapsed: float, n_out: int, n_in: int, ok: bool, tier: str) -> None:
        phase = "hold" if self.loop.time() >= self.hold_from else "ramp"
        self.stats.bytes_out += n_out
        self.stats.bytes_in += n_in
        if kind == "pull" and phase == "hold":
            self.stats.pull_bytes_hold += n_in
        if ok:
            self.stats.latency[phase][kind].add(elapsed)
            window = int((self.loop.time() - self.start) // WINDOW_S)
            hist = self.stats.windows.get(window)
            if hist is None:
                hist = self.stats.windows[window] = LatencyHistogram()
            hist.add(elapsed)
            if phase == "hold":
                self.stats.by_tier[tier][kind].add(elapsed)
            self.answered += 1
            self.shared_answered[self.spec.index] = self.answered

    def _set_held(self, delta: int) -> None:
        self.held += delta
        self.stats.peak_held = max(self.stats.peak_held, self.held)
        self.shared_held[self.spec.index] = self.held

    def _interval(self, dev: SimDevice, tier: str) -> float:
        base = dev.next_sync_s if dev.next_sync_s > 0 else DEFAULT_INTERVAL_S[tier]
        return base * self.spec.time_scale

    async def _sleep_until(self, when: float) -> None:
        delay = min(when, self.end) - self.loop.time()
        if delay > 0:
            await asyncio.sleep(delay)

    def _backoff(self, attempt: int) -> float:
        return self.rng.uniform(0, min(MAX_BACKOFF_S, 0.5 * 2**attempt))  # full jitter

    def _source(self, n: int) -> tuple[str, int] | None:
        addresses = self.spec.source_addresses
        return (addresses[n % len(addresses)], 0) if addresses else None

    # ------------------------------------------------------------ wire

    async def _connect(self, n: int, dev: SimDevice):  # noqa: ANN202
        from websockets.asyncio.client import connect

        # As a TV does, the upgrade names the device (X-Omega-Device): a pinned server refuses a socket without it.
        ws = await connect(self.ws_url, local_addr=self._source(n), compression=None, ping_interval=None,
                           open_timeout=OPEN_TIMEOUT_S, close_timeout=5, max_size=1 << 16, max_queue=4,
                           user_agent_header=None,
                           additional_headers=dev.headers())  # fmt: skip
        self.stats.connects += 1
        return ws

    async def _ws_session(self, ws, dev: SimDevice, tier: str) -> None:  # noqa: ANN001
        for kind, body in dev.session(TIER_NAMES[tier], sync=not self.spec.heartbeat_only):
            data = dev.frame(body)
            # perf_counter, not loop.time(): uvloop's clock is the loop iteration's, in whole ms, so a
            # sub-millisecond reply would be timed as 0.
            t0 = time.perf_counter()
            await ws.send(data)
            async with asyncio.timeout(REPLY_TIMEOUT_S):
                reply = await ws.recv()
            self._absorb(kind, dev, data, reply, time.perf_counter() - t0, tier)
        self.stats.sessions += 1

    async def _http_session(self, http: Http1Pool, dev: SimDevice, tier: str) -> None:
        header = header_lines(dev.headers())  # as a TV sends on each POST
        for kind, body in dev.session(TIER_NAMES[tier], sync=not self.spec.heartbeat_only):
            data = dev.frame(body)
            t0 = time.perf_counter()  # as in _ws_session
            _, reply, _ = await http.post("/v1/sync", data, header)
            self._absorb(kind, dev, data, reply, time.perf_counter() - t0, tier)
        self.stats.sessions += 1

    def _absorb(self, kind: str, dev: SimDevice, data: bytes, reply: bytes | str, elapsed: float, tier: str) -> None:
        if isinstance(reply, str):
            self._record(kind, elapsed, len(data), len(reply), False, tier)
            self.stats.tally.error("text_reply")
            return
        try:
            ok = dev.absorb(bytes(reply), self.stats.tally)
        except ProtocolError as exc:
            self.stats.tally.error(error_kind(exc))
            ok = False
        self._record(kind, elapsed, len(data), len(reply), ok, tier)

    # ------------------------------------------------------------ tiers

    async def premium(self, n: int, dev: SimDevice) -> None:
        attempt = 0
        while self.loop.time() < self.end:
            try:
                ws = await self._connect(n, dev)
            except Exception as exc:  # counted, then retried with backoff like a TV
                self.stats.tally.error(error_kind(exc))
                attempt += 1
                await self._sleep_until(self.loop.time() + self._backoff(attempt))
                continue
            self._set_held(+1)
            try:
                await self._ws_session(ws, dev, "premium")
                attempt = 0
                next_at = self.loop.time() + self.rng.uniform(0, self._interval(dev, "premium"))
                while True:
                    await self._sleep_until(next_at)
                    if self.loop.time() >= self.end:
                        break
                    await self._ws_session(ws, dev, "premium")
                    next_at += self._interval(dev, "premium")
            except Exception as exc:
                self.stats.tally.error(error_kind(exc))
                attempt += 1
            finally:
                self._set_held(-1)
                with contextlib.suppress(Exception):
                    await ws.close()
            if self.loop.time() < self.end:
                await self._sleep_until(self.loop.time() + self._backoff(attempt))

    async def active(self, n: int, dev: SimDevice) -> None:
        async def session() -> None:
            ws = await self._connect(n, dev)
            try:
                await self._ws_session(ws, dev, "active")
            finally:
                await ws.close()

        await self._every_interval(dev, "active", session)

    async def casual(self, n: int, dev: SimDevice) -> None:
        # Its own connection, as a TV has: a pool shared by many TVs queues their sessions behind each other in
        # the client. The server closes it when idle, so a session every few minutes opens a new one, as a
        # polling TV does (the heartbeat, first on it, is timed from the connect).
        http = Http1Pool(self.spec.host, self.spec.port, max_connections=1, timeout_s=REPLY_TIMEOUT_S,
                         local_addr=self._source(n))  # fmt: skip
        self.http.append(http)
        await self._every_interval(dev, "casual", lambda: self._http_session(http, dev, "casual"))

    async def _every_interval(self, dev: SimDevice, tier: str, session: Callable[[], Awaitable[None]]) -> None:
        """One session per tier interval until the end (the first at a random point of the first interval)."""
        first = True
        next_at = self.loop.time()
        while next_at < self.end:
            await self._sleep_until(next_at)
            if self.loop.time() >= self.end:
                break
            try:
                await session()
            except Exception as exc:
                self.stats.tally.error(error_kind(exc))
            interval = self._interval(dev, tier)
            next_at += self.rng.uniform(0, interval) if first else interval
            first = False

    # ------------------------------------------------------------ the run

    async def _watch_loop_lag(self) -> None:
        while True:
            t0 = time.perf_counter()
            await asyncio.sleep(LAG_TICK_S)
            if self.loop.time() >= self.hold_from:
                self.stats.loop_lag.add(max(0.0, time.perf_counter() - t0 - LAG_TICK_S))

    async def run(self) -> WorkerStats:
        spec = self.spec
        watcher = asyncio.create_task(self._watch_loop_lag())
        runners: dict[str, Callable] = {"premium": self.premium, "active": self.active, "casual": self.casual}
        tasks: list[asyncio.Task] = []
        try:
            await self._sleep_until(self.start)
            for n, tier in enumerate(interleave(spec.devices)):
                due = self.start + n / spec.ramp_rate
                if due >= self.end:
                    break
                if due - self.loop.time() > 0.002:  # batch the bring-up into ~2 ms steps
                    await asyncio.sleep(due - self.loop.time())
                dev = SimDevice(spec.secret, self.pool, random.Random(self.rng.getrandbits(64)), spec.key_id)
                tasks.append(asyncio.create_task(runners[tier](n, dev)))
            if tasks:
                _, pending = await asyncio.wait(tasks, timeout=max(0.0, self.end - self.loop.time()) + FINISH_GRACE_S)
                for task in pending:
                    task.cancel()
                    self.stats.tally.error("unfinished_at_deadline")
                if pending:
                    await asyncio.wait(pending, timeout=5)
        finally:
            watcher.cancel()
            for http in self.http:
                await http.aclose()
        return self.stats


def _netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def worker_main(spec: WorkerSpec, held: Any, answered: Any, results: Any) -> None:
    """Process entry point: run `spec` on uvloop and put its WorkerStats on the `results` queue."""
    nofile = raise_nofile_limit()
    try:
        import uvloop

        async def main() -> WorkerStats:
            return await _Worker(spec, held, answered).run()

        stats = uvloop.run(main())
    except Exception as exc:  # reported by the parent as one line
        stats = WorkerStats(source_addresses=spec.source_addresses, fatal=f"{type(exc).__name__}: {exc}")
    stats.nofile_limit = nofile
    stats.rss_peak_kib = _vm_hwm_kib()
    stats.cpu_s = time.process_time()
    results.put((spec.index, stats))


def split_evenly(total: int, parts: int) -> list[int]:
    """`total` split into `parts` integers differing by at most one."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def devices_per_worker(devices: dict[str, int], workers: int) -> list[dict[str, int]]:
    shares = {tier: split_evenly(n, workers) for tier, n in devices.items()}
    return [{tier: shares[tier][w] for tier in devices} for w in range(workers)]
