"""Hostile load against a real server process: idle and slowloris sockets, silent WebSockets, connection
caps, file-descriptor exhaustion, floods of expensive frames, oversize inflation."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from omega.constellation.guard import FD_RESERVE, ConnectionGuard
from omega.constellation.metrics import ServerMetrics
from omega.protocol import ErrorReply, Heartbeat, HeartbeatAck, Tier, compute_tag, omega_pb2
from omega.protocol.codec import MAGIC, PROTOCOL_VERSION

from .server_support import Device, ServerProcess

DEADLINE = {"OMEGA_REQUEST_TIMEOUT_S": "1", "OMEGA_WS_AUTH_TIMEOUT_S": "1"}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path, OMEGA_MAX_CONNECTIONS_PER_IP="6", OMEGA_RATE_BURST="3", OMEGA_RATE_PER_S="0.01",
                         **DEADLINE).start()  # fmt: skip
    yield proc
    proc.kill()


def _closed_within(sock: socket.socket, seconds: float, trickle: bytes = b"") -> bool:
    """Whether the server closes `sock` within `seconds`, sending `trickle` one byte every 0.3 s meanwhile."""
    sock.settimeout(0.3)
    deadline = time.monotonic() + seconds
    sent = 0
    while time.monotonic() < deadline:
        try:
            if sock.recv(1024) == b"":
                return True
        except TimeoutError:
            pass
        except ConnectionResetError:
            return True
        if sent < len(trickle):
            try:
                sock.sendall(trickle[sent : sent + 1])
            except (BrokenPipeError, ConnectionResetError):
                return True
            sent += 1
    return False


def test_idle_and_slowloris_connections_are_closed_at_the_deadline(server: ServerProcess) -> None:
    idle = socket.create_connection(("127.0.0.1", server.port))
    slow = socket.create_connection(("127.0.0.1", server.port))
    request = b"POST /v1/sync HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + b"x" * 100
    try:
        assert _closed_within(idle, 4.0)
        assert _closed_within(slow, 4.0, trickle=request)  # one byte every 0.3 s: never complete in time
    finally:
        idle.close()
        slow.close()
    assert server.metric("omega_connections_closed_total", reason="request_timeout") >= 2
    # An honest client on a kept-alive connection is not cut: each request has its own deadline.
    dev = Device(1)
    import httpx

    with httpx.Client() as client:
        for _ in range(3):
            assert server.post(dev.frame(Heartbeat(Tier.CASUAL)), client).status_code == 200
            time.sleep(0.6)


async def test_a_websocket_that_sends_nothing_or_nothing_authenticated_is_closed(server: ServerProcess) -> None:
    url = f"ws://127.0.0.1:{server.port}/v1/ws"
    async with connect(url, compression=None) as ws:
        started = time.monotonic()
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 5)
        assert closed.value.rcvd.code == 1008 and time.monotonic() - started < 4
    async with connect(url, compression=None) as ws:  # garbage first: an unsigned error, then closed
        await ws.send(b"\xce\x01\x00garbage")
        await ws.recv()
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 5)
        assert closed.value.rcvd.code == 1008
    assert server.metric("omega_connections_closed_total", reason="ws_auth_timeout") == 1
    dev = Device(2)  # an authenticated socket stays past the deadline
    async with connect(url, compression=None) as ws:
        await ws.send(dev.frame(Heartbeat(Tier.PREMIUM)))
        assert isinstance(dev.decode(await ws.recv()).body, HeartbeatAck)
        await asyncio.sleep(1.5)
        await ws.send(dev.frame(Heartbeat(Tier.PREMIUM)))
        assert isinstance(dev.decode(await ws.recv()).body, HeartbeatAck)


def test_per_address_cap_closes_extra_connections(server: ServerProcess) -> None:
    held = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(6)]
    try:
        extra = socket.create_connection(("127.0.0.1", server.port))
        assert _closed_within(extra, 0.9)  # closed at once, long before the request deadline
        extra.close()
    finally:
        for s in held:
            s.close()
    time.sleep(0.2)
    assert server.metric("omega_connections_refused_total", reason="ip_cap") >= 1


def _signed(dev: Device, body: bytes, *, compress: bool = True) -> bytes:
    payload = zlib.compressobj(6, zlib.DEFLATED, -15)
    data = payload.compress(body) + payload.flush() if compress else body
    head = bytes((MAGIC, PROTOCOL_VERSION, 0x01 if compress else 0x00)) + data
    return head + compute_tag(dev.key, head)


def _edge_bomb(dev: Device, edges: int) -> bytes:
    """A signed push whose 200-odd bytes inflate to `edges` transitions (the issue's 21,000-edge frames)."""
    dev.seq += 1
    batch = omega_pb2.TransitionBatch(keyspace=1, src_delta=[1] * edges, dst=[1] * edges, weight=[16] * edges)
    msg = omega_pb2.Frame(device_id=dev.device_id, timestamp_ms=int(time.time() * 1000), seq=dev.seq, key_id=1,
                          push=omega_pb2.Push(batch_id=b"b" * 16, transitions=batch))  # fmt: skip
    return _signed(dev, msg.SerializeToString())


def test_a_flood_of_signed_bombs_is_rate_limited_before_it_is_decoded(server: ServerProcess) -> None:
    dev = Device(3)
    codes = []
    for _ in range(6):
        data = _edge_bomb(dev, 21_000)
        assert len(data) < 400
        reply = server.post(data)
        frame = dev.decode(reply.content)
        assert frame.authenticated and isinstance(frame.body, ErrorReply)
        codes.append(frame.body.code)
    # The burst (3) is spent by the first frames; after that no bomb is even inflated.
    assert codes[:3] == ["too_large"] * 3 and codes[3:] == ["rate_limited"] * 3


def test_inflate_cap_follows_the_frame_kind(server: ServerProcess) -> None:
    dev = Device(4)
    dev.seq += 1
    padded = omega_pb2.Frame(device_id=dev.device_id, timestamp_ms=int(time.time() * 1000), seq=dev.seq, key_id=1,
                             heartbeat=omega_pb2.Heartbeat(tier=1)).SerializeToString()  # fmt: skip
    padded += b"\xfa\x07" + bytes([0x80, 0x50]) + bytes(10_240)  # unknown field 127, 10 KiB: legal protobuf
    reply = server.post(_signed(dev, padded))
    body = dev.decode(reply.content).body
    assert isinstance(body, ErrorReply) and body.code == "too_large"  # a heartbeat needs ~60 bytes, not 10 KiB
    assert isinstance(dev.decode(server.post(dev.frame(Heartbeat(Tier.CASUAL))).content).body, HeartbeatAck)


def test_guard_refuses_before_file_descriptors_run_out(caplog: pytest.LogCaptureFixture) -> None:
    metrics = ServerMetrics()
    guard = ConnectionGuard(metrics, max_connections=1000, max_per_ip=0, request_timeout_s=5, fd_limit=FD_RESERVE + 2)
    transports = [object() for _ in range(3)]
    with caplog.at_level(logging.WARNING, logger="omega.serve"):
        assert guard.admit(transports[0], "10.0.0.1") and guard.admit(transports[1], "10.0.0.2")
        assert not guard.admit(transports[2], "10.0.0.3")
    assert "out of file descriptors" in caplog.text
    assert metrics.sample("omega_fd_exhaustion_total") == 1
    assert metrics.sample("omega_connections_refused_total", {"reason": "fd_limit"}) == 1
    guard.release(transports[0])
    assert guard.admit(transports[2], "10.0.0.3") and metrics.sample("omega_connections_open") == 2
    small = ConnectionGuard(metrics, max_connections=1, max_per_ip=0, request_timeout_s=5, fd_limit=None)
    assert small.admit(object(), "a") and not small.admit(object(), "b")
    assert metrics.sample("omega_connections_refused_total", {"reason": "total_cap"}) == 1


def test_a_server_near_its_open_file_limit_logs_counts_and_keeps_serving(tmp_path: Path) -> None:
    limit = FD_RESERVE + 40
    proc = ServerProcess(tmp_path, OMEGA_MAX_CONNECTIONS_PER_IP="0", **DEADLINE)
    proc.command = ("prlimit", f"--nofile={limit}:{limit}", *proc.command)
    proc.start()
    socks: list[socket.socket] = []
    try:
        for _ in range(60):  # more than the descriptors left for connections
            socks.append(socket.create_connection(("127.0.0.1", proc.port)))
        time.sleep(0.3)
        for s in socks:
            s.close()
        socks.clear()
        time.sleep(0.3)
        assert proc.metric("omega_fd_exhaustion_total") >= 1
        assert "out of file descriptors" in proc.log_text()
        dev = Device(5)
        assert isinstance(dev.decode(proc.post(dev.frame(Heartbeat(Tier.CASUAL))).content).body, HeartbeatAck)
    finally:
        for s in socks:
            s.close()
        proc.kill()
