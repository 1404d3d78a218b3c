"""The pull scan reads the keys that reached k_min, not every key a push named (issue 15: the pull scan).

Most served keys are named by one or two TVs and never published; the scan's index holds only the keys whose
support ever reached the store's pull floor (the aggregator's k_min), so a page from a low cursor costs what
was published since, whatever else was pushed. What a pull serves is unchanged: every change of a published
key, a published key's removal, never a key that did not reach k_min, at any k_min, cursor and floor.
"""

from __future__ import annotations

import random
import sqlite3

import pytest

from omega.constellation.aggregation import AggregationPolicy, Aggregator
from omega.constellation.crdt import ConsolidatedCell
from omega.constellation.store import open_store
from omega.constellation.store.base import KIND_CELL, KIND_EDGE
from omega.constellation.store.sqlite import SqliteStore
from omega.constellation.store.sqlite_schema import SCHEMA_VERSION

from .conftest import SALT, device, near, pattern

DAY = 86_400_000
NOW = 1_700_000_000_000 // DAY * DAY
WINDOW = 30


def ident(item) -> tuple:
    if isinstance(item, ConsolidatedCell):
        return (KIND_CELL, item.task_type, item.cluster_id, 0)
    return (KIND_EDGE, item.keyspace, item.src, item.dst)


async def noise(agg: Aggregator, first: int, keys: int, per_push: int = 50) -> None:
    """`keys` edges named by one TV each (never published), `per_push` a push."""
    for n in range(first, first + keys, per_push):
        edges = [(0, 10_000 + k, 20_000 + k, 1.0) for k in range(n, min(first + keys, n + per_push))]
        await agg.apply(device(1_000 + n), b"n%d" % n, [], edges, NOW)


async def published_edges(agg: Aggregator, keys: list[int], devices: range) -> None:
    for d in devices:
        await agg.apply(device(d), b"p%d" % d, [], [(0, k, k + 1, 1.0) for k in keys], NOW)


def vm_steps(store: SqliteStore) -> list[int]:
    """A counter of the VM instructions (in tens) the in-memory store's connection runs from now on."""
    steps = [0]

    def install(conn: sqlite3.Connection) -> None:
        def tick() -> int:
            steps[0] += 1
            return 0

        conn.set_progress_handler(tick, 10)

    store._writer.submit(install, mode="raw")  # noqa: SLF001 — ":memory:": the writer serves the reads too
    return steps


async def page_steps(unpublished: int, codebook) -> tuple[int, list[tuple]]:
    """VM steps of one page read from cursor 0 of a store with 4 published edges among `unpublished` others,
    and the page's keys."""
    store = await SqliteStore.open(":memory:", origin="shard-scan")
    try:
        agg = await Aggregator.open(store, codebook, SALT)
        await published_edges(agg, [1, 3], range(3))
        await noise(agg, 0, unpublished)
        await published_edges(agg, [5, 7], range(3, 6))
        steps = vm_steps(store)
        await store._writer.submit(lambda conn: None)  # noqa: SLF001 — the handler is in place
        steps[0] = 0
        page = await store.changes_since(0, 3, 1 << 20)
        return steps[0], [ident(i) for i in page.items]
    finally:
        await store.close()


async def test_a_page_reads_the_published_keys_not_every_key_a_push_named(codebook) -> None:
    few, few_keys = await page_steps(100, codebook)
    many, many_keys = await page_steps(4_000, codebook)
    assert few_keys == many_keys == [(KIND_EDGE, 0, k, k + 1) for k in (1, 3, 5, 7)]
    # 3,900 more unpublished rows between the published ones: a scan of every row ran ~5 VM instructions each
    # (the old scan: 2,028 vs 77 tens here).
    assert many - few < 100, (few, many)


async def test_a_key_crossing_k_min_after_many_unpublished_ones_is_served_once_at_its_seq(store, codebook) -> None:
    agg = await Aggregator.open(store, codebook, SALT)
    await agg.apply(device(0), b"a", [], [(0, 1, 2, 1.0)], NOW)  # one TV: not published
    await noise(agg, 0, 600)
    _, cursor, _ = await agg.changes_since(0)
    assert cursor == (await store.stats()).head  # nothing published yet: the page is empty and ends at the head
    await agg.apply(device(1), b"a", [], [(0, 1, 2, 1.0)], NOW)
    await noise(agg, 600, 300)
    crossed = await agg.apply(device(2), b"a", [], [(0, 1, 2, 1.0)], NOW)  # the third TV: published, this seq
    await noise(agg, 900, 300)
    head = (await store.stats()).head
    for start in (0, cursor):
        items, end, more = await agg.changes_since(start, max_bytes=1 << 20)
        assert [(ident(i), i.version, i.support) for i in items] == [((KIND_EDGE, 0, 1, 2), crossed.cursor, 3)]
        assert (end, more) == (head, False)


async def test_a_published_key_s_removal_is_still_served_among_unpublished_keys(store, codebook) -> None:
    agg = await Aggregator.open(store, codebook, SALT)
    await published_edges(agg, [1], range(3))
    _, cursor, _ = await agg.changes_since(0)
    await noise(agg, 0, 400)
    await agg.prune(NOW + WINDOW * DAY)  # everything leaves the window
    items, _, more = await agg.changes_since(cursor, max_bytes=1 << 20)
    assert not more and [(ident(i), i.support) for i in items] == [((KIND_EDGE, 0, 1, 2), 0)]
    assert (await agg.changes_since(0, max_bytes=1 << 20))[0] == []  # a new TV: nothing, no removals


def expected(rows: list[tuple], cursor: int, head: int, k_min: int) -> list[tuple]:
    """What a pull from `cursor` serves, from the served rows themselves: (key, seq, published now)."""
    removals = 0 < cursor <= head
    return [(tuple(r[:4]), r[4], r[5] >= k_min) for r in sorted(rows, key=lambda r: r[4])
            if r[4] > cursor and (r[5] >= k_min or (removals and r[6] >= k_min))]  # fmt: skip


async def test_every_k_min_and_floor_serve_what_the_served_rows_say(tmp_path, codebook) -> None:
    """Random supports (1-6 TVs per key, some leaving the window): for each pull floor the store is indexed for
    and each k_min a pull asks (below, at, above the floor), each page holds the changes the rows say."""
    path = tmp_path / "c.db"
    store = await open_store(f"sqlite:{path}", origin="shard-a")
    try:
        rng = random.Random(5)
        agg = await Aggregator.open(store, codebook, SALT)
        for key in range(60):
            for d in range(rng.randint(1, 6)):
                epoch = NOW if rng.random() < 0.7 else NOW + 3 * DAY
                await agg.apply(device(d), b"k%d-%d" % (key, d), [pattern(near(codebook, key % 16, d))] if key < 16
                                else [], [(0, key, key + 1, 1.0)], epoch)  # fmt: skip
        await agg.prune(NOW + (WINDOW + 1) * DAY)  # the first epoch's members leave: supports fall
        con = sqlite3.connect(path)
        rows = con.execute("SELECT kind, k1, k2, k3, seq, support, peak FROM served").fetchall()
        head = max(r[4] for r in rows)
        for floor in (1, 2, 3, 5):
            await store.set_pull_floor(floor)
            assert con.execute("SELECT value FROM meta WHERE key = 'pull_floor'").fetchone()[0] == str(floor)
            for k_min in (1, 2, 3, 4, 6):
                for cursor in (0, 1, head // 3, head // 2, head - 5, head):
                    at, more, pages = cursor, True, 0
                    while more:  # each page: the first of what the rows say from its cursor (removals: cursor > 0)
                        page = await store.changes_since(at, k_min, 400)
                        got = [(ident(i), i.version, i.support > 0) for i in page.items]
                        want = expected(rows, at, head, k_min)
                        assert got == want[: len(got)] and (page.more or len(got) == len(want)), (floor, k_min, at)
                        assert page.cursor == (got[-1][1] if page.more else head)
                        at, more, pages = page.cursor, page.more, pages + 1
                    assert pages < 30
        con.close()
    finally:
        await store.close()


async def test_the_aggregator_indexes_the_pull_for_its_k_min(tmp_path, codebook) -> None:
    path = tmp_path / "c.db"
    store = await open_store(f"sqlite:{path}", origin="shard-a")
    try:
        await published_edges(await Aggregator.open(store, codebook, SALT), [1], range(2))  # support 2
        con = sqlite3.connect(path)
        floor = "SELECT value FROM meta WHERE key = 'pull_floor'"
        index = "SELECT sql FROM sqlite_master WHERE name = 'served_published'"
        assert con.execute(floor).fetchone()[0] == "3" and con.execute(index).fetchone()[0].endswith("peak >= 3")
        low = await Aggregator.open(store, codebook, SALT, AggregationPolicy(k_min=2))  # a k_min of 2: rebuilt
        assert con.execute(floor).fetchone()[0] == "2" and con.execute(index).fetchone()[0].endswith("peak >= 2")
        assert [ident(i) for i in await low.published()] == [(KIND_EDGE, 0, 1, 2)]
        con.close()
    finally:
        await store.close()


async def test_a_v8_store_migrates_keeping_rows_cursors_and_the_next_seq(tmp_path, codebook) -> None:
    path = tmp_path / "v8.db"
    store = await open_store(f"sqlite:{path}", origin="shard-v8")
    agg = await Aggregator.open(store, codebook, SALT)
    await published_edges(agg, [1, 3], range(3))
    await noise(agg, 0, 200)
    await published_edges(agg, [5], range(3, 6))
    middle = await agg.changes_since(7, max_bytes=1 << 20)
    await store.close()
    con = sqlite3.connect(path)  # back to v8: no partial index, no floor
    rows = sorted(con.execute("SELECT * FROM served").fetchall())
    con.executescript("DROP INDEX served_published; DELETE FROM meta WHERE key = 'pull_floor'; PRAGMA user_version=8")
    con.close()
    store = await open_store(f"sqlite:{path}")
    try:
        con = sqlite3.connect(path)
        assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 9
        assert sorted(con.execute("SELECT * FROM served").fetchall()) == rows
        plan = con.execute("EXPLAIN QUERY PLAN SELECT seq FROM served INDEXED BY served_published "
                           "WHERE peak >= 3 AND seq > 0").fetchall()  # fmt: skip
        assert "served_published" in str(plan)
        con.close()
        agg = await Aggregator.open(store, codebook, SALT)
        again = await agg.changes_since(7, max_bytes=1 << 20)
        assert [(ident(i), i.version) for i in again[0]] == [(ident(i), i.version) for i in middle[0]]
        head = max(r[0] for r in rows)
        assert again[1] == head
        later = await agg.apply(device(9), b"z", [], [(0, 5, 6, 1.0)], NOW)
        assert later.cursor == head + 1
    finally:
        await store.close()


@pytest.mark.postgres
async def test_postgres_reads_the_published_keys_index(pg_database, codebook) -> None:
    import asyncpg

    store = await open_store(pg_database, origin="shard-pg")
    try:
        agg = await Aggregator.open(store, codebook, SALT)
        await published_edges(agg, [1], range(3))
        await noise(agg, 0, 300)
        items, _, _ = await agg.changes_since(0)
        assert [ident(i) for i in items] == [(KIND_EDGE, 0, 1, 2)]
        conn = await asyncpg.connect(pg_database)
        try:
            await conn.execute("ANALYZE omega_served")
            plan = await conn.fetchval("EXPLAIN (FORMAT JSON) SELECT kind, k1, k2, k3, seq, support FROM omega_served "
                                       "WHERE peak >= 3 AND seq > 0 AND (support >= 3 OR peak >= 3) ORDER BY seq "
                                       "LIMIT 128")  # fmt: skip
            assert "omega_served_published" in plan
            found = await conn.fetch("SELECT indexname FROM pg_indexes WHERE tablename = 'omega_served'")
            indexes = {r[0] for r in found}
            assert "omega_served_seq_support" not in indexes  # v6 replaced it: every served key's change wrote it
            low = await Aggregator.open(store, codebook, SALT, AggregationPolicy(k_min=1))  # rebuilt for k_min 1
            floor = await conn.fetchval("SELECT convert_from(value, 'UTF8') FROM omega_meta WHERE key = 'pull_floor'")
            assert floor == "1"
            assert len(await low.published()) == 301
        finally:
            await conn.close()
    finally:
        await store.close()
