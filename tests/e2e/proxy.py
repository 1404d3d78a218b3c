"""A fault-injecting TCP proxy on loopback: a test double for the network only (server and TV stay real).

Every accepted connection gets a `Fault` (the next queued one, else the
proxy's `policy`), which can refuse it, delay every chunk, cut it after N
bytes in either direction (mid-frame: the peer sees a half-written request or
reply and a reset), or hold the server's reply back forever (the server did
the work, the TV never hears of it). What each connection forwarded is kept,
so a test can check where a cut really landed.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

_CHUNK = 4096


@dataclass(frozen=True)
class Fault:
    """What to do to one connection (the default does nothing)."""

    refuse: bool = False  # close at once, before a byte is forwarded
    delay_s: float = 0.0  # before forwarding each chunk, both directions
    cut_up_after: int | None = None  # close after forwarding this many TV -> server bytes
    cut_down_after: int | None = None  # close after forwarding this many server -> TV bytes
    hold_down: bool = False  # never forward server -> TV bytes (they are counted, then dropped)

    @property
    def harmless(self) -> bool:
        return self == Fault()


@dataclass
class Conn:
    """What happened on one proxied connection."""

    fault: Fault
    up: bytearray = field(default_factory=bytearray)  # forwarded TV -> server
    down: bytearray = field(default_factory=bytearray)  # forwarded server -> TV
    held: int = 0  # server -> TV bytes swallowed by hold_down
    cut: bool = False  # closed by the fault, not by either peer


def random_faults(rng: random.Random, rate: float, *, max_delay_s: float = 0.3, max_cut: int = 1500) -> Callable[[], Fault]:
    """A policy: with probability `rate` a random fault (refuse, delay, cut up, cut down), else none."""

    def pick() -> Fault:
        if rng.random() >= rate:
            return Fault()
        kind = rng.randrange(4)
        if kind == 0:
            return Fault(refuse=True)
        if kind == 1:
            return Fault(delay_s=rng.uniform(0.0, max_delay_s))
        if kind == 2:
            return Fault(cut_up_after=rng.randrange(1, max_cut))
        return Fault(cut_down_after=rng.randrange(1, max_cut))

    return pick


class FaultProxy:
    """`127.0.0.1:port` -> `127.0.0.1:upstream_port`, injecting faults per connection. Use `async with`."""

    def __init__(self, upstream_port: int, *, policy: Callable[[], Fault] | None = None) -> None:
        self.upstream_port = upstream_port
        self.policy = policy or Fault
        self.queued: deque[Fault] = deque()  # one-shot faults, used before the policy
        self.conns: list[Conn] = []
        self.port = 0
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
            self._server = None

    async def __aenter__(self) -> FaultProxy:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def inject(self, *faults: Fault) -> None:
        """Faults for the next connections, in order."""
        self.queued.extend(faults)

    # ------------------------------------------------------------------ plumbing

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        fault = self.queued.popleft() if self.queued else self.policy()
        conn = Conn(fault)
        self.conns.append(conn)
        server_w: asyncio.StreamWriter | None = None
        try:
            if fault.refuse:
                conn.cut = True
                return
            try:
                server_r, server_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
            except OSError:
                return  # upstream down: the TV sees its connection closed, as with a real dead server
            pumps = [
                asyncio.ensure_future(self._pump(client_r, server_w, conn, up=True)),
                asyncio.ensure_future(self._pump(server_r, client_w, conn, up=False)),
            ]
            try:
                # Either side closing (or a cut) ends the connection: a proxy has no half-open state to keep.
                await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for p in pumps:
                    p.cancel()
                for p in pumps:
                    with contextlib.suppress(BaseException):
                        await p
        finally:
            for w in (client_w, server_w):
                if w is not None:
                    w.close()  # flushes what was forwarded (a cut's partial frame), then FIN
            self._tasks.discard(task)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: Conn, *, up: bool) -> None:
        fault = conn.fault
        limit = fault.cut_up_after if up else fault.cut_down_after
        sent = conn.up if up else conn.down
        while True:
            try:
                chunk = await reader.read(_CHUNK)
            except OSError:
                return
            if not chunk:
                return
            if not up and fault.hold_down:
                conn.held += len(chunk)
                continue
            if fault.delay_s:
                await asyncio.sleep(fault.delay_s)
            if limit is not None and len(sent) + len(chunk) >= limit:
                chunk = chunk[: limit - len(sent)]
                conn.cut = True
            try:
                writer.write(chunk)
                await writer.drain()
            except OSError:
                return
            sent += chunk
            if conn.cut:
                return

