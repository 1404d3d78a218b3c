"""The HTTP polling transport (the casual tier): each frame is one `POST /v1/sync` through httpx.

Its own module so that a TV on a WebSocket tier never imports httpx (`open_transport` imports this one only for
the HTTP tier).

httpx's package imports its command-line client, `httpx._main`, whenever that client's libraries (rich, pygments,
click) are installed, as they are beside omega's CLI: ~5.5 MB of a TV's memory for a client a TV never runs. So
httpx is imported here with `httpx._main` marked missing (None in `sys.modules`, which makes its import raise
ImportError): httpx then defines its stub `main` instead (its own `except ImportError`, httpx 0.28), and every
other part of httpx is the same. The mark is removed at once, so a later `import httpx._main` works as before.
"""

from __future__ import annotations

import ssl
import sys

from omega.brain.sync.transport import (
    CONTENT_TYPE, MAX_REPLY_BYTES, Reply, TransportError, unreachable, endpoints, parse_retry_after,
)  # fmt: skip
from omega.protocol.routing import DEVICE_HEADER, device_header_value

_WITHOUT_CLI = "httpx" not in sys.modules and "httpx._main" not in sys.modules
if _WITHOUT_CLI:
    sys.modules["httpx._main"] = None  # type: ignore[assignment]  # see the module docstring
try:
    import httpx
finally:
    if _WITHOUT_CLI:
        del sys.modules["httpx._main"]


class HttpTransport:
    """HTTP polling: each frame is one `POST /v1/sync`; error statuses still carry an ErrorReply frame."""

    def __init__(
        self,
        server_url: str,
        *,
        timeout_s: float = 10.0,
        client: httpx.AsyncClient | None = None,
        tls: ssl.SSLContext | None = None,
        device_id: bytes | None = None,
    ) -> None:
        self.url = endpoints(server_url).http_url
        # Every request names its device (omega.protocol.routing): a proxy can pin the device to one worker.
        self._headers = {"content-type": CONTENT_TYPE}
        if device_id is not None:
            self._headers[DEVICE_HEADER] = device_header_value(device_id)
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
                "POST", self.url, content=data, headers=self._headers, timeout=self._timeout
            ) as response:
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_REPLY_BYTES:
                        raise TransportError(f"reply from {self.url} exceeds {MAX_REPLY_BYTES} bytes")
        except httpx.TimeoutException:
            raise TransportError(f"no reply from {self.url} within {self._timeout.read:g} s") from None
        except httpx.HTTPError as exc:
            raise unreachable(self.url, exc) from None
        retry = parse_retry_after(response.headers.get("retry-after"))
        if not body:
            raise TransportError(f"HTTP {response.status_code} from {self.url} with an empty body", retry_after_s=retry)
        return Reply(bytes(body), response.status_code, retry)

    async def close(self) -> None:
        if self._client is not None and self._own_client:
            await self._client.aclose()
            self._client = None
