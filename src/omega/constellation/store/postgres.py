"""The constellation store at scale: PostgreSQL + pgvector over an asyncpg pool.

Same behaviour as the SQLite store (sqlite.py), and several sync workers may
share one database. Schema and the writer-serialisation argument: pg_schema.py.

Durability: every connection runs with `synchronous_commit = on`, and
`apply_push` returns only after its COMMIT returned, i.e. after the commit
record was flushed to the WAL (the server acks after that). The cost of the
flush is shared by *group commit*, as in the SQLite store: one writer task per
store takes every push waiting in its queue into one transaction, each under
its own SAVEPOINT (a push that fails rolls back alone), commits once, then
resolves them all.

ANN: `nearest_consolidated` searches an HNSW index over each cell's global
mean; pushes only mark changed cells and `refresh_vectors` (background, every
second, and before each search) rewrites their vectors — see pg_schema.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import numpy as np
from pgvector.asyncpg import register_vector

from omega.constellation.crdt import (
    DIM,
    CellKey,
    CellState,
    ConsolidatedEdge,
    ConsolidatedPattern,
    EdgeKey,
    EdgeState,
    FederatedState,
    combine_cells,
    combine_edges,
    consolidate_cell,
    consolidate_edge,
    wins,
)
from omega.constellation.store.base import (
    EDGE_WIRE_BYTES,
    KIND_CELL,
    KIND_EDGE,
    PATTERN_WIRE_BYTES,
    ChangePage,
    ConstellationStore,
    PreparedPush,
    PruneStats,
    PushOutcome,
    StoreStats,
    check_query,
)
from omega.constellation.store.pg_schema import REFRESH_LOCK_ID, migrate
from omega.errors import OmegaError

MAX_GROUP = 256  # pushes per group commit
# The ANN vector of a cell is rewritten when 1 - cos(stored, current) exceeds this, so a
# stored similarity is within sqrt(2e-6) ≈ 0.0014 of the exact one. A young cell moves at
# nearly every contribution; a mature one (large total weight) rarely crosses it, which
# spares most HNSW inserts.
VECTOR_REFRESH = 1e-6
REFRESH_INTERVAL_S = 1.0  # background vector refresh period
_REFRESH_BATCH = 1024  # dirty cells per refresh transaction
DEFAULT_POOL_SIZE = 4
_PAGE_SCAN = 128
_CONNECT_TIMEOUT_S = 10.0

_CELL_COLS = "origin, task_type, cell, sum_w, sum_wx, support, successes, trials, version"
_UPSERT_CELL = (
    f"INSERT INTO omega_cell_state ({_CELL_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) "
    "ON CONFLICT (task_type, cell, origin) DO UPDATE SET sum_w = excluded.sum_w, sum_wx = excluded.sum_wx, "
    "support = excluded.support, successes = excluded.successes, trials = excluded.trials, version = excluded.version"
)
_UPSERT_SERVED_CELL = (
    f"INSERT INTO omega_served (kind, k1, k2, k3, seq, support) VALUES ({KIND_CELL}, $1, $2, 0, $3, $4) "
    "ON CONFLICT (kind, k1, k2, k3) DO UPDATE SET seq = excluded.seq, support = excluded.support"
)
_MARK_DIRTY = (
    "INSERT INTO omega_dirty_cells VALUES ($1, $2, $3) ON CONFLICT (task_type, cell) DO UPDATE SET seq = excluded.seq"
)
_VECTORS_OF_KEYS = (
    "SELECT task_type, cell, embedding FROM omega_cell_vectors x "
    "JOIN unnest($1::int[], $2::bigint[]) AS v(t, c) ON x.task_type = v.t AND x.cell = v.c"
)
_CELLS_OF_KEYS = (
    f"SELECT {_CELL_COLS} FROM omega_cell_state s "
    "JOIN unnest($1::int[], $2::bigint[]) AS v(t, c) ON s.task_type = v.t AND s.cell = v.c "
    "ORDER BY s.task_type, s.cell, s.origin"
)
_EDGES_OF_KEYS = (
    "SELECT origin, keyspace, src, dst, weight, support, version FROM omega_edge_state e "
    "JOIN unnest($1::bigint[], $2::bigint[], $3::bigint[]) AS v(ks, s, d) "
    "ON e.keyspace = v.ks AND e.src = v.s AND e.dst = v.d ORDER BY e.keyspace, e.src, e.dst, e.origin"
)


def redact(dsn: str) -> str:
    """The DSN without its password, for messages."""
    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


def _translate(exc: BaseException) -> BaseException:
    if isinstance(exc, (asyncpg.PostgresError, asyncpg.InterfaceError, OSError)):
        return OmegaError(f"constellation store error: {exc}")
    return exc


def _vec(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype="<f8")


def _cell_state(row: asyncpg.Record) -> CellState:
    return CellState(row["sum_w"], _vec(row["sum_wx"]), row["support"], row["successes"], row["trials"], row["version"])


def _mean_embedding(key: CellKey, by_origin: dict[str, CellState]) -> np.ndarray | None:
    """The normalised global mean of a cell (origins summed in sorted order, as everywhere)."""
    pattern = consolidate_cell(key, combine_cells(by_origin[o] for o in sorted(by_origin)))
    return None if pattern is None else pattern.embedding


def _check_push(push: PreparedPush) -> None:
    for c in push.cells:
        emb = np.asarray(c.embedding)
        if emb.shape != (DIM,) or not np.isfinite(emb).all():
            raise OmegaError(f"pattern {c.index}: embedding must be {DIM} finite numbers")
        if not all(np.isfinite((c.weight, c.successes, c.trials))):
            raise OmegaError(f"pattern {c.index}: weight and counts must be finite")


@dataclass
class _PushJob:
    push: PreparedPush
    future: asyncio.Future[PushOutcome]


async def _init_connection(conn: asyncpg.Connection) -> None:
    schema = await conn.fetchval(
        "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'vector'"
    )
    await register_vector(conn, schema=schema or "public")


class PostgresStore(ConstellationStore):
    """`ConstellationStore` on PostgreSQL + pgvector. Create with `await PostgresStore.open(dsn)`."""

    def __init__(self, dsn: str, pool: asyncpg.Pool, origin: str) -> None:
        self.dsn = dsn
        self.origin = origin
        self._where = redact(dsn)
        self._pool = pool
        self._codebook_version: int | None = None
        self._queue: asyncio.Queue[_PushJob | None] = asyncio.Queue()
        self._closed = False
        loop = asyncio.get_running_loop()
        self._writer = loop.create_task(self._write_loop(), name=f"omega-pg-writer:{origin}")
        self._refresher = loop.create_task(self._refresh_loop(), name=f"omega-pg-vectors:{origin}")

    @classmethod
    async def open(
        cls, dsn: str, origin: str | None = None, *, pool_size: int = DEFAULT_POOL_SIZE
    ) -> PostgresStore:
        where = redact(dsn)
        settings = {"synchronous_commit": "on", "application_name": "omega-constellation"}
        try:
            conn = await asyncpg.connect(dsn, timeout=_CONNECT_TIMEOUT_S, server_settings=settings)
        except (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, ValueError) as exc:
            raise OmegaError(f"cannot connect to PostgreSQL store {where}: {exc}") from None
        try:
            await migrate(conn, where)
            name = origin or f"shard-{os.urandom(6).hex()}"
            # First opener names the origin; the insert is a no-op for every later one.
            await conn.execute(
                "INSERT INTO omega_meta VALUES ('origin', $1) ON CONFLICT DO NOTHING", name.encode("utf-8")
            )
            stored = bytes(await conn.fetchval("SELECT value FROM omega_meta WHERE key = 'origin'")).decode("utf-8")
        except asyncpg.PostgresError as exc:
            raise OmegaError(f"cannot open PostgreSQL store {where}: {exc}") from None
        finally:
            await conn.close()
        if origin is not None and origin != stored:
            raise OmegaError(f"store {where} belongs to origin {stored!r}, not {origin!r}")
        try:
            pool = await asyncpg.create_pool(
                dsn,
                min_size=1,
                max_size=max(2, int(pool_size)),
                init=_init_connection,
                server_settings=settings,
                timeout=_CONNECT_TIMEOUT_S,
            )
        except (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise OmegaError(f"cannot connect to PostgreSQL store {where}: {exc}") from None
        return cls(dsn, pool, stored)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._refresher.cancel()
        await self._queue.put(None)
        await self._writer
        with contextlib.suppress(asyncio.CancelledError):
            await self._refresher
        await self._pool.close()

    # ---- connections ---------------------------------------------------------------
    async def _read(self, fn: Any) -> Any:
        """Run `fn(conn)` in one read-only snapshot (a page and its head must agree)."""
        if self._closed:
            raise OmegaError("the store is closed")
        try:
            async with self._pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
                return await fn(conn)
        except BaseException as exc:
            raise _translate(exc) from None

    async def _write(self, fn: Any) -> Any:
        """Run `fn(conn, head)` in one transaction holding the head lock; it returns (value, new head)."""
        if self._closed:
            raise OmegaError("the store is closed")
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                head = await conn.fetchval("SELECT seq FROM omega_head WHERE id = 1 FOR UPDATE")
                value, new_head = await fn(conn, head)
                if new_head != head:
                    await conn.execute("UPDATE omega_head SET seq = $1 WHERE id = 1", new_head)
                return value
        except BaseException as exc:
            raise _translate(exc) from None

    # ---- binding -------------------------------------------------------------------
    async def bind(self, codebook_fingerprint: str, codebook_version: int, salt_check: bytes) -> None:
        wanted = {
            "codebook_fingerprint": str(codebook_fingerprint).encode("utf-8"),
            "codebook_version": str(int(codebook_version)).encode("ascii"),
            "salt_check": bytes(salt_check),
        }

        async def run(conn: asyncpg.Connection, head: int) -> tuple[None, int]:
            for key, value in wanted.items():
                await conn.execute("INSERT INTO omega_meta VALUES ($1, $2) ON CONFLICT DO NOTHING", key, value)
                have = bytes(await conn.fetchval("SELECT value FROM omega_meta WHERE key = $1", key))
                if have != value:
                    what = "server salt" if key == "salt_check" else key.replace("_", " ")
                    raise OmegaError(f"store {self._where} was built with a different {what}")
            return None, head

        await self._write(run)
        self._codebook_version = int(codebook_version)

    # ---- pushes --------------------------------------------------------------------
    async def apply_push(self, push: PreparedPush) -> PushOutcome:
        if self._closed:
            raise OmegaError("the store is closed")
        future: asyncio.Future[PushOutcome] = asyncio.get_running_loop().create_future()
        await self._queue.put(_PushJob(push, future))
        return await future

    async def _write_loop(self) -> None:
        stop = False
        while not stop:
            job = await self._queue.get()
            if job is None:
                break
            batch = [job]
            # Group commit: every push already waiting shares this transaction.
            while len(batch) < MAX_GROUP and not self._queue.empty():
                nxt = self._queue.get_nowait()
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            await self._run_group(batch)
        while not self._queue.empty():
            late = self._queue.get_nowait()
            if late is not None and not late.future.done():
                late.future.set_exception(OmegaError("the store is closed"))

    async def _run_group(self, batch: list[_PushJob]) -> None:
        results: list[tuple[bool, Any]] = []

        async def run(conn: asyncpg.Connection, head: int) -> tuple[None, int]:
            for job in batch:
                try:
                    async with conn.transaction():  # a SAVEPOINT: a failing push is undone alone
                        outcome, new_head = await self._apply_one(conn, job.push, head)
                except Exception as exc:  # noqa: BLE001 - handed to that push's caller
                    if isinstance(exc, (asyncpg.InterfaceError, OSError)):
                        raise  # the connection is gone: the whole group fails
                    results.append((False, _translate(exc)))
                    continue
                head = new_head
                results.append((True, outcome))
            return None, head

        try:
            await self._write(run)
        except Exception as exc:  # noqa: BLE001 - handed to every caller of the group
            for job in batch:
                if not job.future.done():
                    job.future.set_exception(exc)
            return
        # Resolved only after COMMIT returned: an acknowledged push is durable.
        for job, (ok, value) in zip(batch, results, strict=True):
            if job.future.done():  # the caller gave up waiting; the push is applied all the same
                continue
            if ok:
                job.future.set_result(value)
            else:
                job.future.set_exception(value)

    async def _apply_one(self, conn: asyncpg.Connection, push: PreparedPush, head: int) -> tuple[PushOutcome, int]:
        _check_push(push)
        status = await conn.execute(
            "INSERT INTO omega_push_keys VALUES ($1, $2) ON CONFLICT DO NOTHING", bytes(push.push_key), push.now_ms
        )
        if status.endswith(" 0"):
            return PushOutcome(duplicate=True, head=head), head

        member_rows = [(KIND_CELL, c.task_type, c.cell, 0, bytes(c.member)) for c in push.cells]
        member_rows += [(KIND_EDGE, e.keyspace, e.src, e.dst, bytes(e.member)) for e in push.edges]
        known: dict[tuple, int | None] = {}
        if member_rows:
            rows = await conn.fetch(
                "SELECT m.kind, m.k1, m.k2, m.k3, m.member, m.epoch FROM omega_members m "
                "JOIN unnest($1::smallint[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bytea[]) "
                "AS v(kind, k1, k2, k3, member) USING (kind, k1, k2, k3, member)",
                *[list(col) for col in zip(*member_rows, strict=True)],
            )
            known = {(r[0], r[1], r[2], r[3], bytes(r[4])): r[5] for r in rows}

        seen: set[tuple] = set()
        accepted_cells: list[int] = []
        accepted_edges: list[int] = []
        flooded_cells: list[int] = []
        flooded_edges: list[int] = []
        cells, edges = [], []  # (contribution, is_new_member)
        for row, item in zip(member_rows, [*push.cells, *push.edges], strict=True):
            flooded = row in seen or (row in known and known[row] == push.epoch)
            seen.add(row)
            is_cell = row[0] == KIND_CELL
            if flooded:
                (flooded_cells if is_cell else flooded_edges).append(item.index)
            else:
                (accepted_cells if is_cell else accepted_edges).append(item.index)
                (cells if is_cell else edges).append((item, row not in known))

        member_writes: list[tuple] = []
        if cells:
            head = await self._add_cells(conn, cells, push.epoch, head, member_writes)
        if edges:
            head = await self._add_edges(conn, edges, push.epoch, head, member_writes)
        if member_writes:
            await conn.executemany(
                "INSERT INTO omega_members VALUES ($1, $2, $3, $4, $5, $6) "
                "ON CONFLICT (kind, k1, k2, k3, member) DO UPDATE SET epoch = excluded.epoch",
                member_writes,
            )
        return (
            PushOutcome(
                duplicate=False,
                accepted_cells=accepted_cells,
                accepted_edges=accepted_edges,
                flooded_cells=flooded_cells,
                flooded_edges=flooded_edges,
                head=head,
            ),
            head,
        )

    async def _add_cells(
        self, conn: asyncpg.Connection, cells: list[tuple[Any, bool]], epoch: int, head: int, member_writes: list
    ) -> int:
        keys = sorted({CellKey(c.task_type, c.cell) for c, _ in cells})
        # All origins' entries of the touched cells: the served embedding is the *global* mean.
        table: dict[CellKey, dict[str, CellState]] = {k: {} for k in keys}
        for r in await conn.fetch(_CELLS_OF_KEYS, [k.task_type for k in keys], [k.cell for k in keys]):
            table[CellKey(r["task_type"], r["cell"])][r["origin"]] = _cell_state(r)
        seq_of: dict[CellKey, int] = {}
        log_rows = []
        for c, new in cells:
            key = CellKey(c.task_type, c.cell)
            head += 1
            x = np.asarray(c.embedding, dtype=np.float64) * c.weight
            old = table[key].get(self.origin)
            if old is None:
                table[key][self.origin] = CellState(c.weight, x, int(new), c.successes, c.trials, head)
            else:
                table[key][self.origin] = CellState(
                    old.sum_w + c.weight, old.sum_wx + x, old.support + int(new),
                    old.successes + c.successes, old.trials + c.trials, head,
                )
            seq_of[key] = head
            member_writes.append((KIND_CELL, c.task_type, c.cell, 0, bytes(c.member), epoch))
            log_rows.append(
                (epoch, KIND_CELL, c.task_type, c.cell, 0, c.weight, c.successes, c.trials,
                 np.asarray(c.embedding, dtype="<f2").tobytes())
            )
        state_rows, served_rows = [], []
        for key in sorted(seq_of):
            own = table[key][self.origin]
            state_rows.append(
                (self.origin, key.task_type, key.cell, own.sum_w, own.sum_wx.astype("<f8").tobytes(), own.support,
                 own.successes, own.trials, own.version)
            )
            support = sum(s.support for s in table[key].values())
            served_rows.append((key.task_type, key.cell, seq_of[key], support))
        await conn.executemany(_UPSERT_CELL, state_rows)
        await conn.executemany(_UPSERT_SERVED_CELL, served_rows)
        await conn.executemany(_MARK_DIRTY, [(key.task_type, key.cell, seq) for key, seq in sorted(seq_of.items())])
        await conn.executemany(
            "INSERT INTO omega_contributions (epoch, kind, k1, k2, k3, weight, successes, trials, embedding) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            log_rows,
        )
        return head

    async def _add_edges(
        self, conn: asyncpg.Connection, edges: list[tuple[Any, bool]], epoch: int, head: int, member_writes: list
    ) -> int:
        # Summed per key first: one statement may not update the same row twice.
        per_key: dict[EdgeKey, list] = {}  # key -> [weight, new members, seq]
        for e, new in edges:
            head += 1
            acc = per_key.setdefault(EdgeKey(e.keyspace, e.src, e.dst), [0.0, 0, 0])
            acc[0] += e.weight
            acc[1] += int(new)
            acc[2] = head
            member_writes.append((KIND_EDGE, e.keyspace, e.src, e.dst, bytes(e.member), epoch))
        ordered = sorted(per_key.items())
        await conn.executemany(
            "INSERT INTO omega_edge_state VALUES ($1, $2, $3, $4, $5, $6, $7) "
            "ON CONFLICT (keyspace, src, dst, origin) DO UPDATE SET weight = omega_edge_state.weight + excluded.weight, "
            "support = omega_edge_state.support + excluded.support, version = excluded.version",
            [(self.origin, *k, w, n, seq) for k, (w, n, seq) in ordered],
        )
        await conn.executemany(
            f"INSERT INTO omega_served (kind, k1, k2, k3, seq, support) VALUES ({KIND_EDGE}, $1, $2, $3, $4, $5) "
            "ON CONFLICT (kind, k1, k2, k3) DO UPDATE SET seq = excluded.seq, "
            "support = omega_served.support + excluded.support",
            [(*k, seq, n) for k, (_, n, seq) in ordered],
        )
        return head

    # ---- delta pull ----------------------------------------------------------------
    async def changes_since(
        self,
        cursor: int,
        k_min: int,
        max_bytes: int,
        pattern_bytes: int = PATTERN_WIRE_BYTES,
        edge_bytes: int = EDGE_WIRE_BYTES,
    ) -> ChangePage:
        async def run(conn: asyncpg.Connection) -> ChangePage:
            head = await conn.fetchval("SELECT seq FROM omega_head WHERE id = 1")
            last = 0 if cursor > head else cursor  # a cursor from a wiped or other store: resend everything
            chosen: list[asyncpg.Record] = []
            used = 0
            more = False
            while not more:
                rows = await conn.fetch(
                    "SELECT kind, k1, k2, k3, seq FROM omega_served WHERE seq > $1 AND support >= $2 "
                    "ORDER BY seq LIMIT $3",
                    last, k_min, _PAGE_SCAN,
                )
                for row in rows:
                    size = pattern_bytes if row["kind"] == KIND_CELL else edge_bytes
                    if chosen and used + size > max_bytes:
                        more = True
                        break
                    chosen.append(row)
                    used += size
                    last = row["seq"]
                if len(rows) < _PAGE_SCAN:
                    break
            items = await self._load_items(conn, chosen)
            return ChangePage(items, last if more else head, more)

        return await self._read(run)

    async def _load_items(
        self, conn: asyncpg.Connection, chosen: list[asyncpg.Record]
    ) -> list[ConsolidatedPattern | ConsolidatedEdge]:
        cell_keys = [(r["k1"], r["k2"]) for r in chosen if r["kind"] == KIND_CELL]
        edge_keys = [(r["k1"], r["k2"], r["k3"]) for r in chosen if r["kind"] == KIND_EDGE]
        cells: dict[tuple, list[CellState]] = {}
        edges: dict[tuple, list[EdgeState]] = {}
        if cell_keys:
            for r in await conn.fetch(_CELLS_OF_KEYS, *map(list, zip(*cell_keys, strict=True))):
                cells.setdefault((r["task_type"], r["cell"]), []).append(_cell_state(r))
        if edge_keys:
            for r in await conn.fetch(_EDGES_OF_KEYS, *map(list, zip(*edge_keys, strict=True))):
                edges.setdefault((r["keyspace"], r["src"], r["dst"]), []).append(
                    EdgeState(r["weight"], r["support"], r["version"])
                )
        items: list[ConsolidatedPattern | ConsolidatedEdge] = []
        for r in chosen:
            kind, k1, k2, k3, seq = r["kind"], r["k1"], r["k2"], r["k3"], r["seq"]
            if kind == KIND_CELL:
                pattern = consolidate_cell(CellKey(k1, k2), combine_cells(cells.get((k1, k2), [])), version=seq)
                if pattern is not None:
                    items.append(pattern)
            else:
                items.append(consolidate_edge(EdgeKey(k1, k2, k3), combine_edges(edges.get((k1, k2, k3), [])), seq))
        return items

    # ---- ANN vectors ---------------------------------------------------------------
    async def refresh_vectors(self) -> int:
        """Bring the ANN vectors of every cell changed so far up to date; returns how many were rewritten."""
        if self._closed:
            raise OmegaError("the store is closed")
        total = 0
        try:
            while True:
                async with self._pool.acquire() as conn, conn.transaction():
                    await conn.execute("SELECT pg_advisory_xact_lock($1)", REFRESH_LOCK_ID)  # one at a time
                    # SKIP LOCKED: a mark a push is rewriting right now is left for the next round. So the
                    # refresher never waits for a push, and a push waits for it only briefly: no deadlock.
                    dirty = await conn.fetch(
                        "SELECT task_type, cell, seq FROM omega_dirty_cells ORDER BY task_type, cell LIMIT $1 "
                        "FOR UPDATE SKIP LOCKED",
                        _REFRESH_BATCH,
                    )
                    if not dirty:
                        return total
                    total += await self._refresh_batch(conn, dirty)
        except BaseException as exc:
            raise _translate(exc) from None

    async def _refresh_batch(self, conn: asyncpg.Connection, dirty: list[asyncpg.Record]) -> int:
        keys = [CellKey(r["task_type"], r["cell"]) for r in dirty]
        table: dict[CellKey, dict[str, CellState]] = {k: {} for k in keys}
        # Read after the dirty marks: the states are at least as new as the changes they mark.
        for r in await conn.fetch(_CELLS_OF_KEYS, [k.task_type for k in keys], [k.cell for k in keys]):
            table[CellKey(r["task_type"], r["cell"])][r["origin"]] = _cell_state(r)
        stored = {
            CellKey(r["task_type"], r["cell"]): np.asarray(r["embedding"].to_numpy(), dtype=np.float64)
            for r in await conn.fetch(_VECTORS_OF_KEYS, [k.task_type for k in keys], [k.cell for k in keys])
        }
        upserts, deletes = [], []
        for key in keys:
            current = _mean_embedding(key, table[key])
            old = stored.get(key)
            if current is None:
                if old is not None:
                    deletes.append((key.task_type, key.cell))
            elif old is None or 1.0 - float(old @ current) > VECTOR_REFRESH:
                upserts.append((key.task_type, key.cell, current))
        if upserts:
            await conn.executemany(
                "INSERT INTO omega_cell_vectors VALUES ($1, $2, $3) "
                "ON CONFLICT (task_type, cell) DO UPDATE SET embedding = excluded.embedding",
                upserts,
            )
        if deletes:
            await conn.executemany("DELETE FROM omega_cell_vectors WHERE task_type = $1 AND cell = $2", deletes)
        # A cell changed again meanwhile has a newer seq and stays marked for the next round.
        await conn.executemany(
            "DELETE FROM omega_dirty_cells WHERE task_type = $1 AND cell = $2 AND seq = $3",
            [(r["task_type"], r["cell"], r["seq"]) for r in dirty],
        )
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

        return await self._read(run)

    # ---- housekeeping --------------------------------------------------------------
    async def prune(self, push_keys_before_ms: int, epoch_before: int) -> PruneStats:
        async def run(conn: asyncpg.Connection, head: int) -> tuple[PruneStats, int]:
            keys = await conn.execute("DELETE FROM omega_push_keys WHERE at_ms < $1", int(push_keys_before_ms))
            marks = await conn.execute(
                "UPDATE omega_members SET epoch = NULL WHERE epoch IS NOT NULL AND epoch < $1", int(epoch_before)
            )
            return PruneStats(int(keys.split()[-1]), int(marks.split()[-1])), head

        return await self._write(run)

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

        return await self._read(run)

    # ---- federation ----------------------------------------------------------------
    def _require_bound(self) -> int:
        if self._codebook_version is None:
            raise OmegaError("store is not bound to a codebook yet")
        return self._codebook_version

    async def export_entries(self, since_version: int = 0, origins: list[str] | None = None) -> FederatedState:
        codebook_version = self._require_bound()
        where = "version > $1" + ("" if origins is None else " AND origin = ANY($2::text[])")
        args: list[Any] = [int(since_version)] + ([] if origins is None else [list(origins)])

        async def run(conn: asyncpg.Connection) -> FederatedState:
            state = FederatedState(codebook_version)
            for r in await conn.fetch(f"SELECT {_CELL_COLS} FROM omega_cell_state WHERE {where}", *args):
                state.cells[(r["origin"], CellKey(r["task_type"], r["cell"]))] = _cell_state(r)
            for r in await conn.fetch(
                f"SELECT origin, keyspace, src, dst, weight, support, version FROM omega_edge_state WHERE {where}", *args
            ):
                state.edges[(r["origin"], EdgeKey(r["keyspace"], r["src"], r["dst"]))] = EdgeState(
                    r["weight"], r["support"], r["version"]
                )
            return state

        return await self._read(run)

    async def merge_entries(self, state: FederatedState) -> int:
        codebook_version = self._require_bound()
        if (state.cells or state.edges) and state.codebook_version != codebook_version:
            raise OmegaError(
                f"federation entries are for codebook version {state.codebook_version}, "
                f"this store uses {codebook_version}"
            )
        # Our own origin's entries are authoritative here (single writer): never overwritten from outside.
        cells = [(o, CellKey(*k), s) for (o, k), s in sorted(state.cells.items()) if o != self.origin]
        edges = [(o, EdgeKey(*k), e) for (o, k), e in sorted(state.edges.items()) if o != self.origin]
        if not cells and not edges:
            return 0

        async def run(conn: asyncpg.Connection, head: int) -> tuple[int, int]:
            changed = 0
            if cells:
                n, head = await self._merge_cells(conn, cells, head)
                changed += n
            if edges:
                n, head = await self._merge_edges(conn, edges, head)
                changed += n
            return changed, head

        return await self._write(run)

    async def _merge_cells(self, conn: asyncpg.Connection, cells: list, head: int) -> tuple[int, int]:
        keys = sorted({key for _, key, _ in cells})
        table: dict[CellKey, dict[str, CellState]] = {k: {} for k in keys}
        for r in await conn.fetch(_CELLS_OF_KEYS, [k.task_type for k in keys], [k.cell for k in keys]):
            table[CellKey(r["task_type"], r["cell"])][r["origin"]] = _cell_state(r)
        state_rows = []
        touched: set[CellKey] = set()
        for origin, key, s in cells:
            if not wins(s, table[key].get(origin)):
                continue
            table[key][origin] = s
            touched.add(key)
            state_rows.append(
                (origin, key.task_type, key.cell, s.sum_w, s.sum_wx.astype("<f8").tobytes(), s.support,
                 s.successes, s.trials, s.version)
            )
        served_rows = []
        for key in sorted(touched):
            head += 1
            served_rows.append((key.task_type, key.cell, head, sum(s.support for s in table[key].values())))
        if state_rows:
            await conn.executemany(_UPSERT_CELL, state_rows)
            await conn.executemany(_UPSERT_SERVED_CELL, served_rows)
            await conn.executemany(_MARK_DIRTY, [(t, c, seq) for t, c, seq, _ in served_rows])
        return len(state_rows), head

    async def _merge_edges(self, conn: asyncpg.Connection, edges: list, head: int) -> tuple[int, int]:
        keys = sorted({key for _, key, _ in edges})
        table: dict[EdgeKey, dict[str, EdgeState]] = {k: {} for k in keys}
        for r in await conn.fetch(_EDGES_OF_KEYS, *map(list, zip(*keys, strict=True))):
            table[EdgeKey(r["keyspace"], r["src"], r["dst"])][r["origin"]] = EdgeState(
                r["weight"], r["support"], r["version"]
            )
        state_rows = []
        touched: set[EdgeKey] = set()
        for origin, key, e in edges:
            if not wins(e, table[key].get(origin)):
                continue
            table[key][origin] = e
            touched.add(key)
            state_rows.append((origin, *key, e.weight, e.support, e.version))
        served_rows = []
        for key in sorted(touched):
            head += 1
            served_rows.append((*key, head, sum(e.support for e in table[key].values())))
        if state_rows:
            await conn.executemany(
                "INSERT INTO omega_edge_state VALUES ($1, $2, $3, $4, $5, $6, $7) "
                "ON CONFLICT (keyspace, src, dst, origin) DO UPDATE SET weight = excluded.weight, "
                "support = excluded.support, version = excluded.version",
                state_rows,
            )
            await conn.executemany(
                f"INSERT INTO omega_served (kind, k1, k2, k3, seq, support) VALUES ({KIND_EDGE}, $1, $2, $3, $4, $5) "
                "ON CONFLICT (kind, k1, k2, k3) DO UPDATE SET seq = excluded.seq, support = excluded.support",
                served_rows,
            )
        return len(state_rows), head
