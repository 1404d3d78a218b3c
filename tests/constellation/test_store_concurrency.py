"""Concurrent pushes and pulls interleaved on one store: every invariant still holds.

The SQLite store serves reads from their own WAL-snapshot connections while one
writer group-commits pushes; these tests check that this never shows a reader a
torn or stale state, never skips a change for a paging cursor, and never
acknowledges a push before it is durable.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading

import numpy as np
import pytest

from omega.constellation.aggregation import AggregationPolicy, Aggregator
from omega.constellation.crdt import ConsolidatedCell
from omega.constellation.store import CellContribution, PreparedPush, open_store
from omega.constellation.store.base import KIND_CELL, KIND_EDGE
from omega.constellation.store.sqlite_engine import Writer
from omega.constellation.store.sqlite_schema import SCHEMA_VERSION
from omega.errors import OmegaError

from .conftest import SALT, SERVED_V7, device, near, pattern

NOW = 1_700_000_000_000
DAY = 86_400_000


def ident(item) -> tuple:
    if isinstance(item, ConsolidatedCell):
        return ("p", item.task_type, item.cluster_id)
    return ("e", item.keyspace, item.src, item.dst)


def fingerprint(item) -> tuple:
    """What a TV would hold for an item: identity, change position, support, payload."""
    if isinstance(item, ConsolidatedCell):
        return (ident(item), item.version, item.support, round(item.success_rate, 9),
                tuple(np.round(item.embedding, 6)))  # fmt: skip
    return (ident(item), item.version, item.support, item.weight)


async def test_concurrent_pulls_never_skip_a_change(aggregator, codebook) -> None:
    """Pushers and pagers run at once; each pager, once caught up, holds every item at its newest version."""
    rng = np.random.default_rng(11)
    pushing = True

    async def pusher(p: int) -> None:
        for b in range(25):
            d = int(rng.integers(0, 8))
            cells = [pattern(near(codebook, int(c), p * 100 + b)) for c in rng.choice(16, size=2, replace=False)]
            edges = [(0, int(rng.integers(0, 6)), int(rng.integers(0, 6)), 1.0) for _ in range(3)]
            await aggregator.apply(device(d), f"{p}-{b}".encode(), cells, edges, NOW + (p * 25 + b) * DAY // 8)
            await asyncio.sleep(0)

    async def pager(budget: int) -> dict[tuple, tuple]:
        held: dict[tuple, tuple] = {}
        cursor = 0
        while True:
            done = not pushing  # read before the pull: a pull after the last push has landed must catch up
            items, new_cursor, more = await aggregator.changes_since(cursor, max_bytes=budget)
            versions = [i.version for i in items]
            assert versions == sorted(versions) and len(set(versions)) == len(versions)
            assert all(cursor < v <= new_cursor for v in versions)
            assert new_cursor >= cursor
            for i in items:
                old = held.get(ident(i))
                assert old is None or old[1] < i.version  # an item only ever moves forward
                held[ident(i)] = fingerprint(i)
            cursor = new_cursor
            if done and not more:
                return held
            await asyncio.sleep(0)

    async def pushers() -> None:
        nonlocal pushing
        await asyncio.gather(*(pusher(p) for p in range(6)))
        pushing = False

    results = await asyncio.gather(pushers(), pager(1), pager(900), pager(5000), pager(1 << 20))
    latest = {ident(i): fingerprint(i) for i in await aggregator.published()}
    assert latest, "the workload publishes items"
    for held in results[1:]:
        assert held == latest


async def test_each_push_is_visible_to_every_reader_once_acknowledged(aggregator, codebook) -> None:
    """Read-your-writes across connections: after apply() returns, stats and pulls include that push."""
    store = aggregator.store

    async def one(d: int) -> None:
        result = await aggregator.apply(device(d), b"only", [pattern(near(codebook, d % 16, d))], [(0, d, d, 1.0)], NOW)
        assert result.accepted == 2 and result.cursor > 0
        stats, (_, head, _) = await asyncio.gather(store.stats(), aggregator.changes_since(0, max_bytes=1 << 20))
        assert stats.head >= result.cursor and head >= result.cursor
        assert stats.push_keys >= 1

    await asyncio.gather(*(one(d) for d in range(48)))
    stats = await store.stats()
    assert stats.push_keys == 48 and stats.contributions == 48  # a pattern each (edges' weights sit on members)


async def test_failing_pushes_roll_back_alone_amid_pulls(store, codebook) -> None:
    """Bad pushes inside groups fail alone while pulls run between them; the rest commit, the bad retry cleanly."""
    agg = await Aggregator.open(store, codebook, SALT, AggregationPolicy(k_min=1))

    def good(i: int) -> PreparedPush:
        return PreparedPush(i.to_bytes(2, "big") * 8, 0, NOW, [
            CellContribution(0, 0, 1, i.to_bytes(2, "big") * 4, 1.0, near(codebook, 1, i), 1.0, 1.0)])  # fmt: skip

    def bad(i: int) -> PreparedPush:  # a wrong-length embedding: fails inside the store's transaction
        return PreparedPush(b"\xff" + i.to_bytes(1, "big") * 15, 0, NOW, [
            CellContribution(0, 0, 1, b"\xfe" + i.to_bytes(1, "big") * 7, 1.0, np.ones(3, np.float32), 1.0, 1.0)])  # fmt: skip

    jobs = []
    for i in range(60):
        jobs.append(store.apply_push(bad(i) if i % 7 == 3 else good(i)))
        if i % 5 == 0:
            jobs.append(agg.changes_since(0, max_bytes=1 << 20))
    results = await asyncio.gather(*jobs, return_exceptions=True)
    pushes = [r for r in results if not isinstance(r, tuple)]
    failed = [r for r in pushes if isinstance(r, Exception)]
    assert len(failed) == len([i for i in range(60) if i % 7 == 3])
    assert all(not isinstance(r, Exception) for r in results if isinstance(r, tuple))
    stats = await store.stats()
    assert stats.push_keys == 60 - len(failed) and stats.contributions == 60 - len(failed)
    items, _, _ = await agg.changes_since(0, max_bytes=1 << 20)
    assert [i.support for i in items if isinstance(i, ConsolidatedCell)] == [60 - len(failed)]
    for i in range(60):  # nothing of a failed push was left behind: its key is fresh
        if i % 7 == 3:
            assert not (await store.apply_push(PreparedPush(bad(i).push_key, 0, NOW, []))).duplicate


# ---------------------------------------------------------------------------- SQLite specifics


@pytest.fixture
async def sqlite_store(tmp_path):
    s = await open_store(f"sqlite:{tmp_path / 'c.db'}", origin="shard-test")
    try:
        yield s
    finally:
        await s.close()


async def test_acknowledged_push_is_on_disk_for_an_independent_connection(sqlite_store, codebook, tmp_path) -> None:
    """Durable before ack: the moment apply_push returns, a brand-new connection to the file sees the push."""
    path = str(tmp_path / "c.db")

    def committed(key: bytes) -> bool:
        con = sqlite3.connect(path)
        try:
            return con.execute("SELECT count(*) FROM push_keys WHERE key = ?", (key,)).fetchone()[0] == 1
        finally:
            con.close()

    async def one(i: int) -> None:
        push = PreparedPush(i.to_bytes(4, "big") * 4, 0, NOW, [
            CellContribution(0, 0, i % 16, i.to_bytes(4, "big") * 2, 1.0, near(codebook, i % 16, i), 1.0, 1.0)])  # fmt: skip
        await sqlite_store.apply_push(push)
        assert await asyncio.to_thread(committed, push.push_key)

    await asyncio.gather(*(one(i) for i in range(64)))


async def test_the_writer_holds_a_group_in_its_cache_and_stays_durable(sqlite_store) -> None:
    """The writer's connection keeps a group's dirty pages in its cache (the 2 MiB default spilled them to the
    WAL and read them back), leaves the checkpoints every WAL_AUTOCHECKPOINT_PAGES to the checkpointer's thread
    (its own automatic checkpoint is only the bound WAL_WRITER_BOUND_PAGES), and still fsyncs every commit."""
    from omega.constellation.store.sqlite_schema import (
        WAL_AUTOCHECKPOINT_PAGES,
        WAL_WRITER_BOUND_PAGES,
        WRITER_CACHE_KIB,
    )

    def pragmas(conn: sqlite3.Connection) -> tuple:
        return tuple(conn.execute(f"PRAGMA {p}").fetchone()[0] for p in ("cache_size", "wal_autocheckpoint",
                                                                         "synchronous", "journal_mode"))  # fmt: skip

    cache, checkpoint, synchronous, journal = await sqlite_store._writer.submit(pragmas, mode="raw")
    assert (cache, checkpoint) == (-WRITER_CACHE_KIB, WAL_WRITER_BOUND_PAGES)
    assert WRITER_CACHE_KIB >= 16_384 and WAL_WRITER_BOUND_PAGES > WAL_AUTOCHECKPOINT_PAGES > 1_000
    assert sqlite_store._writer.checkpointer.pages == WAL_AUTOCHECKPOINT_PAGES
    assert (synchronous, journal) == (2, "wal")  # FULL: a push is on disk before it is acknowledged


def _wal_frames(path: str) -> int:
    """Frames in the WAL now (mxFrame of the wal-index header, sqlite.org/walformat.html)."""
    import struct

    with open(path + "-shm", "rb") as fh:
        return struct.unpack_from("=I", fh.read(20), 16)[0]


def _push(codebook, i: int) -> PreparedPush:
    from omega.constellation.store import EdgeContribution

    return PreparedPush(i.to_bytes(4, "big") * 4, 0, NOW, [
        CellContribution(0, 0, i % 16, i.to_bytes(4, "big") * 2, 1.0, near(codebook, i % 16, i), 1.0, 1.0)],
        [EdgeContribution(0, 0, i % 97, 1000 + i, i.to_bytes(8, "big"), 1.0)])  # fmt: skip


async def _small_wal_store(path: str, monkeypatch, pages: int, bound: int):
    """A store whose checkpointer runs every `pages` WAL pages and whose writer's own bound is `bound`, so a
    test of a few hundred pushes crosses both (the shipped values need ~10,000 pages)."""
    from omega.constellation.store import sqlite as store_sqlite
    from omega.constellation.store import sqlite_schema

    monkeypatch.setattr(store_sqlite, "WAL_AUTOCHECKPOINT_PAGES", pages)
    monkeypatch.setattr(sqlite_schema, "WAL_WRITER_BOUND_PAGES", bound)
    return await open_store(f"sqlite:{path}", origin="shard-test")


async def test_the_wal_is_checkpointed_off_the_writer_and_stays_bounded(tmp_path, codebook, monkeypatch) -> None:
    """Many pushes: the checkpoints run on the checkpointer's connection (the writer's is set to checkpoint
    only past its bound), the WAL stays near the checkpointer's threshold, and every push is in the file
    after close (which ends with a full checkpoint: no WAL left)."""
    path = str(tmp_path / "c.db")
    store = await _small_wal_store(path, monkeypatch, pages=40, bound=100_000)
    try:
        most = 0
        for start in range(0, 480, 16):
            await asyncio.gather(*(store.apply_push(_push(codebook, i)) for i in range(start, start + 16)))
            most = max(most, _wal_frames(path))
        ck = store._writer.checkpointer
        assert ck is not None and not ck.failed and ck.checkpoints >= 3
        # Without the checkpointer nothing would copy the WAL back below the writer's bound of 100,000: it would
        # hold every page written. With it the WAL is restarted after each checkpoint that caught up.
        assert most < 2_000
    finally:
        await store.close()
    assert not (tmp_path / "c.db-wal").exists() or (tmp_path / "c.db-wal").stat().st_size == 0
    con = sqlite3.connect(path)
    try:
        assert con.execute("SELECT count(*) FROM push_keys").fetchone()[0] == 480
    finally:
        con.close()


async def test_a_failing_checkpointer_is_logged_and_the_writer_checkpoints_again(tmp_path, codebook, monkeypatch,
                                                                                caplog) -> None:  # fmt: skip
    """The checkpointer's checkpoint fails (a disk error, injected): it is logged, the writer's connection goes
    back to checkpointing every WAL_AUTOCHECKPOINT_PAGES itself, and no push is lost or refused."""
    from omega.constellation.store.sqlite_engine import Checkpointer

    def broken(self, conn) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(Checkpointer, "checkpoint", broken)
    path = str(tmp_path / "c.db")
    store = await _small_wal_store(path, monkeypatch, pages=40, bound=100_000)
    try:
        with caplog.at_level("WARNING"):
            for start in range(0, 320, 16):
                await asyncio.gather(*(store.apply_push(_push(codebook, i)) for i in range(start, start + 16)))
        assert "the WAL checkpointer failed" in caplog.text
        assert "checkpoints the WAL itself again" in caplog.text
        assert store._writer.checkpointer is None
        auto = await store._writer.submit(lambda c: c.execute("PRAGMA wal_autocheckpoint").fetchone()[0], mode="raw")
        assert auto == 40
        assert _wal_frames(path) < 2_000  # the writer's own checkpoints keep it bounded now
    finally:
        await store.close()
    con = sqlite3.connect(path)
    try:
        assert con.execute("SELECT count(*) FROM push_keys").fetchone()[0] == 320
    finally:
        con.close()


async def test_reads_do_not_wait_for_the_writer(sqlite_store, codebook) -> None:
    """Pulls and stats are answered from WAL snapshots while the writer is busy (and see only committed state)."""
    agg = await Aggregator.open(sqlite_store, codebook, SALT, AggregationPolicy(k_min=1))
    await agg.apply(device(1), b"a", [pattern(near(codebook, 2, 1))], [], NOW)
    before = await sqlite_store.stats()

    entered, release = threading.Event(), threading.Event()

    def hold(conn: sqlite3.Connection) -> None:  # occupies the writer inside an open write transaction
        conn.execute("INSERT INTO push_keys VALUES (?, ?)", (b"held-open-write!", NOW))
        entered.set()
        release.wait(10)
        raise RuntimeError("rolled back on purpose")

    blocked = sqlite_store._writer.submit(hold)
    queued_push = asyncio.ensure_future(agg.apply(device(2), b"b", [pattern(near(codebook, 2, 2))], [], NOW))
    try:
        assert await asyncio.to_thread(entered.wait, 10)
        stats = await asyncio.wait_for(sqlite_store.stats(), 5)
        items, _, _ = await asyncio.wait_for(agg.changes_since(0), 5)
        assert stats == before  # the uncommitted write and the queued push are invisible
        assert [i.support for i in items] == [1]
        assert not queued_push.done()
    finally:
        release.set()
    with pytest.raises(RuntimeError):
        await blocked
    assert (await queued_push).accepted == 1
    assert (await sqlite_store.stats()).push_keys == before.push_keys + 1


async def test_pulls_between_pushes_do_not_break_group_commit(sqlite_store, codebook) -> None:
    """Pushes waiting together share one transaction even when pulls arrive between them."""
    agg = await Aggregator.open(sqlite_store, codebook, SALT, AggregationPolicy(k_min=1))
    await agg.apply(device(99), b"first", [pattern(near(codebook, 0, 99))], [], NOW)
    writer = sqlite_store._writer
    entered, release = threading.Event(), threading.Event()

    def hold(conn: sqlite3.Connection) -> None:  # keeps the writer busy while the next jobs queue up
        entered.set()
        release.wait(10)

    blocked = writer.submit(hold)
    assert await asyncio.to_thread(entered.wait, 10)
    groups0, grouped0 = writer.groups, writer.grouped
    pushes, pulls = [], []
    for d in range(40):
        pushes.append(asyncio.ensure_future(
            agg.apply(device(d), b"g", [pattern(near(codebook, d % 16, d))], [(0, d, 1, 1.0)], NOW)))  # fmt: skip
        pulls.append(asyncio.ensure_future(agg.changes_since(0)))
    done, _ = await asyncio.wait(pulls, timeout=5)  # answered meanwhile, from a snapshot without the pushes
    assert len(done) == 40 and all(p.result()[0][0].support == 1 for p in pulls)
    await asyncio.sleep(0.05)
    assert not any(p.done() for p in pushes)  # none is acknowledged before its commit
    release.set()
    await blocked
    results = await asyncio.gather(*pushes)
    assert sum(r.accepted for r in results) == 80
    assert (writer.groups - groups0, writer.grouped - grouped0) == (2, 41)  # the held job, then ONE group of 40
    # Items served from the item cache equal those of a fresh store on the same file.
    mine = sorted(fingerprint(i) for i in await agg.published())
    other = await open_store(f"sqlite:{sqlite_store.path}")
    try:
        fresh = await Aggregator.open(other, codebook, SALT, AggregationPolicy(k_min=1))
        assert sorted(fingerprint(i) for i in await fresh.published()) == mine
    finally:
        await other.close()


async def test_a_v1_store_is_migrated_to_the_pull_index(tmp_path, codebook) -> None:
    path = tmp_path / "old.db"
    s = await open_store(f"sqlite:{path}", origin="shard-old")
    agg = await Aggregator.open(s, codebook, SALT, AggregationPolicy(k_min=1))
    await agg.apply(device(1), b"a", [pattern(near(codebook, 4, 1))], [(0, 1, 2, 1.0)], NOW)
    before = [fingerprint(i) for i in await agg.published()]
    await s.close()
    con = sqlite3.connect(path)  # turn it back into a schema-v1 file, its member marks cleared as v1 pruned them
    con.executescript(SERVED_V7)
    for index in ("served_seq_support", "members_epoch", "contributions_epoch"):
        con.execute(f"DROP INDEX {index}")
    for table in ("dp_releases", "dp_day_keys", "dp_grants"):
        con.execute(f"DROP TABLE {table}")
    con.execute("ALTER TABLE served DROP COLUMN peak")  # v5's
    for column in ("weight", "successes", "trials", "embedding"):  # v6's
        con.execute(f"ALTER TABLE members DROP COLUMN {column}")
    con.execute("ALTER TABLE contributions DROP COLUMN legacy")
    con.execute("UPDATE members SET epoch = NULL")
    con.execute("PRAGMA user_version=1")
    con.commit()
    con.close()
    s = await open_store(f"sqlite:{path}")
    try:
        agg = await Aggregator.open(s, codebook, SALT, AggregationPolicy(k_min=1))
        assert [fingerprint(i) for i in await agg.published()] == before
    finally:
        await s.close()
    con = sqlite3.connect(path)
    try:
        assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        for index in ("served_key", "members_epoch", "contributions_epoch", "members_key"):
            assert con.execute("SELECT count(*) FROM sqlite_master WHERE name = ?", (index,)).fetchone()[0] == 1
        # v3: a cleared mark becomes the last logged epoch minus one (a full window from there, no flood).
        assert con.execute("SELECT DISTINCT epoch FROM members").fetchall() == [(NOW // DAY - 1,)]
    finally:
        con.close()


_V6_MEMBERS = """
CREATE TABLE members_v6 (
    kind INTEGER NOT NULL, k1 INTEGER NOT NULL, k2 INTEGER NOT NULL, k3 INTEGER NOT NULL,
    member BLOB NOT NULL, epoch INTEGER, weight REAL, successes REAL, trials REAL, embedding BLOB,
    PRIMARY KEY (kind, k1, k2, k3, member)) WITHOUT ROWID;
INSERT INTO members_v6 SELECT * FROM members;
DROP TABLE members;
ALTER TABLE members_v6 RENAME TO members;
CREATE INDEX members_epoch ON members (epoch);
PRAGMA user_version=6
"""


async def test_a_v6_store_keeps_its_member_marks_in_the_rowid_members_table(tmp_path, codebook) -> None:
    """v7 moves the member rows to a rowid table found by a unique key index: the same marks, so a device
    that contributed to a key this epoch is still refused as a flood, its contribution in a later epoch still
    replaces its earlier one (latest wins), and another device still adds support."""
    path = tmp_path / "v6.db"
    s = await open_store(f"sqlite:{path}", origin="shard-v6")
    agg = await Aggregator.open(s, codebook, SALT, AggregationPolicy(k_min=1))
    for n in range(3):
        await agg.apply(device(n), b"a", [pattern(near(codebook, 4, n))], [(0, 1, 2, 1.0), (0, 2, 3, 0.5)], NOW)
    before = sorted(fingerprint(i) for i in await agg.published())
    await s.close()
    con = sqlite3.connect(path)
    marks = sorted(con.execute("SELECT * FROM members").fetchall())
    con.executescript(SERVED_V7 + _V6_MEMBERS)
    con.close()
    s = await open_store(f"sqlite:{path}")
    try:
        con = sqlite3.connect(path)
        try:
            assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
            assert sorted(con.execute("SELECT * FROM members").fetchall()) == marks
            table = con.execute("SELECT sql FROM sqlite_master WHERE name = 'members'").fetchone()[0]
            assert "WITHOUT ROWID" not in table
            names = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE tbl_name = 'members'")}
            assert {"members_key", "members_epoch"} <= names
        finally:
            con.close()
        agg = await Aggregator.open(s, codebook, SALT, AggregationPolicy(k_min=1))
        assert sorted(fingerprint(i) for i in await agg.published()) == before
        again = await agg.apply(device(0), b"b", [pattern(near(codebook, 4, 9))], [(0, 1, 2, 1.0)], NOW)
        assert again.accepted == 0 and len(again.rejections) == 2  # flooded: marked this epoch
        later = await agg.apply(device(0), b"c", [], [(0, 1, 2, 0.25)], NOW + DAY)
        fresh = await agg.apply(device(7), b"a", [], [(0, 2, 3, 1.0)], NOW + DAY)
        assert later.accepted == 1 and fresh.accepted == 1
        edges = {(e.src, e.dst): e for e in await agg.published() if not isinstance(e, ConsolidatedCell)
                 and e.keyspace == 0}  # fmt: skip
        assert edges[(1, 2)].support == 3 and edges[(2, 3)].support == 4  # a replacement adds no support
    finally:
        await s.close()
    con = sqlite3.connect(path)
    try:  # the state's summed weight (not published): device 0's 1.0 replaced by its 0.25
        weight = con.execute("SELECT weight FROM edge_state WHERE keyspace = 0 AND src = 1 AND dst = 2").fetchone()[0]
        assert weight == pytest.approx(2.25)
    finally:
        con.close()


async def test_a_v7_store_keeps_its_served_rows_keyed_by_their_change_seq(tmp_path, codebook) -> None:
    """v8 keys the served rows by their change seq (the rowid) and finds them by a unique key index: the same
    rows, so a TV's cursor still means the same changes, and the next change still takes the head's next seq."""
    path = tmp_path / "v7.db"
    s = await open_store(f"sqlite:{path}", origin="shard-v7")
    agg = await Aggregator.open(s, codebook, SALT, AggregationPolicy(k_min=1))
    for n in range(3):
        await agg.apply(device(n), b"a", [pattern(near(codebook, 4, n))], [(0, 1, 2, 1.0), (0, 2, 3 + n, 0.5)], NOW)
    before = sorted(fingerprint(i) for i in await agg.published())
    middle, _, _ = await agg.changes_since(4)
    await s.close()
    con = sqlite3.connect(path)
    rows = sorted(con.execute("SELECT kind, k1, k2, k3, seq, support, peak FROM served").fetchall())
    con.executescript(SERVED_V7)
    con.close()
    s = await open_store(f"sqlite:{path}")
    try:
        con = sqlite3.connect(path)
        try:
            assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
            assert sorted(con.execute("SELECT kind, k1, k2, k3, seq, support, peak FROM served").fetchall()) == rows
            names = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE tbl_name = 'served'")}
            assert names == {"served", "served_key", "served_published"}
        finally:
            con.close()
        agg = await Aggregator.open(s, codebook, SALT, AggregationPolicy(k_min=1))
        assert sorted(fingerprint(i) for i in await agg.published()) == before
        assert [fingerprint(i) for i in (await agg.changes_since(4))[0]] == [fingerprint(i) for i in middle]
        head = max(r[4] for r in rows)
        again = await agg.apply(device(5), b"a", [], [(0, 1, 2, 1.0)], NOW)  # a held key: its row moves to head + 1
        assert again.accepted == 1
        items, cursor, _ = await agg.changes_since(head)
        assert [(ident(i), i.version, i.support) for i in items] == [(("e", 0, 1, 2), head + 1, 4)]
        assert cursor == head + 1
    finally:
        await s.close()


def _hold_writer(writer) -> tuple[threading.Event, threading.Event, object]:
    """Occupy the writer so the jobs submitted next wait together (one group)."""
    entered, release = threading.Event(), threading.Event()

    def hold(conn: sqlite3.Connection) -> None:
        entered.set()
        release.wait(10)

    return entered, release, writer.submit(hold)


def _tables(path) -> dict[str, list]:
    con = sqlite3.connect(path)
    try:
        return {table: con.execute(f"SELECT * FROM {table} ORDER BY {order}").fetchall() for table, order in (
            ("cell_state", "task_type, cell, origin"), ("edge_state", "keyspace, src, dst, origin"),
            ("served", "kind, k1, k2, k3"), ("members", "kind, k1, k2, k3, member"), ("contributions", "id"),
            ("push_keys", "key"))}  # fmt: skip
    finally:
        con.close()


async def _grouped_and_one_by_one(tmp_path, codebook, before: list, group: list) -> dict:
    """Outcomes, published items, stats and tables after `before` (one push at a time) and then `group`, once
    held together in one group commit and once one push at a time, each on a store of its own."""
    results = {}
    for name, together in (("grouped", True), ("one by one", False)):
        store = await open_store(f"sqlite:{tmp_path / name}.db", origin="shard-test")
        try:
            agg = await Aggregator.open(store, codebook, SALT, AggregationPolicy(k_min=2))
            writer = store._writer  # noqa: SLF001 - the group counters
            for p in before:
                await agg.apply(*p)
            if together:
                entered, release, blocked = _hold_writer(writer)
                assert await asyncio.to_thread(entered.wait, 10)
                groups0 = writer.groups
                jobs = [asyncio.ensure_future(agg.apply(*p)) for p in group]
                await asyncio.sleep(0.05)
                release.set()
                await blocked
                out = await asyncio.gather(*jobs)
                assert writer.groups - groups0 == 2  # the held job, then one group of all the pushes
            else:
                out = [await agg.apply(*p) for p in group]
            assert any(r.duplicate for r in out) and any(r.rejections for r in out)
            results[name] = (out, sorted(fingerprint(i) for i in await agg.published()), await store.stats())
        finally:
            await store.close()
        results[name] += (_tables(tmp_path / f"{name}.db"),)
    assert results["grouped"] == results["one by one"]
    return results["grouped"][3]


def _pushes(codebook, first: int, count: int, now: int, weight: float = 0.0) -> list:
    out = []
    for n in range(first, first + count):
        d = n % 9  # devices 0..8 push 2-3 times: the later ones flood what they already added
        cells = [pattern(near(codebook, n % 4, n), rate=0.8 + weight / 10),
                 pattern(near(codebook, (n * 5) % 7, 100 + n))]  # fmt: skip
        edges = [(0, d % 3, 10 + n % 5, 1.0 + (n % 3) / 4 + weight), (0, 10 + n % 5, 20 + d % 2, 0.5),
                 (1, n % 4, 7, 2.0 - weight)]  # fmt: skip
        out.append((device(d), b"batch-%d" % n, cells, edges, now + n))
    out.insert(min(10, len(out)), out[min(4, len(out) - 1)])  # a retry in the same group: a duplicate
    return out


async def test_a_group_writes_what_one_push_at_a_time_writes(tmp_path, codebook) -> None:
    """Set-based group writes: the same rows, outcomes and change numbers as the pushes applied one by one.

    The group has keys shared by several pushes (cells, edges, their pairs), a device flooding a cell
    and an edge twice in the epoch, and a batch retried inside the group."""
    await _grouped_and_one_by_one(tmp_path, codebook, [], _pushes(codebook, 0, 24, NOW))


async def test_a_group_of_a_later_epoch_replaces_what_its_members_held_as_one_push_at_a_time_does(
    tmp_path, codebook
) -> None:
    """The next day the same devices push the same keys with other weights and counts (latest wins: each
    member's new contribution replaces what it held), with new devices and floods among them: grouped or
    one by one, the same rows. Edge members hold a weight only; cell members their counts and embedding."""
    tables = await _grouped_and_one_by_one(
        tmp_path, codebook, _pushes(codebook, 0, 12, NOW), _pushes(codebook, 6, 24, NOW + DAY, weight=0.25)
    )
    members = tables["members"]
    assert {r[5] for r in members} == {NOW // DAY, NOW // DAY + 1}  # marks of both days, the later replacing
    assert all(r[7:] == (None, None, None) and r[6] > 0 for r in members if r[0] == KIND_EDGE)
    assert all(None not in r[6:] for r in members if r[0] == KIND_CELL)


async def test_a_group_commit_answers_its_pushes_in_one_wake_up_of_the_loop(sqlite_store, codebook) -> None:
    """The writer hands a group's results to the event loop at once (one thread-safe call for the group,
    not one per push): each push still gets its own outcome, and only after the group's COMMIT."""
    agg = await Aggregator.open(sqlite_store, codebook, SALT, AggregationPolicy(k_min=1))
    writer = sqlite_store._writer  # noqa: SLF001
    loop = asyncio.get_running_loop()
    wake_ups = []
    real = loop.call_soon_threadsafe

    def counted(callback, *args, **kwargs):  # noqa: ANN001, ANN202
        if threading.current_thread().name.startswith("omega-store:"):
            wake_ups.append(callback)
        return real(callback, *args, **kwargs)

    entered, release, blocked = _hold_writer(writer)
    assert await asyncio.to_thread(entered.wait, 10)
    loop.call_soon_threadsafe = counted  # type: ignore[method-assign]
    try:
        groups0 = writer.groups
        jobs = [asyncio.ensure_future(agg.apply(device(d), b"w", [pattern(near(codebook, d % 4, d))],
                                                [(0, d, d + 1, 1.0)], NOW)) for d in range(12)]  # fmt: skip
        await asyncio.sleep(0.05)
        release.set()
        await blocked
        out = await asyncio.gather(*jobs)
    finally:
        del loop.call_soon_threadsafe
    assert writer.groups - groups0 == 2  # the held job, then one group of the 12 pushes
    assert len(wake_ups) == 2, wake_ups  # one per transaction: the held job's, then the group's
    assert [r.accepted for r in out] == [2] * 12 and len({r.cursor for r in out}) == 12  # each its own head


async def test_a_group_that_fails_in_sql_is_reapplied_push_by_push(sqlite_store, codebook) -> None:
    """A statement failing in a group: nothing of the group is kept, each push is applied again alone,
    and only the push that fails by itself is refused; none is applied twice."""
    agg = await Aggregator.open(sqlite_store, codebook, SALT, AggregationPolicy(k_min=1))
    grouped = sqlite_store._apply_group  # noqa: SLF001 - the real method, made to fail
    bad_device = device(3)
    bad_key = agg._keyed(b"omega/push" + bad_device + b"x", 16)  # noqa: SLF001

    def failing(conn: sqlite3.Connection, pushes: list) -> list:
        out = grouped(conn, pushes)  # written, then undone by the failure
        if any(p.push_key == bad_key for p in pushes):
            conn.execute("SELECT * FROM no_such_table")  # what any failing statement does to the transaction
        return out

    sqlite_store._apply_group = failing  # noqa: SLF001
    writer = sqlite_store._writer  # noqa: SLF001
    entered, release, blocked = _hold_writer(writer)
    assert await asyncio.to_thread(entered.wait, 10)
    jobs = [asyncio.ensure_future(
        agg.apply(device(d), b"x", [pattern(near(codebook, d % 4, d))], [(0, d, d + 1, 1.0)], NOW)) for d in range(6)]
    await asyncio.sleep(0.05)
    release.set()
    await blocked
    results = await asyncio.gather(*jobs, return_exceptions=True)
    refused = [i for i, r in enumerate(results) if isinstance(r, Exception)]
    assert refused == [3] and "no_such_table" in str(results[3])
    assert [r.accepted for i, r in enumerate(results) if i != 3] == [2] * 5
    stats = await sqlite_store.stats()
    assert stats.push_keys == 5 and stats.contributions == 5  # a pattern each, once (edges are not logged)
    # The refused push left nothing behind: applied again (now without the failure), it is not a duplicate.
    sqlite_store._apply_group = grouped  # noqa: SLF001
    again = await agg.apply(bad_device, b"x", [pattern(near(codebook, 3, 3))], [(0, 3, 4, 1.0)], NOW)
    assert not again.duplicate and again.accepted == 2


async def test_a_store_path_sqlite_cannot_open_is_one_clear_error_not_a_hang(tmp_path) -> None:
    # A NUL byte (possible in a JSON or TOML config file) made sqlite3.connect raise ValueError in the writer's
    # thread, which died: the store's first job was never answered and open() waited for ever.
    with pytest.raises(OmegaError, match="cannot open store"):
        await asyncio.wait_for(open_store(f"sqlite:{tmp_path}/bad\0name.db"), 30)


async def test_a_writer_that_could_not_connect_answers_jobs_queued_after_it_failed(tmp_path) -> None:
    writer = Writer(str(tmp_path / "bad\0name.db"))
    await asyncio.sleep(0.2)  # the thread has failed to connect before these jobs are queued (the old code's race)
    for mode in ("raw", "tx"):
        with pytest.raises(OmegaError, match="cannot open store"):
            await asyncio.wait_for(writer.submit(lambda conn: None, mode=mode), 30)
    writer.stop()
    await asyncio.wait_for(asyncio.to_thread(writer.join), 30)


async def test_a_writer_thread_that_fails_is_logged_and_refuses_writes_instead_of_hanging(
    sqlite_store, codebook, monkeypatch, caplog
) -> None:
    """A fault in the writer's own loop (not in a job: those are each caller's error) ends its thread: logged
    once, the job in hand and every later write refused at once with a clear error, none left waiting."""
    agg = await Aggregator.open(sqlite_store, codebook, SALT, AggregationPolicy(k_min=1))
    writer = sqlite_store._writer  # noqa: SLF001

    def broken(batch: list) -> None:
        raise RuntimeError("a bug in the writer loop")

    monkeypatch.setattr(writer, "_run_group", broken)
    first = asyncio.ensure_future(agg.apply(device(1), b"a", [pattern(near(codebook, 2, 1))], [], NOW))
    await asyncio.to_thread(writer._threads[0].join, 10)  # noqa: SLF001
    assert not writer._threads[0].is_alive()  # noqa: SLF001
    with pytest.raises(OmegaError, match="closed"):
        await asyncio.wait_for(agg.apply(device(2), b"b", [pattern(near(codebook, 3, 2))], [], NOW), 5)
    with pytest.raises(OmegaError, match="closed"):
        await asyncio.wait_for(sqlite_store.prune(NOW, 0), 5)
    with pytest.raises(OmegaError, match="writer of store .* failed"):  # the push in hand at the fault
        await asyncio.wait_for(first, 5)
    assert [r.levelname for r in caplog.records if "writer thread" in r.getMessage()] == ["ERROR"]


_PUSHER = """
import asyncio, sys
import numpy as np
from omega.constellation.store import CellContribution, EdgeContribution, PreparedPush, open_store

async def main(path, pages):
    if pages:  # checkpoints off the writer every `pages` WAL pages, so the kill lands among them
        import omega.constellation.store.sqlite as store_sqlite
        store_sqlite.WAL_AUTOCHECKPOINT_PAGES = pages
    store = await open_store("sqlite:" + path, origin="shard-crash")
    ck = store._writer.checkpointer if pages else None
    rng = np.random.default_rng(0)

    async def one(i):
        v = rng.normal(size=384).astype(np.float32)
        push = PreparedPush(i.to_bytes(16, "big"), 0, 1_700_000_000_000, [
            CellContribution(0, 0, i % 50, i.to_bytes(8, "big"), 1.0, v / np.linalg.norm(v), 1.0, 1.0)],
            [EdgeContribution(0, 0, i % 7, 100 + i % 11, i.to_bytes(8, "big"), 1.0)])
        out = await store.apply_push(push)
        print(push.push_key.hex(), out.head, ck.checkpoints if ck else 0, flush=True)  # acknowledged

    i = 0
    while True:
        await asyncio.gather(*(one(i + k) for k in range(16)))
        i += 16

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


@pytest.mark.parametrize("pages", [0, 30])
async def test_nothing_acknowledged_is_lost_when_the_server_process_is_killed(tmp_path, pages) -> None:
    """A process pushing 16 at a time is SIGKILLed mid-stream (with groups in flight: some written, some
    committed but not yet answered): every push it had acknowledged is in the file, up to the change number it
    was told. It fails if a push were answered before its COMMIT. (A process kill keeps what the kernel holds;
    against a power cut, synchronous=FULL fsyncs the WAL inside COMMIT: the pragma test above.) With pages=30
    the checkpointer's thread copies the WAL back every 30 pages while the writer commits, and has done so
    several times before the kill."""
    import os
    import signal
    import sys

    path = str(tmp_path / "crash.db")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", _PUSHER, path, str(pages), env=env,
                                                stdout=asyncio.subprocess.PIPE)  # fmt: skip
    acked: dict[bytes, int] = {}
    checkpoints = 0
    try:
        while len(acked) < 200 or (pages and checkpoints < 3):
            line = await asyncio.wait_for(proc.stdout.readline(), 60)
            assert line, "the pushing process ended by itself"
            key, head, done = line.split()
            acked[bytes.fromhex(key.decode())] = int(head)
            checkpoints = int(done)
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    con = sqlite3.connect(path)
    try:
        held = {bytes(k) for (k,) in con.execute("SELECT key FROM push_keys")}
        seqs = {r[0] for r in con.execute("SELECT seq FROM served")}
    finally:
        con.close()
    assert set(acked) <= held
    assert max(acked.values()) <= max(seqs)
