"""`omega serve` as a child process on a free loopback port, for benchmarks and load runs.

The child is a real server (uvicorn + the constellation app), started with the
same interpreter; what it uses is read from /proc (RSS, CPU seconds, fd limit).
It inherits this process's RLIMIT_NOFILE, so raise that first when the server
must hold many connections.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from omega.errors import OmegaError

START_TIMEOUT_S = 60.0


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the server binds it next)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """A running `omega serve`; `stop()` (or leaving the `with` block) ends it with SIGTERM (drain)."""

    def __init__(self, proc: subprocess.Popen, port: int, log: Path) -> None:
        self.proc = proc
        self.port = port
        self.log = log

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def rss_kib(self) -> int | None:
        return proc_rss_kib(self.pid)

    def cpu_seconds(self) -> float:
        return proc_cpu_seconds(self.pid)

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_server(
    folder: Path,
    store: str,
    secret: str,
    *,
    redis: str | None = None,
    env: dict[str, str] | None = None,
    shard_id: str = "bench",
) -> ServerProcess:
    """Start `omega serve --port <free>` logging to folder/server.log; return once it listens.

    env: extra OMEGA_* settings for the server (e.g. relaxed rate limits).
    """
    port = free_port()
    log = folder / "server.log"
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("OMEGA_")}
    child_env.update({"OMEGA_SECRET": secret, "OMEGA_LOG_LEVEL": "warning", **(env or {})})
    args = [sys.executable, "-c", "from omega.cli import run; run()", "serve", "--port", str(port), "--store", store,
            "--shard-id", shard_id]  # fmt: skip
    if redis:
        args += ["--redis", redis]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=fh, env=child_env)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise OmegaError(f"the server exited ({proc.returncode}): {log.read_text()[-500:]}")
        if f"listening on http://127.0.0.1:{port}" in log.read_text():
            return ServerProcess(proc, port, log)
        time.sleep(0.05)
    proc.kill()
    raise OmegaError(f"the server did not start within {START_TIMEOUT_S:g} s")


def proc_rss_kib(pid: int) -> int | None:
    """Resident set size of process `pid` in KiB (None if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far (NaN if unreadable)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def proc_nofile_limit(pid: int) -> int | None:
    """The soft RLIMIT_NOFILE of process `pid` (None if unreadable or unlimited)."""
    try:
        for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                soft = line.split()[3]
                return int(soft) if soft.isdigit() else None
    except (OSError, IndexError):
        pass
    return None
