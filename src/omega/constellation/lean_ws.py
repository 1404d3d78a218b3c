"""What a held connection costs the worker: uvicorn's per-connection objects, made lean.

uvicorn's websockets-sansio protocol gives every connection an `asyncio.Queue`
(four deques and an Event: ~3 KiB) for the frames its one ASGI reader awaits,
an `asyncio.Event` (~0.7 KiB) for write flow control, and keeps the parsed
handshake request and response (their header tables, ~2 KiB) for the
connection's lifetime (and a copy of the headers in the ASGI scope; the
websockets parser's generator keeps the request as a local too). A shard holds
tens of thousands of mostly idle connections, so `lean_protocol` swaps the first
two for the few operations uvicorn uses, in a list and one future, and drops the
handshake's headers once the accept is sent. It also stores uvicorn's own
attributes in slots: they are more than the 30 keys an instance dict may share
with its class (CPython 3.11), so each connection had a dict of its own (~1.6 KiB).

uvicorn's httptools protocol keeps the last request's cycle (its scope, header
list, an `asyncio.Event`) on a keep-alive connection until the next request
comes; `lean_http_protocol` lets it go once the response is complete. It also
writes a `POST /v1/sync` reply in one `write` (uvicorn writes the status line and
headers, then the body: two send syscalls, two loopback segments and two wake-ups
of the TV per reply; see `OneWriteReply`).

Measured by `bench/conn_memory.py` (RSS per held connection at equal data) and
`omega load --heartbeat-only` (`memory_per_connection_kib`).
"""

from __future__ import annotations

import asyncio
from typing import Any


class Inbox:
    """The part of asyncio.Queue uvicorn's WebSocket protocol uses (put_nowait, get, empty); one reader."""

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: list[Any] = []
        self._waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: Any) -> None:
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def empty(self) -> bool:
        return not self._items

    def qsize(self) -> int:
        return len(self._items)

    async def get(self) -> Any:
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.pop(0)


class Flag:
    """The part of asyncio.Event uvicorn's WebSocket protocol uses (set, clear, is_set, wait)."""

    __slots__ = ("_set", "_waiters")

    def __init__(self, value: bool = False) -> None:
        self._set = value
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._set = False

    async def wait(self) -> bool:
        if self._set:
            return True
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            if self._waiters is not None and waiter in self._waiters:
                self._waiters.remove(waiter)
        return True


#: What uvicorn's WebSocketsSansIOProtocol (0.54) sets on a connection; a name it adds later lands in the dict.
WS_PROTOCOL_SLOTS = (
    "config", "app", "loop", "logger", "root_path", "asgi_version", "app_state", "connections", "tasks",
    "default_headers", "transport", "server", "client", "scheme", "queue", "handshake_initiated",
    "handshake_complete", "close_sent", "disconnected", "close_timer", "close_timeout", "initial_response", "conn",
    "read_paused", "writable", "ping_interval", "ping_timeout", "ping_timer", "pong_timer", "pending_ping_payload",
    "ping_sent_at", "last_ping_rtt", "frames", "curr_msg_data_type", "request", "response", "scope",
)  # fmt: skip


def lean_protocol(base: type) -> type:
    """`base` (uvicorn's WebSocketsSansIOProtocol or a subclass) with the lean per-connection objects."""

    class LeanWebSocketProtocol(base):  # type: ignore[misc, valid-type]
        __slots__ = WS_PROTOCOL_SLOTS

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.queue = Inbox()
            self.writable = Flag(True)

        async def send(self, message: Any) -> None:
            await super().send(message)
            if self.handshake_complete and self.request is not None:
                # The handshake's request, response and header list are never read again. The request is
                # also a local of websockets' parser generator for the connection's lifetime: empty its headers.
                self.request.headers.clear()
                self.request = self.response = None
                self.scope["headers"] = []

    LeanWebSocketProtocol.__name__ = f"Lean{base.__name__}"
    return LeanWebSocketProtocol


class OneWriteReply:
    """The transport a `POST /v1/sync` request's uvicorn cycle writes to: its response head waits for the body.

    uvicorn's cycle writes the status line and headers when the app sends `http.response.start`, then the body
    on `http.response.body`; the sync endpoint sends both at once (`routes._send_frame`), so the head is held
    and written with the body, one syscall per reply. Held only once the response has started (the cycle's
    `100 Continue`, written before, goes out at once) and only the head: everything after passes straight
    through, and `close` writes a held head first. The rest of the transport is reached through `__getattr__`.
    """

    __slots__ = ("_transport", "_cycle", "_head", "_state")

    def __init__(self, transport: Any, cycle: Any) -> None:
        self._transport = transport
        self._cycle = cycle
        self._head: bytes | None = None
        self._state = 0  # 0: no response yet, 1: head held, 2: passing through

    def write(self, data: bytes) -> None:
        if self._state == 1:
            data = self._head + data  # type: ignore[operator]
            self._head, self._state = None, 2
        elif self._state == 0 and self._cycle.response_started:
            self._head, self._state = bytes(data), 1
            return
        self._transport.write(data)

    def close(self) -> None:
        if self._state == 1:
            self._transport.write(self._head)
            self._head, self._state = None, 2
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def lean_http_protocol(base: type) -> type:
    """`base` (uvicorn's HttpToolsProtocol or a subclass) that forgets a request once its response is complete
    and writes a sync reply in one write."""

    class LeanHttpProtocol(base):  # type: ignore[misc, valid-type]
        def on_headers_complete(self) -> None:
            super().on_headers_complete()
            cycle = self.cycle
            # A new cycle of a sync request (not an upgrade, not a cycle already answering): its ASGI task has
            # not run yet, so nothing has been written through its transport.
            if (cycle is not None and not cycle.response_started and cycle.scope is self.scope
                    and self.scope.get("path") == "/v1/sync" and self.scope.get("method") == "POST"):
                cycle.transport = OneWriteReply(cycle.transport, cycle)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.pipeline and self.cycle is not None and self.cycle.response_complete:
                # Idle keep-alive from here: the next request builds its own scope, headers and cycle
                # (uvicorn checks `cycle is None` wherever it reads it between requests).
                self.cycle = self.scope = self.headers = None

    LeanHttpProtocol.__name__ = f"Lean{base.__name__}"
    return LeanHttpProtocol
