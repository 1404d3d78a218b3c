"""Devices pinned to workers by their X-Omega-Device header (omega.protocol.routing), without Redis.

The header binds a request or WebSocket to one device: a frame signed by another device is refused before
admission, so a captured frame sent with a changed header (which a proxy would hash to another worker) is
refused, never admitted. `pinned` servers require the header; `--workers N --pinned` gives each worker a port.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from omega.constellation.settings import load_settings
from omega.errors import OmegaError
from omega.protocol import (
    DEVICE_HEADER,
    ErrorReply,
    Heartbeat,
    HeartbeatAck,
    PullReply,
    PushAck,
    Tier,
    decode_frame,
)
from omega.sim.load.server_process import free_port

from .server_support import SECRET, Device, ServerProcess, near, pattern, small_codebook

CODEBOOK = small_codebook()
DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
OCTETS = {"content-type": "application/octet-stream"}


def _post(url: str, data: bytes, device: bytes | str | None) -> httpx.Response:
    headers = dict(OCTETS)
    if device is not None:
        headers[DEVICE_HEADER] = device.hex() if isinstance(device, bytes) else device
    return httpx.post(url + "/v1/sync", content=data, headers=headers, timeout=10)


def _unsigned_error(resp: httpx.Response) -> ErrorReply:
    frame = decode_frame(resp.content, bytes(32))
    assert not frame.authenticated and isinstance(frame.body, ErrorReply)
    return frame.body


# ------------------------------------------------------------------ settings


def test_pinned_workers_need_no_redis_and_a_shared_port_without_it_is_refused() -> None:
    base = {"OMEGA_SECRET": SECRET, "OMEGA_WORKERS": "4", "OMEGA_STORE": "postgresql://db/omega"}
    settings = load_settings(env={**base, "OMEGA_PINNED": "true"})
    assert settings.pinned and settings.redis is None and settings.workers == 4
    assert load_settings(env=base, overrides={"pinned": True}).pinned
    with pytest.raises(OmegaError, match=r"^workers > 1 needs --redis \(.*\) or --pinned \("):
        load_settings(env=base)
    with pytest.raises(OmegaError, match="workers > 1 needs a postgresql:// store"):
        load_settings(env={**base, "OMEGA_PINNED": "1", "OMEGA_STORE": "sqlite:x.db"})
    with pytest.raises(OmegaError, match=r"pinned workers listen on ports 65533\.\.65536: past 65535"):
        load_settings(env={**base, "OMEGA_PINNED": "1", "OMEGA_PORT": "65533"})
    with pytest.raises(OmegaError, match="setting pinned has a bad value: 'maybe'"):
        load_settings(env={**base, "OMEGA_PINNED": "maybe"})


# ------------------------------------------------------------------ one server: the header binds


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server as TVs from before the header meet it (not pinned)."""
    folder = tmp_path_factory.mktemp("server-header")
    CODEBOOK.save(folder / "codebook.npz")
    proc = ServerProcess(folder, codebook=folder / "codebook.npz").start()
    yield proc
    proc.kill()


@pytest.fixture(scope="module")
def pinned(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One pinned worker (`omega serve --pinned`, as each of N processes behind a proxy would be)."""
    folder = tmp_path_factory.mktemp("server-pinned")
    CODEBOOK.save(folder / "codebook.npz")
    proc = ServerProcess(folder, codebook=folder / "codebook.npz", OMEGA_PINNED="1").start()
    yield proc
    proc.kill()


def test_a_frame_of_another_device_than_the_header_is_refused_before_admission(server: ServerProcess) -> None:
    a, b = Device(301), Device(302)
    captured = b.frame(Heartbeat(Tier.CASUAL))  # B's own, validly signed
    resp = _post(server.url, captured, a.device_id)  # steered with A's header
    assert resp.status_code == 401
    err = b.decode(resp.content)  # signed with B's key: the tag verified, then the binding refused it
    assert err.authenticated and isinstance(err.body, ErrorReply) and err.body.code == "unauthorized"
    assert "X-Omega-Device" in err.body.message
    # Refused before admission: the same frame with its own header is still fresh (not a replay).
    assert isinstance(b.decode(_post(server.url, captured, b.device_id).content).body, HeartbeatAck)
    # ... and once admitted, a changed header cannot bring it back as anything but a refusal.
    assert b.decode(_post(server.url, captured, a.device_id).content).body.code == "unauthorized"
    assert b.decode(_post(server.url, captured, b.device_id).content).body.code == "replay"


def test_a_header_in_another_spelling_or_twice_is_malformed(server: ServerProcess) -> None:
    dev = Device(303)
    for value in (dev.device_id.hex().upper(), dev.device_id.hex()[:-2], "zz" * 16, dev.device_id.hex() + " x"):
        resp = _post(server.url, dev.frame(Heartbeat(Tier.CASUAL)), value)
        assert resp.status_code == 400 and _unsigned_error(resp).code == "malformed", value
    twice = [("content-type", "application/octet-stream"), (DEVICE_HEADER, dev.device_id.hex()),
             (DEVICE_HEADER, dev.device_id.hex())]  # fmt: skip
    resp = httpx.post(server.url + "/v1/sync", content=dev.frame(Heartbeat(Tier.CASUAL)), headers=twice)
    assert resp.status_code == 400 and "more than once" in _unsigned_error(resp).message


def test_without_the_header_an_unpinned_server_answers_and_a_pinned_one_refuses(
    server: ServerProcess, pinned: ServerProcess
) -> None:
    dev = Device(304)
    assert isinstance(dev.decode(_post(server.url, dev.frame(Heartbeat(Tier.CASUAL)), None).content).body, HeartbeatAck)
    resp = _post(pinned.url, dev.frame(Heartbeat(Tier.CASUAL)), None)
    assert resp.status_code == 401
    err = _unsigned_error(resp)
    assert err.code == "unauthorized" and err.message == (
        "this server pins devices to workers: send the X-Omega-Device header")
    assert isinstance(dev.decode(_post(pinned.url, dev.frame(Heartbeat(Tier.CASUAL)), dev.device_id).content).body,
                      HeartbeatAck)  # fmt: skip
    assert pinned.metric("omega_rejections_total", reason="unauthorized") >= 1


async def test_a_websocket_is_bound_to_its_header_device_from_the_first_frame(server: ServerProcess) -> None:
    a, b = Device(305), Device(306)
    url = f"ws://127.0.0.1:{server.port}/v1/ws"
    async with connect(url, compression=None, additional_headers={DEVICE_HEADER: a.device_id.hex()}) as ws:
        await ws.send(b.frame(Heartbeat(Tier.PREMIUM)))  # B's frame, first on A's connection
        err = b.decode(await ws.recv())
        assert err.authenticated and err.body.code == "unauthorized"
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
        assert closed.value.rcvd.code == 1008
    async with connect(url, compression=None, additional_headers={DEVICE_HEADER: a.device_id.hex()}) as ws:
        await ws.send(a.frame(Heartbeat(Tier.PREMIUM)))
        assert isinstance(a.decode(await ws.recv()).body, HeartbeatAck)


async def test_a_pinned_server_answers_a_websocket_without_the_header_with_one_error_frame(
    pinned: ServerProcess,
) -> None:
    dev = Device(307)
    url = f"ws://127.0.0.1:{pinned.port}/v1/ws"
    async with connect(url, compression=None) as ws:
        err = decode_frame(await ws.recv(), bytes(32)).body
        assert isinstance(err, ErrorReply) and err.code == "unauthorized" and "X-Omega-Device" in err.message
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
        assert closed.value.rcvd.code == 1008
    async with connect(url, compression=None, additional_headers={DEVICE_HEADER: dev.device_id.hex()}) as ws:
        await ws.send(dev.frame(Heartbeat(Tier.PREMIUM)))
        assert isinstance(dev.decode(await ws.recv()).body, HeartbeatAck)


# ------------------------------------------------------------------ N pinned workers, one port each


def _two_pinned_workers(tmp_path: Path, pg_database: str) -> ServerProcess:
    CODEBOOK.save(tmp_path / "codebook.npz")
    return ServerProcess(tmp_path, store=pg_database, codebook=tmp_path / "codebook.npz", OMEGA_WORKERS="2",
                         OMEGA_PINNED="1", OMEGA_K_MIN="3")  # fmt: skip


def test_pinned_workers_listen_on_a_port_each_and_share_the_store(tmp_path: Path, pg_database: str) -> None:
    server = _two_pinned_workers(tmp_path, pg_database)
    try:
        server.start()
        ports = [server.port, server.port + 1]
        assert f"(2 workers, pinned by device, ports {ports[0]}, {ports[1]})" in server.log_text()
        urls = [f"http://127.0.0.1:{p}" for p in ports]
        pids = [{httpx.get(u + "/v1/stats").json()["pid"] for _ in range(5)} for u in urls]
        assert all(len(p) == 1 for p in pids) and pids[0] != pids[1] and server.pid not in pids[0] | pids[1]
        # Pushes answered by either worker land in the one store.
        for n in range(3):
            tv = Device(390 + n)
            ack = tv.decode(_post(urls[n % 2], tv.push([pattern(near(CODEBOOK, 5, n))])[1], tv.device_id).content)
            assert isinstance(ack.body, PushAck) and ack.body.accepted == 1
        for url in urls:  # a worker that has not seen the head yet reads the store
            reader = Device(399)
            page = reader.decode(_post(url, reader.pull(0), reader.device_id).content).body
            assert isinstance(page, PullReply) and [(p.cluster_id, p.support) for p in page.patterns] == [(5, 3)]
        assert server.terminate(30) == 0
    finally:
        server.kill()


# ------------------------------------------------------------------ behind the shipped HAProxy config


def haproxy_config(ports: list[int], front: int, stats: int) -> str:
    """deploy/haproxy/haproxy-pinned.cfg with its worker addresses on this host's loopback ports."""
    cfg = (DEPLOY / "haproxy" / "haproxy-pinned.cfg").read_text()
    shipped = re.findall(r"server w(\d+) sync-worker:(\d+)", cfg)
    assert [int(i) for i, _ in shipped] == list(range(len(shipped))) and len(shipped) >= len(ports)
    for i, port in shipped[len(ports):]:  # slots this test has no worker for
        cfg = re.sub(rf"\n\s*server w{i} sync-worker:{port}[^\n]*", "", cfg)
    for (i, port), here in zip(shipped, ports):
        cfg = cfg.replace(f"server w{i} sync-worker:{port}", f"server w{i} 127.0.0.1:{here}")
    cfg = cfg.replace(" resolvers docker init-addr none", "")
    cfg = re.sub(r"\nresolvers docker\n(    [^\n]*\n)+", "\n", cfg)
    cfg = re.sub(r"\n    maxconn \d+\n", "\n    maxconn 1000\n", cfg, count=1)  # the global one: needs 2x fds
    cfg = cfg.replace("bind :8700", f"bind 127.0.0.1:{front}").replace("bind :8404", f"bind 127.0.0.1:{stats}")
    live = [line for line in cfg.splitlines() if not line.lstrip().startswith("#")]
    assert not any("sync-worker" in line or "bind :" in line or "resolvers" in line for line in live)
    return cfg


def _wait_port(port: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port}")


@pytest.mark.skipif(shutil.which("haproxy") is None,
                    reason="haproxy is not installed (scripts/services installs it with apt-get as root)")  # fmt: skip
async def test_haproxy_pins_a_device_to_one_worker_and_a_changed_header_gets_a_refusal(
    tmp_path: Path, pg_database: str
) -> None:
    server = _two_pinned_workers(tmp_path, pg_database)
    front, stats = free_port(), free_port()
    (tmp_path / "haproxy.cfg").write_text(haproxy_config([server.port, server.port + 1], front, stats))
    check = subprocess.run(["haproxy", "-c", "-f", str(tmp_path / "haproxy.cfg")], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    proxy = None
    try:
        server.start()
        with open(tmp_path / "haproxy.log", "wb") as log:
            proxy = subprocess.Popen(["haproxy", "-db", "-f", str(tmp_path / "haproxy.cfg")], stdout=log, stderr=log)
        _wait_port(front)
        url = f"http://127.0.0.1:{front}"

        def worker_of(device: bytes) -> int:  # a new connection each time
            with httpx.Client(headers={DEVICE_HEADER: device.hex()}) as client:
                return client.get(url + "/v1/stats").json()["pid"]

        devices = [Device(400 + n) for n in range(12)]
        home = {d.n: worker_of(d.device_id) for d in devices}
        assert len(set(home.values())) == 2  # the hash spreads devices over both workers ...
        assert all(worker_of(d.device_id) == home[d.n] for d in devices for _ in range(3))  # ... and keeps each

        # A frame captured from A, replayed with the header of a device on the other worker: refused there.
        a = devices[0]
        other = next(d for d in devices if home[d.n] != home[a.n])
        captured = a.push([pattern(near(CODEBOOK, 6, 1))])[1]
        ack = a.decode(_post(url, captured, a.device_id).content).body
        assert isinstance(ack, PushAck) and ack.accepted == 1
        steered = _post(url, captured, other.device_id)
        assert steered.status_code == 401 and a.decode(steered.content).body.code == "unauthorized"
        assert a.decode(_post(url, captured, a.device_id).content).body.code == "replay"  # its own worker: seen
        # Without the header HAProxy cannot pin, and the worker refuses.
        assert _unsigned_error(_post(url, a.frame(Heartbeat(Tier.CASUAL)), None)).code == "unauthorized"

        # A WebSocket upgrade is pinned by the same header.
        async with connect(f"ws://127.0.0.1:{front}/v1/ws", compression=None,
                           additional_headers={DEVICE_HEADER: a.device_id.hex()}) as ws:  # fmt: skip
            await ws.send(a.frame(Heartbeat(Tier.PREMIUM)))
            assert isinstance(a.decode(await ws.recv()).body, HeartbeatAck)
            await ws.send(captured)  # the captured push again, on its own device's connection: same worker
            assert a.decode(await ws.recv()).body.code == "replay"
    finally:
        if proxy is not None:
            proxy.terminate()
            proxy.wait(10)
        server.kill()
