"""The SQLite store's threads: one writer that group-commits, reader threads on WAL snapshots.

sqlite3 objects are never shared between threads (each thread opens its own
connection); the asyncio side awaits futures of its own loop, which the threads
resolve through that loop (`_resolve_all`: one wake-up per group commit). Why one
writer, group commit and separate readers: see sqlite.py.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import os
import sqlite3
import struct
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from omega.errors import OmegaError

log = logging.getLogger(__name__)

MAX_GROUP = 256  # pushes per group commit
#: What sqlite3.connect raises for a path it cannot open (a NUL byte, from a config file, is a ValueError).
_CONNECT_ERRORS = (sqlite3.Error, ValueError, OSError)


@dataclass(slots=True)
class Job:
    #: "group": fn(conn, [items]) -> one result (or Exception) per item, many jobs in one transaction;
    #: otherwise fn(conn) -> result.
    fn: Callable[..., Any]
    #: The caller's future, on its event loop: only that loop's thread may touch it (see `_resolve_all`).
    future: asyncio.Future[Any]
    mode: str  # "group": may share a transaction (and its fsync); "tx": own transaction; "raw": none; "read"
    item: Any = None  # what a "group" job hands to fn


#: (job, ok, value): how a job ended, handed to its loop.
Outcome = tuple[Job, bool, Any]


def _settle(outcomes: list[Outcome]) -> None:
    """On the caller's loop: each future gets its result or exception (unless its caller stopped waiting)."""
    for job, ok, value in outcomes:
        future = job.future
        if future.done():  # cancelled by a caller that stopped waiting
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


def _resolve_all(outcomes: list[Outcome]) -> None:
    """Hand finished jobs to their event loops, one wake-up per loop for the lot.

    A group commit answers tens of pushes at once; a `concurrent.futures.Future` per job (a lock and a
    condition to build, then `wrap_future`'s chained callback and one self-pipe write per job to wake
    the loop) cost both threads more than the wake-up they need."""
    if len(outcomes) == 1:
        loops = {outcomes[0][0].future.get_loop(): outcomes}
    else:
        loops = {}
        for outcome in outcomes:
            loops.setdefault(outcome[0].future.get_loop(), []).append(outcome)
    for loop, mine in loops.items():
        try:
            loop.call_soon_threadsafe(_settle, mine)
        except RuntimeError:  # the loop is closed: nobody is left to answer
            pass


def _resolve(job: Job, ok: bool, value: Any) -> None:
    _resolve_all([(job, ok, value)])


class _Threads:
    """A job queue served by threads of their own (each with its own connection, opened in `_run`)."""

    def __init__(self, path: str, names: list[str]) -> None:
        self._path = path
        self._queue: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._closed = False
        self._threads = [threading.Thread(target=self._run, name=name, daemon=True) for name in names]

    def _start(self) -> None:
        for t in self._threads:
            t.start()

    def _put(self, fn: Callable[..., Any], mode: str, item: Any = None) -> asyncio.Future[Any]:
        if self._closed:
            raise OmegaError("the store is closed")
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.put(Job(fn, fut, mode, item))
        return fut

    def stop(self) -> None:
        """Take no new jobs; every thread answers the jobs queued before this, then ends."""
        if not self._closed:
            self._closed = True
            for _ in self._threads:
                self._queue.put(None)

    def join(self) -> None:
        for t in self._threads:
            t.join()

    def _run(self) -> None:
        raise NotImplementedError


class Writer(_Threads):
    """Runs every write of one store on one thread, with its own connection; group-commits push jobs.

    Reads never enter this queue (see `Readers`), so a group is ended only by a
    rare non-push write (bind, prune, merge) — not by the pulls that arrive
    between pushes.
    """

    def __init__(self, path: str) -> None:
        super().__init__(path, [f"omega-store:{path}"])
        self._conn: sqlite3.Connection | None = None
        self.groups = 0  # transactions committed (tests and benchmarks read these)
        self.grouped = 0  # jobs committed in them
        #: Set by the store once the file is open (None: this writer checkpoints in its own COMMITs, see
        #: `Checkpointer`); only this writer's thread reads it after that.
        self.checkpointer: Checkpointer | None = None
        self._start()

    def submit(self, fn: Callable[[sqlite3.Connection], Any], mode: str = "tx") -> asyncio.Future[Any]:
        """Run fn(conn) in its own transaction ("tx") or outside any ("raw")."""
        if mode not in ("tx", "raw"):
            raise ValueError(f"unknown write mode {mode!r}")
        return self._put(fn, mode)

    def submit_group(self, run: Callable[[sqlite3.Connection, list[Any]], list[Any]], item: Any) -> asyncio.Future[Any]:
        """Hand `item` to `run(conn, items)` together with every item of the same `run` waiting then.

        One transaction (one fsync) for all of them. `run` returns one result per item, an Exception
        for an item it refuses alone; if `run` itself raises (a statement failed), the transaction is
        rolled back and each item is run again by itself, so only the failing one is refused.
        """
        return self._put(run, "group", item)

    def _run(self) -> None:
        try:
            self._conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        except _CONNECT_ERRORS as exc:
            # Jobs may be queued after this (the store's first job races the thread): answer each until stop().
            _refuse_until_stopped(self._queue, OmegaError(f"cannot open store {self._path}: {exc}"))
            return
        get, get_nowait = self._queue.get, self._queue.get_nowait
        carry: Job | None = None
        batch: list[Job] = []
        try:
            while True:
                job = carry if carry is not None else get()
                carry, batch = None, [job] if job is not None else []
                if job is None:
                    break
                if job.mode != "group":
                    if job.mode == "tx":
                        self._run_tx(job)
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
                    if nxt is None or nxt.mode != "group" or nxt.fn != job.fn:  # (bound methods: ==)
                        carry = nxt
                        break
                    batch.append(nxt)
                self._run_group(batch)
        except BaseException:
            # Each job's own failure is its caller's; only a fault of this loop gets here. The jobs in hand are
            # refused too (one already answered keeps its answer: _settle skips a done future).
            log.exception("the writer thread of store %s failed: the store takes no more writes", self._path)
            err = OmegaError(f"the writer of store {self._path} failed: the store is closed")
            _resolve_all([(j, False, err) for j in [*batch, *([carry] if carry is not None else [])]])
        finally:
            # Closed first, so a job submitted from now on is refused at once instead of waiting for ever
            # on a queue that no thread serves any more; the ones already queued are refused here.
            self._closed = True
            _fail_pending(self._queue, OmegaError("the store is closed"))
            self._conn.close()

    def _run_raw(self, job: Job) -> None:
        assert self._conn is not None
        try:
            value = job.fn(self._conn)
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting caller
            _resolve(job, False, translate(exc))
        else:
            _resolve(job, True, value)

    def _run_tx(self, job: Job) -> None:
        conn = self._conn
        assert conn is not None
        try:
            conn.execute("BEGIN IMMEDIATE")
            value = job.fn(conn)
            conn.execute("COMMIT")  # synchronous=FULL: the WAL is fsynced before this returns
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            _resolve(job, False, translate(exc))
            return
        self.groups += 1
        self.grouped += 1
        self._committed()
        _resolve(job, True, value)

    def _run_group(self, batch: list[Job]) -> None:
        conn = self._conn
        assert conn is not None
        try:
            conn.execute("BEGIN IMMEDIATE")
            results = batch[0].fn(conn, [job.item for job in batch])
            conn.execute("COMMIT")  # synchronous=FULL: the WAL is fsynced before this returns
        except BaseException as exc:  # noqa: BLE001 - handed to the caller(s)
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if len(batch) > 1 and isinstance(exc, Exception):
                # A statement failed somewhere in the group's set-based writes: nothing of it was kept.
                # Each job again by itself, so only the one that fails is refused.
                for job in batch:
                    self._run_group([job])
                return
            err = translate(exc)
            _resolve_all([(job, False, err) for job in batch])
            return
        self.groups += 1
        self.grouped += len(batch)
        self._committed()
        # Resolved only after COMMIT returned: an acknowledged push is durable.
        _resolve_all([(job, False, translate(value)) if isinstance(value, BaseException) else (job, True, value)
                      for job, value in zip(batch, results, strict=True)])  # fmt: skip


    def _committed(self) -> None:
        """After a COMMIT: wake the checkpointer, or, if it gave up, checkpoint in this connection's COMMITs again."""
        ck = self.checkpointer
        if ck is None:
            return
        if ck.failed:
            assert self._conn is not None
            self._conn.execute(f"PRAGMA wal_autocheckpoint={ck.pages}")  # as before the checkpointer existed
            self.checkpointer = None
            log.warning("store %s: its writer checkpoints the WAL itself again (every %d pages)", self._path, ck.pages)
            return
        ck.poke()


#: Where the wal-index (the "-shm" file) keeps the WAL's last frame (mxFrame, in the first copy of its header)
#: and how many frames were copied back to the database (nBackfill, in WalCkptInfo): sqlite.org/walformat.html.
#: Native byte order; read as a hint only (a torn read makes one checkpoint early or late).
_SHM_MX_FRAME, _SHM_BACKFILL = 16, 96


class Checkpointer:
    """Copies the WAL back into the database file on a thread and connection of its own (PASSIVE checkpoints).

    With SQLite's automatic checkpoint the writer ran each checkpoint inside the COMMIT that crossed the
    threshold, on its own thread, with pushes waiting (on a grown store COMMIT was ~51 % of the writer's
    wall, bench/README.md). A PASSIVE checkpoint never waits for the writer nor blocks it, and sqlite3
    releases the GIL while SQLite copies. After each commit the writer pokes this thread; it checkpoints
    once `pages` WAL frames are not yet copied back. The writer's connection keeps an automatic checkpoint
    at a larger bound (sqlite_schema.WAL_WRITER_BOUND_PAGES), so the WAL stays bounded if this thread lags
    or readers pin old frames; if this thread fails it is logged and the writer goes back to checkpointing
    every `pages` itself (`failed`). A checkpoint only copies committed frames: durability is the COMMIT's.
    """

    def __init__(self, path: str, pages: int) -> None:
        self.path = path
        self.pages = pages
        self.checkpoints = 0  # PASSIVE checkpoints run (tests and benchmarks read these)
        self.failed = False
        self._wake = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=f"omega-store-ckpt:{path}", daemon=True)
        self._thread.start()

    def poke(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    def join(self) -> None:
        self._thread.join()

    def _behind(self, shm: int) -> int:
        """WAL frames not yet copied back to the database file."""
        head = os.pread(shm, _SHM_BACKFILL + 4, 0)
        if len(head) < _SHM_BACKFILL + 4:
            return 0  # no wal-index yet: nothing written
        (mx_frame,) = struct.unpack_from("=I", head, _SHM_MX_FRAME)
        (backfill,) = struct.unpack_from("=I", head, _SHM_BACKFILL)
        return max(0, mx_frame - backfill)

    def checkpoint(self, conn: sqlite3.Connection) -> None:
        busy, _log, _done = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        if not busy:
            self.checkpoints += 1

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        shm = -1
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA synchronous=FULL")  # the database file is fsynced after each checkpoint
            conn.execute("PRAGMA busy_timeout=5000")  # opening (not the PASSIVE checkpoints, which never wait)
            conn.execute("PRAGMA wal_autocheckpoint=0")  # it never writes; said for the reader of this code
            conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()  # opens the WAL and its index
            shm = os.open(self.path + "-shm", os.O_RDONLY)
            while True:
                self._wake.wait()
                self._wake.clear()
                if self._stopping:
                    break
                if self._behind(shm) >= self.pages:
                    self.checkpoint(conn)
        except Exception:  # noqa: BLE001 - logged; the writer takes the checkpoints over
            log.exception("store %s: the WAL checkpointer failed; the writer checkpoints again", self.path)
            self.failed = True
        finally:
            if shm >= 0:
                os.close(shm)
            if conn is not None:
                conn.close()


class Readers(_Threads):
    """Read-only snapshots on their own connections and threads (WAL: readers never block the writer).

    Each job runs inside one read transaction, so all its SELECTs see the same
    committed state; a write acknowledged before the job was submitted is visible.
    """

    def __init__(self, path: str, threads: int) -> None:
        super().__init__(path, [f"omega-store-read{i}:{path}" for i in range(threads)])
        self._start()

    def submit(self, fn: Callable[[sqlite3.Connection], Any]) -> asyncio.Future[Any]:
        return self._put(fn, "read")

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        broken: OmegaError | None = None
        try:
            conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA query_only=1")
            conn.execute("PRAGMA busy_timeout=5000")
        except _CONNECT_ERRORS as exc:
            broken = OmegaError(f"cannot open store {self._path}: {exc}")
        try:
            # Jobs queued before stop() precede its sentinels (FIFO): every one is answered.
            while (job := self._queue.get()) is not None:
                if conn is None:
                    _resolve(job, False, broken)
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
                    _resolve(job, False, translate(exc))
                else:
                    _resolve(job, True, value)
        finally:
            if conn is not None:
                conn.close()




MISS = object()


class ItemCache:
    """LRU of consolidated items by (kind, k1, k2, k3, seq), shared by the reader threads."""

    def __init__(self, entries: int) -> None:
        self._entries = entries
        self._items: OrderedDict[tuple, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get_many(self, rows: list[tuple]) -> list[Any]:
        items = self._items
        with self._lock:
            out = [items.get(r, MISS) for r in rows]
            for r, item in zip(rows, out, strict=True):
                if item is not MISS:
                    items.move_to_end(r)
        return out

    def put_many(self, rows: list[tuple], values: list[Any]) -> None:
        items = self._items
        with self._lock:
            for r, v in zip(rows, values, strict=True):
                items[r] = v
            while len(items) > self._entries:
                items.popitem(last=False)


def _refuse_until_stopped(q: queue.SimpleQueue[Job | None], exc: Exception) -> None:
    """A thread without a connection: every job gets `exc`, up to stop()'s sentinel (none waits for ever)."""
    while (job := q.get()) is not None:
        _resolve(job, False, exc)


def _fail_pending(q: queue.SimpleQueue[Job | None], exc: Exception) -> None:
    while True:
        try:
            job = q.get_nowait()
        except queue.Empty:
            return
        if job is not None:
            _resolve(job, False, exc)


def translate(exc: BaseException) -> BaseException:
    if isinstance(exc, sqlite3.DatabaseError):
        return OmegaError(f"constellation store error: {exc}")
    return exc
