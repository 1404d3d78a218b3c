"""The load generator behind `omega load`: many simulated TVs against one sync server, over loopback.

The parent process plans the run (tier mix, worker processes, source
addresses, ramp), starts the workers (`omega.sim.load.worker`, each asyncio +
uvloop), samples what they hold and what the server reports (/metrics
`omega_connections`, and its RSS from /proc when the server is our child),
then merges their measurements into one report.

Only loopback targets are accepted: this is a tool to measure a server on
this machine, never to load someone else's.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import random
import re
import secrets
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from omega.errors import OmegaError
from omega.progress import Notes, quiet
from omega.sim.load.client import KINDS
from omega.sim.load.config import LoadConfig, Plan, Target, plan_workers
from omega.sim.load.histogram import LatencyHistogram
from omega.sim.load.worker import (
    DEFAULT_INTERVAL_S,
    FINISH_GRACE_S,
    TIERS,
    WINDOW_S,
    WorkerStats,
    raise_nofile_limit,
    worker_main,
)

START_DELAY_S = 2.0  # workers import and start their loops meanwhile
SAMPLE_EVERY_S = 1.0
SERVER_SAMPLE_EVERY_S = 2.0
PROGRESS_EVERY_S = 5.0
HARD_CAP_EXTRA_S = 15.0


# ------------------------------------------------------------------ the server's side


_CONNECTIONS_LINE = re.compile(r"^omega_connections\{[^}]*\}\s+([0-9.eE+-]+)\s*$", re.M)
_OPEN_LINE = re.compile(r"^omega_connections_open\s+([0-9.eE+-]+)\s*$", re.M)


@dataclass(frozen=True)
class ServerCounts:
    """What the server's /metrics says it holds."""

    websockets: int | None  # `omega_connections`, summed over tiers
    #: `omega_connections_open`: every client connection, HTTP and WebSocket, this scrape's own excluded
    open: int | None


def server_counts(base_url: str) -> ServerCounts | None:
    """Connections the server says it holds; None if unreachable."""
    import httpx

    try:
        text = httpx.get(f"{base_url}/metrics", timeout=5.0).text
    except httpx.HTTPError:
        return None
    values = _CONNECTIONS_LINE.findall(text)
    open_ = _OPEN_LINE.search(text)
    return ServerCounts(int(round(sum(float(v) for v in values))) if values else None,
                        max(0, int(float(open_.group(1))) - 1) if open_ else None)  # fmt: skip


async def warm_up(target: Target, secret: bytes, key_id: int) -> None:
    """One WebSocket and one HTTP sync, so lazy imports in the server are not counted per connection.

    Also proves the secret: a refused token here is a configuration error, not load.
    """
    import httpx
    from websockets.asyncio.client import connect

    from omega.protocol import Tier
    from omega.sim.load.client import ReplyTally, SimDevice, pattern_pool

    rng = random.Random(1)
    dev = SimDevice(secret, pattern_pool(rng, 8), rng, key_id)
    tally = ReplyTally()
    host = f"[{target.host}]" if ":" in target.host else target.host
    try:
        header = dev.headers()  # as a TV names its device
        async with connect(f"ws://{host}:{target.port}/v1/ws", compression=None, open_timeout=10,
                           additional_headers=header) as ws:  # fmt: skip
            for _, body in dev.session(Tier.PREMIUM, push_probability=1.0):
                await ws.send(dev.frame(body))
                if not dev.absorb(bytes(await asyncio.wait_for(ws.recv(), 10)), tally):
                    break  # the server closes after refusing a device
        if not tally.errors:
            async with httpx.AsyncClient(timeout=10) as http:
                resp = await http.post(f"{target.base_url}/v1/sync", content=dev.frame(dev.pull()), headers=header)
                dev.absorb(resp.content, tally)
    except (OSError, TimeoutError, httpx.HTTPError) as exc:
        raise OmegaError(f"cannot reach the server at {target.base_url}: {exc}") from None
    except Exception as exc:  # websockets' handshake errors, a bad reply
        raise OmegaError(f"the server at {target.base_url} did not answer a sync: {exc}") from None
    if "reply_unauthorized" in tally.errors or "reply_bad_signature" in tally.errors:
        raise OmegaError("the server refused the load generator's device tokens: give it the server's secret "
                         "(--secret or OMEGA_SECRET) and key id (--key-id)")  # fmt: skip
    if tally.errors:
        raise OmegaError(f"the server answered the warm-up sync with errors: {tally.errors}")


@dataclass
class _Samples:
    """What the parent saw while the workers ran."""

    held_peak: int = 0
    held_at_end: int = 0
    held_peak_at_s: float | None = None
    server_peak: int | None = None
    server_at_end: int | None = None
    open_peak: int | None = None  # every connection the server holds (HTTP + WebSocket)
    open_at_end: int | None = None
    rss_before_kib: int | None = None
    rss_peak_kib: int | None = None
    server_cpu_start: float | None = None
    server_cpu_s: float | None = None  # over the run, warm-up excluded
    loadavg_start: float | None = None  # the machine's 1-minute load average (shared cores)
    loadavg_end: float | None = None
    rss_at_end_kib: int | None = None
    #: (connections the server held, HTTP + WebSocket; its RSS KiB) at the sample where it held the most
    memory_point: tuple[int, int] | None = None
    answered_at: list[tuple[float, int]] = field(default_factory=list)


# ------------------------------------------------------------------ the run


def run_load(config: LoadConfig, progress: Notes = quiet) -> dict:
    """Run `config` and return the report (one JSON object; see bench/README.md for the keys)."""
    nofile = raise_nofile_limit()  # before a server child starts: it inherits the limit
    if config.target is not None:
        return _run_against(config, config.target, None, nofile, progress)
    from omega.sim.load.server_process import proc_nofile_limit, start_server

    with tempfile.TemporaryDirectory(prefix="omega-load-") as tmp:
        store = config.store or f"sqlite:{Path(tmp) / 'constellation.db'}"
        progress(f"starting `omega serve` on {store.split('@')[-1]}")
        # The harness is one client by design: the per-address connection cap is the attacker's, not its.
        with start_server(Path(tmp), store, config.secret.decode("utf-8"), shard_id="load",
                          env={"OMEGA_MAX_CONNECTIONS_PER_IP": "0"}) as server:  # fmt: skip
            report = _run_against(config, Target("127.0.0.1", server.port), server, nofile, progress)
            report["server_nofile_limit"] = proc_nofile_limit(server.pid)
    return report


def _run_against(config: LoadConfig, target: Target, server, nofile: int, progress: Notes) -> dict:  # noqa: ANN001
    progress(f"warming up against {target.base_url}")
    asyncio.run(warm_up(target, config.secret, config.key_id))
    samples = _Samples()
    samples.loadavg_start = round(os.getloadavg()[0], 2)
    if server is not None:
        time.sleep(0.5)
        samples.rss_before_kib = server.rss_kib()
        samples.server_cpu_start = server.cpu_seconds()
    start_at = time.time() + START_DELAY_S
    plan = plan_workers(config, target, nofile, start_at)
    end_at = start_at + config.duration_s
    progress(f"{config.connections} TVs ({', '.join(f'{n} {t}' for t, n in config.devices.items())}) from "
             f"{len(plan.workers)} processes over {sum(len(w.source_addresses) for w in plan.workers) or 1} source "
             f"address(es); ramp {plan.ramp_s:.1f} s, run {config.duration_s:g} s, fd limit {nofile}")  # fmt: skip

    ctx = multiprocessing.get_context("spawn")  # a clean interpreter per worker: no inherited threads or loops
    held = ctx.Array("q", len(plan.workers), lock=False)
    answered = ctx.Array("q", len(plan.workers), lock=False)
    results = ctx.Queue()
    procs = [ctx.Process(target=worker_main, args=(spec, held, answered, results), daemon=True, name=f"omega-load-{spec.index}")
             for spec in plan.workers]  # fmt: skip
    for p in procs:
        p.start()
    stats: dict[int, WorkerStats] = {}
    try:
        _sample_until(end_at, start_at, config.connections, target, server, held, answered, samples, progress)
        hard_cap = end_at + FINISH_GRACE_S + HARD_CAP_EXTRA_S
        while len(stats) < len(procs) and time.time() < hard_cap:
            try:
                index, worker_stats = results.get(timeout=max(0.1, min(1.0, hard_cap - time.time())))
                stats[index] = worker_stats
            except Exception:  # queue.Empty: check that the workers are alive
                if not any(p.is_alive() for p in procs) and results.empty():
                    break
    finally:
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)
    samples.loadavg_end = round(os.getloadavg()[0], 2)
    if server is not None:
        samples.rss_at_end_kib = samples.rss_at_end_kib or server.rss_kib()
        if samples.server_cpu_start is not None and server.running:
            samples.server_cpu_s = round(server.cpu_seconds() - samples.server_cpu_start, 2)
    return _report(config, plan, target, nofile, stats, samples, server)


def _sample_until(end_at: float, start_at: float, target_n: int, target: Target, server, held, answered,  # noqa: ANN001
                  samples: _Samples, progress: Notes) -> None:  # fmt: skip
    next_server = next_progress = start_at
    while True:
        now = time.time()
        if now >= end_at - 0.25:  # the last look before the workers close their sockets
            break
        time.sleep(min(SAMPLE_EVERY_S, max(0.05, end_at - 0.25 - now)))
        now = time.time()
        total_held = sum(held)
        samples.answered_at.append((now, sum(answered)))
        if total_held > samples.held_peak:
            samples.held_peak, samples.held_peak_at_s = total_held, max(0.0, now - start_at)
        samples.held_at_end = total_held
        if now >= next_server or now >= end_at - 0.25 - SAMPLE_EVERY_S:
            next_server = now + SERVER_SAMPLE_EVERY_S
            counts = server_counts(target.base_url)
            rss = server.rss_kib() if server is not None else None
            if counts is not None and counts.websockets is not None:
                samples.server_at_end = counts.websockets
                samples.server_peak = max(counts.websockets, samples.server_peak or 0)
            if counts is not None and counts.open is not None:
                samples.open_at_end = counts.open
                samples.open_peak = max(counts.open, samples.open_peak or 0)
                if rss is not None and (samples.memory_point is None or counts.open >= samples.memory_point[0]):
                    samples.memory_point = (counts.open, rss)
            if rss is not None:
                samples.rss_at_end_kib = rss
                samples.rss_peak_kib = max(rss, samples.rss_peak_kib or 0)
        if now >= next_progress and now >= start_at:
            next_progress = now + PROGRESS_EVERY_S
            rss = f", server RSS {samples.rss_at_end_kib / 1024:.0f} MiB" if samples.rss_at_end_kib else ""
            progress(f"t={now - start_at:5.1f}s held {total_held}/{target_n} (server {samples.server_at_end}), "
                     f"{sum(answered)} frames answered{rss}")  # fmt: skip


def _rate(points: list[tuple[float, int]], since: float) -> float | None:
    """Frames per second between the first sample at/after `since` and the last sample."""
    after = [p for p in points if p[0] >= since]
    if len(after) < 2 or after[-1][0] <= after[0][0]:
        return None
    return (after[-1][1] - after[0][1]) / (after[-1][0] - after[0][0])


def _merged(hists: Iterable[LatencyHistogram]) -> LatencyHistogram:
    out = LatencyHistogram()
    for hist in hists:
        out.merge(hist)
    return out


def _round(x: float | None, digits: int = 2) -> float | None:
    return None if x is None else round(x, digits)


def _report(config: LoadConfig, plan: Plan, target: Target, nofile: int, stats: dict[int, WorkerStats],
            samples: _Samples, server) -> dict:  # noqa: ANN001  # fmt: skip
    total = WorkerStats()
    fatal = []
    for index in sorted(stats):
        total.merge(stats[index])
        if stats[index].fatal:
            fatal.append(f"worker {index}: {stats[index].fatal}")
    errors = dict(sorted(total.tally.errors.items()))
    missing = len(plan.workers) - len(stats)
    if missing:
        errors["worker_lost"] = missing
    if fatal:
        errors["worker_failed"] = len(fatal)
    hold_from = plan.workers[0].hold_from
    hold_s = max(0.0, plan.workers[0].end_at - hold_from)
    # the steady phase when there is one worth the name, else the whole run
    phase = "hold" if hold_s >= 1.0 and any(h.total for h in total.latency["hold"].values()) else "all"
    phases = ("hold",) if phase == "hold" else ("ramp", "hold")
    latency = {kind: _merged(total.latency[p][kind] for p in phases) for kind in KINDS}
    everything = _merged(latency.values())
    ramp_all = _merged(total.latency["ramp"].values())
    frames = sum(h.total for kinds in total.latency.values() for h in kinds.values())
    span = hold_s if phase == "hold" else config.duration_s
    syncs = latency["push"].total + latency["pull"].total
    tvs = sum(config.devices.values())
    # Each TV runs the seed's tier schedule sped up by time_scale (pushes too, so a pull sees as many
    # changes as at the seed's rates): hold_s seconds of the run are hold_s / time_scale seconds of it.
    pull_day = None
    if phase == "hold" and tvs and not config.heartbeat_only:
        pull_day = total.pull_bytes_hold / tvs * 86_400 * config.time_scale / hold_s
    memory = growth = None
    if samples.memory_point is not None and samples.rss_before_kib is not None and samples.memory_point[0] > 0:
        conns, rss = samples.memory_point
        growth = rss - samples.rss_before_kib
        memory = growth / conns
    report = {
        "url": target.base_url,
        "connections_target": config.connections,
        "devices": dict(config.devices),
        "connections_held": samples.held_peak,
        "connections_held_at_end": samples.held_at_end,
        "connections_held_server": samples.server_peak,
        "connections_held_server_at_end": samples.server_at_end,
        "ramp_s": round(plan.ramp_s, 1),
        "peak_reached_at_s": _round(samples.held_peak_at_s, 1),
        "syncs_per_s": round(syncs / span, 1) if span > 0 else None,
        "frames_per_s": round(everything.total / span, 1) if span > 0 else None,
        "frames_per_s_sampled": _round(_rate(samples.answered_at, hold_from), 1),
        "p50_ms": _round(everything.quantile_ms(0.5)),
        "p99_ms": _round(everything.quantile_ms(0.99)),
        "latency_phase": phase,
        "latency_ms": {k: _quantiles(h) for k, h in latency.items()},
        "latency_ms_by_tier": {t: {k: _quantiles(h) for k, h in kinds.items()} for t, kinds in total.by_tier.items()},
        "ramp_p99_ms": _round(ramp_all.quantile_ms(0.99)),
        "latency_windows": [{"from_s": w * WINDOW_S, **_quantiles(total.windows[w])} for w in sorted(total.windows)],
        "frames": frames,
        "sessions": total.sessions,
        "ws_connects": total.connects,
        "bytes_in": total.bytes_in,
        "bytes_out": total.bytes_out,
        "pull_bytes_per_tv_day": _round(pull_day, 0),
        "pull_reply_bytes_max": max(total.tally.pull_bytes, default=None),
        "patterns_accepted": total.tally.accepted,
        "items_rejected": total.tally.rejected,
        "errors": errors,
        "errors_total": sum(errors.values()),
        "duration_s": config.duration_s,
        "time_scale": config.time_scale,
        "traffic": "heartbeat" if config.heartbeat_only else "sync",
        "intervals_s": {t: DEFAULT_INTERVAL_S[t] * config.time_scale for t in TIERS},
        "client_processes": len(plan.workers),
        "source_addresses": sum(len(w.source_addresses) for w in plan.workers),
        "client_nofile_limit": min((s.nofile_limit for s in stats.values()), default=nofile),
        "client_rss_peak_mib": round(total.rss_peak_kib / 1024, 1),
        "server_pid": server.pid if server is not None else None,
        "server_rss_before_kib": samples.rss_before_kib,
        "server_rss_after_kib": samples.memory_point[1] if samples.memory_point and server is not None else None,
        "server_rss_peak_kib": samples.rss_peak_kib,
        "memory_per_connection_kib": _round(memory),
        # Full sync sessions add data as they run (accepted patterns in the store and aggregator, requests queued):
        # the RSS growth is then theirs and the connections', and memory_per_connection_kib only an upper bound.
        # What a connection alone costs: a --heartbeat-only run (no data), or bench/conn_memory.py.
        "memory_per_connection_includes_data": bool(memory is not None and total.tally.accepted > 0),
        "server_rss_growth_kib": growth,
        "connections_open_server": samples.open_peak,
        "connections_open_server_at_end": samples.open_at_end,
        "connections_open_at_memory_sample": samples.memory_point[0] if samples.memory_point else None,
        "server_cpu_s": samples.server_cpu_s,
        "client_cpu_s": round(total.cpu_s, 2),
        "client_loop_lag_ms": {q: _round(total.loop_lag.quantile_ms(x)) for q, x in (("p50", 0.5), ("p99", 0.99),
                                                                                   ("max", 1.0))},  # fmt: skip
        "loadavg_1m": [samples.loadavg_start, samples.loadavg_end],
    }
    if fatal:
        report["worker_failures"] = fatal
    return report


def _quantiles(h: LatencyHistogram) -> dict:
    return {"p50": _round(h.quantile_ms(0.5)), "p99": _round(h.quantile_ms(0.99)), "n": h.total}


def new_secret() -> bytes:
    """A random server secret for a spawned server (printable: it travels in OMEGA_SECRET)."""
    return secrets.token_hex(24).encode("ascii")
