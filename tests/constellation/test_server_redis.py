"""Redis as the pull cache: used when up, survives a SIGKILLed Redis (fallback counted), used again after restart."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from omega.protocol import ErrorReply, Heartbeat, HeartbeatAck, PullReply, TaskType, Tier

from .server_support import Device, PrivateRedis, ServerProcess, near, pattern, small_codebook

CODEBOOK = small_codebook()
pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[ServerProcess, PrivateRedis]]:
    rds = PrivateRedis(tmp_path)
    rds.start()
    CODEBOOK.save(tmp_path / "codebook.npz")
    server = ServerProcess(tmp_path, codebook=tmp_path / "codebook.npz", OMEGA_REDIS=f"redis://127.0.0.1:{rds.port}/0",
                           OMEGA_REDIS_COOLDOWN_S="0.3", OMEGA_RATE_BURST="1000").start()  # fmt: skip
    yield server, rds
    server.kill()
    rds.kill()


def _pull(server: ServerProcess, client: httpx.Client, dev: Device, since: int = 0) -> PullReply:
    resp = server.post(dev.pull(since), client)
    assert resp.status_code == 200
    reply = dev.decode(resp.content).body
    assert isinstance(reply, PullReply)
    return reply


def test_redis_cache_with_fallback_and_recovery(setup: tuple[ServerProcess, PrivateRedis]) -> None:
    server, rds = setup
    reader = Device(200)
    with httpx.Client(timeout=10) as client:
        for n in range(3):
            dev = Device(201 + n)
            assert dev.decode(server.post(dev.push([pattern(near(CODEBOOK, 2, n), task=TaskType.CONTENT_MATCH)])[1], client).content).body.accepted == 1
        first = _pull(server, client, reader)
        assert [p.cluster_id for p in first.patterns] == [2]
        assert rds.page_keys(), "the page was cached in Redis"
        assert server.stats()["distinct_devices_hour"] == 4  # HyperLogLog in Redis
        assert server.metric("omega_cache_fallbacks_total") == 0

        rds.kill()
        for _ in range(3):  # keeps answering, from the database and the in-process cache
            again = _pull(server, client, reader)
            assert [(p.cluster_id, p.support) for p in again.patterns] == [(2, 3)]
        assert server.metric("omega_cache_fallbacks_total") > 0

        rds.start()  # same port, empty
        time.sleep(0.5)  # past the cool-down
        deadline = time.monotonic() + 10
        while not rds.page_keys() and time.monotonic() < deadline:
            _pull(server, client, reader)
            time.sleep(0.1)
        assert rds.page_keys(), "Redis is used again after it came back"
    assert "redis unavailable" in server.log.read_text() and "redis is back" in server.log.read_text()


def test_replay_and_rate_state_are_shared_by_workers_and_survive_a_restart(tmp_path: Path) -> None:
    rds = PrivateRedis(tmp_path)
    rds.start()
    # Two workers of one shard (same shard id; separate sqlite files keep the test small) and one Redis.
    env = {"OMEGA_REDIS": f"redis://127.0.0.1:{rds.port}/0", "OMEGA_RATE_BURST": "4", "OMEGA_RATE_PER_S": "0.01"}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = ServerProcess(tmp_path / "a", **env).start()
    b = ServerProcess(tmp_path / "b", **env).start()
    try:
        dev = Device(71)
        captured = dev.frame(Heartbeat(Tier.CASUAL))
        assert isinstance(dev.decode(a.post(captured).content).body, HeartbeatAck)
        for worker in (b, a):  # the other worker, and the same one, refuse the captured frame
            err = dev.decode(worker.post(captured).content).body
            assert isinstance(err, ErrorReply) and err.code == "replay"
        a.kill()
        a.start()  # a restarted worker remembers it too
        err = dev.decode(a.post(captured).content).body
        assert isinstance(err, ErrorReply) and err.code == "replay"
        # One token bucket per device across workers (burst 4): the fifth frame, whichever worker, waits.
        other = Device(72)
        codes = []
        for worker in (a, b, a, b, a):
            body = other.decode(worker.post(other.frame(Heartbeat(Tier.CASUAL))).content).body
            codes.append(body.code if isinstance(body, ErrorReply) else "ok")
        assert codes == ["ok", "ok", "ok", "ok", "rate_limited"]
    finally:
        a.kill()
        b.kill()
        rds.kill()
