"""What the routes and the lifespan of one shard's server share (`app.state.omega`), and draining."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from starlette.websockets import WebSocket

from omega.constellation.dashboard import Dashboard
from omega.constellation.guard import ConnectionGuard
from omega.constellation.keyring import Keyring
from omega.constellation.metrics import ServerMetrics
from omega.constellation.service import SyncService
from omega.constellation.settings import ServerSettings
from omega.constellation.shard_services import FederationLoop
from omega.constellation.trends import TrendTracker

WS_GOING_AWAY = 1001
WS_POLICY_VIOLATION = 1008
WS_UNSUPPORTED_DATA = 1003


@dataclass(eq=False)  # identity hash: held in a set
class Connection:
    """One open WebSocket: its tier (for the gauge) and whether a frame is being answered."""

    ws: WebSocket
    tier: str = "unknown"
    busy: bool = False
    closing: bool = False
    closed: bool = False

    async def close(self, code: int, reason: str = "") -> None:
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(Exception):  # the peer may already be gone
            await self.ws.close(code, reason)


@dataclass
class ServerState:
    """Everything the routes share; `app.state.omega`."""

    settings: ServerSettings
    metrics: ServerMetrics
    keyring: Keyring
    salt: bytes = field(default=b"", repr=False)  # the aggregation salt (server secret)
    #: The server's "now" in seconds (`time.time`, or the fleet simulator's clock).
    clock: Callable[[], float] = time.time
    #: Run housekeeping, trend-window closing and the refinement job on wall-clock timers. A simulation
    #: on its own clock (the fleet simulator) turns them off and runs the jobs at its simulated times:
    #: on wall-clock timers they would fire at load-dependent simulated moments (not reproducible).
    periodic: bool = True
    service: SyncService | None = None
    trends: TrendTracker | None = None
    federation: FederationLoop | None = None
    dashboard: Dashboard | None = None
    ready: bool = False
    draining: bool = False
    startup_error: Exception | None = None  # why the lifespan failed to start (the CLI reports it)
    in_flight: int = 0
    #: POST /v1/sync bodies cut short by the client (a TV dropping off the network is routine); see /v1/stats.
    client_disconnects: int = 0
    connections: set[Connection] = field(default_factory=set)
    #: Deadlines and connection caps below the app (see guard.py); set by create_app.
    guard: ConnectionGuard | None = None

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    def connections_by_tier(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for conn in self.connections:
            out[conn.tier] = out.get(conn.tier, 0) + 1
        return out

    async def drain(self, timeout_s: float | None = None) -> None:
        """Stop taking work: readyz 503, new frames `unavailable`, WebSockets closed 1001 after their frame."""
        self.draining = True
        if self.service is not None:
            self.service.draining = True
        for conn in list(self.connections):
            conn.closing = True
            if not conn.busy:
                await conn.close(WS_GOING_AWAY, "server shutting down")
        deadline = time.monotonic() + (self.settings.drain_timeout_s if timeout_s is None else timeout_s)
        while (self.connections or self.in_flight) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
