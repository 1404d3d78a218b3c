"""A lean HTTP/1.1 client for the load generator and `omega bench sync`: POST a frame, read the reply frame.

The harness shares the machine's cores with the server it measures, so what its
clients spend per request is taken from the server. httpx (with httpcore) spends
several times the server's own per-request Python on each POST (request and
response models, header normalisation, pool bookkeeping); this client writes one
request line and three headers and reads a status line, the headers it needs and
a Content-Length body, on keep-alive connections from a small LIFO pool. It
speaks only to the sync server's `POST /v1/sync` (replies always carry
Content-Length; no chunked replies, redirects, cookies or TLS).
"""

from __future__ import annotations

import asyncio
import contextlib


def header_lines(headers: dict[str, str]) -> bytes:
    """`headers` as the extra lines `Http1Pool.post` takes (each "name: value" and CRLF), built once per client."""
    return "".join(f"{name}: {value}\r\n" for name, value in headers.items()).encode()


class HttpStatusError(Exception):
    """A reply that is not HTTP/1.x with a Content-Length (not what the sync server sends)."""


class _Conn:
    __slots__ = ("reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


class Http1Pool:
    """Keep-alive connections to one server, at most `max_connections` at once (callers wait for one).

    `post(path, body)` returns (status, body, retry_after or None). A request on a reused connection
    that the server had closed meanwhile (its idle deadline) is sent again once on a new connection.
    """

    def __init__(self, host: str, port: int, *, max_connections: int = 64, timeout_s: float = 30.0,
                 local_addr: tuple[str, int] | None = None) -> None:  # fmt: skip
        self.host, self.port = host, port
        self.timeout_s = timeout_s
        self.local_addr = local_addr
        self._idle: list[_Conn] = []
        self._slots = asyncio.Semaphore(max_connections)
        netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self._head = f"host: {netloc}\r\ncontent-type: application/octet-stream\r\ncontent-length: ".encode()

    async def post(self, path: str, body: bytes, headers: bytes = b"") -> tuple[int, bytes, int | None]:
        """`headers`: more header lines, each ending in CRLF (e.g. the device header a TV sends)."""
        async with asyncio.timeout(self.timeout_s), self._slots:  # the wait for a connection counts too
            request = b"POST %s HTTP/1.1\r\n%s%s%d\r\n\r\n%s" % (path.encode(), headers, self._head, len(body), body)
            while self._idle:
                conn = self._idle.pop()
                try:
                    return await self._exchange(conn, request)
                except (ConnectionError, asyncio.IncompleteReadError):  # closed while idle: next one
                    conn.close()
            reader, writer = await asyncio.open_connection(self.host, self.port, local_addr=self.local_addr)
            return await self._exchange(_Conn(reader, writer), request)

    async def _exchange(self, conn: _Conn, request: bytes) -> tuple[int, bytes, int | None]:
        keep = False
        try:
            conn.writer.write(request)
            head = await conn.reader.readuntil(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            parts = lines[0].split(b" ", 2)
            if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
                raise HttpStatusError(f"not an HTTP/1.x reply: {lines[0][:60]!r}")
            length, retry_after, keep = None, None, parts[0] == b"HTTP/1.1"
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"retry-after" and value.strip().isdigit():
                    retry_after = int(value)
                elif name == b"connection":
                    keep = value.strip().lower() != b"close"
            if length is None:
                raise HttpStatusError("reply without Content-Length")
            data = await conn.reader.readexactly(length) if length else b""
            return int(parts[1]), data, retry_after
        except BaseException:
            keep = False
            raise
        finally:
            if keep:
                self._idle.append(conn)
            else:
                conn.close()

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
            with contextlib.suppress(Exception):
                await conn.writer.wait_closed()
