"""The constellation store at scale: PostgreSQL + pgvector over an asyncpg pool.

Same behaviour as the SQLite store (sqlite.py), and several sync workers may
share one database. What a push, a merge or a pull computes is logic.py (the
same on every backend); this module only reads and writes rows. Connections,
durability and group commit: pg_engine.py. Schema and the writer-serialisation
argument: pg_schema.py.

ANN: `nearest_consolidated` searches an HNSW index over each cell's global
mean; pushes only mark changed cells and `refresh_vectors` (background, every
second, and before each search) rewrites their vectors — see pg_schema.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import asyncpg
import numpy as np

from omega.constellation.crdt import CellKey, EdgeKey, FederatedState
from omega.constellation.privacy import check_k_min
from omega.constellation.store import logic, window
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
from omega.constellation.store.pg_engine import (
    DEFAULT_POOL_SIZE,
    MEMBER_LOCK_CLASS,
    WRITE_LOCK,
    PgEngine,
    open_pool,
    redact,
    translate,
)
from omega.constellation.store.pg_schema import PUBLISHED_INDEX, REFRESH_LOCK_ID, published_index_sql
from omega.errors import OmegaError

# The ANN vector of a cell is rewritten when 1 - cos(stored, current) exceeds this, so a
# stored similarity is within sqrt(2e-6) ≈ 0.0014 of the exact one. A young cell moves at
# nearly every contribution; a mature one (large total weight) rarely crosses it, which
# spares most HNSW inserts.
VECTOR_REFRESH = 1e-6
REFRESH_INTERVAL_S = 1.0  # background vector refresh period
_REFRESH_BATCH = 1024  # dirty cells per refresh transaction

_PUT_CELL = (
    f"INSERT INTO omega_cell_state ({logic.CELL_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) "
    "ON CONFLICT (task_type, cell, origin) DO UPDATE SET sum_w = excluded.sum_w, sum_wx = excluded.sum_wx, "
    "support = excluded.support, successes = excluded.successes, trials = excluded.trials, version = excluded.version"
)
_PUT_EDGE = (
    f"INSERT INTO omega_edge_state ({logic.EDGE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7) "
    "ON CONFLICT (keyspace, src, dst, origin) DO UPDATE SET weight = excluded.weight, "
    "support = excluded.support, version = excluded.version"
)
_ADD_EDGE = (
    f"INSERT INTO omega_edge_state ({logic.EDGE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7) "
    "ON CONFLICT (keyspace, src, dst, origin) DO UPDATE SET weight = omega_edge_state.weight + excluded.weight, "
    "support = omega_edge_state.support + excluded.support, version = excluded.version"
)
# `peak` keeps the highest support the key ever had (a published key's removal is served: logic.removal).
_SERVED = (
    "INSERT INTO omega_served (kind, k1, k2, k3, seq, support, peak) "
    "VALUES ($1, $2, $3, $4, $5, $6::bigint, GREATEST($6::bigint, 0)) "
)
_PUT_SERVED = _SERVED + (
    "ON CONFLICT (kind, k1, k2, k3) DO UPDATE SET seq = excluded.seq, support = excluded.support, "
    "peak = GREATEST(omega_served.peak, excluded.support)"
)
_ADD_SERVED = (
    _SERVED + "ON CONFLICT (kind, k1, k2, k3) DO UPDATE SET seq = excluded.seq, "
    "support = omega_served.support + excluded.support, "
    "peak = GREATEST(omega_served.peak, omega_served.support + excluded.support)"
)
_MARK_DIRTY = (
    "INSERT INTO omega_dirty_cells VALUES ($1, $2, $3) ON CONFLICT (task_type, cell) DO UPDATE SET seq = excluded.seq"
)
# A page of dirty marks in key order after (task type, cell) = ($1, $2), without locking them.
_DIRTY_PAGE = (
    "SELECT task_type, cell, seq FROM omega_dirty_cells WHERE (task_type, cell) > ($1::int, $2::bigint) "
    "ORDER BY task_type, cell LIMIT $3"
)
# The refreshed marks still at the seq they were read at, except those a push holds (SKIP LOCKED: never wait).
_DONE_MARKS = (
    "DELETE FROM omega_dirty_cells WHERE ctid = ANY(ARRAY("
    "SELECT d.ctid FROM omega_dirty_cells d JOIN unnest($1::int[], $2::bigint[], $3::bigint[]) AS v(t, c, s) "
    "ON d.task_type = v.t AND d.cell = v.c AND d.seq = v.s FOR UPDATE OF d SKIP LOCKED))"
)
_VECTORS_OF_KEYS = (
    "SELECT task_type, cell, embedding FROM omega_cell_vectors x "
    "JOIN unnest($1::int[], $2::bigint[]) AS v(t, c) ON x.task_type = v.t AND x.cell = v.c"
)
_CELLS_OF_KEYS = (
    f"SELECT {logic.CELL_COLUMNS} FROM omega_cell_state s "
    "JOIN unnest($1::int[], $2::bigint[]) AS v(t, c) ON s.task_type = v.t AND s.cell = v.c"
)
_OWN_CELLS_OF_KEYS = _CELLS_OF_KEYS + " WHERE s.origin = $3"
_EDGES_OF_KEYS = (
    f"SELECT {logic.EDGE_COLUMNS} FROM omega_edge_state e "
    "JOIN unnest($1::bigint[], $2::bigint[], $3::bigint[]) AS v(ks, s, d) "
    "ON e.keyspace = v.ks AND e.src = v.s AND e.dst = v.d"
)
_OWN_EDGES_OF_KEYS = _EDGES_OF_KEYS + " WHERE e.origin = $4"
# Set-based writes of a push group: one statement per table, every row once (rows are merged per key first).
_GROUP_CELLS = (
    f"INSERT INTO omega_cell_state ({logic.CELL_COLUMNS}) SELECT * FROM unnest($1::text[], $2::int[], $3::bigint[], "
    "$4::float8[], $5::bytea[], $6::bigint[], $7::float8[], $8::float8[], $9::bigint[]) "
    "ON CONFLICT (task_type, cell, origin) DO UPDATE SET sum_w = excluded.sum_w, sum_wx = excluded.sum_wx, "
    "support = excluded.support, successes = excluded.successes, trials = excluded.trials, version = excluded.version"
)
_GROUP_EDGES = (
    f"INSERT INTO omega_edge_state ({logic.EDGE_COLUMNS}) SELECT * FROM unnest($1::text[], $2::bigint[], "
    "$3::bigint[], $4::bigint[], $5::float8[], $6::bigint[], $7::bigint[]) "
    "ON CONFLICT (keyspace, src, dst, origin) DO UPDATE SET weight = omega_edge_state.weight + excluded.weight, "
    "support = omega_edge_state.support + excluded.support, version = excluded.version"
)
_GROUP_SERVED = (
    "INSERT INTO omega_served (kind, k1, k2, k3, seq, support, peak) SELECT kind, k1, k2, k3, seq, n, GREATEST(n, 0) "
    "FROM unnest($1::smallint[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[], $6::bigint[]) "
    "AS u (kind, k1, k2, k3, seq, n) "
    "ON CONFLICT (kind, k1, k2, k3) DO UPDATE SET seq = excluded.seq, "
    "support = omega_served.support + excluded.support, "
    "peak = GREATEST(omega_served.peak, omega_served.support + excluded.support)"
)
_GROUP_DIRTY = (
    "INSERT INTO omega_dirty_cells SELECT * FROM unnest($1::int[], $2::bigint[], $3::bigint[]) "
    "ON CONFLICT (task_type, cell) DO UPDATE SET seq = excluded.seq"
)
# A member's mark: its last contribution's epoch and what that contribution counts (latest wins: logic.GroupWrites).
_MEMBER_UPDATE = (
    "ON CONFLICT (kind, k1, k2, k3, member) DO UPDATE SET epoch = excluded.epoch, weight = excluded.weight, "
    "successes = excluded.successes, trials = excluded.trials, embedding = excluded.embedding"
)
_GROUP_MEMBERS = (
    "INSERT INTO omega_members SELECT * FROM unnest($1::smallint[], $2::bigint[], $3::bigint[], $4::bigint[], "
    "$5::bytea[], $6::bigint[], $7::float8[], $8::float8[], $9::float8[], $10::bytea[]) " + _MEMBER_UPDATE
)
_GROUP_LOG = (
    "INSERT INTO omega_contributions (epoch, kind, k1, k2, k3, weight, successes, trials, embedding) "
    "SELECT * FROM unnest($1::bigint[], $2::smallint[], $3::bigint[], $4::bigint[], $5::bigint[], $6::float8[], "
    "$7::float8[], $8::float8[], $9::bytea[])"
)
_GROUP_PUSH_KEYS = (
    "INSERT INTO omega_push_keys SELECT * FROM unnest($1::bytea[], $2::bigint[]) ON CONFLICT DO NOTHING RETURNING key"
)
# The member locks in ascending order (the array is sorted): a function scan calls them in array order.
_LOCK_MEMBERS = f"SELECT count(pg_advisory_xact_lock({MEMBER_LOCK_CLASS}, m)) FROM unnest($1::int[]) AS m"
_MEMBER_EPOCHS = (
    "SELECT m.kind, m.k1, m.k2, m.k3, m.member, m.epoch, m.weight, m.successes, m.trials, m.embedding "
    "FROM omega_members m "
    "JOIN unnest($1::smallint[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bytea[]) "
    "AS v(kind, k1, k2, k3, member) USING (kind, k1, k2, k3, member)"
)


def _marks(found: Sequence[asyncpg.Record]) -> dict[logic.MemberRow, logic.Held]:
    """Member rows read with `_MEMBER_EPOCHS` as member key -> mark (the member row: epoch, what it holds)."""
    marks = {}
    for r in found:
        key = (r[0], r[1], r[2], r[3], bytes(r[4]))
        marks[key] = (*key, r[5], r[6], r[7], r[8], r[9])
    return marks


def _columns(keys: Sequence[tuple]) -> list[list]:
    """Keys as one array per component, for `unnest`."""
    return [list(col) for col in zip(*keys, strict=True)]


async def _cells(conn: asyncpg.Connection, keys: Sequence[CellKey]) -> list:
    """(origin, key, entry) of every origin's entries of the given cells."""
    return list(map(logic.cell_entry, await conn.fetch(_CELLS_OF_KEYS, *_columns(keys)))) if keys else []


async def _edges(conn: asyncpg.Connection, keys: Sequence[EdgeKey]) -> list:
    """(origin, key, entry) of every origin's entries of the given edges."""
    return list(map(logic.edge_entry, await conn.fetch(_EDGES_OF_KEYS, *_columns(keys)))) if keys else []


async def _write_rows(conn: asyncpg.Connection, *statements: tuple[str, list]) -> None:
    for sql, rows in statements:
        if rows:
            await conn.executemany(sql, rows)


async def _write_unnest(conn: asyncpg.Connection, sql: str, rows: Sequence[tuple]) -> None:
    if rows:
        await conn.execute(sql, *_columns(rows))


def member_lock(keyed: bytes) -> int:
    """The advisory lock (with MEMBER_LOCK_CLASS) of a member hash or push key: 32 of its bits. Both are keyed
    hashes, so uniform: two groups of a few hundred rows each share a lock by chance about once in 10^5."""
    return int.from_bytes(keyed[:4], "big", signed=True)


#: The head and the pull floor the served rows are indexed for, in one round trip.
_HEAD_AND_FLOOR = (
    "SELECT h.seq, convert_from(m.value, 'UTF8')::int FROM omega_head h, omega_meta m "
    "WHERE h.id = 1 AND m.key = 'pull_floor'"
)
_FLOOR = "SELECT convert_from(value, 'UTF8')::int FROM omega_meta WHERE key = 'pull_floor'"
_SCAN = "seq > $1 AND (support >= $2 OR peak >= $3) ORDER BY seq LIMIT $4"


@functools.lru_cache(maxsize=64)
def _served_rows(pull_floor: int, k_min: int) -> str:
    """FROM and WHERE of a read of the served rows a pull with `k_min` may serve (logic.indexed_floor): with the
    term `peak >= floor` as a literal, which lets the planner read the published keys' partial index alone
    (pg_schema.PUBLISHED_INDEX), when that index holds them all."""
    floor = logic.indexed_floor(pull_floor, k_min)
    if floor is not None:
        return f"FROM omega_served WHERE peak >= {int(floor)} AND {logic.PULLED_KEYS} AND "
    return f"FROM omega_served WHERE {logic.PULLED_KEYS} AND "


class PostgresStore(ConstellationStore):
    """`ConstellationStore` on PostgreSQL + pgvector. Create with `await PostgresStore.open(dsn)`."""

    def __init__(self, dsn: str, pool: asyncpg.Pool, origin: str) -> None:
        self.dsn = dsn
        self.origin = origin
        self._where = redact(dsn)
        self._pool = pool
        self._codebook_version: int | None = None
        self._engine = PgEngine(pool, self._apply_one, self._apply_group, name=f"omega-pg-writer:{origin}")
        self._refresher = asyncio.get_running_loop().create_task(
            self._refresh_loop(), name=f"omega-pg-vectors:{origin}"
        )

    @classmethod
    async def open(
        cls, dsn: str, origin: str | None = None, *, pool_size: int = DEFAULT_POOL_SIZE
    ) -> PostgresStore:
        pool, stored = await open_pool(dsn, origin, pool_size)
        return cls(dsn, pool, stored)

    async def close(self) -> None:
        if self._engine.closed:
            return
        self._refresher.cancel()
        await self._engine.stop()
        with contextlib.suppress(asyncio.CancelledError):
            await self._refresher
        await self._pool.close()

    # ---- binding -------------------------------------------------------------------
    async def bind(self, codebook_fingerprint: str, codebook_version: int, salt_check: bytes) -> None:
        wanted = logic.binding(codebook_fingerprint, codebook_version, salt_check)

        async def run(conn: asyncpg.Connection, head: int) -> tuple[None, int]:
            for key, value in wanted.items():
                raw = value.encode("utf-8") if isinstance(value, str) else value
                await conn.execute("INSERT INTO omega_meta VALUES ($1, $2) ON CONFLICT DO NOTHING", key, raw)
                if bytes(await conn.fetchval("SELECT value FROM omega_meta WHERE key = $1", key)) != raw:
                    raise logic.binding_mismatch(self._where, key)
            return None, head

        await self._engine.write(run)
        self._codebook_version = int(codebook_version)

    async def set_pull_floor(self, k_min: int) -> None:
        floor = check_k_min(k_min)

        # Under the exclusive write lock (pg_engine.py): no push writes served rows while the index is rebuilt,
        # and workers opening at once rebuild it once.
        async def run(conn: asyncpg.Connection, head: int) -> tuple[None, int]:
            if await conn.fetchval(_FLOOR) != floor:
                await conn.execute(f"DROP INDEX IF EXISTS {PUBLISHED_INDEX}")
                await conn.execute(published_index_sql(floor))
                await conn.execute("UPDATE omega_meta SET value = $1 WHERE key = 'pull_floor'", str(floor).encode())
            return None, head

        await self._engine.write(run)

    # ---- pushes --------------------------------------------------------------------
    async def apply_push(self, push: PreparedPush) -> PushOutcome:
        return await self._engine.push(push)

    async def _apply_group(self, conn: asyncpg.Connection, pushes: list[PreparedPush]) -> list[PushOutcome | Exception]:
        """A group of pushes in one transaction, set-based: ~10 statements whatever the group's size.

        Same result as applying them one after the other (`_apply_one`): each push is classified and
        accumulated on top of the ones before it in the group (member marks and own accumulators are
        kept in memory), then every table is written once. Locks: see pg_engine.py.
        """
        results, valid, first = logic.check_group(pushes)  # refused pushes alone, before any SQL
        rows_of = {i: logic.member_rows(pushes[i]) for i in valid}
        locks = {member_lock(pushes[i].push_key) for i in valid}
        locks.update(member_lock(row[4]) for rows in rows_of.values() for row in rows)
        await conn.execute("SELECT pg_advisory_xact_lock_shared($1, $2)", *WRITE_LOCK)
        await conn.fetchval(_LOCK_MEMBERS, sorted(locks))

        fresh = await conn.fetch(
            _GROUP_PUSH_KEYS, list(first), [pushes[i].now_ms for i in first.values()]
        ) if first else []  # fmt: skip
        applied = {first[bytes(r[0])] for r in fresh}
        wanted = sorted({row for i in applied for row in rows_of[i]})
        found = await conn.fetch(_MEMBER_EPOCHS, *_columns(wanted)) if wanted else []
        known = _marks(found)

        group = logic.GroupWrites(self.origin)
        heads: list[int] = []  # relative head after each push, to shift once the base is known
        head = 0
        for i in valid:
            if i not in applied:
                results[i] = PushOutcome(duplicate=True)
                heads.append(head)
                continue
            outcome = results[i] = group.push(pushes[i], rows_of[i], known, None, head)  # cells settled below
            head = outcome.head
            heads.append(head)
        await _write_unnest(conn, _GROUP_MEMBERS, list(group.members.values()))
        await _write_unnest(conn, _GROUP_LOG, group.log)
        # The tail: the head row is locked from here to COMMIT, so change numbers follow commit order. The
        # own accumulators are read under it (read committed: this statement sees every group that held the
        # row before), so their read-modify-write needs no lock of its own; edges and served rows only add.
        if head:
            base = await conn.fetchval("UPDATE omega_head SET seq = seq + $1 WHERE id = 1 RETURNING seq - $1", head)
        else:
            base = await conn.fetchval("SELECT seq FROM omega_head WHERE id = 1")
        keys = group.unsettled_keys()
        own = await conn.fetch(_OWN_CELLS_OF_KEYS, *_columns(keys), self.origin) if keys else []
        group.settle({(r[1], r[2]): tuple(r) for r in own})
        w = group.rows(base)
        await _write_unnest(conn, _GROUP_CELLS, w.cells)
        await _write_unnest(conn, _GROUP_EDGES, w.edges)
        await _write_unnest(conn, _GROUP_SERVED, w.served)
        await _write_unnest(conn, _GROUP_DIRTY, w.dirty)
        for i, rel in zip(valid, heads, strict=True):
            results[i] = dataclasses.replace(results[i], head=base + rel)  # type: ignore[arg-type]
        return results  # type: ignore[return-value]

    async def _apply_one(self, conn: asyncpg.Connection, push: PreparedPush, head: int) -> tuple[PushOutcome, int]:
        logic.check_push(push)
        status = await conn.execute(
            "INSERT INTO omega_push_keys VALUES ($1, $2) ON CONFLICT DO NOTHING", bytes(push.push_key), push.now_ms
        )
        if status.endswith(" 0"):
            return PushOutcome(duplicate=True, head=head), head
        rows = logic.member_rows(push)
        found = await conn.fetch(_MEMBER_EPOCHS, *_columns(rows)) if rows else []
        keys = sorted({(c.task_type, c.cell) for c in push.cells})
        own = await conn.fetch(_OWN_CELLS_OF_KEYS, *_columns(keys), self.origin) if keys else []
        group = logic.GroupWrites(self.origin)
        outcome = group.push(push, rows, _marks(found), {(r[1], r[2]): tuple(r) for r in own}, head)
        w = group.rows()
        await _write_rows(
            conn,
            (_PUT_CELL, w.cells),
            (_ADD_EDGE, w.edges),
            (_ADD_SERVED, w.served),
            (_MARK_DIRTY, w.dirty),
            ("INSERT INTO omega_members VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) " + _MEMBER_UPDATE, w.members),
            (
                "INSERT INTO omega_contributions (epoch, kind, k1, k2, k3, weight, successes, trials, embedding) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                w.log,
            ),
        )
        return outcome, outcome.head

    # ---- delta pull ----------------------------------------------------------------
    async def _changes(self, cursor: int, k_min: int, budget: PageBudget) -> ChangePage:
        async def run(conn: asyncpg.Connection) -> ChangePage:
            head, pull_floor = await conn.fetchrow(_HEAD_AND_FLOOR)
            scan = f"SELECT kind, k1, k2, k3, seq, support {_served_rows(int(pull_floor), k_min)}" + _SCAN
            page = logic.Page(cursor, head, budget)
            floor = logic.scan_floor(cursor, head, k_min)
            while page.take(await conn.fetch(scan, page.last, k_min, floor, logic.PAGE_SCAN)):
                pass
            live = [r for r in page.chosen if r[5] >= k_min]
            cells = logic.table_of(await _cells(conn, [CellKey(r[1], r[2]) for r in live if r[0] == KIND_CELL]))
            edges = logic.table_of(await _edges(conn, [EdgeKey(*r[1:4]) for r in live if r[0] == KIND_EDGE]))
            loaded = iter(logic.consolidate_rows(live, cells, edges))
            items = [next(loaded) if r[5] >= k_min else logic.removal(r) for r in page.chosen]
            return ChangePage([item for item in items if item is not None], page.cursor, page.more)

        return await self._engine.read(run)

    async def published_cowatch(self, k_min: int) -> list[tuple[int, int, int]]:
        sql = logic.cowatch_sql("omega_served", "$1")

        async def run(conn: asyncpg.Connection) -> list[tuple[int, int, int]]:
            return [(int(a), int(b), int(n)) for a, b, n in await conn.fetch(sql, int(k_min))]

        return await self._engine.read(run)

    # ---- ANN vectors ---------------------------------------------------------------
    async def refresh_vectors(self) -> int:
        """Bring the ANN vectors of every cell changed so far up to date; returns how many were rewritten.

        One pass over the dirty marks in key order, a batch per transaction. The marks are read without a
        lock and deleted at the end of the batch, those a push is rewriting right now skipped (SKIP LOCKED,
        left for the next round): so the refresher never waits for a push, and a push waits for it only
        for that delete and its COMMIT, not for the batch's HNSW inserts (~5 ms each). A push's group
        waits there holding the head row, so every worker's groups would wait too (issue 15; until
        2026-12-02 the marks were locked for the whole batch).
        """
        if self._engine.closed:
            raise OmegaError("the store is closed")
        total = 0
        after = (-(1 << 31), -(1 << 63))
        try:
            while True:
                async with self._pool.acquire() as conn, conn.transaction():
                    await conn.execute("SELECT pg_advisory_xact_lock($1)", REFRESH_LOCK_ID)  # one at a time
                    dirty = await conn.fetch(_DIRTY_PAGE, *after, _REFRESH_BATCH)
                    if not dirty:
                        return total
                    total += await self._refresh_batch(conn, dirty)
                if len(dirty) < _REFRESH_BATCH:
                    return total
                after = (dirty[-1]["task_type"], dirty[-1]["cell"])
        except BaseException as exc:
            raise translate(exc) from None

    async def _refresh_batch(self, conn: asyncpg.Connection, dirty: list[asyncpg.Record]) -> int:
        keys = [CellKey(r["task_type"], r["cell"]) for r in dirty]
        # Read after the dirty marks: the states are at least as new as the changes they mark.
        table = logic.table_of(await _cells(conn, keys), keys)
        stored = {
            CellKey(r["task_type"], r["cell"]): np.asarray(r["embedding"].to_numpy(), dtype=np.float64)
            for r in await conn.fetch(_VECTORS_OF_KEYS, *_columns(keys))
        }
        upserts, deletes = [], []
        for key in keys:
            current = logic.mean_embedding(key, table[key])
            old = stored.get(key)
            if current is None:
                if old is not None:
                    deletes.append((key.task_type, key.cell))
            elif old is None or 1.0 - float(old @ current) > VECTOR_REFRESH:
                upserts.append((key.task_type, key.cell, current))
        await _write_rows(
            conn,
            (
                "INSERT INTO omega_cell_vectors VALUES ($1, $2, $3) "
                "ON CONFLICT (task_type, cell) DO UPDATE SET embedding = excluded.embedding",
                upserts,
            ),
            ("DELETE FROM omega_cell_vectors WHERE task_type = $1 AND cell = $2", deletes),
        )
        # A cell changed again meanwhile has a newer seq, or is locked by the push changing it: it stays
        # marked for the next round.
        await conn.execute(_DONE_MARKS, *_columns([(r["task_type"], r["cell"], r["seq"]) for r in dirty]))
        return len(upserts) + len(deletes)

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_INTERVAL_S)
            try:
                await self.refresh_vectors()
            except OmegaError:
                pass  # e.g. the database restarting: the next round (or the next search) retries

    # ---- similarity search ---------------------------------------------------------
    async def nearest_consolidated(
        self, vector: np.ndarray, k: int, k_min: int, task_type: int | None = None
    ) -> list[tuple[CellKey, float]]:
        q = check_query(vector, k, k_min)
        sql = (
            "SELECT x.task_type, x.cell, 1 - (x.embedding <=> $1) AS similarity FROM omega_cell_vectors x "
            f"JOIN omega_served s ON s.kind = {KIND_CELL} AND s.k1 = x.task_type AND s.k2 = x.cell AND s.k3 = 0 "
            "WHERE s.support >= $2"
        )
        args: list[Any] = [q, int(k_min)]
        if task_type is not None:
            sql += " AND x.task_type = $4"
            args.append(int(task_type))
        sql += " ORDER BY x.embedding <=> $1 LIMIT $3"
        args.insert(2, int(k))

        # Acknowledged pushes reach the index before the search (but for cells a concurrent push is
        # rewriting at this moment: those follow in the next round, within REFRESH_INTERVAL_S).
        await self.refresh_vectors()

        async def run(conn: asyncpg.Connection) -> list[tuple[CellKey, float]]:
            # Filters are applied while walking the HNSW graph; iterative scans keep walking
            # until k rows pass them (pgvector ≥ 0.8) instead of returning fewer.
            await conn.execute(f"SET LOCAL hnsw.ef_search = {max(40, min(int(k), 1000))}")
            await conn.execute("SET LOCAL hnsw.iterative_scan = strict_order")
            rows = await conn.fetch(sql, *args)
            return [(CellKey(r["task_type"], r["cell"]), float(r["similarity"])) for r in rows]

        return await self._engine.read(run)

    # ---- housekeeping --------------------------------------------------------------
    async def prune(self, push_keys_before_ms: int, epoch_before: int) -> PruneStats:
        async def run(conn: asyncpg.Connection, head: int) -> tuple[PruneStats, int]:
            keys = await conn.execute("DELETE FROM omega_push_keys WHERE at_ms < $1", int(push_keys_before_ms))
            w = await self._expire(conn, int(epoch_before), head)
            members = await conn.execute("DELETE FROM omega_members WHERE epoch < $1", int(epoch_before))
            log = await conn.execute("DELETE FROM omega_contributions WHERE epoch < $1", int(epoch_before))
            await conn.execute("DELETE FROM omega_dp_releases WHERE epoch < $1", int(epoch_before))
            await conn.execute("DELETE FROM omega_dp_day_keys WHERE epoch < $1", int(epoch_before))
            await conn.execute("DELETE FROM omega_dp_grants WHERE epoch < $1", int(epoch_before))
            counts = (int(status.split()[-1]) for status in (keys, members, log))
            return PruneStats(*counts, w.keys, w.head), w.head

        return await self._engine.write(run)

    # ---- DP state ------------------------------------------------------------------
    async def dp_releases(self, first_epoch: int, last_epoch: int) -> dict[int, bytes]:
        async def run(conn: asyncpg.Connection) -> dict[int, bytes]:
            sql = "SELECT epoch, release FROM omega_dp_releases WHERE epoch BETWEEN $1 AND $2"
            return {int(r[0]): bytes(r[1]) for r in await conn.fetch(sql, int(first_epoch), int(last_epoch))}

        return await self._engine.read(run)

    async def keep_dp_release(self, epoch: int, release: bytes) -> bytes:
        async def run(conn: asyncpg.Connection, head: int) -> tuple[bytes, int]:
            await conn.execute(
                "INSERT INTO omega_dp_releases VALUES ($1, $2) ON CONFLICT DO NOTHING", int(epoch), bytes(release)
            )
            stored = await conn.fetchval("SELECT release FROM omega_dp_releases WHERE epoch = $1", int(epoch))
            return bytes(stored), head

        return await self._engine.write(run)

    async def cell_contributions(self, epoch: int) -> list[tuple[int, int, float, float, bytes]]:
        async def run(conn: asyncpg.Connection) -> list[tuple[int, int, float, float, bytes]]:
            sql = (
                "SELECT k1, k2, successes, trials, embedding FROM omega_contributions "
                f"WHERE epoch = $1 AND kind = {KIND_CELL}"
            )
            return [(int(r[0]), int(r[1]), float(r[2]), float(r[3]), bytes(r[4])) for r in await conn.fetch(sql, epoch)]

        return await self._engine.read(run)

    async def use_day_keys(self, epoch: int, tag: bytes, wanted: int, limit: int, push_key: bytes) -> int:
        async def run(conn: asyncpg.Connection, head: int) -> tuple[int, int]:
            # Writers hold the head lock (pg_engine.write): this read-then-add is atomic across workers.
            done = await conn.fetchval("SELECT granted FROM omega_dp_grants WHERE push_key = $1", bytes(push_key))
            if done is not None:  # a retried batch: its first attempt's grant, nothing more used
                return int(done), head
            used = await conn.fetchval(
                "SELECT used FROM omega_dp_day_keys WHERE epoch = $1 AND tag = $2", int(epoch), bytes(tag)
            )
            granted = max(0, min(int(wanted), int(limit) - int(used or 0)))
            if granted:
                await conn.execute(
                    "INSERT INTO omega_dp_day_keys VALUES ($1, $2, $3) "
                    "ON CONFLICT (epoch, tag) DO UPDATE SET used = omega_dp_day_keys.used + excluded.used",
                    int(epoch), bytes(tag), granted,
                )  # fmt: skip
            await conn.execute("INSERT INTO omega_dp_grants VALUES ($1, $2, $3)", bytes(push_key), int(epoch), granted)
            return granted, head

        return await self._engine.write(run)

    async def _expire(self, conn: asyncpg.Connection, epoch_before: int, head: int) -> window.ExpiryWrites:
        """Own accumulators and supports without what leaves the window (store/window.py)."""
        log = await conn.fetch(
            "SELECT kind, k1, k2, k3, weight, successes, trials, embedding FROM omega_contributions "
            "WHERE epoch < $1 AND legacy",
            epoch_before,
        )
        members = await conn.fetch(
            "SELECT kind, k1, k2, k3, weight, successes, trials, embedding FROM omega_members WHERE epoch < $1",
            epoch_before,
        )
        touched = {tuple(r[:4]) for r in log} | {tuple(r[:4]) for r in members}
        cells = sorted((k1, k2) for kind, k1, k2, _ in touched if kind == KIND_CELL)
        edges = sorted((k1, k2, k3) for kind, k1, k2, k3 in touched if kind == KIND_EDGE)
        own_cells = await conn.fetch(_OWN_CELLS_OF_KEYS, *_columns(cells), self.origin) if cells else []
        own_edges = await conn.fetch(_OWN_EDGES_OF_KEYS, *_columns(edges), self.origin) if edges else []
        w = window.plan_expiry(self.origin, own_cells, own_edges, log, members, head)
        await _write_rows(
            conn,
            (_PUT_CELL, w.cell_states),
            (_PUT_EDGE, w.edge_states),
            (_ADD_SERVED, w.served),
            (_MARK_DIRTY, logic.dirty_marks(w.served)),
        )
        return w

    async def stats(self) -> StoreStats:
        async def run(conn: asyncpg.Connection) -> StoreStats:
            r = await conn.fetchrow(
                "SELECT (SELECT seq FROM omega_head WHERE id = 1) AS head, "
                f"(SELECT count(*) FROM omega_served WHERE kind = {KIND_CELL}) AS cells, "
                f"(SELECT count(*) FROM omega_served WHERE kind = {KIND_EDGE}) AS edges, "
                "(SELECT count(*) FROM omega_contributions) AS contributions, "
                "(SELECT count(*) FROM omega_push_keys) AS push_keys, "
                "(SELECT count(*) FROM omega_members) AS members"
            )
            return StoreStats(**{k: int(v) for k, v in r.items()})

        return await self._engine.read(run)

    # ---- federation ----------------------------------------------------------------
    async def _export(self, codebook_version: int, since_version: int, origins: list[str] | None) -> FederatedState:
        where = "version > $1" + ("" if origins is None else " AND origin = ANY($2::text[])")
        args: list[Any] = [since_version] + ([] if origins is None else [list(origins)])

        async def run(conn: asyncpg.Connection) -> FederatedState:
            cells = await conn.fetch(f"SELECT {logic.CELL_COLUMNS} FROM omega_cell_state WHERE {where}", *args)
            edges = await conn.fetch(f"SELECT {logic.EDGE_COLUMNS} FROM omega_edge_state WHERE {where}", *args)
            return logic.export_state(codebook_version, cells, edges)

        return await self._engine.read(run)

    async def _merge(self, cells: CellEntries, edges: EdgeEntries) -> int:
        async def run(conn: asyncpg.Connection, head: int) -> tuple[int, int]:
            held_cells = logic.table_of(await _cells(conn, sorted({key for _, key, _ in cells})))
            held_edges = logic.table_of(await _edges(conn, sorted({key for _, key, _ in edges})))
            w = logic.plan_merge(held_cells, held_edges, (cells, edges), head)
            await _write_rows(
                conn,
                (_PUT_CELL, w.cell_states),
                (_PUT_EDGE, w.edge_states),
                (_PUT_SERVED, w.served),
                (_MARK_DIRTY, logic.dirty_marks(w.served)),
            )
            return w.changed, w.head

        return await self._engine.write(run)
