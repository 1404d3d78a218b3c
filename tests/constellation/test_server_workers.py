"""`omega serve --workers N`: N processes on one port, sharing the store (PostgreSQL) and the replay window (Redis)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from omega.constellation.settings import load_settings
from omega.errors import OmegaError
from omega.protocol import (
    ErrorReply,
    Heartbeat,
    HeartbeatAck,
    PullReply,
    PushAck,
    TaskType,
    Tier,
)

from .server_support import (
    SECRET,
    Device,
    PrivateRedis,
    ServerProcess,
    near,
    pattern,
    small_codebook,
)

CODEBOOK = small_codebook()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"OMEGA_STORE": "postgresql://db/omega"}, "workers > 1 needs --redis"),
        ({"OMEGA_REDIS": "redis://127.0.0.1:6379/0"}, "workers > 1 needs a postgresql:// store"),
        ({"OMEGA_WORKERS": "0"}, "workers must be an integer in 1..64"),
        ({"OMEGA_WORKERS": "65"}, "workers must be an integer in 1..64"),
    ],
)
def test_more_workers_need_shared_state(env: dict[str, str], message: str) -> None:
    with pytest.raises(OmegaError, match=message):
        load_settings(env={"OMEGA_SECRET": SECRET, "OMEGA_WORKERS": "2", **env})


def test_the_refusal_is_one_line_and_exit_2(tmp_path: Path) -> None:
    env = {"OMEGA_SECRET": SECRET, "OMEGA_WORKERS": "2", "OMEGA_STORE": f"sqlite:{tmp_path / 'c.db'}", "PATH": ""}
    done = subprocess.run([sys.executable, "-m", "omega.constellation"], env=env, capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip
    assert done.returncode == 2
    line = ("omega: error: workers > 1 needs --redis (rate limit and replay window shared by every worker) or "
            "--pinned (a port per worker, devices pinned by a proxy)")
    assert done.stderr.strip().splitlines() == [line]


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")
def test_two_workers_share_the_port_the_store_and_the_replay_window(tmp_path: Path, pg_database: str) -> None:
    rds = PrivateRedis(tmp_path)
    rds.start()
    CODEBOOK.save(tmp_path / "codebook.npz")
    server = ServerProcess(tmp_path, store=pg_database, codebook=tmp_path / "codebook.npz", OMEGA_WORKERS="2",
                           OMEGA_REDIS=f"redis://127.0.0.1:{rds.port}/0", OMEGA_K_MIN="3")  # fmt: skip
    try:
        server.start()
        # The kernel spreads new connections over both workers (each a process of its own).
        pids = {httpx.get(server.url + "/v1/stats").json()["pid"] for _ in range(40)}
        assert len(pids) == 2 and server.pid not in pids

        # A captured frame is accepted once, whichever worker each new connection reaches.
        dev = Device(81)
        captured = dev.frame(Heartbeat(Tier.CASUAL))
        replies = [dev.decode(server.post(captured).content).body for _ in range(12)]
        assert sum(isinstance(r, HeartbeatAck) for r in replies) == 1
        assert all(r.code == "replay" for r in replies if isinstance(r, ErrorReply))

        # Pushes answered by either worker land in the one store: a pull through any worker sees all three.
        for n in range(3):
            tv = Device(90 + n)
            ack = tv.decode(server.post(tv.push([pattern(near(CODEBOOK, 5, n), task=TaskType.CONTENT_MATCH)])[1]).content)
            assert isinstance(ack.body, PushAck) and ack.body.accepted == 1
        reader = Device(99)
        for _ in range(4):
            page = reader.decode(server.post(reader.pull(0)).content).body
            assert isinstance(page, PullReply)
            assert [(p.cluster_id, p.support) for p in page.patterns] == [(5, 3)]
        assert server.terminate(30) == 0  # SIGTERM: every worker drains, the supervisor exits 0
    finally:
        server.kill()
        rds.kill()
