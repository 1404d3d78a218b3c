"""The embedded constellation store: one SQLite file, one writer thread, reader threads.

Durability: WAL with `synchronous=FULL`, so the WAL is fsynced at every commit
and a push is on disk before `apply_push` returns (the server acks after it).
With NORMAL, WAL commits are only durable at the next checkpoint; a power cut
could lose pushes the TVs were already told were accepted (and dropped from
their outboxes). The fsync cost is shared by *group commit*: the writer applies
every push waiting in its queue inside one transaction, set-based (each table
written once per group, rows merged per key: `_apply_group`), commits once, then
resolves all of them — none is acknowledged before the commit. A push the store
refuses is refused alone; if a statement fails, the group is rolled back and
its pushes are applied one by one, so each push stays atomic.

Reads (delta pulls, stats, similarity search, federation export) never enter
the writer's queue: they run on their own connections and threads, each inside
one read transaction, i.e. one consistent WAL snapshot of committed state. So a
pull neither waits for a commit nor splits a group of pushes into several
fsyncs, and a push acknowledged before a read was submitted is visible to it.
Consolidated items are cached by (key, change seq): every write to a key's
state gives it a new seq, so a cached item is never stale. The WAL is copied
back into the file by a checkpointer thread of its own (PASSIVE checkpoints),
not inside the writer's COMMITs; closing the store ends with a full checkpoint.

The threads: sqlite_engine.py. Tables and migrations: sqlite_schema.py. What a
push, a merge or a pull computes (the same on every backend): logic.py — this
module only reads and writes rows.
"""

from __future__ import annotations

import asyncio
import functools
import os
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from omega.constellation.crdt import CellKey, ConsolidatedCell, ConsolidatedEdge, EdgeKey, FederatedState
from omega.constellation.privacy import check_k_min
from omega.constellation.store import logic, sqlite_schema, window
from omega.constellation.store.base import (
    KIND_CELL,
    KIND_EDGE,
    CellEntries,
    ChangePage,
    ConstellationStore,
    EdgeEntries,
    PageBudget,
    PreparedPush,
    PruneStats,
    PushOutcome,
    StoreStats,
    check_query,
)
from omega.constellation.store.sqlite_engine import MISS, Checkpointer, ItemCache, Readers, Writer
from omega.constellation.store.sqlite_schema import WAL_AUTOCHECKPOINT_PAGES, PUBLISHED_INDEX, open_schema, pull_floor
from omega.errors import OmegaError

#: Threads (each with its own connection) that serve reads from WAL snapshots.
READER_THREADS = 2
#: Consolidated items kept by (key, change seq) for pulls (a page re-reads what another device just got).
ITEM_CACHE_ENTRIES = 8192
#: Published patterns loaded per step of a similarity search.
_KEYS_PER_QUERY = 4096

# A cell state row replaces the held one in place (an UPSERT keeps its rowid and page: INSERT OR REPLACE deleted
# the ~3 KB row and appended it anew, dirtying its old page, the free list, the new page and the key index).
_PUT_CELL = (
    "INSERT INTO cell_state VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (task_type, cell, origin) DO UPDATE SET "
    "sum_w = excluded.sum_w, sum_wx = excluded.sum_wx, support = excluded.support, successes = excluded.successes, "
    "trials = excluded.trials, version = excluded.version"
)
_NEW_PUSH_KEYS = "INSERT OR IGNORE INTO push_keys VALUES {keys} RETURNING key"
# A push's edge rows: weight and support are added, version replaces.
_ADD_EDGE = (
    "INSERT INTO edge_state VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET "
    "weight = weight + excluded.weight, support = support + excluded.support, version = excluded.version"
)
# A member's mark: its last contribution's epoch and what that contribution counts (latest wins: logic.GroupWrites).
_MARK_MEMBER = (
    "INSERT INTO members VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET epoch = excluded.epoch, "
    "weight = excluded.weight, successes = excluded.successes, trials = excluded.trials, embedding = excluded.embedding"
)
# An edge's member: its first seven fields (its counts and embedding are always NULL). Binding the three NULLs and
# setting them made the upsert ~1/4 dearer per row (~20 member rows per push are edges').
_MARK_EDGE_MEMBER = (
    "INSERT INTO members (kind, k1, k2, k3, member, epoch, weight) VALUES (?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT DO UPDATE SET epoch = excluded.epoch, weight = excluded.weight"
)
_LOG = (
    "INSERT INTO contributions (epoch, kind, k1, k2, k3, weight, successes, trials, embedding) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# A served row's change: seq replaces, support is added (a push's new members, an expiry's leavers).
# `peak` keeps the highest support the key ever had (a published key's removal is served: logic.removal).
# The conflict target is the key: a seq (the rowid) taken twice is an error, never an update of another key.
_ADD_SERVED = (
    "INSERT INTO served (kind, k1, k2, k3, seq, support, peak) VALUES (?1, ?2, ?3, ?4, ?5, ?6, max(?6, 0)) "
    "ON CONFLICT (kind, k1, k2, k3) DO UPDATE SET seq = excluded.seq, support = support + excluded.support, "
    "peak = max(peak, support + excluded.support)"
)
# A merge's served row: seq and global support replace.
_PUT_SERVED = (
    "INSERT INTO served (kind, k1, k2, k3, seq, support, peak) VALUES (?1, ?2, ?3, ?4, ?5, ?6, max(?6, 0)) "
    "ON CONFLICT (kind, k1, k2, k3) DO UPDATE SET seq = excluded.seq, support = excluded.support, "
    "peak = max(peak, excluded.support)"
)


def _flat(rows: Sequence[tuple]) -> list[Any]:
    return [v for row in rows for v in row]


def _head(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT coalesce(max(seq), 0) FROM served").fetchone()[0])


@functools.lru_cache(maxsize=64)
def _served_rows(pull_floor: int, k_min: int) -> str:
    """FROM and WHERE of a read of the served rows a pull with `k_min` may serve (logic.indexed_floor): the
    published keys' index when it holds them all (INDEXED BY: an error, never a silent scan of every row, if
    the index and the floor in `meta` disagreed), else every served row."""
    floor = logic.indexed_floor(pull_floor, k_min)
    if floor is not None:
        return f"FROM served INDEXED BY {PUBLISHED_INDEX} WHERE peak >= {int(floor)} AND {logic.PULLED_KEYS} AND "
    return f"FROM served WHERE {logic.PULLED_KEYS} AND "


#: Keys per statement of `_of_keys`: a few fixed sizes (powers of two up to 512), so each such statement is
#: compiled once per connection and then found in its statement cache. A VALUES list of a new length was
#: parsed and compiled anew on every group commit (~1/3 of the group's member lookup).
_CHUNK_SIZES = (8, 16, 32, 64, 128, 256, 512)


@functools.lru_cache(maxsize=256)
def _sql_of(sql: str, size: int, width: int) -> str:
    one = "(" + ",".join("?" * width) + ")"
    return sql.format(keys=",".join([one] * size))


def _of_keys(conn: sqlite3.Connection, sql: str, keys: Sequence[tuple], *extra: object) -> list[tuple]:
    """Rows of `sql` joined to the keys as the CTE `v` (`{keys}` in `sql`), in chunks of `_CHUNK_SIZES`.

    The last chunk is padded with repeats of its last key, so a key's rows may come more than once: every
    caller keys what it reads (a dict or a set), and INSERT OR IGNORE inserts a repeated key once."""
    rows: list[tuple] = []
    width = len(keys[0]) if keys else 0
    step = _CHUNK_SIZES[-1]
    for start in range(0, len(keys), step):
        chunk = list(keys[start : start + step])
        size = next(n for n in _CHUNK_SIZES if n >= len(chunk))
        chunk += [chunk[-1]] * (size - len(chunk))
        rows += conn.execute(_sql_of(sql, size, width), [*_flat(chunk), *extra]).fetchall()
    return rows


# CROSS JOIN keeps the few wanted keys as the outer loop: one primary-key probe each.
_CELLS_OF_KEYS = (
    f"WITH v(t, c) AS (VALUES {{keys}}) SELECT {logic.CELL_COLUMNS} "
    "FROM v CROSS JOIN cell_state s ON s.task_type = v.t AND s.cell = v.c"
)
_EDGES_OF_KEYS = (
    f"WITH v(ks, s, d) AS (VALUES {{keys}}) SELECT {logic.EDGE_COLUMNS} "
    "FROM v CROSS JOIN edge_state e ON e.keyspace = v.ks AND e.src = v.s AND e.dst = v.d"
)
_OWN_CELLS_OF_KEYS = _CELLS_OF_KEYS + " AND s.origin = ?"
_MEMBER_EPOCHS = (
    "WITH v(kind, k1, k2, k3, member) AS (VALUES {keys}) "
    "SELECT m.kind, m.k1, m.k2, m.k3, m.member, m.epoch, m.weight, m.successes, m.trials, m.embedding "
    "FROM v CROSS JOIN members m "
    "ON m.kind = v.kind AND m.k1 = v.k1 AND m.k2 = v.k2 AND m.k3 = v.k3 AND m.member = v.member"
)


def _cells(conn: sqlite3.Connection, keys: Sequence[CellKey]) -> list:
    """(origin, key, entry) of every origin's entries of the given cells."""
    return [logic.cell_entry(r) for r in _of_keys(conn, _CELLS_OF_KEYS, keys)]


def _edges(conn: sqlite3.Connection, keys: Sequence[EdgeKey]) -> list:
    """(origin, key, entry) of every origin's entries of the given edges."""
    return [logic.edge_entry(r) for r in _of_keys(conn, _EDGES_OF_KEYS, keys)]


class SqliteStore(ConstellationStore):
    """`ConstellationStore` on one SQLite file. Create with `await SqliteStore.open(path)`."""

    def __init__(self, path: str, writer: Writer, readers: Readers | None, origin: str) -> None:
        self.path = path
        self.origin = origin
        self._writer = writer
        self._readers = readers
        self._codebook_version: int | None = None
        self._items = ItemCache(ITEM_CACHE_ENTRIES)

    @classmethod
    async def open(cls, path: str | os.PathLike[str], origin: str | None = None) -> SqliteStore:
        spath = str(path)
        if spath != ":memory:":
            parent = Path(spath).parent
            if not parent.is_dir():
                raise OmegaError(f"store directory does not exist: {parent}")
            if Path(spath).is_dir():
                raise OmegaError(f"store path is a directory: {spath}")
        writer = Writer(spath)

        def init(conn: sqlite3.Connection) -> str:
            open_schema(conn, spath)
            row = conn.execute("SELECT value FROM meta WHERE key='origin'").fetchone()
            if row is None:
                name = origin or f"shard-{os.urandom(6).hex()}"
                conn.execute("INSERT INTO meta VALUES ('origin', ?)", (name,))
                return name
            if origin is not None and origin != row[0]:
                raise OmegaError(f"store {spath} belongs to origin {row[0]!r}, not {origin!r}")
            return str(row[0])

        # The schema step manages its own transactions (PRAGMAs cannot run inside one).
        fut = writer.submit(init, mode="raw")
        try:
            name = await fut
        except BaseException:
            writer.stop()
            await asyncio.to_thread(writer.join)
            raise
        # An in-memory database is private to its connection: there, the writer serves reads too.
        readers = None if spath == ":memory:" else Readers(spath, READER_THREADS)
        if spath != ":memory:":
            writer.checkpointer = Checkpointer(spath, WAL_AUTOCHECKPOINT_PAGES)
        return cls(spath, writer, readers, name)

    def _read(self, fn: Callable[[sqlite3.Connection], Any]) -> asyncio.Future[Any]:
        if self._readers is None:
            return self._writer.submit(fn)
        return self._readers.submit(fn)

    async def close(self) -> None:
        ck = self._writer.checkpointer
        if ck is not None:  # closed first: the last connection to close checkpoints the whole WAL, as before
            ck.stop()
            await asyncio.to_thread(ck.join)
        self._writer.stop()
        if self._readers is not None:
            self._readers.stop()
        await asyncio.to_thread(self._writer.join)
        if self._readers is not None:
            await asyncio.to_thread(self._readers.join)

    # ---- binding -------------------------------------------------------------------
    async def bind(self, codebook_fingerprint: str, codebook_version: int, salt_check: bytes) -> None:
        wanted = logic.binding(codebook_fingerprint, codebook_version, salt_check)

        def run(conn: sqlite3.Connection) -> None:
            have = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            for key, value in wanted.items():
                if key not in have:
                    conn.execute("INSERT INTO meta VALUES (?, ?)", (key, value))
                elif have[key] != value:
                    raise logic.binding_mismatch(self.path, key)

        await self._writer.submit(run)
        self._codebook_version = int(codebook_version)

    async def set_pull_floor(self, k_min: int) -> None:
        await self._writer.submit(functools.partial(sqlite_schema.set_pull_floor, floor=check_k_min(k_min)), mode="raw")

    # ---- pushes --------------------------------------------------------------------
    async def apply_push(self, push: PreparedPush) -> PushOutcome:
        return await self._writer.submit_group(self._apply_group, push)

    def _apply_group(self, conn: sqlite3.Connection, pushes: list[PreparedPush]) -> list[PushOutcome | Exception]:
        """The pushes waiting together, set-based: a few statements per table whatever the group's size.

        Same result as applying them one after the other: each push is classified and accumulated on
        top of the ones before it in the group (member marks and own accumulators kept in memory, as
        the PostgreSQL store does), then each table is written once, rows merged per key
        (logic.GroupWrites) and in key order. A push `check_push` refuses is refused alone, before any
        SQL; a statement that fails undoes the group, and the writer applies its pushes one by one.
        """
        results, valid, first = logic.check_group(pushes)
        # Only the keys not held yet come back (OR IGNORE skips the others).
        fresh = _of_keys(conn, _NEW_PUSH_KEYS, [(k, pushes[i].now_ms) for k, i in first.items()]) if first else []
        applied = {first[bytes(r[0])] for r in fresh}
        rows_of = {i: logic.member_rows(pushes[i]) for i in applied}
        wanted = sorted({row for rows in rows_of.values() for row in rows})
        known: dict[logic.MemberRow, logic.Held] = _member_epochs(conn, wanted) if wanted else {}
        keys = sorted({(c.task_type, c.cell) for i in applied for c in pushes[i].cells})
        own = _of_keys(conn, _OWN_CELLS_OF_KEYS, keys, self.origin) if keys else []
        own_rows = {(r[1], r[2]): r for r in own}
        head = _head(conn)
        group = logic.GroupWrites(self.origin)
        for i in valid:
            if i not in applied:
                results[i] = PushOutcome(duplicate=True, head=head)
                continue
            outcome = results[i] = group.push(pushes[i], rows_of[i], known, own_rows, head)
            head = outcome.head
        # Change numbers are absolute already (one writer: the head read above is the base). In key order (the
        # member keys sorted): consecutive rows land on the same B-tree pages.
        w = group.rows(0, wanted)
        conn.executemany(_PUT_CELL, w.cells)
        conn.executemany(_ADD_EDGE, w.edges)
        conn.executemany(_ADD_SERVED, w.served)
        conn.executemany(_MARK_MEMBER, [m for m in w.members if m[0] == KIND_CELL])
        conn.executemany(_MARK_EDGE_MEMBER, [m[:7] for m in w.members if m[0] != KIND_CELL])
        conn.executemany(_LOG, w.log)
        return results  # type: ignore[return-value]

    # ---- delta pull ----------------------------------------------------------------
    async def _changes(self, cursor: int, k_min: int, budget: PageBudget) -> ChangePage:
        def run(conn: sqlite3.Connection) -> ChangePage:
            head = _head(conn)
            page = logic.Page(cursor, head, budget)
            floor = logic.scan_floor(cursor, head, k_min)
            scan = (f"SELECT kind, k1, k2, k3, seq, support {_served_rows(pull_floor(conn), k_min)}"
                    "seq > ? AND (support >= ? OR peak >= ?) ORDER BY seq LIMIT ?")  # fmt: skip
            while page.take(conn.execute(scan, (page.last, k_min, floor, logic.PAGE_SCAN)).fetchall()):
                pass
            live = [r[:5] for r in page.chosen if r[5] >= k_min]
            loaded = iter(self._load_items(conn, live))
            items = [next(loaded) if r[5] >= k_min else logic.removal(r) for r in page.chosen]
            return ChangePage([item for item in items if item is not None], page.cursor, page.more)

        return await self._read(run)

    async def published_cowatch(self, k_min: int) -> list[tuple[int, int, int]]:
        sql = logic.cowatch_sql("served", "?")
        return await self._read(lambda conn: [tuple(r) for r in conn.execute(sql, (int(k_min),)).fetchall()])

    def _load_items(self, conn: sqlite3.Connection, chosen: list) -> list[ConsolidatedCell | ConsolidatedEdge | None]:
        # A served key's item at a given change seq never changes (every write to a key's state
        # gives it a new seq), so consolidated items are cached by (kind, key, seq).
        known = self._items.get_many(chosen)
        missing = [r for r, item in zip(chosen, known, strict=True) if item is MISS]
        if missing:
            cells = logic.table_of(_cells(conn, [CellKey(r[1], r[2]) for r in missing if r[0] == KIND_CELL]))
            edges = logic.table_of(_edges(conn, [EdgeKey(*r[1:4]) for r in missing if r[0] == KIND_EDGE]))
            loaded = logic.consolidate_rows(missing, cells, edges)
            for item in loaded:
                if isinstance(item, ConsolidatedCell):
                    item.embedding.setflags(write=False)  # shared through the item cache
            self._items.put_many(missing, loaded)
            fill = iter(loaded)
            known = [next(fill) if item is MISS else item for item in known]
        return known  # None: a cell without usable weight

    # ---- similarity search ---------------------------------------------------------
    async def nearest_consolidated(
        self, vector: np.ndarray, k: int, k_min: int, task_type: int | None = None
    ) -> list[tuple[CellKey, float]]:
        # Embedded scale (a codebook's cells): an exact numpy scan over the published patterns.
        q = check_query(vector, k, k_min)

        def run(conn: sqlite3.Connection) -> list[tuple[CellKey, float]]:
            where = _served_rows(pull_floor(conn), int(k_min))
            sql = f"SELECT kind, k1, k2, k3, seq {where}kind = {KIND_CELL} AND support >= ?"
            args: list[int] = [int(k_min)]
            if task_type is not None:
                sql += " AND k1 = ?"
                args.append(int(task_type))
            rows = conn.execute(sql, args).fetchall()
            patterns = []
            for start in range(0, len(rows), _KEYS_PER_QUERY):
                patterns += [p for p in self._load_items(conn, rows[start : start + _KEYS_PER_QUERY]) if p is not None]
            if not patterns:
                return []
            sims = np.stack([p.embedding for p in patterns]) @ q
            best = np.argsort(-sims, kind="stable")[: int(k)]
            return [(patterns[i].key, float(sims[i])) for i in best]

        return await self._read(run)

    # ---- housekeeping --------------------------------------------------------------
    async def prune(self, push_keys_before_ms: int, epoch_before: int) -> PruneStats:
        def run(conn: sqlite3.Connection) -> PruneStats:
            keys = conn.execute("DELETE FROM push_keys WHERE at_ms < ?", (push_keys_before_ms,)).rowcount
            w = self._expire(conn, int(epoch_before))
            members = conn.execute("DELETE FROM members WHERE epoch < ?", (epoch_before,)).rowcount
            log = conn.execute("DELETE FROM contributions WHERE epoch < ?", (epoch_before,)).rowcount
            conn.execute("DELETE FROM dp_releases WHERE epoch < ?", (epoch_before,))
            conn.execute("DELETE FROM dp_day_keys WHERE epoch < ?", (epoch_before,))
            conn.execute("DELETE FROM dp_grants WHERE epoch < ?", (epoch_before,))
            return PruneStats(keys, members, log, w.keys, w.head)

        return await self._writer.submit(run)

    # ---- DP state ------------------------------------------------------------------
    async def dp_releases(self, first_epoch: int, last_epoch: int) -> dict[int, bytes]:
        def run(conn: sqlite3.Connection) -> dict[int, bytes]:
            sql = "SELECT epoch, release FROM dp_releases WHERE epoch BETWEEN ? AND ?"
            return {int(e): bytes(r) for e, r in conn.execute(sql, (int(first_epoch), int(last_epoch)))}

        return await self._read(run)

    async def keep_dp_release(self, epoch: int, release: bytes) -> bytes:
        def run(conn: sqlite3.Connection) -> bytes:
            conn.execute("INSERT OR IGNORE INTO dp_releases VALUES (?, ?)", (int(epoch), bytes(release)))
            return bytes(conn.execute("SELECT release FROM dp_releases WHERE epoch = ?", (int(epoch),)).fetchone()[0])

        return await self._writer.submit(run)

    async def cell_contributions(self, epoch: int) -> list[tuple[int, int, float, float, bytes]]:
        def run(conn: sqlite3.Connection) -> list[tuple[int, int, float, float, bytes]]:
            sql = f"SELECT k1, k2, successes, trials, embedding FROM contributions WHERE kind = {KIND_CELL} AND epoch=?"
            rows = conn.execute(sql, (int(epoch),))
            return [(int(t), int(c), float(s), float(n), bytes(e)) for t, c, s, n, e in rows]

        return await self._read(run)

    async def use_day_keys(self, epoch: int, tag: bytes, wanted: int, limit: int, push_key: bytes) -> int:
        def run(conn: sqlite3.Connection) -> int:
            done = conn.execute("SELECT granted FROM dp_grants WHERE push_key = ?", (bytes(push_key),)).fetchone()
            if done is not None:  # a retried batch: its first attempt's grant, nothing more used
                return int(done[0])
            row = conn.execute("SELECT used FROM dp_day_keys WHERE epoch = ? AND tag = ?", (epoch, tag)).fetchone()
            granted = max(0, min(int(wanted), int(limit) - (row[0] if row else 0)))
            if granted:
                conn.execute(
                    "INSERT INTO dp_day_keys VALUES (?, ?, ?) ON CONFLICT DO UPDATE SET used = used + excluded.used",
                    (int(epoch), bytes(tag), granted),
                )
            conn.execute("INSERT INTO dp_grants VALUES (?, ?, ?)", (bytes(push_key), int(epoch), granted))
            return granted

        return await self._writer.submit(run)

    def _expire(self, conn: sqlite3.Connection, epoch_before: int) -> window.ExpiryWrites:
        """Own accumulators and supports without what leaves the window (store/window.py)."""
        log = conn.execute(
            "SELECT kind, k1, k2, k3, weight, successes, trials, embedding FROM contributions "
            "WHERE epoch < ? AND legacy = 1",
            (epoch_before,),
        ).fetchall()
        members = conn.execute(EXPIRED_MEMBERS_SQL, (epoch_before,)).fetchall()
        touched = {tuple(r[:4]) for r in log} | {tuple(r[:4]) for r in members}
        cells = sorted((k1, k2) for kind, k1, k2, _ in touched if kind == KIND_CELL)
        edges = sorted((k1, k2, k3) for kind, k1, k2, k3 in touched if kind == KIND_EDGE)
        own_cells = _of_keys(conn, _CELLS_OF_KEYS + " AND s.origin = ?", cells, self.origin)
        own_edges = _of_keys(conn, _EDGES_OF_KEYS + " AND e.origin = ?", edges, self.origin)
        w = window.plan_expiry(self.origin, own_cells, own_edges, log, members, _head(conn))
        conn.executemany(_PUT_CELL, w.cell_states)
        conn.executemany("INSERT OR REPLACE INTO edge_state VALUES (?, ?, ?, ?, ?, ?, ?)", w.edge_states)
        conn.executemany(_ADD_SERVED, w.served)
        return w

    async def stats(self) -> StoreStats:
        def run(conn: sqlite3.Connection) -> StoreStats:
            one = lambda sql: int(conn.execute(sql).fetchone()[0])  # noqa: E731
            return StoreStats(
                head=_head(conn),
                cells=one(f"SELECT count(*) FROM served WHERE kind = {KIND_CELL}"),
                edges=one(f"SELECT count(*) FROM served WHERE kind = {KIND_EDGE}"),
                contributions=one("SELECT count(*) FROM contributions"),
                push_keys=one("SELECT count(*) FROM push_keys"),
                members=one("SELECT count(*) FROM members"),
            )

        return await self._read(run)

    # ---- federation ----------------------------------------------------------------
    async def _export(self, codebook_version: int, since_version: int, origins: list[str] | None) -> FederatedState:
        wanted = None if origins is None else set(origins)

        def run(conn: sqlite3.Connection) -> FederatedState:
            def rows(table: str, columns: str) -> list:
                found = conn.execute(f"SELECT {columns} FROM {table} WHERE version > ?", (since_version,))
                return [r for r in found if wanted is None or r[0] in wanted]

            cells, edges = rows("cell_state", logic.CELL_COLUMNS), rows("edge_state", logic.EDGE_COLUMNS)
            return logic.export_state(codebook_version, cells, edges)

        return await self._read(run)

    async def _merge(self, cells: CellEntries, edges: EdgeEntries) -> int:
        def run(conn: sqlite3.Connection) -> int:
            held_cells = logic.table_of(_cells(conn, sorted({key for _, key, _ in cells})))
            held_edges = logic.table_of(_edges(conn, sorted({key for _, key, _ in edges})))
            w = logic.plan_merge(held_cells, held_edges, (cells, edges), _head(conn))
            conn.executemany(_PUT_CELL, w.cell_states)
            conn.executemany("INSERT OR REPLACE INTO edge_state VALUES (?, ?, ?, ?, ?, ?, ?)", w.edge_states)
            conn.executemany(_PUT_SERVED, w.served)
            return w.changed

        return await self._writer.submit(run)


#: Members that left the window, each with what it held. INDEXED BY: by the epoch index, not a scan of the
#: whole table (every member of every key) on each prune, even when little or nothing left the window.
EXPIRED_MEMBERS_SQL = (
    "SELECT kind, k1, k2, k3, weight, successes, trials, embedding FROM members INDEXED BY members_epoch "
    "WHERE epoch < ?"
)


def _member_epochs(conn: sqlite3.Connection, rows: list[logic.MemberRow]) -> dict[logic.MemberRow, logic.Held]:
    """The marks (member rows: epoch, what it holds) of the members of `rows` that the store already holds."""
    return {r[:5]: r for r in _of_keys(conn, _MEMBER_EPOCHS, rows)}
