"""The sync server over a real WebSocket: in-order replies, device binding, close codes, graceful shutdown."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from omega.protocol import ErrorReply, Heartbeat, HeartbeatAck, PullReply, PushAck, Tier, decode_frame

from .server_support import Device, ServerProcess, near, pattern, small_codebook

CODEBOOK = small_codebook()


@pytest.fixture
def server(tmp_path) -> Iterator[ServerProcess]:  # noqa: ANN001
    CODEBOOK.save(tmp_path / "codebook.npz")
    proc = ServerProcess(tmp_path, codebook=tmp_path / "codebook.npz").start()
    yield proc
    proc.kill()


def ws_url(server: ServerProcess) -> str:
    return f"ws://127.0.0.1:{server.port}/v1/ws"


async def test_frames_are_answered_in_order_and_counted_as_connections(server: ServerProcess) -> None:
    dev = Device(1)
    async with connect(ws_url(server), compression=None) as ws:
        frames = [dev.push([pattern(near(CODEBOOK, 0, 1))])[1], dev.pull(0), dev.frame(Heartbeat(Tier.PREMIUM))]
        for data in frames:
            await ws.send(data)
        replies = [dev.decode(await ws.recv()).body for _ in frames]
        assert [type(r) for r in replies] == [PushAck, PullReply, HeartbeatAck]
        assert replies[2].next_sync_s == 60
        assert server.metric("omega_connections", tier="premium") == 1
    await asyncio.sleep(0.2)
    assert server.metric("omega_connections", tier="premium") == 0


async def test_a_connection_is_bound_to_its_first_device(server: ServerProcess) -> None:
    a, b = Device(2), Device(3)
    async with connect(ws_url(server), compression=None) as ws:
        await ws.send(a.frame(Heartbeat(Tier.ACTIVE)))
        assert isinstance(a.decode(await ws.recv()).body, HeartbeatAck)
        await ws.send(b.frame(Heartbeat(Tier.ACTIVE)))  # validly signed by B, on A's connection
        err = b.decode(await ws.recv()).body
        assert isinstance(err, ErrorReply) and err.code == "unauthorized"
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
        assert closed.value.rcvd.code == 1008


async def test_forged_frame_closes_1008_and_oversize_closes_1009(server: ServerProcess) -> None:
    dev = Device(4)
    async with connect(ws_url(server), compression=None) as ws:
        data = dev.frame(Heartbeat(Tier.ACTIVE))
        await ws.send(data[:-1] + bytes([data[-1] ^ 0xFF]))
        err = decode_frame(await ws.recv(), dev.key)
        assert not err.authenticated and err.body.code == "bad_signature"
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
        assert closed.value.rcvd.code == 1008
    async with connect(ws_url(server), compression=None, max_size=None) as ws:
        await ws.send(os.urandom(20_000))
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
        assert closed.value.rcvd.code == 1009


async def test_sigterm_drains_websockets_with_1001_and_exits_cleanly(server: ServerProcess) -> None:
    dev = Device(5)
    async with connect(ws_url(server), compression=None) as ws:
        await ws.send(dev.frame(Heartbeat(Tier.PREMIUM)))
        assert isinstance(dev.decode(await ws.recv()).body, HeartbeatAck)
        code = await asyncio.to_thread(server.terminate)
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
        assert closed.value.rcvd.code == 1001
    assert code == 0
    log = server.log.read_text()
    assert "draining" in log and "store closed" in log


def test_draining_app_answers_503_unavailable(tmp_path) -> None:  # noqa: ANN001
    """In-process: once draining, readyz is 503 and frames get a signed `unavailable` + Retry-After."""
    from starlette.testclient import TestClient

    from omega.constellation.app import create_app
    from omega.constellation.settings import load_settings

    CODEBOOK.save(tmp_path / "codebook.npz")
    settings = load_settings(env={"OMEGA_SECRET": "server-test-secret-0123456789abcdef"},
                             overrides={"store": f"sqlite:{tmp_path / 'c.db'}", "codebook": str(tmp_path / "codebook.npz")})  # fmt: skip
    app = create_app(settings)
    dev = Device(6)
    with TestClient(app) as client:
        assert client.get("/readyz").status_code == 200
        client.portal.call(app.state.omega.drain, 0.1)
        assert client.get("/readyz").status_code == 503
        resp = client.post("/v1/sync", content=dev.frame(Heartbeat(Tier.ACTIVE)))
        assert resp.status_code == 503 and int(resp.headers["retry-after"]) >= 1
        err = dev.decode(resp.content)
        assert err.authenticated and err.body.code == "unavailable"
