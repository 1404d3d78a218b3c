"""A grown store for the sync benchmarks (`omega bench sync --prefill N`, `bench/push_path.py --prefill N`).

A worker in production runs on a store that has taken millions of pushes, and the SQLite writer's cost per push
grows with its B-trees (issue 15). A bench that starts from an empty file measures a writer no worker has. This
fills the store the server will open with N pushes from N distinct simulated TVs (the bench's own traffic: 1-3
patterns and ~10 item transitions each) through the real push path: the store, writer thread and aggregator
opened as `omega serve` opens them (`lifespan.run_shard`) and `SyncService.handle` on signed frames, 64 in flight
so the writer group-commits as under the bench's clients. No transport: the measured window comes after it.
"""

from __future__ import annotations

import asyncio
import os
import random
import sqlite3
import time

from omega.constellation.keyring import Keyring
from omega.constellation.lifespan import run_shard
from omega.constellation.metrics import ServerMetrics
from omega.constellation.server_state import ServerState
from omega.constellation.settings import ServerSettings
from omega.constellation.store import sqlite_path
from omega.errors import OmegaError
from omega.progress import Notes, quiet
from omega.sim.load.client import SimDevice, pattern_pool

#: pushes answered together, as the bench's 64 clients keep the writer's groups full
IN_FLIGHT = 64
MAX_PREFILL = 10_000_000


def check_prefill(settings: ServerSettings, pushes: int) -> None:
    """Refuse what `prefill` cannot do, with one line: a count out of range, or a store that is not a SQLite file."""
    if not 0 <= pushes <= MAX_PREFILL:
        raise OmegaError(f"--prefill must be in 0..{MAX_PREFILL}, got {pushes}")
    if pushes and (not settings.store.startswith("sqlite:") or sqlite_path(settings.store) == ":memory:"):
        raise OmegaError("--prefill needs a SQLite file store (the default): the figures it reports are the file's")


async def prefill(settings: ServerSettings, pushes: int, progress: Notes = quiet) -> dict:
    """Push `pushes` frames from as many distinct devices into `settings.store`, then close it; what it holds.

    Every push must be answered with an ack: anything else (a rejection, an error reply) stops the fill with an
    OmegaError, so a bench never measures a store that silently took less than it says.
    """
    check_prefill(settings, pushes)
    if pushes:
        secret = settings.secrets[settings.active_key_id]
        state = ServerState(settings, ServerMetrics(), Keyring(settings.secrets, settings.active_key_id),
                            salt=settings.aggregation_salt(), periodic=False)  # fmt: skip
        started = time.perf_counter()
        async with run_shard(state):
            service = state.service
            assert service is not None  # run_shard sets it before it yields
            pool = pattern_pool(random.Random(7))
            step = max(IN_FLIGHT, pushes // 10 // IN_FLIGHT * IN_FLIGHT)
            for start in range(0, pushes, IN_FLIGHT):
                # str seeds: other ids than the bench's clients (random.Random(i)), and than any other fill's index
                devices = [SimDevice(secret, pool, random.Random(f"prefill-{i}"))
                           for i in range(start, min(pushes, start + IN_FLIGHT))]  # fmt: skip
                replies = await asyncio.gather(*(service.handle(d.frame(d.push())) for d in devices))
                for reply in replies:
                    if reply.code is not None or reply.kind != "push":
                        raise OmegaError(f"prefill: push {start} answered {reply.code or reply.kind}, not an ack")
                done = start + len(devices)
                if done % step == 0 or done == pushes:
                    progress(f"prefill: {done:,} of {pushes:,} pushes ({time.perf_counter() - started:.0f} s)")
    return store_facts(settings.store, pushes)


def store_facts(store: str, pushes_before: int) -> dict:
    """What a (closed) SQLite store file holds: the pushes put in before, rows per table, bytes on disk."""
    path = sqlite_path(store)
    if not os.path.exists(path):  # nothing pushed yet: the server creates it
        return {"store_pushes_before": pushes_before, "store_rows": {}, "store_file_bytes": 0}
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        rows = {t: conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables}
    conn.close()
    size = sum(os.path.getsize(p) for p in (path, path + "-wal") if os.path.exists(p))
    return {"store_pushes_before": pushes_before, "store_rows": rows, "store_file_bytes": size}
