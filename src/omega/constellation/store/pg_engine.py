"""The PostgreSQL store's connections: opening, snapshot reads, locked writes, group commit.

Durability: every connection runs with `synchronous_commit = on`, and a push is
resolved only after its COMMIT returned, i.e. after the commit record was
flushed to the WAL (the server acks after that). The cost of the flush is
shared by *group commit*, as in the SQLite store: one writer task per store
takes every push waiting in its queue into one transaction, commits once, then
resolves them all.

Locks (every writer takes them in this order, so writers never deadlock):
1. the write lock (an advisory lock): push groups take it shared, every other
   writer (`write`: merges, prunes, DP state, binding) exclusive;
2. push groups only: the advisory locks of the member rows and push keys they
   touch (`MEMBER_LOCK_CLASS`, 32 bits of each keyed hash, in ascending order):
   a member row (one device's mark on one key) is read, checked and rewritten
   by one group at a time. Members are per device, so two workers' groups
   share such a lock only for the same device (or by a rare chance);
3. the head row (`omega_head`, `FOR UPDATE` / `UPDATE`), taken by a push group
   only at the end, to number its changes, and held to its COMMIT: change
   numbers are handed out in commit order (a reader never sees seq N+1
   committed before seq N). The group reads its cells' own accumulators only
   once it holds the row, then writes them, the edges (added), the served rows
   (added) and the dirty marks: that tail is the only part of two workers'
   groups that runs one after the other, however hot the cells they share.
   (Until 2026-12-02 the groups locked the buckets of every key they touched
   for their whole transaction: two workers' groups on a popular cell, i.e.
   nearly all, ran one after the other; bench/README "Several workers".)
   Every worker of a database must run the same lock protocol.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from pgvector.asyncpg import register_vector

from omega.constellation.store.base import PreparedPush, PushOutcome
from omega.constellation.store.pg_schema import migrate
from omega.errors import OmegaError

MAX_GROUP = 256  # pushes per group commit
#: A group's member locks (lock 2 below: one per contribution and one per push key). Advisory locks live in
#: PostgreSQL's shared lock table, max_locks_per_transaction × max_connections entries (64 × 100 by default),
#: which every worker's open group shares; a group that runs out of it fails and is redone push by push. 256
#: pushes of ~25 contributions would take ~6,600; this bound lets ~6 workers' groups fit the default table
#: (the deploy's PostgreSQL raises it for its 12 workers: deploy/docker-compose.yml).
MAX_GROUP_LOCKS = 1024
DEFAULT_POOL_SIZE = 4
_CONNECT_TIMEOUT_S = 10.0
_SESSION = {"synchronous_commit": "on", "application_name": "omega-constellation"}

# Advisory lock ids (two-int4 form; the bigint-keyed locks of pg_schema.py live in another space).
WRITE_LOCK = (0x4F4D4743, 3)  # shared by push groups, exclusive for every other writer
MEMBER_LOCK_CLASS = 0x4F4D4745  # (class, 32 bits of a member hash or push key); 0x4F4D4744 was the key buckets


def group_locks(push: PreparedPush) -> int:
    """The member locks a push adds to its group, at most (lock 2 below): its push key and one per contribution."""
    return 1 + len(push.cells) + len(push.edges)


#: Applies one push inside the group's transaction: (connection, push, head) → (outcome, new head).
ApplyOne = Callable[[asyncpg.Connection, PreparedPush, int], Awaitable[tuple[PushOutcome, int]]]
#: Applies a whole group in one transaction (taking the locks above itself): one outcome or error per push.
ApplyGroup = Callable[[asyncpg.Connection, list[PreparedPush]], Awaitable[list[PushOutcome | Exception]]]


def redact(dsn: str) -> str:
    """The DSN without its password, for messages."""
    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


def translate(exc: BaseException) -> BaseException:
    if isinstance(exc, (asyncpg.PostgresError, asyncpg.InterfaceError, OSError)):
        return OmegaError(f"constellation store error: {exc}")
    return exc


async def _init_connection(conn: asyncpg.Connection) -> None:
    schema = await conn.fetchval(
        "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'vector'"
    )
    await register_vector(conn, schema=schema or "public")


async def open_pool(dsn: str, origin: str | None, pool_size: int) -> tuple[asyncpg.Pool, str]:
    """Migrate the database, name (or check) its origin, and open the pool: (pool, origin)."""
    where = redact(dsn)
    try:
        conn = await asyncpg.connect(dsn, timeout=_CONNECT_TIMEOUT_S, server_settings=_SESSION)
    except (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, ValueError) as exc:
        raise OmegaError(f"cannot connect to PostgreSQL store {where}: {exc}") from None
    try:
        await migrate(conn, where)
        name = origin or f"shard-{os.urandom(6).hex()}"
        # First opener names the origin; the insert is a no-op for every later one.
        await conn.execute("INSERT INTO omega_meta VALUES ('origin', $1) ON CONFLICT DO NOTHING", name.encode("utf-8"))
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
            server_settings=_SESSION,
            timeout=_CONNECT_TIMEOUT_S,
        )
    except (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise OmegaError(f"cannot connect to PostgreSQL store {where}: {exc}") from None
    return pool, stored


@dataclass
class _PushJob:
    push: PreparedPush
    future: asyncio.Future[PushOutcome]


class PgEngine:
    """A store's pool: `read` in one snapshot, `write` under the write and head locks, `push` group-committed.

    A push group runs `apply_group` (set-based: a few statements for the whole group); should that
    fail on anything but the connection, the group is re-run push by push under savepoints with
    `apply_one`, so a push that fails fails alone.
    """

    def __init__(self, pool: asyncpg.Pool, apply_one: ApplyOne, apply_group: ApplyGroup, name: str) -> None:
        self.pool = pool
        self.closed = False
        self._apply_one = apply_one
        self._apply_group = apply_group
        self._queue: asyncio.Queue[_PushJob | None] = asyncio.Queue()
        self._writer = asyncio.get_running_loop().create_task(self._write_loop(), name=name)

    async def read(self, fn: Callable[[asyncpg.Connection], Awaitable[Any]]) -> Any:
        """Run `fn(conn)` in one read-only snapshot (a page and its head must agree)."""
        if self.closed:
            raise OmegaError("the store is closed")
        try:
            async with self.pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
                return await fn(conn)
        except BaseException as exc:
            raise translate(exc) from None

    async def write(self, fn: Callable[[asyncpg.Connection, int], Awaitable[tuple[Any, int]]]) -> Any:
        """Run `fn(conn, head)` in one transaction holding the write and head locks; returns (value, new head)."""
        if self.closed:
            raise OmegaError("the store is closed")
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1, $2)", *WRITE_LOCK)
                head = await conn.fetchval("SELECT seq FROM omega_head WHERE id = 1 FOR UPDATE")
                value, new_head = await fn(conn, head)
                if new_head != head:
                    await conn.execute("UPDATE omega_head SET seq = $1 WHERE id = 1", new_head)
                return value
        except BaseException as exc:
            raise translate(exc) from None

    async def push(self, push: PreparedPush) -> PushOutcome:
        """Apply one push in the next group commit; returns once it is committed."""
        if self.closed:
            raise OmegaError("the store is closed")
        future: asyncio.Future[PushOutcome] = asyncio.get_running_loop().create_future()
        await self._queue.put(_PushJob(push, future))
        return await future

    async def stop(self) -> None:
        """Refuse new work; the pushes already queued are answered (the store is closed)."""
        self.closed = True
        await self._queue.put(None)
        await self._writer

    async def _write_loop(self) -> None:
        stop = False
        carried: _PushJob | None = None  # the push that did not fit the last group: it starts the next
        while not stop:
            job = carried if carried is not None else await self._queue.get()
            carried = None
            if job is None:
                break
            batch = [job]
            locks = group_locks(job.push)
            # Group commit: every push already waiting shares this transaction, up to the bounds above.
            while len(batch) < MAX_GROUP and not self._queue.empty():
                nxt = self._queue.get_nowait()
                if nxt is None:
                    stop = True
                    break
                locks += group_locks(nxt.push)
                if locks > MAX_GROUP_LOCKS:
                    carried = nxt
                    break
                batch.append(nxt)
            await self._run_group(batch)
        while not self._queue.empty():
            late = self._queue.get_nowait()
            if late is not None and not late.future.done():
                late.future.set_exception(OmegaError("the store is closed"))

    async def _run_group(self, batch: list[_PushJob]) -> None:
        try:
            # read committed, whatever the database's default: each statement sees every group committed
            # before it, which the tail's read of the cells relies on (lock 3 above)
            async with self.pool.acquire() as conn, conn.transaction(isolation="read_committed"):
                outcomes = await self._apply_group(conn, [job.push for job in batch])
        except (asyncpg.PostgresError, OmegaError):
            await self._run_serially(batch)  # find the push that fails: each under its own savepoint
            return
        except Exception as exc:  # noqa: BLE001 - the connection is gone: handed to every caller of the group
            for job in batch:
                if not job.future.done():
                    job.future.set_exception(translate(exc))
            return
        # Resolved only after COMMIT returned: an acknowledged push is durable.
        for job, value in zip(batch, outcomes, strict=True):
            if job.future.done():  # the caller gave up waiting; the push is applied all the same
                continue
            if isinstance(value, Exception):
                job.future.set_exception(value)
            else:
                job.future.set_result(value)

    async def _run_serially(self, batch: list[_PushJob]) -> None:
        results: list[tuple[bool, Any]] = []

        async def run(conn: asyncpg.Connection, head: int) -> tuple[None, int]:
            for job in batch:
                try:
                    async with conn.transaction():  # a SAVEPOINT: a failing push is undone alone
                        outcome, new_head = await self._apply_one(conn, job.push, head)
                except Exception as exc:  # noqa: BLE001 - handed to that push's caller
                    if isinstance(exc, (asyncpg.InterfaceError, OSError)):
                        raise  # the connection is gone: the whole group fails
                    results.append((False, translate(exc)))
                    continue
                head = new_head
                results.append((True, outcome))
            return None, head

        try:
            await self.write(run)
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
