"""The ceiling of the sync server's stack: `python -m omega.sim.bench.echo` answers every frame with itself.

Same uvicorn stack as `omega serve` (uvloop, httptools, websockets-sansio without
permessage-deflate) and the same way in: `POST /v1/sync` as a bare ASGI handler and
`/v1/ws` through Starlette's WebSocket, both reached from a front before Starlette's
router (as `constellation.routes.SyncSocketFront` does), no service behind it: what
`omega bench sync` measures against it is what the transport costs, so
service/ceiling is what the service itself costs. Port from OMEGA_PORT (0: any);
prints `listening on http://127.0.0.1:PORT` like the server.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect


async def _sync(request: Request) -> Response:
    return Response(await request.body(), media_type="application/octet-stream")


async def _ws(ws: WebSocket) -> None:
    await ws.accept()
    try:
        while True:
            await ws.send_bytes(await ws.receive_bytes())
    except WebSocketDisconnect:
        pass


async def _sync_bare(scope: dict, receive: Callable, send: Callable) -> None:
    body = b""
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return
        body += message.get("body", b"")
        if not message.get("more_body", False):
            break
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/octet-stream"), (b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})


def echo_app() -> Starlette:
    return Starlette(routes=[Route("/v1/sync", _sync, methods=["POST"]), WebSocketRoute("/v1/ws", _ws)])


class EchoFront:
    """The server's front, echoing: POST /v1/sync bare, /v1/ws straight to the handler, the rest to Starlette."""

    def __init__(self, app: Starlette) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        path = scope.get("path")
        if path == "/v1/sync" and scope["type"] == "http" and scope["method"] == "POST":
            await _sync_bare(scope, receive, send)
        elif path == "/v1/ws" and scope["type"] == "websocket":
            await _ws(WebSocket(scope, receive, send))
        else:
            await self.app(scope, receive, send)


def main() -> None:
    import uvicorn

    class Echo(uvicorn.Server):
        async def startup(self, sockets=None) -> None:  # noqa: ANN001
            await super().startup(sockets)
            port = self.servers[0].sockets[0].getsockname()[1]
            print(f"listening on http://127.0.0.1:{port}", file=sys.stderr, flush=True)

    config = uvicorn.Config(EchoFront(echo_app()), host="127.0.0.1", port=int(os.environ.get("OMEGA_PORT", "0")),
                            loop="uvloop",
                            http="httptools", ws="websockets-sansio", ws_per_message_deflate=False,
                            ws_max_size=16 * 1024, lifespan="off", log_level="warning", access_log=False,
                            server_header=False)  # fmt: skip
    Echo(config).run()


if __name__ == "__main__":
    main()
