"""The push half of the sync server in one process: `SyncService.handle` on signed push frames (issue 15).

The real service, store (SQLite file, its writer thread) and aggregator, as `omega serve` opens them
(`lifespan.run_shard`, no transport): pre-encoded push frames of `omega bench sync`'s simulated TVs
(1-3 patterns and ~10 item transitions each), 64 in flight at a time, so the writer group-commits as
under the bench's 64 clients. Reports pushes per CPU-second of this process (all its threads) and each
thread's CPU: no HTTP, no clients, so what the push path itself costs, measured without the noise of
a shared host's scheduling. A/B: run it on two trees, interleaved, e.g.

    .venv/bin/python bench/push_path.py --pushes 4000
    PYTHONPATH=/tmp/old/src .venv/bin/python bench/push_path.py --pushes 4000   # git archive main src

--prefill N grows the store first (`omega.sim.bench.prefill`, as `omega bench sync --prefill`): N pushes from N other
devices through the same path, the store closed and reopened, so the measured window sees a writer on a grown store
as a worker in production has (its cost per push grows with the B-trees), not an empty file. --copy-of FILE starts
from a copy of a store file grown so once (this script's secret, no shard id; e.g. `omega.sim.bench.prefill` on a
path), so A/B rounds on a grown store do not each spend a minute growing it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as `omega serve` runs (omega/cli/__init__.py), before numpy loads
import random
import sys
import tempfile
import time

from omega.constellation import runner
from omega.constellation.keyring import Keyring
from omega.constellation.lifespan import run_shard
from omega.constellation.metrics import ServerMetrics
from omega.constellation.server_state import ServerState
from omega.constellation.settings import ServerSettings
from omega.sim.load.client import SimDevice, pattern_pool

SECRET = b"push-path-bench-secret-0123456789"
IN_FLIGHT = 64
WARM_UP = 256


def _io() -> dict[str, int]:
    """This process's I/O counters so far (/proc/self/io): bytes handed to write calls (`wchar`: the WAL's
    frames, as the store writes nothing else) and write calls (`syscw`)."""
    with open("/proc/self/io") as fh:
        return {k: int(v) for k, v in (line.split(": ") for line in fh)}


def _thread_cpu_s() -> dict[int, float]:
    """CPU seconds (user + system) of each thread of this process so far."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        out[int(tid)] = (int(fields[11]) + int(fields[12])) / tick
    return out


async def run(pushes: int, prefill: int = 0, copy_of: str | None = None) -> dict:
    with tempfile.TemporaryDirectory(prefix="omega-push-path-") as tmp:
        settings = ServerSettings(store=f"sqlite:{tmp}/constellation.db", secrets={1: SECRET},
                                  rate_per_s=1e6, rate_burst=10**6)  # fmt: skip
        facts: dict = {"store_pushes_before": 0}
        if copy_of:
            import shutil

            from omega.sim.bench.prefill import store_facts

            shutil.copyfile(copy_of, f"{tmp}/constellation.db")  # a closed store: its WAL was checkpointed
            facts = {**store_facts(settings.store, -1), "copy_of": copy_of}  # -1: not known from the file
        if prefill:
            from omega.sim.bench.prefill import prefill as grow  # older trees have none: run them without --prefill

            facts = await grow(settings, prefill, lambda line: print(line, file=sys.stderr, flush=True))
        state = ServerState(settings, ServerMetrics(), Keyring(settings.secrets, 1),
                            salt=settings.aggregation_salt(), periodic=False)  # fmt: skip
        async with run_shard(state):
            tune_gc = getattr(runner, "tune_gc", None)  # what `omega serve` does once started (older trees: nothing)
            if tune_gc is not None:
                tune_gc()
            service = state.service
            assert service is not None
            pool = pattern_pool(random.Random(7))
            devices = [SimDevice(SECRET, pool, random.Random(i)) for i in range(IN_FLIGHT)]
            frames = [devices[k % IN_FLIGHT].frame(devices[k % IN_FLIGHT].push()) for k in range(WARM_UP + pushes)]
            kinds: dict[str, int] = {}

            async def answer(chunk: list[bytes], count: bool) -> None:
                for reply in await asyncio.gather(*(service.handle(f) for f in chunk)):
                    if count:
                        kinds[reply.code or reply.kind] = kinds.get(reply.code or reply.kind, 0) + 1

            for start in range(0, WARM_UP, IN_FLIGHT):
                await answer(frames[start : start + IN_FLIGHT], False)
            threads0, io0, cpu0, wall0 = _thread_cpu_s(), _io(), time.process_time(), time.perf_counter()
            for start in range(WARM_UP, len(frames), IN_FLIGHT):
                await answer(frames[start : start + IN_FLIGHT], True)
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
            threads, io = _thread_cpu_s(), _io()
            writer = service.aggregator.store._writer  # type: ignore[attr-defined]  # noqa: SLF001
            tid = writer._threads[0].native_id  # noqa: SLF001 - the writer's one thread
            writer_cpu = threads[tid] - threads0.get(tid, 0.0)
            main = os.getpid()  # the event loop's thread
            per_thread = sorted((round(threads[t] - threads0.get(t, 0.0), 2) for t in threads if t != main),
                                reverse=True)  # fmt: skip
            return {
                **facts,
                "pushes": pushes,
                "replies": kinds,
                "cpu_s": round(cpu, 2),
                "wall_s": round(wall, 2),
                "pushes_per_cpu_s": round(pushes / cpu, 1),
                "main_thread_cpu_s": round(threads[main] - threads0[main], 2),
                "other_threads_cpu_s": per_thread[:3],  # the busiest first: the store's writer
                "writer_thread_cpu_s": round(writer_cpu, 2),
                "writer_cpu_us_per_push": round(writer_cpu / pushes * 1e6, 1),
                "written_bytes_per_push": round((io["wchar"] - io0["wchar"]) / pushes),
                "write_calls_per_push": round((io["syscw"] - io0["syscw"]) / pushes, 1),
                "groups_committed": writer.groups,
                # PASSIVE checkpoints on the checkpointer's thread (older trees: none, the writer checkpoints)
                "wal_checkpoints_off_writer": getattr(getattr(writer, "checkpointer", None), "checkpoints", None),
                "pushes_committed": writer.grouped,
                # Pushes whose patterns were prepared together (Aggregator._cells), on average.
                "cell_batches": getattr(service.aggregator, "cell_batches", None),
            }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pushes", type=int, default=4000, help="measured pushes (after %d warm-up)" % WARM_UP)
    parser.add_argument("--prefill", type=int, default=0, help="pushes from as many other devices put in first")
    parser.add_argument("--copy-of", help="start from a copy of this (closed) store file instead of an empty one")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.pushes, args.prefill, args.copy_of))))


if __name__ == "__main__":
    main()
