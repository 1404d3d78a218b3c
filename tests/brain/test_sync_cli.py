"""`omega brain sync`: once (JSON summary), stored identity, exit codes, and the daemon stopping on SIGTERM."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from sync_support import NOW, pattern
from sync_peer import Peer, RunningPeer, token_for

from omega.brain.store import BrainStore
from omega.brain.sync.schedule import NEXT_KEY

OMEGA = str(Path(sys.executable).parent / "omega")


def omega(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([OMEGA, *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "tv.db"
    with BrainStore(path, clock=lambda: NOW) as s:
        for i in range(2):
            s.put_pattern(pattern(i))
        s.set_state(NEXT_KEY, "0")  # this window's contribution moment has passed: the first sync pushes
    return path


def test_sync_once_then_again_with_the_stored_identity(db: Path):
    device = uuid.uuid4()
    with RunningPeer(Peer()) as running:
        first = omega("brain", "--db", str(db), "sync", "--server", running.url, "--device-id", str(device),
                      "--token", token_for(device.bytes), "--tier", "casual", "--json")  # fmt: skip
        assert first.returncode == 0, first.stderr
        report = json.loads(first.stdout)
        assert report["pushed_patterns"] == 2 and report["tier"] == "casual" and report["outbox_pending"] == 0
        second = omega("brain", "--db", str(db), "sync", "--server", running.url)
        assert second.returncode == 0, second.stderr
        assert second.stdout.startswith("pushed 0 patterns")
        assert running.peer.kinds.count("heartbeat") == 2


def test_unreachable_server_exits_1_with_the_outbox_intact(db: Path):
    device = uuid.uuid4()
    out = omega("brain", "--db", str(db), "sync", "--server", "http://127.0.0.1:9", "--device-id", str(device),
                "--token", token_for(device.bytes), "--tier", "casual")  # fmt: skip
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr.count("\n") == 1 and "cannot reach" in out.stderr and "outbox kept: 1" in out.stderr
    with BrainStore(db) as s:
        assert s.stats()["sync_outbox"] == 1


@pytest.mark.parametrize(
    "args,message",
    [
        (["--server", "nope"], "server URL"),
        (["--server", "http://127.0.0.1:9", "--device-id", "xyz", "--token", "t"], "device id"),
        (["--server", "http://127.0.0.1:9", "--device-id", str(uuid.UUID(int=1)), "--token", "t"], "bad device token"),
        (["--server", "http://127.0.0.1:9", "--tier", "gold"], "tier"),
        (["--server", "http://127.0.0.1:9"], "no device identity"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(db: Path, args: list[str], message: str):
    out = omega("brain", "--db", str(db), "sync", *args)
    assert out.returncode == 2 and message in out.stderr and out.stderr.count("\n") == 1


def test_daemon_syncs_repeatedly_and_stops_on_sigterm(db: Path):
    device = uuid.uuid4()
    with RunningPeer(Peer()) as running:
        proc = subprocess.Popen(
            [OMEGA, "brain", "--db", str(db), "sync", "--server", running.url, "--device-id", str(device),
             "--token", token_for(device.bytes), "--tier", "active", "--daemon", "--interval", "0.1", "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 60
            while running.peer.kinds.count("heartbeat") < 3:
                assert proc.poll() is None, proc.stderr.read()
                assert time.monotonic() < deadline
                time.sleep(0.05)
        finally:
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        events = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
        assert len(events) >= 3 and events[0]["pushed_patterns"] == 2 and "stopped" in err
