"""A sync server as a child process on a loopback port, for benchmarks, load runs and tests.

The child is the constellation's own entry point (`python -m omega.constellation`:
uvicorn + the constellation app, the same interpreter), configured only through
OMEGA_* variables, the settings `omega serve` reads; what it uses is read from
/proc (RSS, CPU seconds, fd limit). It inherits this process's RLIMIT_NOFILE, so
raise that first when the server must hold many connections.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from omega.errors import OmegaError

START_TIMEOUT_S = 60.0
#: the constellation's entry point; settings come from the environment
SERVER_COMMAND = (sys.executable, "-m", "omega.constellation")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the server binds it next)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """One sync server child on 127.0.0.1; `stop()` (or leaving the `with` block) ends it with SIGTERM (drain).

    The port is chosen once, so a restarted server keeps its URL; stderr is appended
    to folder/server.log. `env` holds OMEGA_* settings on top of the secret, store,
    host and port; the parent's own OMEGA_* variables are not passed on.
    """

    def __init__(
        self,
        folder: Path,
        *,
        secret: str,
        store: str | None = None,
        env: Mapping[str, str] | None = None,
        command: Sequence[str] = SERVER_COMMAND,
    ) -> None:
        self.folder = folder
        self.store = store or f"sqlite:{folder / 'constellation.db'}"
        self.port = free_port()
        self.env = {"OMEGA_SECRET": secret, **(env or {})}
        self.command = tuple(command)
        self.log = folder / "server.log"
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self._log_from = 0
        #: "https" once the child says it listens with TLS (OMEGA_TLS_CERT / --tls-cert)
        self.scheme = "http"

    @property
    def pid(self) -> int:
        return self._started().pid

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def spawn(self) -> None:
        """Start the child without waiting for it to listen (see `wait_ready`)."""
        if self.running:
            raise OmegaError(f"the server on port {self.port} is already running")
        env = {k: v for k, v in os.environ.items() if not k.startswith("OMEGA_")}
        env.setdefault("OPENBLAS_NUM_THREADS", "1")  # as the omega CLI sets it: see omega/cli/__init__.py
        env.update({"OMEGA_HOST": "127.0.0.1", "OMEGA_PORT": str(self.port), "OMEGA_STORE": self.store, **self.env})
        self._log_from = self.log.stat().st_size if self.log.exists() else 0
        with open(self.log, "ab") as fh:
            self.proc = subprocess.Popen(self.command, stdout=subprocess.DEVNULL, stderr=fh, env=env)
        self.starts += 1

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> ServerProcess:
        """Return once the child says it listens; one OmegaError (with the log's tail) if it exits or stalls."""
        proc = self._started()
        ready = {scheme: f"listening on {scheme}://127.0.0.1:{self.port}".encode() for scheme in ("http", "https")}
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            log = self._new_log()
            for scheme, line in ready.items():
                if line in log:
                    self.scheme = scheme
                    return self
            if proc.poll() is not None:
                raise OmegaError(f"the server exited ({proc.returncode}): {self.log_text()[-500:]}")
            time.sleep(0.05)
        self.kill()
        raise OmegaError(f"the server did not start within {timeout_s:g} s")

    def start(self, timeout_s: float = START_TIMEOUT_S) -> ServerProcess:
        self.spawn()
        return self.wait_ready(timeout_s)

    def signal(self, sig: int) -> None:
        if not self.running:
            raise OmegaError("the server is not running")
        os.kill(self.pid, sig)

    def terminate(self, timeout_s: float = 30.0) -> int:
        """SIGTERM (the server drains first), then wait; its exit code (subprocess.TimeoutExpired if it hangs)."""
        proc = self._started()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        return proc.wait(timeout_s)

    def kill(self) -> None:
        """SIGKILL, no drain (what a crash looks like)."""
        if self.running:
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait(10)

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM, and SIGKILL if it has not exited within `timeout_s`."""
        if not self.running:
            return
        try:
            self.terminate(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def rss_kib(self) -> int | None:
        """RSS of the server: the process and its workers (`omega serve --workers N`)."""
        sizes = [proc_rss_kib(pid) for pid in proc_tree(self.pid)]
        return sum(s for s in sizes if s is not None) if sizes and sizes[0] is not None else None

    def cpu_seconds(self) -> float:
        """CPU seconds of the server so far: the process and its workers."""
        return sum(proc_cpu_seconds(pid) for pid in proc_tree(self.pid))

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _started(self) -> subprocess.Popen:
        if self.proc is None:
            raise OmegaError("the server was never started")
        return self.proc

    def _new_log(self) -> bytes:
        """What the child wrote to the log since its last start."""
        try:
            with open(self.log, "rb") as fh:
                fh.seek(self._log_from)
                return fh.read()
        except OSError:
            return b""


def start_server(
    folder: Path,
    store: str,
    secret: str,
    *,
    redis: str | None = None,
    env: dict[str, str] | None = None,
    shard_id: str = "bench",
) -> ServerProcess:
    """Start a server on a free port logging warnings to folder/server.log; return once it listens.

    env: extra OMEGA_* settings for the server (e.g. relaxed rate limits).
    """
    settings = {"OMEGA_LOG_LEVEL": "warning", "OMEGA_SHARD_ID": shard_id, **({"OMEGA_REDIS": redis} if redis else {})}
    return ServerProcess(folder, secret=secret, store=store, env={**settings, **(env or {})}).start()


def proc_tree(pid: int) -> list[int]:
    """`pid` and its live descendants (from /proc/PID/task/TID/children)."""
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        try:
            for task in Path(f"/proc/{current}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return out


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
