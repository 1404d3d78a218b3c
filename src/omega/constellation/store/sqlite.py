"""The embedded constellation store: one SQLite file, one writer thread, reader threads.

Durability: WAL with `synchronous=FULL`, so the WAL is fsynced at every commit
and a push is on disk before `apply_push` returns (the server acks after it).
With NORMAL, WAL commits are only durable at the next checkpoint; a power cut
could lose pushes the TVs were already told were accepted (and dropped from
their outboxes). The fsync cost is shared by *group commit*: the writer applies
every push waiting in its queue inside one transaction, each under its own
SAVEPOINT (a push that fails rolls back alone), commits once, then resolves all
of them — each push is still atomic, and none is acknowledged before the commit.

Reads (delta pulls, stats, similarity search, federation export) never enter
the writer's queue: they run on their own connections and threads, each inside
one read transaction, i.e. one consistent WAL snapshot of committed state. So a
pull neither waits for a commit nor splits a group of pushes into several
fsyncs, and a push acknowledged before a read was submitted is visible to it.
Consolidated items are cached by (key, change seq): every write to a key's
state gives it a new seq, so a cached item is never stale.

sqlite3 objects are never shared between threads (each thread opens its own
connection); the asyncio side awaits `concurrent.futures.Future`s the threads resolve.

Tables (schema v2 — v2 adds the covering index `served (seq, support)` for the pull scan;
`PRAGMA user_version` is the schema version and
`PRAGMA application_id` marks the file as ours):
- `meta`: origin name, codebook fingerprint/version, salt check value.
- `push_keys`: keyed hash of (device, batch_id) + time — idempotency, pruned after the replay window.
- `members`: per-key keyed hashes of (key, device) — exact distinct support; `epoch` is the
  "contributed this epoch" mark, cleared by `prune`. A member hash differs per key, so
  rows of one device in different cells cannot be linked without the server salt.
- `cell_state` / `edge_state`: CRDT entries per (origin, key); this shard's own rows are
  its accumulators (version = change seq of their last change).
- `served`: the global view's change index: per key, global support and the change
  sequence `seq` (unique, store-wide monotonic) of its last change.
- `contributions`: append-only log of accepted embedding-pattern contributions (cell, weight,
  counts, float16 embedding, epoch) — no device id or pseudonym, and time only to the epoch.
  (Edges are plain counts; their state rows are the whole story.)
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import queue
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from omega.constellation.crdt import (
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
from omega.errors import OmegaError

APPLICATION_ID = 0x4F4D4743  # "OMGC": marks an omega constellation store
MAX_GROUP = 256  # pushes per group commit
#: Threads (each with its own connection) that serve reads from WAL snapshots.
READER_THREADS = 2
#: Consolidated items kept by (key, change seq) for pulls (a page re-reads what another device just got).
ITEM_CACHE_ENTRIES = 8192
_PAGE_SCAN = 128

_SCHEMA_V1 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE push_keys (key BLOB PRIMARY KEY, at_ms INTEGER NOT NULL) WITHOUT ROWID;
CREATE INDEX push_keys_at ON push_keys (at_ms);
CREATE TABLE members (
    kind INTEGER NOT NULL, k1 INTEGER NOT NULL, k2 INTEGER NOT NULL, k3 INTEGER NOT NULL,
    member BLOB NOT NULL, epoch INTEGER,
    PRIMARY KEY (kind, k1, k2, k3, member)) WITHOUT ROWID;
CREATE TABLE cell_state (
    origin TEXT NOT NULL, task_type INTEGER NOT NULL, cell INTEGER NOT NULL,
    sum_w REAL NOT NULL, sum_wx BLOB NOT NULL, support INTEGER NOT NULL,
    successes REAL NOT NULL, trials REAL NOT NULL, version INTEGER NOT NULL,
    PRIMARY KEY (task_type, cell, origin));
CREATE TABLE edge_state (
    origin TEXT NOT NULL, keyspace INTEGER NOT NULL, src INTEGER NOT NULL, dst INTEGER NOT NULL,
    weight REAL NOT NULL, support INTEGER NOT NULL, version INTEGER NOT NULL,
    PRIMARY KEY (keyspace, src, dst, origin)) WITHOUT ROWID;
CREATE TABLE served (
    kind INTEGER NOT NULL, k1 INTEGER NOT NULL, k2 INTEGER NOT NULL, k3 INTEGER NOT NULL,
    seq INTEGER NOT NULL, support INTEGER NOT NULL,
    PRIMARY KEY (kind, k1, k2, k3)) WITHOUT ROWID;
CREATE UNIQUE INDEX served_seq ON served (seq);
CREATE TABLE contributions (
    id INTEGER PRIMARY KEY, epoch INTEGER NOT NULL, kind INTEGER NOT NULL,
    k1 INTEGER NOT NULL, k2 INTEGER NOT NULL, k3 INTEGER NOT NULL,
    weight REAL NOT NULL, successes REAL, trials REAL, embedding BLOB)
"""

# v2: the delta-pull scan (seq > cursor AND support >= k_min, in seq order) reads this index
# alone, instead of a primary-key lookup per scanned row to test its support.
_SCHEMA_V2 = """
CREATE INDEX served_seq_support ON served (seq, support)
"""

# Index i holds the script that migrates schema version i to i + 1.
MIGRATIONS: list[str] = [_SCHEMA_V1, _SCHEMA_V2]
SCHEMA_VERSION = len(MIGRATIONS)


# ---------------------------------------------------------------------------- worker threads
@dataclass
class _Job:
    fn: Callable[[sqlite3.Connection], Any]
    future: concurrent.futures.Future[Any]
    mode: str  # "group": may share a transaction (and its fsync); "tx": own transaction; "raw": none; "read"


def _resolve(future: concurrent.futures.Future[Any], ok: bool, value: Any) -> None:
    if future.done():  # cancelled by a caller that stopped waiting
        return
    try:
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)
    except concurrent.futures.InvalidStateError:  # cancelled concurrently
        pass


class _Writer:
    """Runs every write of one store on one thread, with its own connection; group-commits push jobs.

    Reads never enter this queue (see `_Readers`), so a group is ended only by a
    rare non-push write (bind, prune, merge) — not by the pulls that arrive
    between pushes.
    """

    def __init__(self, path: str) -> None:
        self._path = path
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._conn: sqlite3.Connection | None = None
        self._thread = threading.Thread(target=self._run, name=f"omega-store:{path}", daemon=True)
        self._closed = False
        self.groups = 0  # transactions committed (tests and benchmarks read these)
        self.grouped = 0  # jobs committed in them
        self._thread.start()

    def submit(self, fn: Callable[[sqlite3.Connection], Any], mode: str = "tx") -> asyncio.Future[Any]:
        if self._closed:
            raise OmegaError("the store is closed")
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._queue.put(_Job(fn, fut, mode))
        return asyncio.wrap_future(fut)

    def stop(self) -> None:
        if not self._closed:
            self._closed = True
            self._queue.put(None)

    def join(self) -> None:
        self._thread.join()

    def _run(self) -> None:
        try:
            self._conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            _fail_pending(self._queue, OmegaError(f"cannot open store {self._path}: {exc}"))
            return
        get, get_nowait = self._queue.get, self._queue.get_nowait
        try:
            carry: _Job | None = None
            while True:
                job = carry if carry is not None else get()
                carry = None
                if job is None:
                    break
                if job.mode != "group":
                    if job.mode == "tx":
                        self._run_tx([job])
                    else:
                        self._run_raw(job)
                    continue
                batch = [job]
                # Group commit: every push already waiting shares this transaction and its fsync.
                # (No waiting window: pushes that arrive during one commit's fsync form the next
                # group by themselves; a 2 ms window measured no better under the sync bench.)
                while len(batch) < MAX_GROUP:
                    try:
                        nxt = get_nowait()
                    except queue.Empty:
                        break
                    if nxt is None or nxt.mode != "group":
                        carry = nxt
                        break
                    batch.append(nxt)
                self._run_tx(batch)
        finally:
            _fail_pending(self._queue, OmegaError("the store is closed"))
            self._conn.close()

    def _run_raw(self, job: _Job) -> None:
        assert self._conn is not None
        try:
            value = job.fn(self._conn)
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting caller
            _resolve(job.future, False, _translate(exc))
        else:
            _resolve(job.future, True, value)

    def _run_tx(self, batch: list[_Job]) -> None:
        conn = self._conn
        assert conn is not None
        grouped = len(batch) > 1
        results: list[tuple[bool, Any]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for job in batch:
                if grouped:
                    conn.execute("SAVEPOINT push")
                try:
                    value = job.fn(conn)
                except Exception as exc:
                    if not grouped:
                        raise
                    # Only this push is undone; the others in the group still commit.
                    conn.execute("ROLLBACK TO push")
                    conn.execute("RELEASE push")
                    results.append((False, _translate(exc)))
                    continue
                if grouped:
                    conn.execute("RELEASE push")
                results.append((True, value))
            conn.execute("COMMIT")  # synchronous=FULL: the WAL is fsynced before this returns
        except BaseException as exc:  # noqa: BLE001 - handed to every caller of the group
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            err = _translate(exc)
            for job in batch:
                _resolve(job.future, False, err)
            return
        self.groups += 1
        self.grouped += len(batch)
        # Resolved only after COMMIT returned: an acknowledged push is durable.
        for job, (ok, value) in zip(batch, results, strict=True):
            _resolve(job.future, ok, value)


class _Readers:
    """Read-only snapshots on their own connections and threads (WAL: readers never block the writer).

    Each job runs inside one read transaction, so all its SELECTs see the same
    committed state; a write acknowledged before the job was submitted is visible.
    """

    def __init__(self, path: str, threads: int) -> None:
        self._path = path
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._closed = False
        self._threads = [
            threading.Thread(target=self._run, name=f"omega-store-read{i}:{path}", daemon=True) for i in range(threads)
        ]
        for t in self._threads:
            t.start()

    def submit(self, fn: Callable[[sqlite3.Connection], Any]) -> asyncio.Future[Any]:
        if self._closed:
            raise OmegaError("the store is closed")
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._queue.put(_Job(fn, fut, "read"))
        return asyncio.wrap_future(fut)

    def stop(self) -> None:
        if not self._closed:
            self._closed = True
            for _ in self._threads:
                self._queue.put(None)

    def join(self) -> None:
        for t in self._threads:
            t.join()

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        broken: OmegaError | None = None
        try:
            conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA query_only=1")
            conn.execute("PRAGMA busy_timeout=5000")
        except sqlite3.Error as exc:
            broken = OmegaError(f"cannot open store {self._path}: {exc}")
        try:
            # Jobs queued before stop() precede its sentinels (FIFO): every one is answered.
            while (job := self._queue.get()) is not None:
                if conn is None:
                    _resolve(job.future, False, broken)
                    continue
                try:
                    conn.execute("BEGIN")
                    try:
                        value = job.fn(conn)
                    finally:
                        conn.execute("COMMIT")
                except BaseException as exc:  # noqa: BLE001 - handed to the awaiting caller
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    _resolve(job.future, False, _translate(exc))
                else:
                    _resolve(job.future, True, value)
        finally:
            if conn is not None:
                conn.close()


_MISS = object()


class _ItemCache:
    """LRU of consolidated items by (kind, k1, k2, k3, seq), shared by the reader threads."""

    def __init__(self, entries: int) -> None:
        self._entries = entries
        self._items: OrderedDict[tuple, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get_many(self, rows: list[tuple]) -> list[Any]:
        items = self._items
        with self._lock:
            out = [items.get(r, _MISS) for r in rows]
            for r, item in zip(rows, out, strict=True):
                if item is not _MISS:
                    items.move_to_end(r)
        return out

    def put_many(self, rows: list[tuple], values: list[Any]) -> None:
        items = self._items
        with self._lock:
            for r, v in zip(rows, values, strict=True):
                items[r] = v
            while len(items) > self._entries:
                items.popitem(last=False)


def _fail_pending(q: queue.SimpleQueue[_Job | None], exc: Exception) -> None:
    while True:
        try:
            job = q.get_nowait()
        except queue.Empty:
            return
        if job is not None:
            _resolve(job.future, False, exc)


def _translate(exc: BaseException) -> BaseException:
    if isinstance(exc, sqlite3.DatabaseError):
        return OmegaError(f"constellation store error: {exc}")
    return exc


# ---------------------------------------------------------------------------- SQL helpers
def _values(rows: list[tuple], width: int) -> str:
    one = "(" + ",".join("?" * width) + ")"
    return ",".join([one] * len(rows))


def _flat(rows: list[tuple]) -> list[Any]:
    return [v for row in rows for v in row]


def _head(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT coalesce(max(seq), 0) FROM served").fetchone()[0])


def _vec(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype="<f8")


def _open_schema(conn: sqlite3.Connection, path: str) -> None:
    """Check the file is ours (or empty) and migrate it to the current schema."""
    try:
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
    except sqlite3.DatabaseError as exc:
        raise OmegaError(f"{path} is not a constellation store (corrupt or foreign file): {exc}") from exc
    if tables and app_id != APPLICATION_ID:
        raise OmegaError(f"{path} is a foreign SQLite database, not a constellation store")
    if version > SCHEMA_VERSION:
        raise OmegaError(f"{path} has schema version {version}, newer than this omega ({SCHEMA_VERSION})")
    mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if str(mode).lower() != "wal" and path != ":memory:":
        raise OmegaError(f"cannot put {path} into WAL mode (got {mode})")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA busy_timeout=5000")
    for step in range(version, SCHEMA_VERSION):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for stmt in MIGRATIONS[step].split(";"):
                if stmt.strip():
                    conn.execute(stmt)
            conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version={step + 1}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise


# ---------------------------------------------------------------------------- the store
class SqliteStore(ConstellationStore):
    """`ConstellationStore` on one SQLite file. Create with `await SqliteStore.open(path)`."""

    def __init__(self, path: str, writer: _Writer, readers: _Readers | None, origin: str) -> None:
        self.path = path
        self.origin = origin
        self._writer = writer
        self._readers = readers
        self._codebook_version: int | None = None
        self._items = _ItemCache(ITEM_CACHE_ENTRIES)

    @classmethod
    async def open(cls, path: str | os.PathLike[str], origin: str | None = None) -> SqliteStore:
        spath = str(path)
        if spath != ":memory:":
            parent = Path(spath).parent
            if not parent.is_dir():
                raise OmegaError(f"store directory does not exist: {parent}")
            if Path(spath).is_dir():
                raise OmegaError(f"store path is a directory: {spath}")
        writer = _Writer(spath)

        def init(conn: sqlite3.Connection) -> str:
            _open_schema(conn, spath)
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
        readers = None if spath == ":memory:" else _Readers(spath, READER_THREADS)
        return cls(spath, writer, readers, name)

    def _read(self, fn: Callable[[sqlite3.Connection], Any]) -> asyncio.Future[Any]:
        if self._readers is None:
            return self._writer.submit(fn)
        return self._readers.submit(fn)

    async def close(self) -> None:
        self._writer.stop()
        if self._readers is not None:
            self._readers.stop()
        await asyncio.to_thread(self._writer.join)
        if self._readers is not None:
            await asyncio.to_thread(self._readers.join)

    # ---- binding -------------------------------------------------------------------
    async def bind(self, codebook_fingerprint: str, codebook_version: int, salt_check: bytes) -> None:
        wanted = {
            "codebook_fingerprint": codebook_fingerprint,
            "codebook_version": str(int(codebook_version)),
            "salt_check": bytes(salt_check),
        }

        def run(conn: sqlite3.Connection) -> None:
            have = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            for key, value in wanted.items():
                if key not in have:
                    conn.execute("INSERT INTO meta VALUES (?, ?)", (key, value))
                elif have[key] != value:
                    what = "server salt" if key == "salt_check" else key.replace("_", " ")
                    raise OmegaError(f"store {self.path} was built with a different {what}")

        await self._writer.submit(run)
        self._codebook_version = int(codebook_version)

    # ---- pushes --------------------------------------------------------------------
    async def apply_push(self, push: PreparedPush) -> PushOutcome:
        return await self._writer.submit(lambda conn: self._apply_push(conn, push), mode="group")

    def _apply_push(self, conn: sqlite3.Connection, push: PreparedPush) -> PushOutcome:
        cur = conn.execute("INSERT OR IGNORE INTO push_keys VALUES (?, ?)", (push.push_key, push.now_ms))
        if cur.rowcount == 0:
            return PushOutcome(duplicate=True, head=_head(conn))

        member_rows = [(KIND_CELL, c.task_type, c.cell, 0, c.member) for c in push.cells]
        member_rows += [(KIND_EDGE, e.keyspace, e.src, e.dst, e.member) for e in push.edges]
        known: dict[tuple, int | None] = {}
        if member_rows:
            # CROSS JOIN keeps the few pushed keys as the outer loop: one primary-key probe each.
            sql = (
                f"WITH v(kind, k1, k2, k3, member) AS (VALUES {_values(member_rows, 5)}) "
                "SELECT m.kind, m.k1, m.k2, m.k3, m.member, m.epoch FROM v CROSS JOIN members m "
                "ON m.kind = v.kind AND m.k1 = v.k1 AND m.k2 = v.k2 AND m.k3 = v.k3 AND m.member = v.member"
            )
            known = {tuple(r[:5]): r[5] for r in conn.execute(sql, _flat(member_rows))}

        seen: set[tuple] = set()
        outcome = PushOutcome(duplicate=False)
        cells, edges = [], []  # (contribution, is_new_member)
        for row, item in zip(member_rows, [*push.cells, *push.edges], strict=True):
            flooded = row in seen or (row in known and known[row] == push.epoch)
            seen.add(row)
            is_cell = row[0] == KIND_CELL
            if flooded:
                (outcome.flooded_cells if is_cell else outcome.flooded_edges).append(item.index)
            else:
                (outcome.accepted_cells if is_cell else outcome.accepted_edges).append(item.index)
                (cells if is_cell else edges).append((item, row not in known))

        head = _head(conn)
        served_rows, member_writes, log_rows = [], [], []
        if cells:
            keys = [(c.task_type, c.cell) for c, _ in cells]
            current = {
                (r[0], r[1]): r[2:]
                for r in conn.execute(
                    f"WITH v(t, c) AS (VALUES {_values(keys, 2)}) "
                    "SELECT s.task_type, s.cell, s.sum_w, s.sum_wx, s.support, s.successes, s.trials "
                    "FROM v CROSS JOIN cell_state s ON s.origin = ? AND s.task_type = v.t AND s.cell = v.c",
                    [*_flat(keys), self.origin],
                )
            }
            state_rows = []
            for c, new in cells:
                head += 1
                x = c.embedding.astype(np.float64) * c.weight
                old = current.get((c.task_type, c.cell))
                if old is None:
                    sum_w, sum_wx, support, succ, trials = c.weight, x, int(new), c.successes, c.trials
                else:
                    sum_w = old[0] + c.weight
                    sum_wx = _vec(old[1]) + x
                    support = old[2] + int(new)
                    succ, trials = old[3] + c.successes, old[4] + c.trials
                state_rows.append(
                    (self.origin, c.task_type, c.cell, sum_w, sum_wx.astype("<f8").tobytes(), support, succ, trials, head)
                )
                served_rows.append((KIND_CELL, c.task_type, c.cell, 0, head, int(new)))
                member_writes.append((KIND_CELL, c.task_type, c.cell, 0, c.member, push.epoch))
                log_rows.append(
                    (push.epoch, KIND_CELL, c.task_type, c.cell, 0, c.weight, c.successes, c.trials,
                     c.embedding.astype("<f2").tobytes())
                )
            conn.executemany(
                "INSERT OR REPLACE INTO cell_state VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", state_rows
            )
        if edges:
            edge_rows = []
            for e, new in edges:
                head += 1
                edge_rows.append((self.origin, e.keyspace, e.src, e.dst, e.weight, int(new), head))
                served_rows.append((KIND_EDGE, e.keyspace, e.src, e.dst, head, int(new)))
                member_writes.append((KIND_EDGE, e.keyspace, e.src, e.dst, e.member, push.epoch))
            conn.executemany(
                "INSERT INTO edge_state VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET "
                "weight = weight + excluded.weight, support = support + excluded.support, version = excluded.version",
                edge_rows,
            )
        if served_rows:
            conn.executemany(
                "INSERT INTO served VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET "
                "seq = excluded.seq, support = support + excluded.support",
                served_rows,
            )
            conn.executemany(
                "INSERT INTO members VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET epoch = excluded.epoch",
                member_writes,
            )
            conn.executemany(
                "INSERT INTO contributions (epoch, kind, k1, k2, k3, weight, successes, trials, embedding) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                log_rows,
            )
        return PushOutcome(
            duplicate=False,
            accepted_cells=outcome.accepted_cells,
            accepted_edges=outcome.accepted_edges,
            flooded_cells=outcome.flooded_cells,
            flooded_edges=outcome.flooded_edges,
            head=head,
        )

    # ---- delta pull ----------------------------------------------------------------
    async def changes_since(
        self,
        cursor: int,
        k_min: int,
        max_bytes: int,
        pattern_bytes: int = PATTERN_WIRE_BYTES,
        edge_bytes: int = EDGE_WIRE_BYTES,
    ) -> ChangePage:
        return await self._read(
            lambda conn: self._changes(conn, cursor, k_min, max_bytes, pattern_bytes, edge_bytes)
        )

    def _changes(
        self, conn: sqlite3.Connection, cursor: int, k_min: int, max_bytes: int, pattern_bytes: int, edge_bytes: int
    ) -> ChangePage:
        head = _head(conn)
        if cursor > head:  # a cursor from a wiped or other store: resend everything
            cursor = 0
        chosen: list[tuple[int, int, int, int, int]] = []
        used = 0
        last = cursor
        more = False
        while not more:
            rows = conn.execute(
                "SELECT kind, k1, k2, k3, seq FROM served WHERE seq > ? AND support >= ? ORDER BY seq LIMIT ?",
                (last, k_min, _PAGE_SCAN),
            ).fetchall()
            for row in rows:
                size = pattern_bytes if row[0] == KIND_CELL else edge_bytes
                if chosen and used + size > max_bytes:
                    more = True
                    break
                chosen.append(row)
                used += size
                last = row[4]
            if len(rows) < _PAGE_SCAN:
                break
        items = self._load_items(conn, chosen)
        return ChangePage(items, last if more else head, more)

    def _load_items(
        self, conn: sqlite3.Connection, chosen: list[tuple[int, int, int, int, int]]
    ) -> list[ConsolidatedPattern | ConsolidatedEdge]:
        # A served key's item at a given change seq never changes (every write to a key's state
        # gives it a new seq), so consolidated items are cached by (kind, key, seq).
        known = self._items.get_many(chosen)
        missing = [r for r, item in zip(chosen, known, strict=True) if item is _MISS]
        if missing:
            loaded = self._consolidate(conn, missing)
            self._items.put_many(missing, loaded)
            fill = iter(loaded)
            known = [next(fill) if item is _MISS else item for item in known]
        return [item for item in known if item is not None]

    def _consolidate(
        self, conn: sqlite3.Connection, chosen: list[tuple[int, int, int, int, int]]
    ) -> list[ConsolidatedPattern | ConsolidatedEdge | None]:
        cell_keys = [(r[1], r[2]) for r in chosen if r[0] == KIND_CELL]
        edge_keys = [(r[1], r[2], r[3]) for r in chosen if r[0] == KIND_EDGE]
        cells: dict[tuple, list[CellState]] = {}
        edges: dict[tuple, list[EdgeState]] = {}
        if cell_keys:
            for r in conn.execute(
                f"WITH v(t, c) AS (VALUES {_values(cell_keys, 2)}) "
                "SELECT s.task_type, s.cell, s.sum_w, s.sum_wx, s.support, s.successes, s.trials, s.version "
                "FROM v CROSS JOIN cell_state s ON s.task_type = v.t AND s.cell = v.c "
                "ORDER BY s.task_type, s.cell, s.origin",
                _flat(cell_keys),
            ):
                cells.setdefault((r[0], r[1]), []).append(CellState(r[2], _vec(r[3]), r[4], r[5], r[6], r[7]))
        if edge_keys:
            for r in conn.execute(
                f"WITH v(ks, s, d) AS (VALUES {_values(edge_keys, 3)}) "
                "SELECT e.keyspace, e.src, e.dst, e.weight, e.support, e.version "
                "FROM v CROSS JOIN edge_state e ON e.keyspace = v.ks AND e.src = v.s AND e.dst = v.d "
                "ORDER BY e.keyspace, e.src, e.dst, e.origin",
                _flat(edge_keys),
            ):
                edges.setdefault((r[0], r[1], r[2]), []).append(EdgeState(r[3], r[4], r[5]))
        items: list[ConsolidatedPattern | ConsolidatedEdge | None] = []
        for kind, k1, k2, k3, seq in chosen:
            if kind == KIND_CELL:
                pattern = consolidate_cell(CellKey(k1, k2), combine_cells(cells.get((k1, k2), [])), version=seq)
                if pattern is not None:
                    pattern.embedding.setflags(write=False)  # shared through the item cache
                items.append(pattern)
            else:
                items.append(consolidate_edge(EdgeKey(k1, k2, k3), combine_edges(edges.get((k1, k2, k3), [])), seq))
        return items

    # ---- similarity search ---------------------------------------------------------
    async def nearest_consolidated(
        self, vector: np.ndarray, k: int, k_min: int, task_type: int | None = None
    ) -> list[tuple[CellKey, float]]:
        # Embedded scale (a codebook's cells): an exact numpy scan over the published patterns.
        q = check_query(vector, k, k_min)

        def run(conn: sqlite3.Connection) -> list[tuple[CellKey, float]]:
            sql = f"SELECT kind, k1, k2, k3, seq FROM served WHERE kind = {KIND_CELL} AND support >= ?"
            args: list[int] = [int(k_min)]
            if task_type is not None:
                sql += " AND k1 = ?"
                args.append(int(task_type))
            rows = conn.execute(sql, args).fetchall()
            patterns = []
            for start in range(0, len(rows), 4096):  # stay far below SQLite's bound-parameter limit
                patterns += self._load_items(conn, rows[start : start + 4096])
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
            marks = conn.execute(
                "UPDATE members SET epoch = NULL WHERE epoch IS NOT NULL AND epoch < ?", (epoch_before,)
            ).rowcount
            return PruneStats(keys, marks)

        return await self._writer.submit(run)

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
    def _require_bound(self) -> int:
        if self._codebook_version is None:
            raise OmegaError("store is not bound to a codebook yet")
        return self._codebook_version

    async def export_entries(self, since_version: int = 0, origins: list[str] | None = None) -> FederatedState:
        codebook_version = self._require_bound()

        def run(conn: sqlite3.Connection) -> FederatedState:
            state = FederatedState(codebook_version)
            wanted = None if origins is None else set(origins)
            for r in conn.execute(
                "SELECT origin, task_type, cell, sum_w, sum_wx, support, successes, trials, version "
                "FROM cell_state WHERE version > ?",
                (since_version,),
            ):
                if wanted is None or r[0] in wanted:
                    state.cells[(r[0], CellKey(r[1], r[2]))] = CellState(
                        r[3], _vec(r[4]), r[5], r[6], r[7], r[8]
                    )
            for r in conn.execute(
                "SELECT origin, keyspace, src, dst, weight, support, version FROM edge_state WHERE version > ?",
                (since_version,),
            ):
                if wanted is None or r[0] in wanted:
                    state.edges[(r[0], EdgeKey(r[1], r[2], r[3]))] = EdgeState(r[4], r[5], r[6])
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
        cells = [(o, k, s) for (o, k), s in sorted(state.cells.items()) if o != self.origin]
        edges = [(o, k, s) for (o, k), s in sorted(state.edges.items()) if o != self.origin]
        return await self._writer.submit(lambda conn: self._merge(conn, cells, edges))

    def _merge(self, conn: sqlite3.Connection, cells: list, edges: list) -> int:
        head = _head(conn)
        changed = 0
        for origin, key, s in cells:
            row = conn.execute(
                "SELECT sum_w, sum_wx, support, successes, trials, version FROM cell_state "
                "WHERE origin = ? AND task_type = ? AND cell = ?",
                (origin, key.task_type, key.cell),
            ).fetchone()
            old = None if row is None else CellState(row[0], _vec(row[1]), row[2], row[3], row[4], row[5])
            if not wins(s, old):
                continue
            conn.execute(
                "INSERT OR REPLACE INTO cell_state VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (origin, key.task_type, key.cell, s.sum_w, s.sum_wx.astype("<f8").tobytes(), s.support,
                 s.successes, s.trials, s.version),
            )
            support = conn.execute(
                "SELECT sum(support) FROM cell_state WHERE task_type = ? AND cell = ?", (key.task_type, key.cell)
            ).fetchone()[0]
            head += 1
            conn.execute(
                "INSERT OR REPLACE INTO served VALUES (?, ?, ?, 0, ?, ?)",
                (KIND_CELL, key.task_type, key.cell, head, support),
            )
            changed += 1
        for origin, key, e in edges:
            row = conn.execute(
                "SELECT weight, support, version FROM edge_state WHERE origin = ? AND keyspace = ? AND src = ? AND dst = ?",
                (origin, *key),
            ).fetchone()
            if not wins(e, None if row is None else EdgeState(*row)):
                continue
            conn.execute(
                "INSERT OR REPLACE INTO edge_state VALUES (?, ?, ?, ?, ?, ?, ?)",
                (origin, *key, e.weight, e.support, e.version),
            )
            support = conn.execute(
                "SELECT sum(support) FROM edge_state WHERE keyspace = ? AND src = ? AND dst = ?", tuple(key)
            ).fetchone()[0]
            head += 1
            conn.execute("INSERT OR REPLACE INTO served VALUES (?, ?, ?, ?, ?, ?)", (KIND_EDGE, *key, head, support))
            changed += 1
        return changed
