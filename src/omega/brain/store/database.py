"""`Database`: the one connection to a brain file, and its transactions.

Every public method of the store is atomic. `transaction()` groups several
calls into one atomic change; nested `transaction()` blocks become savepoints,
so an inner block that fails rolls back only its own changes and the outer one
may carry on. SQLite's errors leave the store as `OmegaError`s that name the
file (the original error stays chained, see `is_bad_data`).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Self

from omega.brain.store.opening import Synchronous, open_brain_db
from omega.errors import OmegaError


def is_bad_data(exc: BaseException) -> bool:
    """Did a write fail on the values it was given (rather than on the TV's own store, e.g. a full disk)?

    SQLite errors leave the store wrapped in OmegaError (possibly twice, through nested transactions);
    only an out-of-range value (OverflowError) or a constraint violation (IntegrityError) blames the data.
    """
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, (OverflowError, sqlite3.IntegrityError)):
            return True
        cur = cur.__cause__ or cur.__context__
    return False


class Database:
    """One SQLite connection, serialised by a lock, with atomic (nestable) transactions."""

    def __init__(
        self, path: Path | str, *, synchronous: Synchronous = "FULL", clock: Callable[[], float] = time.time
    ) -> None:
        self.path = path if str(path) == ":memory:" else Path(path)
        self._clock = clock
        self._lock = threading.RLock()
        self._depth = 0
        self._db: sqlite3.Connection | None = open_brain_db(path, synchronous=synchronous)

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                if self._depth:
                    raise OmegaError("cannot close the brain store inside a transaction")
                self._db.close()
                self._db = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise OmegaError(f"brain store {self.path} is closed")
        return self._db

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic change. Nesting uses savepoints.

        Yields the connection for the store's own table modules (and for tests
        that inject faults); code outside `omega.brain.store` calls store methods.
        """
        with self._lock:
            db = self._conn()
            depth = self._depth
            savepoint = f"omega_sp{depth}"
            try:
                db.execute("BEGIN IMMEDIATE" if depth == 0 else f"SAVEPOINT {savepoint}")
            except sqlite3.Error as exc:
                raise OmegaError(f"brain store {self.path}: cannot start a transaction: {exc}") from None
            self._depth += 1
            try:
                yield db
            except BaseException as exc:
                self._depth -= 1
                self._undo(db, depth, savepoint)
                if isinstance(exc, sqlite3.Error):
                    raise OmegaError(f"brain store {self.path}: {exc}") from exc
                raise
            self._depth -= 1
            try:
                db.execute("COMMIT" if depth == 0 else f"RELEASE {savepoint}")
            except sqlite3.Error as exc:
                self._undo(db, depth, savepoint)
                raise OmegaError(f"brain store {self.path}: commit failed: {exc}") from None

    @contextmanager
    def snapshot(self) -> Iterator[sqlite3.Connection]:
        """Reads over several statements that see one state of the file, without SQLite's write lock.

        A deferred transaction: in WAL mode another connection (the sync daemon's process) keeps writing
        meanwhile, and neither waits. Inside `transaction()` it is that transaction. For reads only.
        """
        with self._lock:
            db = self._conn()
            if self._depth:
                yield db
                return
            try:
                db.execute("BEGIN DEFERRED")
            except sqlite3.Error as exc:
                raise OmegaError(f"brain store {self.path}: cannot start a read: {exc}") from None
            self._depth += 1
            try:
                yield db
            except sqlite3.Error as exc:
                raise OmegaError(f"brain store {self.path}: {exc}") from exc
            finally:
                self._depth -= 1
                if db.in_transaction:
                    db.execute("ROLLBACK")  # nothing was written: ends the read

    @staticmethod
    def _undo(db: sqlite3.Connection, depth: int, savepoint: str) -> None:
        if not db.in_transaction:  # SQLite already rolled back (e.g. disk full)
            return
        if depth == 0:
            db.execute("ROLLBACK")
        else:
            db.execute(f"ROLLBACK TO {savepoint}")
            db.execute(f"RELEASE {savepoint}")

    def _query(self, sql: str, params: Sequence | dict = ()) -> list[tuple]:
        with self._lock:
            try:
                return self._conn().execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise OmegaError(f"brain store {self.path}: {exc}") from None

    def _scalar(self, sql: str, params: Sequence | dict = ()) -> object:
        found = self._query(sql, params)
        return found[0][0] if found else None

    def limit_cache(self, kib: int) -> None:
        """Bound this connection's page cache to `kib` KiB (SQLite's default is 2 MiB): the fleet simulator
        holds hundreds of brains in one process, where the caches were most of its memory."""
        if isinstance(kib, bool) or not isinstance(kib, int) or kib < 16:
            raise OmegaError(f"cache size must be an integer of at least 16 KiB, got {kib!r}")
        with self._lock:
            self._conn().execute(f"PRAGMA cache_size = -{kib}")

    def release_cache(self) -> None:
        """Free this connection's page cache now (SQLite's `shrink_memory`); pages are read from the file
        again when needed. For processes that hold hundreds of brains (the evaluation's fleet): each
        connection otherwise keeps what its last reads left, up to its cache size, for as long as it lives."""
        with self._lock:
            self._conn().execute("PRAGMA shrink_memory")

    # ------------------------------------------------------------------ inspection

    def schema_version(self) -> int:
        return int(self._scalar("SELECT value FROM meta WHERE key = 'schema_version'"))  # type: ignore[arg-type]

    def integrity_check(self) -> list[str]:
        """SQLite's full integrity check: an empty list means the file is sound."""
        found = [r[0] for r in self._query("PRAGMA integrity_check")]
        return [] if found == ["ok"] else found
