"""The load generator's lean HTTP/1.1 client against a real socket server: keep-alive, reconnects, headers."""

from __future__ import annotations

import asyncio

import pytest

from omega.sim.load.http1 import Http1Pool, HttpStatusError


async def _server(replies: list[bytes], close_after: int | None = None):  # noqa: ANN202
    """A loopback server answering each request with the next of `replies`; records (connection, body) pairs."""
    seen: list[tuple[int, bytes]] = []
    conns = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal conns
        conns += 1
        me, served = conns, 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:"))  # fmt: skip
                seen.append((me, await reader.readexactly(length)))
                writer.write(replies[min(len(seen), len(replies)) - 1])
                await writer.drain()
                served += 1
                if close_after is not None and served >= close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], seen


async def test_posts_reuse_one_connection_and_read_status_body_and_retry_after() -> None:
    ok = b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: 5\r\n\r\nhello"
    limited = b"HTTP/1.1 429 Too Many Requests\r\ncontent-length: 3\r\nRetry-After: 7\r\n\r\nerr"
    server, port, seen = await _server([ok, ok, limited])
    pool = Http1Pool("127.0.0.1", port, max_connections=2)
    try:
        assert await pool.post("/v1/sync", b"frame-1") == (200, b"hello", None)
        assert await pool.post("/v1/sync", b"frame-2") == (200, b"hello", None)
        assert await pool.post("/v1/sync", b"frame-3") == (429, b"err", 7)
        assert [c for c, _ in seen] == [1, 1, 1]  # one keep-alive connection
        assert [b for _, b in seen] == [b"frame-1", b"frame-2", b"frame-3"]
    finally:
        await pool.aclose()
        server.close()


async def test_a_connection_the_server_closed_while_idle_is_replaced_once() -> None:
    ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
    server, port, seen = await _server([ok], close_after=1)  # like the server's idle deadline
    pool = Http1Pool("127.0.0.1", port)
    try:
        assert (await pool.post("/v1/sync", b"a"))[:2] == (200, b"ok")
        await asyncio.sleep(0.05)  # the server has closed that connection by now
        assert (await pool.post("/v1/sync", b"b"))[:2] == (200, b"ok")
        assert seen == [(1, b"a"), (2, b"b")]  # b sent once, on a new connection
    finally:
        await pool.aclose()
        server.close()


async def test_connection_close_and_bad_replies() -> None:
    closing = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nConnection: close\r\n\r\n"
    no_length = b"HTTP/1.1 200 OK\r\n\r\nbody"
    server, port, seen = await _server([closing, no_length])
    pool = Http1Pool("127.0.0.1", port, timeout_s=2)
    try:
        assert await pool.post("/v1/sync", b"a") == (200, b"", None)
        with pytest.raises(HttpStatusError):
            await pool.post("/v1/sync", b"b")
        assert [c for c, _ in seen] == [1, 2]  # Connection: close was honoured
    finally:
        await pool.aclose()
        server.close()


async def test_a_server_that_never_answers_is_a_timeout() -> None:
    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(5)
        writer.close()

    server = await asyncio.start_server(mute, "127.0.0.1", 0)
    pool = Http1Pool("127.0.0.1", server.sockets[0].getsockname()[1], timeout_s=0.3)
    try:
        with pytest.raises(TimeoutError):
            await pool.post("/v1/sync", b"a")
    finally:
        await pool.aclose()
        server.close()
