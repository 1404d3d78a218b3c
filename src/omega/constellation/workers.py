"""`omega serve --workers N`: N worker processes on one port (SO_REUSEPORT) under one supervisor.

Each worker is the whole server `runner.serve` runs (its own event loop, store
connections, caches) on a listening socket of its own, bound with SO_REUSEPORT
to the same address: the kernel spreads new connections over the workers. What
every worker must see alike lives outside them — the store (PostgreSQL), the
rate limit, replay window, pull cache and head (Redis) — so settings refuse
workers > 1 without both. Federation (--nats) runs in worker 0 only: it exports
the shared store once.

With `pinned` (no Redis needed) worker i listens on port + i instead (each port
its own; with port 0 each picks a free one), and a proxy in front pins every
device to one worker by its X-Omega-Device header (deploy/haproxy/haproxy-pinned.cfg):
the kernel cannot hash a header, so a shared port would hand a device's
connections to any worker. Each worker then keeps the rate limit and replay
window of its own devices in process; the store is still shared.

The supervisor prints `listening on …` once every worker listens. SIGTERM or
SIGINT becomes one SIGTERM per worker (each drains as a single server does); a
second one kills them. A worker that exits on its own stops the others, and the
supervisor fails with one line. Workers are in their own process group (a
terminal's Ctrl-C reaches the supervisor only) and stop if the supervisor dies.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import queue
import signal
import socket
import sys
import threading
import time
from types import FrameType

from omega.constellation.settings import ServerSettings
from omega.errors import OmegaError

log = logging.getLogger("omega.serve")

START_TIMEOUT_S = 120.0
_POLL_S = 0.2


def reuse_port_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to (host, port) with SO_REUSEPORT (not yet listening); OmegaError if it cannot bind."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OmegaError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def serve_workers(settings: ServerSettings) -> None:
    """Run `settings.workers` workers on settings.host:port until SIGTERM/SIGINT (see the module docstring)."""
    from omega.constellation.guard import raise_fd_limit
    from omega.constellation.runner import check_tls_files

    check_tls_files(settings)
    raise_fd_limit()  # inherited by the workers
    # Bound (never listening: they get no connections) until every worker listens: they fix the ports
    # (0 picks a free one) and keep another program from taking them meanwhile.
    probes: list[socket.socket] = []
    try:
        for index in range(settings.workers if settings.pinned else 1):
            probes.append(reuse_port_socket(settings.host, settings.port + index if settings.port else 0))
    except OmegaError:
        for probe in probes:
            probe.close()
        raise
    ports = [int(probe.getsockname()[1]) for probe in probes]
    ports += ports[-1:] * (settings.workers - len(ports))  # one shared port unless pinned
    settings = dataclasses.replace(settings, port=ports[0])
    ctx = multiprocessing.get_context("spawn")
    ready: multiprocessing.Queue[int] = ctx.Queue()
    procs = []
    for index in range(settings.workers):
        own = dataclasses.replace(settings, port=ports[index], **({} if index == 0 else {"nats": None}))
        proc = ctx.Process(target=_worker, args=(own, index, os.getpid(), ready), name=f"omega-worker-{index}")
        proc.start()
        procs.append(proc)
    signals = {"count": 0}

    def on_signal(sig: int, frame: FrameType | None) -> None:
        signals["count"] += 1
        for proc in procs:
            if proc.is_alive() and proc.pid is not None:
                os.kill(proc.pid, signal.SIGTERM if signals["count"] == 1 else signal.SIGKILL)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        try:
            _wait_ready(procs, ready, signals)
        finally:
            for probe in probes:
                probe.close()
        if not signals["count"]:
            layout = f"pinned by device, ports {', '.join(map(str, ports))}" if settings.pinned else "one port"
            print(f"listening on {settings.scheme}://{settings.host}:{settings.port} ({settings.workers} workers, "
                  f"{layout})", file=sys.stderr, flush=True)  # fmt: skip
        failed = _supervise(procs, signals)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if failed is not None:
        raise OmegaError(failed)


def _wait_ready(procs: list, ready: multiprocessing.Queue, signals: dict[str, int]) -> None:
    waiting = set(range(len(procs)))
    deadline = time.monotonic() + START_TIMEOUT_S
    while waiting and not signals["count"]:
        try:
            waiting.discard(ready.get(timeout=_POLL_S))
            continue
        except queue.Empty:
            pass
        dead = [p for p in procs if p.exitcode is not None]
        if dead or time.monotonic() > deadline:
            _stop(procs)
            if dead:
                raise OmegaError(f"{dead[0].name} exited ({dead[0].exitcode}) before listening (see the log above)")
            raise OmegaError(f"the workers did not all listen within {START_TIMEOUT_S:g} s")


def _supervise(procs: list, signals: dict[str, int]) -> str | None:
    """Wait for every worker to end; why it failed (a worker that ended on its own), else None."""
    failed = None
    while any(p.is_alive() for p in procs):
        for p in procs:
            p.join(_POLL_S / len(procs))
            if p.exitcode is not None and not signals["count"] and failed is None:
                failed = f"{p.name} exited ({p.exitcode}); the other workers were stopped"
                _stop(procs)
    return failed


def _stop(procs: list, timeout_s: float = 15.0) -> None:
    """SIGTERM to every live worker (they drain), SIGKILL to any still alive after `timeout_s`."""
    for p in procs:
        if p.is_alive() and p.pid is not None:
            os.kill(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join(5)


def _worker(settings: ServerSettings, index: int, supervisor: int, ready: multiprocessing.Queue) -> None:
    """One worker: the server of `runner.serve` on its own SO_REUSEPORT socket."""
    os.setpgid(0, 0)
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as in __main__ (numpy is not loaded yet in a spawned child)
    logging.basicConfig(level=settings.log_level.upper(), stream=sys.stderr, format=f"omega serve[{index}]: %(message)s")
    threading.Thread(target=_orphan_watch, args=(supervisor,), name="omega-orphan-watch", daemon=True).start()
    from omega.constellation.app import create_app
    from omega.constellation.runner import DrainingServer, uvicorn_config

    try:
        sock = reuse_port_socket(settings.host, settings.port)
        app = create_app(settings)
        server = DrainingServer(uvicorn_config(settings, app), on_ready=lambda _: ready.put(index))
    except OmegaError as exc:
        print(f"omega: error: worker {index}: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)
    try:
        server.run(sockets=[sock])
    except SystemExit:
        if server.started:
            raise
    if not server.started:
        error = app.state.omega.startup_error
        print(f"omega: error: worker {index}: {error or 'did not start (see the log above)'}", file=sys.stderr, flush=True)
        sys.exit(2)


def _orphan_watch(supervisor: int) -> None:
    """Drain and exit once the supervisor is gone (killed): a worker never outlives it."""
    while os.getppid() == supervisor:
        time.sleep(1.0)
    os.kill(os.getpid(), signal.SIGTERM)
