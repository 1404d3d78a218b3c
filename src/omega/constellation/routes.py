"""The routes of one shard's sync server; each reads the shared `ServerState` from `app.state.omega`.

`POST /v1/sync` (HTTP polling), `/v1/ws` (WebSocket, one frame per binary
message, answered in order), `GET /healthz` (process alive), `GET /readyz`
(store open and not draining), `GET /metrics` (Prometheus), `GET /v1/stats`
(JSON: head, distinct devices this hour, cache backend, the answering worker's pid), `GET /v1/trends` (JSON:
per-cell burst scores of the last closed trend window), `GET /dashboard` (the
operator page) polling `GET /v1/dashboard.json`.

The operator endpoints (/metrics, /dashboard, /v1/dashboard.json, /v1/stats,
/v1/trends) answer loopback peers only, unless `admin_token` is set: then any
peer with `Authorization: Bearer TOKEN` (or `?token=TOKEN`, for the dashboard
page in a browser). /healthz and /readyz stay open for load balancers.

A WebSocket must send an authenticated first frame within `ws_auth_timeout_s`
(else it is closed 1008): an unauthenticated socket holds memory for nothing.

The device header (`X-Omega-Device`, omega.protocol.routing) on a `POST /v1/sync` or a WebSocket upgrade
binds that request or connection to the device it names: a frame signed by any other device is answered
`unauthorized` (signed) before admission, so changing the header steers a captured frame to a refusal, never
to another worker's replay window. Without the header, a request is bound to nothing (HTTP) or to its first
frame's device (WebSocket), as for TVs from before the header; a `pinned` server refuses it instead
(`unauthorized`, unsigned), since the proxy in front could not have pinned it. A header given twice, or not
in its one spelling, is `malformed`.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import os
from collections.abc import Awaitable, Callable

from starlette.applications import Starlette
from starlette.requests import HTTPConnection, Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from omega.constellation.dashboard import dashboard_html
from omega.constellation.server_state import (
    WS_GOING_AWAY,
    WS_POLICY_VIOLATION,
    WS_UNSUPPORTED_DATA,
    Connection,
    ServerState,
)
from omega.constellation.service import DRAIN_RETRY_S
from omega.protocol import DEVICE_HEADER, DEVICE_HEADER_KEY, encode_error_reply, parse_device_header

log = logging.getLogger("omega.serve")

CONTENT_TYPE = "application/octet-stream"
CONTENT_TYPE_B = CONTENT_TYPE.encode()
# The page may only talk to this server: inline style and script, data: images, nothing external.
_DASHBOARD_CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                  "img-src data:; connect-src 'self'; base-uri 'none'; frame-ancestors 'none'")  # fmt: skip


def _state(conn: HTTPConnection) -> ServerState:
    return conn.app.state.omega


class SyncEndpoint:
    """`POST /v1/sync` as a bare ASGI app: body in, frame out, no Request/Response objects.

    Reached straight from the ASGI front (`SyncSocketFront`) and, for an app served without it, as the
    endpoint of Starlette's route. Every HTTP sync pays this path, so it skips what Starlette builds per
    request (middleware frames, a Request, a Response and its header list) and does only what the route
    needs: readiness, the size cap before the body is buffered, the service (which verifies the tag and
    takes the rate-limit token before decoding), and the reply's status, Retry-After and frame.
    """

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        state: ServerState = scope["app"].state.omega
        if not state.ready or state.service is None:
            body = encode_error_reply("unavailable", "server is starting", retry_after_s=DRAIN_RETRY_S)
            await _send_frame(send, 503, body, DRAIN_RETRY_S)
            return
        settings = state.settings
        limit = settings.max_frame_bytes
        state.in_flight += 1
        try:
            device, refusal = _device_header(scope["headers"], settings.pinned)
            if refusal is not None:
                state.metrics.rejections.labels(refusal[0]).inc()
                await _send_frame(send, 400 if refusal[0] == "malformed" else 401, encode_error_reply(*refusal))
                return
            try:
                data = await _read_body(scope, receive, limit)
            except _Disconnected:  # the TV went away mid-body: nobody is left to answer, and no traceback
                state.client_disconnects += 1
                client = scope.get("client")
                log.debug("client %s disconnected mid-request", client[0] if client else "?")
                await _send_frame(send, 400, b"")  # never reaches the client; keeps the ASGI contract
                return
            if data is None:
                state.metrics.rejections.labels("too_large").inc()
                await _send_frame(send, 413, encode_error_reply("too_large", f"frame exceeds {limit} bytes"))
                return
            reply = await state.service.handle(data, peer_device=device)
            await _send_frame(send, reply.status, reply.body, reply.retry_after)
        finally:
            state.in_flight -= 1


sync = SyncEndpoint()


async def websocket(ws: WebSocket) -> None:
    state = _state(ws)
    if not state.ready or state.draining or state.service is None:
        await ws.close(1013)  # try again later
        return
    # Read before the accept: once it is sent the handshake's headers are dropped (lean_ws).
    bound, refusal = _device_header(ws.scope["headers"], state.settings.pinned)
    await ws.accept()
    if refusal is not None:  # one error frame saying why, then the close
        state.metrics.rejections.labels(refusal[0]).inc()
        await ws.send_bytes(encode_error_reply(*refusal))
        await ws.close(WS_POLICY_VIOLATION, refusal[0])
        return
    conn = Connection(ws)
    state.connections.add(conn)
    gauge = state.metrics.connections
    gauge.labels(conn.tier).inc()
    authenticated = False
    try:
        while not conn.closing:
            if not authenticated:  # the first frame must come, and authenticate, within the deadline
                try:
                    message = await asyncio.wait_for(ws.receive(), state.settings.ws_auth_timeout_s)
                except asyncio.TimeoutError:
                    if state.guard is not None:
                        state.guard.timed_out("ws_auth_timeout")
                    await conn.close(WS_POLICY_VIOLATION, "no authenticated frame in time")
                    break
            else:
                message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                break
            data = message.get("bytes")
            if data is None:
                await conn.close(WS_UNSUPPORTED_DATA, "frames are binary messages")
                break
            conn.busy = True
            try:
                reply = await state.service.handle(data, peer_device=bound)
                await ws.send_bytes(reply.body)
            finally:
                conn.busy = False
            if reply.status == 401 or (not authenticated and reply.device_id is None):
                # Forged, foreign, or not authenticated at all on a connection that has no device yet.
                await conn.close(WS_POLICY_VIOLATION, reply.code or "unauthorized")
                break
            authenticated = True
            if bound is None:
                bound = reply.device_id
            if reply.tier is not None and reply.tier != conn.tier:
                gauge.labels(conn.tier).dec()
                conn.tier = reply.tier
                gauge.labels(conn.tier).inc()
        if conn.closing:
            await conn.close(WS_GOING_AWAY, "server shutting down")
    except WebSocketDisconnect:
        pass
    finally:
        gauge.labels(conn.tier).dec()
        state.connections.discard(conn)


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    state = _state(request)
    ok = state.ready and not state.draining
    return JSONResponse({"ready": ok, "draining": state.draining}, status_code=200 if ok else 503)


async def metrics(request: Request) -> Response:
    body, content_type = _state(request).metrics.render()
    return Response(body, media_type=content_type)


async def stats(request: Request) -> Response:
    state = _state(request)
    service = state.service
    if service is None:
        return JSONResponse({"ready": False}, status_code=503)
    return JSONResponse({
        "ready": state.ready and not state.draining,
        "head": service.head,
        "codebook_version": service.codebook_version,
        "distinct_devices_hour": await service.cache.distinct_devices(state.now_ms()),
        "cache": service.cache.backend,
        "connections": len(state.connections),
        "client_disconnects": state.client_disconnects,
        "pid": os.getpid(),  # which worker answered (omega serve --workers N)
    })  # fmt: skip


async def trends(request: Request) -> Response:
    state = _state(request)
    if state.trends is None:
        return JSONResponse({"ready": False}, status_code=503)
    await state.trends.advance(state.now_ms())
    return JSONResponse([e.to_json() for e in state.trends.snapshot()])


async def dashboard_page(request: Request) -> Response:
    return HTMLResponse(dashboard_html(), headers={"Cache-Control": "no-cache",
                                                   "Content-Security-Policy": _DASHBOARD_CSP})  # fmt: skip


async def dashboard_json(request: Request) -> Response:
    state = _state(request)
    service, board = state.service, state.dashboard
    if service is None or board is None:
        return JSONResponse({"ready": False}, status_code=503)
    now = state.now_ms()
    snapshot = await board.snapshot(
        ready=state.ready and not state.draining,
        draining=state.draining,
        connections=state.connections_by_tier(),
        devices_hour=await service.cache.distinct_devices(now),
        federation=state.federation.to_json() if state.federation is not None else None,
        now_ms=now,
    )
    return JSONResponse(snapshot, headers={"Cache-Control": "no-store"})


def _admin_refusal(request: Request) -> Response | None:
    """None if this peer may read the operator endpoints, else the refusal (see the module docstring)."""
    token = _state(request).settings.admin_token
    if token is not None:
        given = request.headers.get("authorization", "")
        given = given[7:] if given[:7].lower() == "bearer " else request.query_params.get("token", "")
        if hmac.compare_digest(given.encode("utf-8", "replace"), token.encode("utf-8")):
            return None
        return JSONResponse({"error": "admin token required"}, status_code=401, headers={"WWW-Authenticate": "Bearer"})
    host = request.client.host if request.client else ""
    try:
        if ipaddress.ip_address(host).is_loopback:
            return None
    except ValueError:
        pass
    return JSONResponse({"error": "operator endpoints answer loopback only; set --admin-token to open them"},
                        status_code=403)  # fmt: skip


def _admin(handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    async def guarded(request: Request) -> Response:
        refusal = _admin_refusal(request)
        return refusal if refusal is not None else await handler(request)

    guarded.__name__ = handler.__name__
    return guarded


def routes() -> list[BaseRoute]:
    return [
        Route("/v1/sync", sync, methods=["POST"]),  # an ASGI app: Starlette hands it the scope as is
        WebSocketRoute("/v1/ws", websocket),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", _admin(metrics)),
        Route("/v1/stats", _admin(stats)),
        Route("/v1/trends", _admin(trends)),
        Route("/v1/dashboard.json", _admin(dashboard_json)),
        Route("/dashboard", _admin(dashboard_page)),
    ]


class SyncSocketFront:
    """The ASGI app uvicorn runs: `POST /v1/sync` and `/v1/ws` straight to their handlers, the rest via Starlette.

    A held WebSocket's handler task lives as long as the connection; through Starlette's middleware
    and router its stack holds about ten more coroutine frames, for routing decided once per
    handshake. An HTTP sync is the fleet's most frequent request: Starlette's middleware, router, Request
    and Response are Python per request that the route does not need. (Both routes stay in
    `routes()` too, for an app served without this front; other methods on /v1/sync get Starlette's 405.)
    """

    def __init__(self, app: Starlette) -> None:
        self.app = app
        self.state = app.state  # what the runner reads (app.state.omega)

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        path = scope.get("path")
        if path == "/v1/sync" and scope["type"] == "http" and scope["method"] == "POST":
            scope["app"] = self.app  # as Starlette sets it: the handler finds the shared state there
            await sync(scope, receive, send)
        elif path == "/v1/ws" and scope["type"] == "websocket":
            scope["app"] = self.app
            await websocket(WebSocket(scope, receive, send))
        else:
            await self.app(scope, receive, send)


def _device_header(headers: list[tuple[bytes, bytes]], required: bool) -> tuple[bytes | None, tuple[str, str] | None]:
    """The device a request's X-Omega-Device header names (None: absent), and (code, message) if it is refused."""
    found = None
    for name, value in headers:
        if name == DEVICE_HEADER_KEY:
            if found is not None:
                return None, ("malformed", f"{DEVICE_HEADER} is given more than once")
            found = value
    if found is None:
        if required:
            return None, ("unauthorized", f"this server pins devices to workers: send the {DEVICE_HEADER} header")
        return None, None
    device = parse_device_header(found)
    if device is None:
        return None, ("malformed", f"{DEVICE_HEADER} must be the device id as 32 lowercase hex digits")
    return device, None


class _Disconnected(Exception):
    """The client disconnected before its request body was complete."""


async def _send_frame(send: Callable, status: int, body: bytes, retry_after: int | None = None) -> None:
    headers = [(b"content-type", CONTENT_TYPE_B), (b"content-length", b"%d" % len(body))]
    if retry_after:
        headers.append((b"retry-after", b"%d" % retry_after))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _read_body(scope: dict, receive: Callable, limit: int) -> bytes | None:
    """The request body, or None as soon as it exceeds `limit` (never buffers an oversize body)."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            if value.isdigit() and int(value) > limit:
                return None
            break
    body = b""
    while True:
        message = await receive()
        if message["type"] != "http.request":  # http.disconnect
            raise _Disconnected
        chunk = message.get("body", b"")
        if chunk:
            body = body + chunk if body else chunk  # one chunk (the usual case): no copy
            if len(body) > limit:
                return None
        if not message.get("more_body", False):
            return bytes(body)
