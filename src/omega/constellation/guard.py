"""Connection-level defences of the sync server, below the app: deadlines and connection caps.

uvicorn closes an idle keep-alive connection only after a first response, so a
socket that never completes a request (idle, or a slowloris trickling a byte
every few seconds) used to stay open for ever. `guarded_protocols` returns
uvicorn's httptools and websockets-sansio protocols with:

- a request deadline: from the connection's start (and again after each
  response) a complete HTTP request must arrive within `request_timeout_s`,
  else the connection is closed (`omega_connections_closed_total{reason="request_timeout"}`);
- caps on open connections, total and per peer address, checked as a connection
  is accepted: over a cap it is closed at once (`omega_connections_refused_total{reason}`);
- a total cap kept below the process's file-descriptor limit. uvloop (libuv)
  answers EMFILE on accept by silently accepting and closing the waiting
  connections, so running out of descriptors would be invisible: the guard
  refuses before that, logs it (once a minute) and counts it as reason
  `fd_limit` and in `omega_fd_exhaustion_total`.

The WebSocket authentication deadline lives in routes.py (it needs the frame).
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from typing import Any

from omega.constellation.lean_ws import lean_http_protocol, lean_protocol
from omega.constellation.metrics import ServerMetrics

log = logging.getLogger("omega.serve")

#: Descriptors kept for everything that is not a client connection (store, Redis, NATS, logs, listeners).
FD_RESERVE = 64
_LOG_EVERY_S = 60.0


def fd_soft_limit() -> int | None:
    """The process's soft RLIMIT_NOFILE (None if unlimited)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else int(soft)


def raise_fd_limit() -> int | None:
    """Raise the soft RLIMIT_NOFILE to the hard limit (a server holds a descriptor per TV); returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:  # not allowed here: keep the soft limit
            log.warning("cannot raise the open-file limit from %d to %d: %s", soft, hard, exc)
    return fd_soft_limit()


class ConnectionGuard:
    """Counts open connections by peer address and decides whether a new one may stay."""

    def __init__(
        self,
        metrics: ServerMetrics,
        *,
        max_connections: int,
        max_per_ip: int,
        request_timeout_s: float,
        fd_limit: int | None = None,
    ) -> None:
        self.metrics = metrics
        self.max_per_ip = max_per_ip
        self.request_timeout_s = request_timeout_s
        self.max_connections = max_connections
        self.fd_cap: int | None = None if fd_limit is None else max(1, fd_limit - FD_RESERVE)
        self.total = 0
        self._by_ip: dict[str, int] = {}
        self._peers: dict[int, str] = {}  # id(transport) -> peer address
        self._logged: dict[str, float] = {}
        self._refused = {r: metrics.connections_refused.labels(r) for r in ("total_cap", "ip_cap", "fd_limit")}
        self._timed_out = {r: metrics.connections_closed.labels(r) for r in ("request_timeout", "ws_auth_timeout")}
        metrics.connections_open.set_function(lambda: self.total)

    def admit(self, transport: Any, host: str) -> bool:
        """Whether a just-accepted connection may stay; idempotent per transport (a WS upgrade asks again)."""
        key = id(transport)
        if key in self._peers:
            return True
        reason = None
        if self.fd_cap is not None and self.total >= self.fd_cap and self.fd_cap <= self.max_connections:
            reason = "fd_limit"
        elif self.total >= self.max_connections:
            reason = "total_cap"
        elif self.max_per_ip and self._by_ip.get(host, 0) >= self.max_per_ip:
            reason = "ip_cap"
        if reason is not None:
            self._refused[reason].inc()
            if reason == "fd_limit":
                self.metrics.fd_exhaustion.inc()
            self._log(reason, host)
            return False
        self._peers[key] = host
        self._by_ip[host] = self._by_ip.get(host, 0) + 1
        self.total += 1
        return True

    def release(self, transport: Any) -> None:
        host = self._peers.pop(id(transport), None)
        if host is None:
            return
        self.total -= 1
        left = self._by_ip[host] - 1
        if left:
            self._by_ip[host] = left
        else:
            del self._by_ip[host]

    def timed_out(self, reason: str) -> None:
        self._timed_out[reason].inc()

    def _log(self, reason: str, host: str) -> None:
        now = time.monotonic()
        if now - self._logged.get(reason, -_LOG_EVERY_S) < _LOG_EVERY_S:
            return
        self._logged[reason] = now
        if reason == "fd_limit":
            log.warning("out of file descriptors: %d connections open, limit %d (RLIMIT_NOFILE less %d); "
                        "refusing new connections", self.total, self.fd_cap, FD_RESERVE)  # fmt: skip
        elif reason == "total_cap":
            log.warning("connection cap reached (%d open); refusing new connections", self.total)
        else:
            log.warning("per-address connection cap (%d) reached by %s; refusing its new connections",
                        self.max_per_ip, host)  # fmt: skip


def guarded_protocols(guard: ConnectionGuard) -> tuple[type, type]:
    """uvicorn's (httptools, websockets-sansio) protocol classes with the guard's deadline and caps."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

    class GuardedHttpProtocol(lean_http_protocol(HttpToolsProtocol)):  # type: ignore[misc]
        _deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            host = self.client[0] if self.client else "?"
            if not guard.admit(transport, host):
                transport.close()
                return
            self._arm()

        def _arm(self) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(guard.request_timeout_s, self._request_timed_out)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _request_timed_out(self) -> None:
            self._deadline = None
            if not self.transport.is_closing():
                guard.timed_out("request_timeout")
                self.transport.close()

        def on_message_complete(self) -> None:
            self._disarm()
            super().on_message_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()  # the next request has the same deadline (uvicorn's keep-alive timer resets on any byte)

        def handle_websocket_upgrade(self) -> None:
            self._disarm()  # from here the WebSocket's own deadline (routes.py) applies
            super().handle_websocket_upgrade()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            if self.transport is not None and self.transport.get_protocol() is self:
                guard.release(self.transport)
            super().connection_lost(exc)

    class GuardedWebSocketProtocol(lean_protocol(WebSocketsSansIOProtocol)):  # type: ignore[misc]
        def connection_lost(self, exc: Exception | None) -> None:
            if self.transport is not None:
                guard.release(self.transport)
            super().connection_lost(exc)

    return GuardedHttpProtocol, GuardedWebSocketProtocol
