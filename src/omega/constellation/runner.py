"""Run the sync server on uvicorn (uvloop, httptools, websockets without permessage-deflate).

Shutdown on SIGTERM/SIGINT drains first: readyz turns 503, new frames get
`unavailable` + Retry-After, WebSockets are closed with 1001 once their
in-flight frame is answered; then uvicorn stops accepting and finishes, and the
app's lifespan closes the store. A second SIGINT forces the exit.

`EmbeddedServer` runs the same server inside an event loop that is already
running (the fleet simulator, tests): no signal handlers, started and stopped
by the caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import socket
import sys
from collections.abc import Iterator
from types import FrameType

import uvicorn
from starlette.applications import Starlette

from omega.constellation.app import create_app
from omega.constellation.guard import guarded_protocols, raise_fd_limit
from omega.constellation.routes import SyncSocketFront
from omega.constellation.settings import ServerSettings
from omega.errors import OmegaError

log = logging.getLogger("omega.serve")

#: Container allocations between young-generation collections in a server process (CPython's default: 700).
#: A push allocates thousands of short-lived tuples and lists (rows, contributions, marks), so with the
#: default the collector ran ~1,000 young and 8 full collections per 3,000 pushes, ~5 % of the server's CPU
#: (perf during `omega bench sync`); at 10,000, ~150 and 1 (bench/push_path.py: +12-15 % pushes per CPU-s).
GC_THRESHOLD0 = 10_000


def tune_gc() -> None:
    """The collector of a process that only serves: fewer young collections, and what start-up built (modules,
    codebook, settings) frozen out of every later full collection. Not for an embedding program's process."""
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD0, *gc.get_threshold()[1:])


class DrainingServer(uvicorn.Server):
    """uvicorn.Server that drains the app before it lets uvicorn shut down."""

    #: The server is the process (omega serve, a worker): it tunes the process's collector once started.
    owns_process = True

    def __init__(self, config: uvicorn.Config, on_ready=None) -> None:  # noqa: ANN001
        super().__init__(config)
        self._draining = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._on_ready = on_ready

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets)
        if self.started and self.owns_process:
            tune_gc()
        if self.started and self._on_ready is not None:
            self._on_ready(self)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._draining or self._loop is None:
            super().handle_exit(sig, frame)  # second signal: uvicorn's own (SIGINT twice forces)
            return
        self._draining = True  # not re-raised after the drain: a drained shutdown exits 0
        self._loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self._drain_then_exit()))

    async def _drain_then_exit(self) -> None:
        state = self.config.app.state.omega  # type: ignore[union-attr]
        log.info("draining: %d WebSocket(s), %d request(s) in flight", len(state.connections), state.in_flight)
        try:
            await state.drain()
        finally:
            self.should_exit = True

    def bound_port(self) -> int:
        for server in self.servers:
            for sock in server.sockets:
                return int(sock.getsockname()[1])
        return self.config.port


class EmbeddedServer(DrainingServer):
    """The sync server on uvicorn inside the running event loop: `await EmbeddedServer.start(...)`, `await stop()`.

    It installs no signal handlers (the embedding program keeps its Ctrl-C); a lifespan
    that fails to start (bad store, codebook, ...) raises OmegaError from `start`.
    """

    _task: asyncio.Task[None] | None = None
    owns_process = False  # the embedding program's collector is its own

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    @classmethod
    async def start(cls, settings: ServerSettings, app: Starlette) -> EmbeddedServer:
        """Serve `app` (from `create_app`) on settings.host:settings.port (0: a free port) until `stop()`."""
        ready = asyncio.Event()
        server = cls(uvicorn_config(settings, app), on_ready=lambda _: ready.set())

        async def run() -> None:
            try:
                await server.serve()
            except SystemExit:  # uvicorn's answer to a failed lifespan start-up; reported below
                pass
            finally:
                ready.set()

        server._task = asyncio.create_task(run(), name="omega-embedded-server")
        await ready.wait()
        if not server.started:
            await server._task
            error = app.state.omega.startup_error
            raise OmegaError(str(error) if error is not None else "the embedded sync server did not start")
        return server

    @property
    def url(self) -> str:
        scheme = "https" if self.config.ssl_certfile else "http"
        return f"{scheme}://{self.config.host}:{self.bound_port()}"

    async def stop(self) -> None:
        """Stop accepting, close connections, run the lifespan's shutdown (the store is closed), and return."""
        self.should_exit = True
        if self._task is not None:
            await self._task
            self._task = None


def check_tls_files(settings: ServerSettings) -> None:
    """Load the TLS certificate and key once, so a bad pair is one clear line before anything listens."""
    if settings.tls_cert is None:
        return
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(settings.tls_cert, settings.tls_key)
    except FileNotFoundError as exc:
        raise OmegaError(f"TLS file not found: {exc.filename or settings.tls_cert}") from None
    except (ssl.SSLError, OSError) as exc:
        raise OmegaError(f"cannot use TLS certificate {settings.tls_cert} with key {settings.tls_key}: {exc}") from None


def uvicorn_config(settings: ServerSettings, app=None) -> uvicorn.Config:  # noqa: ANN001
    check_tls_files(settings)
    app = app if app is not None else create_app(settings)
    http, ws = guarded_protocols(app.state.omega.guard)  # httptools and websockets-sansio, with deadlines and caps
    return uvicorn.Config(
        SyncSocketFront(app),
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http=http,
        ws=ws,
        ws_per_message_deflate=False,  # frames are deflated already; saves per-connection memory
        ws_max_size=settings.max_frame_bytes,  # bigger messages: close 1009
        ws_ping_interval=30.0,
        ws_ping_timeout=30.0,
        lifespan="on",
        log_level=settings.log_level,
        access_log=False,
        timeout_graceful_shutdown=max(1, int(settings.drain_timeout_s)),
        server_header=False,
        ssl_certfile=settings.tls_cert,  # None: plain http/ws
        ssl_keyfile=settings.tls_key,
    )


def serve(settings: ServerSettings) -> None:
    """Run until SIGTERM/SIGINT; prints `listening on http(s)://HOST:PORT` to stderr once ready.

    With settings.workers > 1, that many worker processes share the port (see workers.py).
    """
    if settings.workers > 1:
        from omega.constellation.workers import serve_workers

        serve_workers(settings)
        return

    def ready(server: DrainingServer) -> None:
        print(f"listening on {settings.scheme}://{settings.host}:{server.bound_port()}", file=sys.stderr, flush=True)

    check_tls_files(settings)  # before the app opens its store
    raise_fd_limit()  # one descriptor per TV: the soft limit (often 1024) is far below what a shard holds
    app = create_app(settings)
    server = DrainingServer(uvicorn_config(settings, app), on_ready=ready)
    try:
        server.run()
    except SystemExit:
        if server.started:
            raise
        # uvicorn exits 3 when the lifespan fails (bad store, unreachable NATS, ...): report why, as one line.
    if not server.started:
        from omega.errors import OmegaError

        error = app.state.omega.startup_error
        raise OmegaError(str(error) if error is not None else "the server did not start (see the log above)")
