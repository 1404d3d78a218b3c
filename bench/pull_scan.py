"""What a delta pull's store read costs on a store filled the way the 10k-TV load run fills it (issue 15).

The real service, aggregator and SQLite store as `omega serve` opens them (`lifespan.run_shard`, no
transport, shipped settings but the rate limit): `--pushes` signed push frames of `omega load`'s simulated
TVs (1-3 patterns from a pool of 256 and ~10 random item transitions each, `--devices` TVs), 64 in
flight, so the store holds what the 10k run's does: many served keys that one or two TVs named and that
never reached k_min, a few hundred published ones. Then the pull's store read (`Aggregator.changes_since`,
what `SyncService` calls on a page-cache miss, at the shipped page budget) from cursor 0, from the middle
of the change log and from a cursor 50 changes behind the head, `--reads` times each; reported: the
median and p90 milliseconds per page, items per page, and the served rows in the page's seq range (what
a scan of every served key reads) beside the published ones among them (what an index of published keys
reads); a whole catch-up from 0; on trees with that index, what rebuilding it for another k_min takes.
A/B: run it on two trees, interleaved, e.g.

    .venv/bin/python bench/pull_scan.py --pushes 10000
    PYTHONPATH=/tmp/old/src .venv/bin/python bench/pull_scan.py --pushes 10000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as `omega serve` runs (omega/cli/__init__.py), before numpy loads
import random
import sqlite3
import statistics
import tempfile
import time

from omega.constellation.keyring import Keyring
from omega.constellation.lifespan import run_shard
from omega.constellation.metrics import ServerMetrics
from omega.constellation.server_state import ServerState
from omega.constellation.settings import ServerSettings
from omega.protocol import DEFAULT_PULL_BYTES
from omega.sim.load.client import SimDevice, pattern_pool

SECRET = b"pull-scan-bench-secret-0123456789"
IN_FLIGHT = 64


async def _rows(store: str, lo: int, hi: int, k_min: int) -> tuple[int, int]:
    """(served rows, rows whose key ever reached k_min) with lo < seq <= hi, read on a side connection."""
    if store.startswith("sqlite:"):
        with sqlite3.connect(f"file:{store.removeprefix('sqlite:')}?mode=ro", uri=True) as conn:
            sql = "SELECT count(*), coalesce(sum(peak >= ?), 0) FROM served WHERE seq > ? AND seq <= ?"
            n, published = conn.execute(sql, (k_min, lo, hi)).fetchone()
        return int(n), int(published)
    import asyncpg

    conn = await asyncpg.connect(store)
    try:
        sql = "SELECT count(*), count(*) FILTER (WHERE peak >= $1) FROM omega_served WHERE seq > $2 AND seq <= $3"
        n, published = await conn.fetchrow(sql, k_min, lo, hi)
    finally:
        await conn.close()
    return int(n), int(published)


async def run(pushes: int, devices: int, reads: int, seed: int, store: str | None = None) -> dict:
    with tempfile.TemporaryDirectory(prefix="omega-pull-scan-") as tmp:
        store = store or f"sqlite:{tmp}/constellation.db"
        settings = ServerSettings(store=store, secrets={1: SECRET}, rate_per_s=1e6, rate_burst=10**6)
        state = ServerState(settings, ServerMetrics(), Keyring(settings.secrets, 1),
                            salt=settings.aggregation_salt(), periodic=False)  # fmt: skip
        async with run_shard(state):
            service = state.service
            assert service is not None
            rng = random.Random(seed)
            pool = pattern_pool(rng)
            tvs = [SimDevice(SECRET, pool, random.Random(rng.randrange(1 << 30))) for _ in range(devices)]
            started = time.perf_counter()
            for start in range(0, pushes, IN_FLIGHT):
                chunk = [tvs[k % devices] for k in range(start, min(pushes, start + IN_FLIGHT))]
                await asyncio.gather(*(service.handle(tv.frame(tv.push())) for tv in chunk))
            fill_s = time.perf_counter() - started
            agg = service.aggregator
            stats = await agg.store.stats()
            head, k_min = stats.head, agg.policy.k_min
            out: dict = {"store": store.split(":")[0], "pushes": pushes, "devices": devices,
                         "fill_s": round(fill_s, 1), "head": head,
                         "served_rows": stats.cells + stats.edges, "k_min": k_min}  # fmt: skip
            out["published_keys"] = len(await agg.published())
            for name, cursor in (("cursor_0", 0), ("cursor_mid", head // 2), ("cursor_head_50", head - 50)):
                times = []
                for _ in range(reads):
                    t0 = time.perf_counter()
                    items, end, more = await agg.changes_since(cursor, DEFAULT_PULL_BYTES)
                    times.append((time.perf_counter() - t0) * 1000)
                n, published = await _rows(store, cursor, end, k_min)
                times.sort()
                out[name] = {"cursor": cursor, "page_cursor": end, "more": more, "items": len(items),
                             "ms_median": round(statistics.median(times), 3),
                             "ms_p90": round(times[int(0.9 * (len(times) - 1))], 3),
                             "rows_in_range": n, "published_rows_in_range": published}  # fmt: skip
            # A catch-up from 0 to the head, page by page (what a new TV's first sync reads).
            t0 = time.perf_counter()
            cursor, more, pages = 0, True, 0
            while more:
                _, cursor, more = await agg.changes_since(cursor, DEFAULT_PULL_BYTES)
                pages += 1
            out["catch_up"] = {"pages": pages, "ms": round((time.perf_counter() - t0) * 1000, 1)}
            if hasattr(agg.store, "set_pull_floor"):  # trees with the published keys index: a k_min change
                t0 = time.perf_counter()
                await agg.store.set_pull_floor(k_min - 1)
                out["rebuild_index_s"] = round(time.perf_counter() - t0, 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pushes", type=int, default=20000)
    parser.add_argument("--devices", type=int, default=10000)
    parser.add_argument("--reads", type=int, default=50, help="page reads timed per cursor")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--store", help="an empty store's URL (postgresql://…); default: SQLite in a temp folder")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.pushes, args.devices, args.reads, args.seed, args.store))))


if __name__ == "__main__":
    main()
