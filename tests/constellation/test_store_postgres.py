"""PostgreSQL-specific store guarantees (shared workers, migrations, HNSW), and ANN search on every backend."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import asyncpg
import numpy as np
import pytest

from omega.constellation.aggregation import Aggregator
from omega.constellation.crdt import CellKey, ConsolidatedCell, FederatedState
from omega.constellation.store import open_store
from omega.constellation.store.pg_engine import MAX_GROUP_LOCKS, MEMBER_LOCK_CLASS, group_locks
from omega.constellation.store.postgres import member_lock
from omega.constellation.store.pg_schema import SCHEMA_VERSION
from omega.errors import OmegaError
from omega.protocol import EMBEDDING_DIM

from .conftest import SALT, device, fresh_database, near, pattern

NOW = 1_700_000_000_000
DAY = 86_400_000

postgres = pytest.mark.postgres


def snapshot(items: list) -> dict[tuple, tuple]:
    """Published items by key, without versions (those are change-order numbers, not state)."""
    out = {}
    for i in items:
        if isinstance(i, ConsolidatedCell):
            out[("p", i.task_type, i.cluster_id)] = (i.support, round(i.success_rate, 9), i.embedding.round(5).tobytes())
        else:
            out[("e", i.keyspace, i.src, i.dst)] = (i.support, round(i.weight, 9))
    return out


def workload(codebook) -> list[tuple]:
    """Pushes from 24 devices over 2 epochs, heavy on shared cells and edges, with retries."""
    rng = np.random.default_rng(3)
    pushes = []
    for n in range(96):
        d = int(rng.integers(0, 24))
        cells = [pattern(near(codebook, int(c), n * 10 + int(c)), uses=int(rng.integers(5, 60)))
                 for c in rng.choice(4, size=2, replace=False)]
        edges = [(0, int(rng.integers(0, 3)), int(rng.integers(0, 3)), 1.0) for _ in range(3)]
        pushes.append((device(d), f"b{n}".encode(), cells, edges, NOW + (n % 2) * DAY))
    return pushes + pushes[::7]  # some retries of the same (device, batch)


@postgres
async def test_two_workers_sharing_a_database_agree_with_sequential_application(pg_dsn, codebook) -> None:
    pushes = workload(codebook)
    async with fresh_database(pg_dsn) as shared_dsn, fresh_database(pg_dsn) as serial_dsn:
        a = await Aggregator.open(await open_store(shared_dsn, origin="shard"), codebook, SALT)
        b = await Aggregator.open(await open_store(shared_dsn, origin="shard"), codebook, SALT)
        serial = await Aggregator.open(await open_store(serial_dsn, origin="shard"), codebook, SALT)
        try:
            # Every push goes to both workers at once (a retry landing on another worker).
            results = await asyncio.gather(*(w.apply(*p) for p in pushes for w in (a, b)))
            expected = [await serial.apply(*p) for p in pushes]

            assert sum(not r.duplicate for r in results) == sum(not r.duplicate for r in expected)
            assert sum(r.accepted for r in results) == sum(r.accepted for r in expected)
            assert sum(len(r.rejections) for r in results) == sum(len(r.rejections) for r in expected)
            assert await a.store.stats() == await serial.store.stats()
            assert snapshot(await a.published()) == snapshot(await serial.published())
            assert snapshot(await b.published()) == snapshot(await serial.published())
            # Change numbers are unique and gap-free across both workers.
            assert (await a.store.stats()).head == (await b.store.stats()).head == (await serial.store.stats()).head
        finally:
            for agg in (a, b, serial):
                await agg.store.close()


@postgres
async def test_an_acknowledged_push_is_committed(pg_database, codebook) -> None:
    store = await open_store(pg_database, origin="shard")
    try:
        agg = await Aggregator.open(store, codebook, SALT)
        watcher = await asyncpg.connect(pg_database)
        try:
            for n in range(5):
                res = await agg.apply(device(n), b"x", [pattern(near(codebook, 2, n))], [(0, 1, 2, 1.0)], NOW)
                # Another session sees it the moment apply returns: the COMMIT happened before.
                assert await watcher.fetchval("SELECT count(*) FROM omega_push_keys") == n + 1
                assert await watcher.fetchval("SELECT seq FROM omega_head") == res.cursor
        finally:
            await watcher.close()
    finally:
        await store.close()


async def _waiting_at(watcher: asyncpg.Connection, statement: str, n: int, timeout_s: float = 20.0) -> list:
    """Poll until `n` backends of this database wait on a lock in a statement starting with `statement`; their
    (wait_event, query) rows. AssertionError naming what the others wait on if it never happens."""
    sql = ("SELECT wait_event, query FROM pg_stat_activity WHERE datname = current_database() "
           "AND pid <> pg_backend_pid() AND wait_event_type = 'Lock'")  # fmt: skip
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        rows = await watcher.fetch(sql)
        if sum(r["query"].startswith(statement) for r in rows) >= n or loop.time() > deadline:
            break
        await asyncio.sleep(0.05)
    found = [r for r in rows if r["query"].startswith(statement)]
    assert len(found) >= n, f"waiting elsewhere: {[(r['wait_event'], r['query'][:60]) for r in rows]}"
    return found


@postgres
async def test_two_workers_groups_on_one_cell_wait_for_each_other_only_at_the_head_row(pg_database, codebook) -> None:
    """Issue 15: while a group holds the head row (its tail), two workers' groups on the same cell both do
    their work up to the tail and wait there; on the old code the second waited for the first's key-bucket
    lock, so groups on a popular cell ran one after the other whole. The cell's sums are exact all the same."""
    a = await Aggregator.open(await open_store(pg_database, origin="shard"), codebook, SALT)
    b = await Aggregator.open(await open_store(pg_database, origin="shard"), codebook, SALT)
    holder = await asyncpg.connect(pg_database)
    watcher = await asyncpg.connect(pg_database)
    try:
        await a.apply(device(1), b"a", [pattern(near(codebook, 3, 1), uses=3)], [], NOW)
        tx = holder.transaction()
        await tx.start()  # a third group in its tail
        await holder.fetchval("SELECT seq FROM omega_head WHERE id = 1 FOR UPDATE")
        first = asyncio.create_task(a.apply(device(2), b"b", [pattern(near(codebook, 3, 2), uses=5)], [], NOW))
        second = asyncio.create_task(b.apply(device(3), b"c", [pattern(near(codebook, 3, 3), uses=7)], [], NOW))
        waiting = await _waiting_at(watcher, "UPDATE omega_head", 2)
        assert {r["wait_event"] for r in waiting} <= {"transactionid", "tuple"}
        assert not first.done() and not second.done()
        await tx.rollback()
        cursors = sorted([(await asyncio.wait_for(first, 10)).cursor, (await asyncio.wait_for(second, 10)).cursor])
        assert cursors == [2, 3]  # numbered in commit order, no gap
        sum_w, support = await watcher.fetchrow("SELECT sum_w, support FROM omega_cell_state")
        assert support == 3
        assert sum_w == pytest.approx(0.9 * (3 + 5 + 7))  # pattern(): success rate 0.9, weights under w_max
    finally:
        await holder.close()
        await watcher.close()
        for agg in (a, b):
            await agg.store.close()


@postgres
async def test_a_device_pushing_to_two_workers_at_once_counts_once_per_cell_and_epoch(pg_database, codebook) -> None:
    """The member locks: the same device's batches on two workers at once read and write its member row one
    after the other, so one is accepted and the other flooded (never both counted)."""
    a = await Aggregator.open(await open_store(pg_database, origin="shard"), codebook, SALT)
    b = await Aggregator.open(await open_store(pg_database, origin="shard"), codebook, SALT)
    try:
        for c in range(6):
            results = await asyncio.gather(*(w.apply(device(7), f"{name}{c}".encode(), [pattern(near(codebook, c, n))],
                                                     [(0, c, c + 1, 1.0)], NOW)
                                             for n, (w, name) in enumerate(((a, "x"), (b, "y")))))  # fmt: skip
            assert sorted(r.accepted for r in results) == [0, 2]
        supports = await a.store.stats()
        assert supports.head == 12
        watcher = await asyncpg.connect(pg_database)
        try:
            assert await watcher.fetchval("SELECT max(support) FROM omega_cell_state") == 1
            assert await watcher.fetchval("SELECT max(support) FROM omega_edge_state") == 1
            # lock ids: 32 bits of the keyed hash, in their own class
            member = bytes(await watcher.fetchval("SELECT member FROM omega_members LIMIT 1"))
            assert member_lock(member) == int.from_bytes(member[:4], "big", signed=True)
            assert MEMBER_LOCK_CLASS != 0x4F4D4744  # never aliases the old key-bucket locks
        finally:
            await watcher.close()
    finally:
        for agg in (a, b):
            await agg.store.close()


@postgres
async def test_a_group_that_fails_in_sql_is_reapplied_push_by_push(pg_database, codebook) -> None:
    """A statement failing in a group's set-based path: every push of the group is applied alone instead."""
    store = await open_store(pg_database, origin="shard")
    try:
        agg = await Aggregator.open(store, codebook, SALT)
        grouped = store._apply_group  # noqa: SLF001 - the real method, made to fail once

        async def failing(conn, pushes):
            await conn.execute("SELECT 1/0")  # what any error in SQL does to the group's transaction
            return await grouped(conn, pushes)

        store._engine._apply_group = failing  # noqa: SLF001
        results = await asyncio.gather(*(
            agg.apply(device(d), b"x", [pattern(near(codebook, d % 4, d))], [(0, d, d + 1, 1.0)], NOW) for d in range(6)
        ))  # fmt: skip
        assert [r.accepted for r in results] == [2] * 6
        stats = await store.stats()
        assert stats.push_keys == 6 and stats.contributions == 6 and stats.head == 12  # patterns are logged
    finally:
        await store.close()


@postgres
async def test_a_group_takes_a_bounded_number_of_member_locks(pg_database, codebook) -> None:
    """Issue 15: a group's member locks (one per contribution) stay within MAX_GROUP_LOCKS, since advisory locks
    fill PostgreSQL's shared lock table, which every worker's open group shares. The pushes waiting beyond the
    bound start the next group (before: one group took every waiting push, up to 256), and all are applied."""
    store = await open_store(pg_database, origin="shard")
    try:
        agg = await Aggregator.open(store, codebook, SALT)
        grouped = store._engine._apply_group  # noqa: SLF001 - the real method, recording what it is given
        taken: list[int] = []

        async def recording(conn, pushes):
            taken.append(sum(group_locks(p) for p in pushes))
            return await grouped(conn, pushes)

        store._engine._apply_group = recording  # noqa: SLF001
        edges = 40
        results = await asyncio.gather(*(
            agg.apply(device(d), b"x", [], [(0, d * 100 + j, d * 100 + j + 1, 1.0) for j in range(edges)], NOW)
            for d in range(64)
        ))  # fmt: skip
        assert [r.accepted for r in results] == [edges] * 64
        assert max(taken) <= MAX_GROUP_LOCKS and sum(taken) == 64 * (edges + 1)
        assert max(taken) > MAX_GROUP_LOCKS // 2  # pushes still share groups
    finally:
        await store.close()


@postgres
async def test_migrations_are_versioned_idempotent_and_refuse_newer(pg_database) -> None:
    # Several workers starting at once on an empty database: one schema, one origin.
    stores = await asyncio.gather(*(open_store(pg_database) for _ in range(3)))
    try:
        assert len({s.origin for s in stores}) == 1
    finally:
        for s in stores:
            await s.close()
    conn = await asyncpg.connect(pg_database)
    try:
        assert await conn.fetchval("SELECT version FROM omega_schema") == SCHEMA_VERSION
        assert await conn.fetchval("SELECT count(*) FROM omega_schema") == 1
        indexdef = await conn.fetchval("SELECT indexdef FROM pg_indexes WHERE indexname = 'omega_cell_vectors_embedding'")
        assert "hnsw" in indexdef and "vector_cosine_ops" in indexdef
        assert "m='32'" in indexdef and "ef_construction='200'" in indexdef
        await conn.execute("UPDATE omega_schema SET version = 99")
        with pytest.raises(OmegaError, match="newer"):
            await open_store(pg_database)
        assert await conn.fetchval("SELECT version FROM omega_schema") == 99  # left as found
    finally:
        await conn.close()


@postgres
async def test_unreachable_server_is_one_clear_error_without_the_password() -> None:
    with pytest.raises(OmegaError, match="cannot connect") as info:
        await open_store("postgresql://omega:hunter2-secret@127.0.0.1:1/omega")
    assert "hunter2-secret" not in str(info.value)


@postgres
async def test_federation_between_postgres_shards(pg_dsn, codebook) -> None:
    async with (
        fresh_database(pg_dsn) as east_dsn,
        fresh_database(pg_dsn) as west_dsn,
        fresh_database(pg_dsn) as hub_dsn,
    ):
        east = await Aggregator.open(await open_store(east_dsn, origin="east"), codebook, SALT)
        west = await Aggregator.open(await open_store(west_dsn, origin="west"), codebook, SALT)
        hub = await Aggregator.open(await open_store(hub_dsn, origin="hub"), codebook, SALT)
        try:
            for d in range(2):
                await east.apply(device(d), b"p", [pattern(near(codebook, 6, d), uses=10)], [(0, 1, 2, 1.0)], NOW)
                await west.apply(device(10 + d), b"p", [pattern(near(codebook, 6, 10 + d), uses=40)],
                                 [(0, 1, 2, 2.0)], NOW)
            east_delta = (await east.export_state(0, ["east"])).to_bytes()
            west_delta = (await west.export_state(0, ["west"])).to_bytes()
            assert await hub.merge_remote(FederatedState.from_bytes(west_delta)) == 2
            assert await hub.merge_remote(FederatedState.from_bytes(east_delta)) == 2
            assert await hub.merge_remote(FederatedState.from_bytes(west_delta)) == 0  # replay: no change
            offline = FederatedState.from_bytes(east_delta).merge(FederatedState.from_bytes(west_delta))
            (expected,) = offline.consolidated(k_min=3)
            (expected_edge,) = offline.consolidated_edges(k_min=3)
            by_kind = {type(i): i for i in await hub.published()}
            glob = by_kind[ConsolidatedCell]
            assert glob.support == 4
            np.testing.assert_allclose(glob.embedding, expected.embedding, atol=1e-6)
            assert glob.success_rate == pytest.approx(expected.success_rate)
            edge = next(i for t, i in by_kind.items() if t is not ConsolidatedCell)
            assert (edge.support, edge.weight) == (4, pytest.approx(expected_edge.weight))
            # The hub's export round-trips both origins exactly; its ANN view holds the global mean.
            assert (await hub.export_state()).to_bytes() == offline.to_bytes()
            ((key, sim),) = await hub.store.nearest_consolidated(expected.embedding, 5, 3)
            assert key == CellKey(0, 6) and sim == pytest.approx(1.0, abs=1e-5)
        finally:
            for agg in (east, west, hub):
                await agg.store.close()


# ---- nearest_consolidated: every backend ------------------------------------------------
async def seed_cells(agg: Aggregator, codebook) -> dict[CellKey, np.ndarray]:
    """Cells 0..5 of task 0 with support 3, cell 6 with support 2, cells 0..1 of task 1 with support 3."""
    for d in range(3):
        pats = [pattern(near(codebook, c, 100 * d + c, spread=0.4)) for c in range(6)]
        pats += [pattern(near(codebook, c, 100 * d + c), task_type=1) for c in range(2)]
        if d < 2:
            pats.append(pattern(near(codebook, 6, d)))
        await agg.apply(device(d), b"seed", pats, [(0, 1, 2, 1.0)], NOW)
    return {CellKey(p.task_type, p.cluster_id): p.embedding.astype(np.float64) for p in await agg.published()
            if isinstance(p, ConsolidatedCell)}


async def test_nearest_consolidated_ranks_published_cells_by_cosine(aggregator, codebook) -> None:
    published = await seed_cells(aggregator, codebook)
    assert CellKey(0, 6) not in published and len(published) == 8
    store = aggregator.store
    for probe in range(4):
        q = near(codebook, probe, 999 + probe, spread=1.0).astype(np.float64)
        exact = sorted(((float(e @ q), key) for key, e in published.items()), reverse=True)
        got = await store.nearest_consolidated(q * 7.0, 5, 3)  # any positive scale is the same query
        assert [key for key, _ in got] == [key for _, key in exact[:5]]
        np.testing.assert_allclose([s for _, s in got], [s for s, _ in exact[:5]], atol=1e-5)

    q = published[CellKey(0, 3)]
    assert (await store.nearest_consolidated(q, 1, 3))[0][0] == CellKey(0, 3)
    # k_min hides under-supported cells; a lower floor reveals them.
    near6 = codebook.centroids[6]
    assert CellKey(0, 6) not in [k for k, _ in await store.nearest_consolidated(near6, 20, 3)]
    assert (await store.nearest_consolidated(near6, 1, 2))[0][0] == CellKey(0, 6)
    assert len(await store.nearest_consolidated(q, 20, 3)) == 8
    assert await store.nearest_consolidated(q, 5, 4) == []
    only_task_1 = await store.nearest_consolidated(q, 20, 3, task_type=1)
    assert sorted(k for k, _ in only_task_1) == [CellKey(1, 0), CellKey(1, 1)]
    for bad in (np.zeros(EMBEDDING_DIM), np.full(EMBEDDING_DIM, np.nan), np.ones(10), "text"):
        with pytest.raises(OmegaError):
            await store.nearest_consolidated(bad, 5, 3)
    with pytest.raises(OmegaError):
        await store.nearest_consolidated(q, 0, 3)


@postgres
async def test_nearest_consolidated_through_the_hnsw_index(pg_database, codebook) -> None:
    conn = await asyncpg.connect(pg_database)
    try:
        # Every store connection must now take the HNSW path (no scan-and-sort), filters and all.
        for setting in ("enable_seqscan", "enable_bitmapscan", "enable_sort"):
            await conn.execute(f'ALTER DATABASE "{urlsplit(pg_database).path[1:]}" SET {setting} = off')
    finally:
        await conn.close()
    store = await open_store(pg_database, origin="shard")
    try:
        agg = await Aggregator.open(store, codebook, SALT)
        published = await seed_cells(agg, codebook)
        async with store._pool.acquire() as probe:  # the store's own session settings
            plan = "\n".join(r[0] for r in await probe.fetch(
                "EXPLAIN SELECT x.cell FROM omega_cell_vectors x JOIN omega_served s ON s.kind = 0 "
                "AND s.k1 = x.task_type AND s.k2 = x.cell AND s.k3 = 0 WHERE s.support >= 3 "
                "ORDER BY x.embedding <=> $1 LIMIT 5", published[CellKey(0, 0)]))
        assert "omega_cell_vectors_embedding" in plan
        for probe_cell in range(6):
            q = near(codebook, probe_cell, 7 + probe_cell, spread=1.0).astype(np.float64)
            exact = sorted(((float(e @ q), key) for key, e in published.items()), reverse=True)
            got = await store.nearest_consolidated(q, 4, 3)
            assert [key for key, _ in got] == [key for _, key in exact[:4]]
        # The filter does not starve the result: iterative scans keep walking the graph.
        assert len(await store.nearest_consolidated(published[CellKey(0, 0)], 3, 3, task_type=1)) == 2
    finally:
        await store.close()


@postgres
async def test_vectors_follow_pushes_through_dirty_marks(pg_database, codebook) -> None:
    store = await open_store(pg_database, origin="shard")
    watcher = await asyncpg.connect(pg_database)
    try:
        agg = await Aggregator.open(store, codebook, SALT)
        for d in range(3):
            await agg.apply(device(d), b"v", [pattern(near(codebook, c, d)) for c in (1, 2)], [], NOW)
        # Pushes only mark cells; the refresher writes their vectors once, however often they changed.
        assert await watcher.fetchval("SELECT count(*) FROM omega_dirty_cells") == 2
        assert await store.refresh_vectors() == 2
        assert await store.refresh_vectors() == 0
        assert await watcher.fetchval("SELECT count(*) FROM omega_dirty_cells") == 0
        published = {(p.task_type, p.cluster_id): p.embedding for p in await agg.published()}
        for r in await watcher.fetch("SELECT task_type, cell, embedding::text AS e FROM omega_cell_vectors"):
            stored = np.array([float(v) for v in r["e"].strip("[]").split(",")])
            np.testing.assert_allclose(stored, published[(r["task_type"], r["cell"])], atol=1e-6)
        # The background refresher catches up without a search.
        await agg.apply(device(9), b"v", [pattern(near(codebook, 3, 9))], [], NOW)
        for _ in range(50):
            if not await watcher.fetchval("SELECT count(*) FROM omega_dirty_cells"):
                break
            await asyncio.sleep(0.1)
        assert await watcher.fetchval("SELECT count(*) FROM omega_cell_vectors") == 3
    finally:
        await watcher.close()
        await store.close()


@postgres
async def test_a_push_does_not_wait_for_a_vector_refresh_in_progress(pg_database, codebook) -> None:
    """Issue 15: the refresher reads the dirty marks without locking them, so a push on a cell whose vector
    is being rewritten commits at once (on the old code it waited for the refresher's whole batch, holding
    the head row every other group needs). The mark it rewrote survives the batch and is refreshed next."""
    store = await open_store(pg_database, origin="shard")
    holder = await asyncpg.connect(pg_database)
    watcher = await asyncpg.connect(pg_database)
    try:
        agg = await Aggregator.open(store, codebook, SALT)
        await agg.apply(device(1), b"a", [pattern(near(codebook, 4, 1))], [], NOW)
        assert await store.refresh_vectors() == 1
        await agg.apply(device(2), b"b", [pattern(near(codebook, 4, 2), rate=0.95, uses=7)], [], NOW)
        tx = holder.transaction()
        await tx.start()  # holds the cell's vector row: the refresher stops in the middle of its batch
        await holder.execute("SELECT 1 FROM omega_cell_vectors FOR UPDATE")
        refresh = asyncio.create_task(store.refresh_vectors())
        await _waiting_at(watcher, "INSERT INTO omega_cell_vectors", 1)
        pushed = await asyncio.wait_for(agg.apply(device(3), b"c", [pattern(near(codebook, 4, 3))], [], NOW), 10)
        assert pushed.accepted == 1 and not refresh.done()
        await tx.rollback()
        assert await asyncio.wait_for(refresh, 10) == 1
        assert await watcher.fetchval("SELECT seq FROM omega_dirty_cells") == pushed.cursor  # left for next round
        assert await store.refresh_vectors() == 1
        assert await watcher.fetchval("SELECT count(*) FROM omega_dirty_cells") == 0
        (published,) = await agg.published()
        stored = await watcher.fetchval("SELECT embedding::text FROM omega_cell_vectors")
        np.testing.assert_allclose(np.array([float(v) for v in stored.strip("[]").split(",")]), published.embedding,
                                   atol=1e-6)  # fmt: skip
    finally:
        await holder.close()
        await watcher.close()
        await store.close()
