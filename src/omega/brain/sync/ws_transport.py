"""The WebSocket transport (the premium and active tiers): one binary message per frame on `/v1/ws`.

Its own module so that a TV on the HTTP polling tier never imports websockets (`open_transport` imports this one
only for a WebSocket tier).
"""

from __future__ import annotations

import asyncio
import ssl

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, InvalidURI, WebSocketException
from websockets.protocol import State

from omega.brain.sync.transport import MAX_REPLY_BYTES, Reply, TransportError, unreachable, endpoints, parse_retry_after
from omega.errors import OmegaError
from omega.protocol.routing import DEVICE_HEADER, device_header_value


class WebSocketTransport:
    """A WebSocket to `/v1/ws`, opened on first use; one binary message per frame, replies in order."""

    def __init__(
        self,
        server_url: str,
        *,
        timeout_s: float = 10.0,
        tls: ssl.SSLContext | None = None,
        device_id: bytes | None = None,
    ) -> None:
        self.url = endpoints(server_url).ws_url
        # The upgrade names the device (omega.protocol.routing): a proxy can pin the device to one worker.
        self._headers = {DEVICE_HEADER: device_header_value(device_id)} if device_id is not None else None
        self.timeout_s = timeout_s
        self._tls = tls
        self._conn: ClientConnection | None = None
        self.connects = 0

    @property
    def is_open(self) -> bool:
        return self._conn is not None and self._conn.state is State.OPEN

    async def connect(self) -> None:
        if self.is_open:
            return
        await self.close()
        try:
            self._conn = await connect(
                self.url,
                compression=None,  # the contract: permessage-deflate off (frames are deflated already)
                max_size=MAX_REPLY_BYTES,
                open_timeout=self.timeout_s,
                close_timeout=min(self.timeout_s, 5.0),
                proxy=None,
                additional_headers=self._headers,
                **({"ssl": self._tls} if self._tls is not None and self.url.startswith("wss:") else {}),
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            retry = parse_retry_after(exc.response.headers.get("Retry-After"))
            raise TransportError(f"{self.url} refused the WebSocket: HTTP {status}", retry_after_s=retry) from None
        except InvalidURI as exc:
            raise OmegaError(f"bad WebSocket URL {self.url}: {exc}") from None
        except (OSError, asyncio.TimeoutError, WebSocketException) as exc:
            raise unreachable(self.url, exc) from None
        self.connects += 1

    async def exchange(self, data: bytes) -> Reply:
        await self.connect()
        conn = self._conn
        assert conn is not None
        try:
            await asyncio.wait_for(conn.send(data), self.timeout_s)
            message = await asyncio.wait_for(conn.recv(), self.timeout_s)
        except (asyncio.TimeoutError, TimeoutError):
            await self.close()
            raise TransportError(f"no reply from {self.url} within {self.timeout_s:g} s") from None
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd is not None else None
            await self.close()
            reason = {1001: "server going away", 1008: "policy violation", 1009: "message too big"}.get(code or 0, "")
            raise TransportError(
                f"{self.url} closed the connection (code {code}{', ' + reason if reason else ''})", close_code=code
            ) from None
        except (OSError, WebSocketException) as exc:
            await self.close()
            raise TransportError(f"WebSocket to {self.url} failed: {type(exc).__name__}: {exc}") from None
        if isinstance(message, str):
            await self.close()
            raise TransportError(f"{self.url} sent a text message; frames are binary")
        return Reply(bytes(message))

    async def wait_closed(self) -> None:
        """Return when the open connection closes (at once if none is open)."""
        if self._conn is not None:
            await self._conn.wait_closed()

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                await conn.close()
            except (OSError, WebSocketException, asyncio.TimeoutError):
                pass  # already broken; nothing to save
