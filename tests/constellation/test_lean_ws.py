"""The lean per-connection objects of a held connection behave as the asyncio ones uvicorn would use,
and a held connection keeps nothing of the requests it has answered."""

from __future__ import annotations

import asyncio
import inspect
from pathlib import Path

import pytest

from omega.constellation.app import create_app
from omega.constellation.lean_ws import Flag, Inbox
from omega.constellation.runner import EmbeddedServer
from omega.constellation.settings import load_settings
from omega.protocol import Heartbeat, HeartbeatAck, Tier

from .server_support import SECRET, Device, small_codebook


async def test_inbox_hands_items_in_order_and_waits_when_empty() -> None:
    inbox = Inbox()
    assert inbox.empty()
    inbox.put_nowait(1)
    inbox.put_nowait(2)
    assert (await inbox.get(), inbox.qsize(), await inbox.get()) == (1, 1, 2)
    getter = asyncio.create_task(inbox.get())
    await asyncio.sleep(0)
    assert not getter.done()
    inbox.put_nowait("late")
    assert await asyncio.wait_for(getter, 1) == "late"
    assert inbox.empty()


async def test_a_cancelled_get_loses_nothing() -> None:
    inbox = Inbox()
    getter = asyncio.create_task(inbox.get())
    await asyncio.sleep(0)
    getter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await getter
    inbox.put_nowait("kept")
    assert await asyncio.wait_for(inbox.get(), 1) == "kept"
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(inbox.get(), 0.01)


async def test_flag_wakes_every_waiter_on_set_and_blocks_after_clear() -> None:
    flag = Flag(True)
    assert flag.is_set() and await flag.wait()
    flag.clear()
    waiters = [asyncio.create_task(flag.wait()) for _ in range(3)]
    await asyncio.sleep(0)
    assert not any(w.done() for w in waiters)
    flag.set()
    assert await asyncio.wait_for(asyncio.gather(*waiters), 1) == [True, True, True]
    flag.clear()
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(flag.wait(), 0.01)
    flag.set()  # the timed-out waiter left nothing behind
    assert await flag.wait()


async def _server(tmp_path: Path) -> EmbeddedServer:
    small_codebook().save(tmp_path / "codebook.npz")
    settings = load_settings(env={"OMEGA_SECRET": SECRET}, overrides={
        "store": f"sqlite:{tmp_path / 'c.db'}", "codebook": str(tmp_path / "codebook.npz"), "port": 0,
        "log_level": "warning"})  # fmt: skip
    return await EmbeddedServer.start(settings, create_app(settings))


def _generator_locals(gen) -> list:  # noqa: ANN001
    """The locals of a generator and of every generator it is suspended in (`yield from`)."""
    out = []
    while inspect.isgenerator(gen) and gen.gi_frame is not None:
        out += list(gen.gi_frame.f_locals.values())
        gen = gen.gi_yieldfrom
    return out


async def test_a_held_websocket_keeps_no_handshake_and_no_dict_of_its_own(tmp_path: Path) -> None:
    from websockets.asyncio.client import connect
    from websockets.http11 import Request

    server = await _server(tmp_path)
    try:
        dev = Device(61)
        async with connect(server.url.replace("http", "ws") + "/v1/ws", compression=None,
                           additional_headers={"x-padding": "p" * 500}) as ws:  # fmt: skip
            for _ in range(2):  # the connection keeps serving after the handshake is dropped
                await ws.send(dev.frame(Heartbeat(Tier.PREMIUM)))
                assert isinstance(dev.decode(await ws.recv()).body, HeartbeatAck)
            (proto,) = [p for p in server.server_state.connections if hasattr(p, "conn")]
            # uvicorn's attributes live in slots: a dict of 30+ keys per connection is not shared with the class
            assert vars(proto) == {}, sorted(vars(proto))
            assert proto.request is None and proto.response is None and proto.scope["headers"] == []
            # websockets' parser generator keeps the handshake request as a local: its headers are emptied
            requests = [v for v in _generator_locals(proto.conn.parser) if isinstance(v, Request)]
            assert all(len(r.headers) == 0 for r in requests)
    finally:
        await server.stop()


async def test_an_idle_keep_alive_connection_forgets_its_last_request_and_serves_the_next(tmp_path: Path) -> None:
    server = await _server(tmp_path)
    try:
        dev = Device(62)
        host, port = "127.0.0.1", server.bound_port()
        reader, writer = await asyncio.open_connection(host, port)

        def request(frame: bytes) -> bytes:
            return (b"POST /v1/sync HTTP/1.1\r\nhost: %s:%d\r\ncontent-type: application/octet-stream\r\n"
                    b"content-length: %d\r\n\r\n%s" % (host.encode(), port, len(frame), frame))  # fmt: skip

        async def reply() -> bytes:
            head, body = await _read_reply(reader)
            assert head.startswith(b"HTTP/1.1 200"), head
            return body

        # two requests in one write (pipelined), then one more on the idle connection
        writer.write(request(dev.frame(Heartbeat(Tier.CASUAL))) + request(dev.frame(Heartbeat(Tier.CASUAL))))
        for _ in range(2):
            assert isinstance(dev.decode(await reply()).body, HeartbeatAck)
        await asyncio.sleep(0.05)
        (proto,) = [p for p in server.server_state.connections if hasattr(p, "parser")]
        assert proto.cycle is None and proto.scope is None and proto.headers is None
        writer.write(request(dev.frame(Heartbeat(Tier.CASUAL))))
        assert isinstance(dev.decode(await reply()).body, HeartbeatAck)
        writer.close()
    finally:
        await server.stop()


async def _read_reply(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One HTTP/1.1 reply off a raw connection: (status line and headers, body by its content-length)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = next(int(line.split(b":")[1]) for line in head.lower().split(b"\r\n")
                  if line.startswith(b"content-length:"))  # fmt: skip
    return head, await asyncio.wait_for(reader.readexactly(length), 5)


class _Recorder:
    """A connection's transport that records what is written through it."""

    def __init__(self, transport) -> None:  # noqa: ANN001
        self.transport = transport
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))
        self.transport.write(data)

    def __getattr__(self, name: str):  # noqa: ANN204
        return getattr(self.transport, name)


async def test_a_sync_reply_is_one_write_and_100_continue_is_not_held(tmp_path: Path) -> None:
    server = await _server(tmp_path)
    try:
        dev = Device(63)
        host, port = "127.0.0.1", server.bound_port()
        reader, writer = await asyncio.open_connection(host, port)
        await asyncio.sleep(0.05)
        (proto,) = [p for p in server.server_state.connections if hasattr(p, "parser")]
        transport = proto.transport
        proto.transport = recorder = _Recorder(transport)  # the next request's cycle writes through it

        async def exchange(expect_continue: bool) -> bytes:
            frame = dev.frame(Heartbeat(Tier.CASUAL))
            head = (b"POST /v1/sync HTTP/1.1\r\nhost: %s:%d\r\ncontent-length: %d\r\n%s\r\n"
                    % (host.encode(), port, len(frame), b"expect: 100-continue\r\n" if expect_continue else b""))
            writer.write(head)
            if expect_continue:  # the body goes only after the interim reply: a held one would never come
                assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5) == b"HTTP/1.1 100 Continue\r\n\r\n"
            writer.write(frame)
            reply_head, body = await _read_reply(reader)
            assert isinstance(dev.decode(body).body, HeartbeatAck)
            return reply_head + body

        whole = await exchange(expect_continue=False)
        assert recorder.writes == [whole]  # status line, headers and frame in one write (uvicorn: two)
        recorder.writes.clear()
        whole = await exchange(expect_continue=True)
        assert recorder.writes == [b"HTTP/1.1 100 Continue\r\n\r\n", whole]
        proto.transport = transport
        writer.close()
    finally:
        await server.stop()
