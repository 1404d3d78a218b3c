"""The ASGI app of one shard's sync server (Starlette): routes, lifespan, connection draining.

Routes: `POST /v1/sync` (HTTP polling), `/v1/ws` (WebSocket, one frame per
binary message, answered in order), `GET /healthz` (process alive), `GET
/readyz` (store open and not draining), `GET /metrics` (Prometheus),
`GET /v1/stats` (JSON: head, distinct devices this hour, cache backend).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from omega.constellation.aggregation import AggregationPolicy, Aggregator
from omega.constellation.cache import LocalCache, PullCache, RedisCache
from omega.constellation.codebook import DIM, Codebook
from omega.constellation.keyring import Keyring
from omega.constellation.metrics import ServerMetrics
from omega.constellation.service import DRAIN_RETRY_S, SyncService
from omega.constellation.settings import ServerSettings
from omega.constellation.store import open_store
from omega.protocol import encode_error_reply, now_ms

log = logging.getLogger("omega.serve")

CONTENT_TYPE = "application/octet-stream"
WS_GOING_AWAY = 1001
WS_POLICY_VIOLATION = 1008
WS_UNSUPPORTED_DATA = 1003
PLACEHOLDER_CODEBOOK_K = 256
_PAGE_KEY_LABEL = b"omega/pull-page-cache/v1"


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
    ready: bool = False
    draining: bool = False
    in_flight: int = 0
    connections: set[_Connection] = field(default_factory=set)

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


def create_app(settings: ServerSettings) -> Starlette:
    """The sync server for `settings` (which must hold a secret: see settings.with_dev_secret)."""
    keyring = Keyring(settings.secrets, settings.active_key_id)
    salt = settings.aggregation_salt()
    state = ServerState(settings=settings, metrics=ServerMetrics())

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        codebook = load_codebook(settings)
        store = await open_store(settings.store, origin=settings.shard_id)
        housekeeping: asyncio.Task | None = None
        cache: PullCache | None = None
        try:
            policy = AggregationPolicy(k_min=settings.k_min, w_max=settings.w_max)
            aggregator = await Aggregator.open(store, codebook, salt, policy)
            cache = await _open_cache(settings, state.metrics, f"omega:{store.origin}")
            page_key = hmac.new(salt, _PAGE_KEY_LABEL, hashlib.sha256).digest()
            service = SyncService(aggregator, keyring, settings, state.metrics, cache, page_key=page_key)
            await service.housekeeping()  # prune what expired while down; head and gauges
            state.service = service
            housekeeping = asyncio.create_task(_housekeeping_loop(service, settings.prune_interval_s))
            state.ready = True
            log.info("store %s (origin %s), codebook v%d k=%d, cache %s", settings.store.split("@")[-1],
                     store.origin, codebook.version, codebook.k, cache.backend)  # fmt: skip
            yield
        finally:
            state.ready = False
            if state.connections or state.in_flight:
                await state.drain()
            if housekeeping is not None:
                housekeeping.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await housekeeping
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
            data = await _read_body(request, settings.max_frame_bytes)
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
        })  # fmt: skip

    app = Starlette(
        routes=[
            Route("/v1/sync", sync, methods=["POST"]),
            WebSocketRoute("/v1/ws", websocket),
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics),
            Route("/v1/stats", stats),
        ],
        lifespan=lifespan,
    )
    app.state.omega = state
    return app


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


async def _housekeeping_loop(service: SyncService, interval_s: float) -> None:
    while True:
        await asyncio.sleep(interval_s)
        try:
            await service.housekeeping()
        except Exception:  # keep serving; the next round retries
            log.exception("housekeeping failed")
