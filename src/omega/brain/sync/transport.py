"""How frames travel: HTTP polling (`POST /v1/sync`) or a WebSocket (`/v1/ws`), one frame per message.

This module holds what both transports share (the URL rules, TLS, replies, errors) and `open_transport`; each
transport lives in its own module (`http_transport`: httpx, `ws_transport`: websockets), imported only by
the tier that uses it: a TV on a WebSocket tier never loads httpx (with anyio and httpcore ~6 MB of a TV's memory
once used), one on the polling tier never loads websockets (~2 MB).

A transport moves bytes and reports transport-level trouble as `TransportError`
(with the server's Retry-After when it gave one); deciding what a reply means
is the agent's job. Any failure closes a WebSocket, because a late reply on a
reused connection would be read as the answer to the next frame.
"""

from __future__ import annotations

import email.utils
import ipaddress
import ssl
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol
from urllib.parse import urlsplit, urlunsplit

from omega.brain.sync.tiers import TierPolicy, TransportKind
from omega.errors import OmegaError
from omega.protocol import DEFAULT_MAX_FRAME_BYTES

if TYPE_CHECKING:
    import httpx

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


def unreachable(url: str, exc: BaseException) -> TransportError:
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


def open_transport(
    policy: TierPolicy,
    server_url: str,
    *,
    timeout_s: float,
    http_client: httpx.AsyncClient | None = None,
    ca_file: str | None = None,
    insecure: bool = False,
    device_id: bytes | None = None,
) -> Transport:
    """The transport a tier syncs over by default: HTTP polling, or a WebSocket (persistent or on demand).

    `http_client` lets many agents in one process share one connection pool (it is not closed with the transport).
    `device_id` goes in the `X-Omega-Device` header of every request (omega.protocol.routing): a server whose
    workers are pinned by device (`omega serve --pinned`) refuses requests without it.
    Plain http:// / ws:// is refused for anything but loopback unless `insecure`; https:// / wss:// verify
    the server's certificate against the system's CAs, or only those in `ca_file`.
    """
    check_server_url(server_url, insecure=insecure)
    tls = client_tls(ca_file) if ca_file is not None else None
    # Imported here, by tier: a TV loads only its own transport's library (see the module docstring).
    if policy.transport is TransportKind.HTTP:
        from omega.brain.sync.http_transport import HttpTransport

        return HttpTransport(server_url, timeout_s=timeout_s, client=http_client, tls=tls, device_id=device_id)
    from omega.brain.sync.ws_transport import WebSocketTransport

    return WebSocketTransport(server_url, timeout_s=timeout_s, tls=tls, device_id=device_id)
