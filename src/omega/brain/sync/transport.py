"""How frames travel: HTTP polling (`POST /v1/sync`) or a WebSocket (`/v1/ws`), one frame per message.

A transport moves bytes and reports transport-level trouble as `TransportError`
(with the server's Retry-After when it gave one); deciding what a reply means
is the agent's job. Any failure closes a WebSocket, because a late reply on a
reused connection would be read as the answer to the next frame.
"""

from __future__ import annotations

import asyncio
import email.utils
import ipaddress
import ssl
import time
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit, urlunsplit

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, InvalidURI, WebSocketException
from websockets.protocol import State

from omega.brain.sync.tiers import TierPolicy, TransportKind
from omega.errors import OmegaError
from omega.protocol import DEFAULT_MAX_FRAME_BYTES

SYNC_PATH = "/v1/sync"
WS_PATH = "/v1/ws"
CONTENT_TYPE = "application/octet-stream"
#: Replies larger than a frame may be are refused before they are read whole.
MAX_REPLY_BYTES = DEFAULT_MAX_FRAME_BYTES


class TransportError(OmegaError):
    """The exchange did not complete (no reply, a broken connection, a refused handshake)."""

    def __init__(
        self, message: str, *, retry_after_s: float = 0.0, close_code: int | None = None, tls: bool = False
    ) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.close_code = close_code
        #: The TLS handshake failed (e.g. an untrusted certificate): retrying will not help.
        self.tls = tls


@dataclass(frozen=True, slots=True)
class Reply:
    """One downlink frame's bytes, with what the transport said around it."""

    data: bytes
    status: int = 200
    retry_after_s: float = 0.0


class Transport(Protocol):
    async def exchange(self, data: bytes) -> Reply: ...

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Endpoints:
    http_url: str
    ws_url: str


def endpoints(server_url: str) -> Endpoints:
    """The sync endpoints of a server given as http(s)://host[:port][/prefix] or ws(s)://…; OmegaError if not a URL."""
    if not isinstance(server_url, str):
        raise OmegaError(f"server URL must be text, got {server_url!r}")
    parts = urlsplit(server_url.strip())
    schemes = {"http": ("http", "ws"), "https": ("https", "wss"), "ws": ("http", "ws"), "wss": ("https", "wss")}
    if parts.scheme not in schemes or not parts.hostname:
        raise OmegaError(f"server URL must look like http://host:port, got {server_url!r}")
    try:
        parts.port  # noqa: B018  (raises ValueError for a bad port)
    except ValueError:
        raise OmegaError(f"server URL has a bad port: {server_url!r}") from None
    if parts.query or parts.fragment:
        raise OmegaError(f"server URL must not have a query or fragment: {server_url!r}")
    prefix = parts.path.rstrip("/")
    for suffix in (SYNC_PATH, WS_PATH):  # accept the endpoint itself, too
        if prefix.endswith(suffix):
            prefix = prefix[: -len(suffix)]
    http_scheme, ws_scheme = schemes[parts.scheme]
    return Endpoints(
        http_url=urlunsplit((http_scheme, parts.netloc, prefix + SYNC_PATH, "", "")),
        ws_url=urlunsplit((ws_scheme, parts.netloc, prefix + WS_PATH, "", "")),
    )


_PLAIN = frozenset({"http", "ws"})


def is_loopback(host: str) -> bool:
    """Whether `host` names this machine only (localhost, 127.0.0.0/8, ::1)."""
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_server_url(server_url: str, *, insecure: bool = False) -> Endpoints:
    """The endpoints of `server_url`, refusing plain http:// or ws:// to anything but loopback unless `insecure`.

    Sync frames are signed, not encrypted: on a plain connection an observer reads the device id
    and what the TV pushes. OmegaError (one line) when refused.
    """
    found = endpoints(server_url)
    parts = urlsplit(server_url.strip())
    if parts.scheme in _PLAIN and not insecure and not is_loopback(parts.hostname or ""):
        raise OmegaError(
            f"refusing plain {parts.scheme}:// to {parts.hostname}: sync would be readable on the wire; "
            f"use https:// (or --insecure to allow it)"
        )
    return found


def client_tls(ca_file: str | None = None) -> ssl.SSLContext:
    """The TLS context a TV verifies the server with: the system's CAs, or only those in `ca_file` (PEM)."""
    try:
        return ssl.create_default_context(cafile=ca_file)
    except FileNotFoundError:
        raise OmegaError(f"CA file not found: {ca_file}") from None
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise OmegaError(f"cannot read CA file {ca_file}: {exc}") from None


def _unreachable(url: str, exc: BaseException) -> TransportError:
    """One line for a failed connection; a certificate the TV does not trust is named as such."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            why = cause.verify_message or cause.reason or "verification failed"
            return TransportError(f"{url}: the server's TLS certificate is not trusted ({why}); pass --ca-file", tls=True)
        if isinstance(cause, ssl.SSLError):
            return TransportError(f"{url}: TLS handshake failed ({cause.reason or cause})", tls=True)
        cause = cause.__cause__ or cause.__context__
    return TransportError(f"cannot reach {url}: {type(exc).__name__}: {exc or 'connection failed'}")


def parse_retry_after(value: str | None, now: float | None = None) -> float:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); 0 when absent or unreadable."""
    if not value:
        return 0.0
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return 0.0
    if when is None:
        return 0.0
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class HttpTransport:
    """HTTP polling: each frame is one `POST /v1/sync`; error statuses still carry an ErrorReply frame."""

    def __init__(
        self,
        server_url: str,
        *,
        timeout_s: float = 10.0,
        client: httpx.AsyncClient | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.url = endpoints(server_url).http_url
        self._timeout = httpx.Timeout(timeout_s)
        self._client = client
        self._own_client = client is None
        self._tls = tls

    async def exchange(self, data: bytes) -> Reply:
        if self._client is None:
            verify: ssl.SSLContext | bool = self._tls if self._tls is not None else True
            self._client = httpx.AsyncClient(timeout=self._timeout, follow_redirects=False, verify=verify)
        try:
            async with self._client.stream(
                "POST", self.url, content=data, headers={"content-type": CONTENT_TYPE}, timeout=self._timeout
            ) as response:
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_REPLY_BYTES:
                        raise TransportError(f"reply from {self.url} exceeds {MAX_REPLY_BYTES} bytes")
        except httpx.TimeoutException:
            raise TransportError(f"no reply from {self.url} within {self._timeout.read:g} s") from None
        except httpx.HTTPError as exc:
            raise _unreachable(self.url, exc) from None
        retry = parse_retry_after(response.headers.get("retry-after"))
        if not body:
            raise TransportError(f"HTTP {response.status_code} from {self.url} with an empty body", retry_after_s=retry)
        return Reply(bytes(body), response.status_code, retry)

    async def close(self) -> None:
        if self._client is not None and self._own_client:
            await self._client.aclose()
            self._client = None


class WebSocketTransport:
    """A WebSocket to `/v1/ws`, opened on first use; one binary message per frame, replies in order."""

    def __init__(self, server_url: str, *, timeout_s: float = 10.0, tls: ssl.SSLContext | None = None) -> None:
        self.url = endpoints(server_url).ws_url
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
                **({"ssl": self._tls} if self._tls is not None and self.url.startswith("wss:") else {}),
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            retry = parse_retry_after(exc.response.headers.get("Retry-After"))
            raise TransportError(f"{self.url} refused the WebSocket: HTTP {status}", retry_after_s=retry) from None
        except InvalidURI as exc:
            raise OmegaError(f"bad WebSocket URL {self.url}: {exc}") from None
        except (OSError, asyncio.TimeoutError, WebSocketException) as exc:
            raise _unreachable(self.url, exc) from None
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


def open_transport(
    policy: TierPolicy,
    server_url: str,
    *,
    timeout_s: float,
    http_client: httpx.AsyncClient | None = None,
    ca_file: str | None = None,
    insecure: bool = False,
) -> Transport:
    """The transport a tier syncs over by default: HTTP polling, or a WebSocket (persistent or on demand).

    `http_client` lets many agents in one process share one connection pool (it is not closed with the transport).
    Plain http:// / ws:// is refused for anything but loopback unless `insecure`; https:// / wss:// verify
    the server's certificate against the system's CAs, or only those in `ca_file`.
    """
    check_server_url(server_url, insecure=insecure)
    tls = client_tls(ca_file) if ca_file is not None else None
    if policy.transport is TransportKind.HTTP:
        return HttpTransport(server_url, timeout_s=timeout_s, client=http_client, tls=tls)
    return WebSocketTransport(server_url, timeout_s=timeout_s, tls=tls)
