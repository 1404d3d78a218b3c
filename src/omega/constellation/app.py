"""The ASGI app of one shard's sync server (Starlette): routes, lifespan, connection draining.

Routes: `POST /v1/sync` (HTTP polling), `/v1/ws` (WebSocket, one frame per
binary message, answered in order), `GET /healthz` (process alive), `GET
/readyz` (store open and not draining), `GET /metrics` (Prometheus),
`GET /v1/stats` (JSON: head, distinct devices this hour, cache backend),
`GET /v1/trends` (JSON: per-cell burst scores of the last closed trend window),
`GET /dashboard` (the operator page) polling `GET /v1/dashboard.json`.

Beside the routes the lifespan runs the trend tracker (fed by the aggregator),
federation rounds when `--nats` is set, housekeeping and the dashboard's
counter sampling (see shard_services and dashboard).

`create_app(settings, clock=...)` runs the whole server on another clock
(seconds, like `time.time`): the fleet simulator's simulated time.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import numpy as np
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from omega.constellation.aggregation import AggregationPolicy, Aggregator
from omega.constellation.cache import LocalCache, PullCache, RedisCache
from omega.constellation.codebook import DIM, Codebook
from omega.constellation.dashboard import Dashboard, ShardFacts, dashboard_html
from omega.constellation.keyring import Keyring
from omega.constellation.metrics import ServerMetrics
from omega.constellation.service import DRAIN_RETRY_S, SyncService
from omega.constellation.settings import ServerSettings
from omega.constellation.shard_services import FederationLoop, close_trends, open_trends, start_federation
from omega.constellation.store import open_store
from omega.constellation.trends import TrendTracker
from omega.errors import OmegaError
from omega.protocol import encode_error_reply

log = logging.getLogger("omega.serve")

CONTENT_TYPE = "application/octet-stream"
WS_GOING_AWAY = 1001
WS_POLICY_VIOLATION = 1008
WS_UNSUPPORTED_DATA = 1003
PLACEHOLDER_CODEBOOK_K = 256
_PAGE_KEY_LABEL = b"omega/pull-page-cache/v1"
DASHBOARD_TICK_S = 2.0  # counter sampling for the dashboard's rates; trend windows are closed on it too
# The page may only talk to this server: inline style and script, data: images, nothing external.
_DASHBOARD_CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                  "img-src data:; connect-src 'self'; base-uri 'none'; frame-ancestors 'none'")  # fmt: skip


def placeholder_codebook(k: int = PLACEHOLDER_CODEBOOK_K, seed: int = 0) -> Codebook:
    """Random unit centroids from a fixed seed: identical on every worker, but cells carry no meaning.

    Used only when no codebook file is configured (development); build a real
    one from the catalog with `omega codebook build`.
    """
    rng = np.random.default_rng(seed)
    return Codebook(0, rng.standard_normal((k, DIM)).astype(np.float32))


def load_codebook(settings: ServerSettings) -> Codebook:
    if settings.codebook:
        return Codebook.load(settings.codebook)
    log.warning("no codebook configured: using a seeded placeholder codebook (k=%d); "
                "build one with `omega codebook build`", PLACEHOLDER_CODEBOOK_K)  # fmt: skip
    return placeholder_codebook()


@dataclass(eq=False)  # identity hash: held in a set
class _Connection:
    ws: WebSocket
    tier: str = "unknown"
    busy: bool = False
    closing: bool = False
    closed: bool = False


@dataclass
class ServerState:
    """Everything the routes share; `app.state.omega`."""

    settings: ServerSettings
    metrics: ServerMetrics
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
    connections: set[_Connection] = field(default_factory=set)

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
                await _close(conn, WS_GOING_AWAY, "server shutting down")
        deadline = time.monotonic() + (self.settings.drain_timeout_s if timeout_s is None else timeout_s)
        while (self.connections or self.in_flight) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)


async def _close(conn: _Connection, code: int, reason: str = "") -> None:
    if conn.closed:
        return
    conn.closed = True
    with contextlib.suppress(Exception):  # the peer may already be gone
        await conn.ws.close(code, reason)


async def _open_cache(settings: ServerSettings, metrics: ServerMetrics, namespace: str) -> PullCache:
    local = LocalCache(settings.cache_entries, settings.cache_ttl_s)
    if not settings.redis:
        return local
    cache = RedisCache(
        settings.redis, namespace=namespace, fallback=local, on_fallback=metrics.cache_fallbacks.inc,
        ttl_s=settings.cache_ttl_s, timeout_s=settings.redis_timeout_s, cooldown_s=settings.redis_cooldown_s,
    )  # fmt: skip
    await cache.note_head(0)  # probes Redis: a failure here is logged and falls back, never fatal
    return cache


def create_app(settings: ServerSettings, *, clock: Callable[[], float] | None = None) -> Starlette:
    """The sync server for `settings` (which must hold a secret: see settings.with_dev_secret).

    `clock` (seconds; default `time.time`) is the server's "now" for frame validation, aggregation,
    trend windows and housekeeping.
    """
    clock = clock or time.time

    def now_ms() -> int:
        return int(clock() * 1000)

    keyring = Keyring(settings.secrets, settings.active_key_id)
    salt = settings.aggregation_salt()
    state = ServerState(settings=settings, metrics=ServerMetrics())

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        started = False
        try:
            async with _run_shard():
                started = True
                yield
        except OmegaError as exc:
            if not started:  # bad configuration or an unreachable service: the CLI reports it as one line
                state.startup_error = exc
            raise

    @contextlib.asynccontextmanager
    async def _run_shard() -> AsyncIterator[None]:
        codebook = load_codebook(settings)
        # --shard-id names the store's origin (an existing store refuses another), which federation requires.
        store = await open_store(settings.store, origin=settings.shard_id)
        tasks: list[asyncio.Task] = []
        cache: PullCache | None = None
        try:
            policy = AggregationPolicy(k_min=settings.k_min, w_max=settings.w_max)
            aggregator = await Aggregator.open(store, codebook, salt, policy)
            cache = await _open_cache(settings, state.metrics, f"omega:{store.origin}")
            state.trends = aggregator.trends = open_trends(settings, store.origin, state.metrics.cache_fallbacks.inc)
            page_key = hmac.new(salt, _PAGE_KEY_LABEL, hashlib.sha256).digest()
            service = SyncService(aggregator, keyring, settings, state.metrics, cache, page_key=page_key, clock=clock)
            await service.housekeeping()  # prune what expired while down; head and gauges
            state.service = service
            facts = ShardFacts(store.origin, settings.region, "sqlite" if settings.store.startswith("sqlite:") else
                               "postgresql", codebook.version, codebook.k, cache.backend, settings.trend_window_s)  # fmt: skip
            state.dashboard = Dashboard(facts, state.metrics, aggregator, state.trends)
            state.dashboard.tick()
            tasks.append(asyncio.create_task(_every(settings.prune_interval_s, service.housekeeping, "housekeeping")))
            tasks.append(asyncio.create_task(_every(DASHBOARD_TICK_S, lambda: _tick(state, now_ms()), "dashboard tick")))
            # Merged remote entries change the served view: refresh the head and the consolidated gauge.
            state.federation = await start_federation(aggregator, settings, on_merged=service.housekeeping)
            if state.federation is not None:
                state.metrics.federation_lag.set_function(state.federation.lag_s)
            state.ready = True
            log.info("store %s (origin %s, region %s), codebook v%d k=%d, cache %s, federation %s",
                     settings.store.split("@")[-1], store.origin, settings.region, codebook.version, codebook.k,
                     cache.backend, f"over {_without_credentials(settings.nats)}" if state.federation else "off")  # fmt: skip
            yield
        finally:
            state.ready = False
            if state.connections or state.in_flight:
                await state.drain()
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if state.federation is not None:
                await state.federation.stop()  # a last round first: recent pushes leave before we go
            if state.trends is not None:
                await close_trends(state.trends)
            if cache is not None:
                await cache.close()
            await store.close()
            log.info("store closed")

    async def sync(request: Request) -> Response:
        if not state.ready or state.service is None:
            body = encode_error_reply("unavailable", "server is starting", retry_after_s=DRAIN_RETRY_S)
            return _frame_response(503, body, DRAIN_RETRY_S)
        state.in_flight += 1
        try:
            try:
                data = await _read_body(request, settings.max_frame_bytes)
            except ClientDisconnect:  # the TV went away mid-body: nobody is left to answer, and no traceback
                state.client_disconnects += 1
                log.debug("client %s disconnected mid-request", request.client.host if request.client else "?")
                return Response(status_code=400)  # never reaches the client; keeps the ASGI contract
            if data is None:
                body = encode_error_reply("too_large", f"frame exceeds {settings.max_frame_bytes} bytes")
                state.metrics.rejections.labels("too_large").inc()
                return _frame_response(413, body)
            reply = await state.service.handle(data)
            return _frame_response(reply.status, reply.body, reply.retry_after)
        finally:
            state.in_flight -= 1

    async def websocket(ws: WebSocket) -> None:
        if not state.ready or state.draining or state.service is None:
            await ws.close(1013)  # try again later
            return
        await ws.accept()
        conn = _Connection(ws)
        state.connections.add(conn)
        gauge = state.metrics.connections
        gauge.labels(conn.tier).inc()
        bound: bytes | None = None
        try:
            while not conn.closing:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    break
                data = message.get("bytes")
                if data is None:
                    await _close(conn, WS_UNSUPPORTED_DATA, "frames are binary messages")
                    break
                conn.busy = True
                try:
                    reply = await state.service.handle(data, peer_device=bound)
                    await ws.send_bytes(reply.body)
                finally:
                    conn.busy = False
                if reply.status == 401:
                    await _close(conn, WS_POLICY_VIOLATION, reply.code or "unauthorized")
                    break
                if bound is None and reply.device_id is not None:
                    bound = reply.device_id
                if reply.tier is not None and reply.tier != conn.tier:
                    gauge.labels(conn.tier).dec()
                    conn.tier = reply.tier
                    gauge.labels(conn.tier).inc()
            if conn.closing:
                await _close(conn, WS_GOING_AWAY, "server shutting down")
        except WebSocketDisconnect:
            pass
        finally:
            gauge.labels(conn.tier).dec()
            state.connections.discard(conn)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        ok = state.ready and not state.draining
        return JSONResponse({"ready": ok, "draining": state.draining}, status_code=200 if ok else 503)

    async def metrics(request: Request) -> Response:
        body, content_type = state.metrics.render()
        return Response(body, media_type=content_type)

    async def stats(request: Request) -> Response:
        service = state.service
        if service is None:
            return JSONResponse({"ready": False}, status_code=503)
        return JSONResponse({
            "ready": state.ready and not state.draining,
            "head": service.head,
            "codebook_version": service.codebook_version,
            "distinct_devices_hour": await service.cache.distinct_devices(now_ms()),
            "cache": service.cache.backend,
            "connections": len(state.connections),
            "client_disconnects": state.client_disconnects,
        })  # fmt: skip

    async def trends(request: Request) -> Response:
        if state.trends is None:
            return JSONResponse({"ready": False}, status_code=503)
        await state.trends.advance(now_ms())
        return JSONResponse([e.to_json() for e in state.trends.snapshot()])

    async def dashboard_page(request: Request) -> Response:
        return HTMLResponse(dashboard_html(), headers={"Cache-Control": "no-cache",
                                                       "Content-Security-Policy": _DASHBOARD_CSP})  # fmt: skip

    async def dashboard_json(request: Request) -> Response:
        service, board = state.service, state.dashboard
        if service is None or board is None:
            return JSONResponse({"ready": False}, status_code=503)
        now = now_ms()
        snapshot = await board.snapshot(
            ready=state.ready and not state.draining,
            draining=state.draining,
            connections=state.connections_by_tier(),
            devices_hour=await service.cache.distinct_devices(now),
            federation=state.federation.to_json() if state.federation is not None else None,
            now_ms=now,
        )
        return JSONResponse(snapshot, headers={"Cache-Control": "no-store"})

    app = Starlette(
        routes=[
            Route("/v1/sync", sync, methods=["POST"]),
            WebSocketRoute("/v1/ws", websocket),
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics),
            Route("/v1/stats", stats),
            Route("/v1/trends", trends),
            Route("/v1/dashboard.json", dashboard_json),
            Route("/dashboard", dashboard_page),
        ],
        lifespan=lifespan,
    )
    app.state.omega = state
    return app


def _without_credentials(urls: str | None) -> str:
    """URLs as they may be logged: `nats://user:pass@host` → `nats://host`."""
    return re.sub(r"//[^@/,]*@", "//", urls or "")


def _frame_response(status: int, body: bytes, retry_after: int | None = None) -> Response:
    headers = {"Retry-After": str(retry_after)} if retry_after else None
    return Response(body, status_code=status, media_type=CONTENT_TYPE, headers=headers)


async def _read_body(request: Request, limit: int) -> bytes | None:
    """The request body, or None as soon as it exceeds `limit` (never buffers an oversize body)."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


async def _every(interval_s: float, job, name: str) -> None:  # noqa: ANN001  (async or sync callable)
    while True:
        await asyncio.sleep(interval_s)
        try:
            result = job()
            if asyncio.iscoroutine(result):
                await result
        except Exception:  # keep serving; the next round retries
            log.exception("%s failed", name)


async def _tick(state: ServerState, now_ms: int) -> None:
    if state.dashboard is not None:
        state.dashboard.tick()
    if state.trends is not None:
        await state.trends.advance(now_ms)  # closes trend windows even when no push arrives
