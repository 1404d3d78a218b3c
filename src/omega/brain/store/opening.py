"""Open a brain file safely: refuse anything that is not ours before writing a byte.

The order matters. A file is first checked from its raw header (not SQLite,
truncated), then read through SQLite (another application's database, a newer
schema). Only when it is an omega-brain file, or a new/empty one, do we switch
it to WAL and migrate it, because `PRAGMA journal_mode=WAL` rewrites the header
and would otherwise alter someone else's file.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Literal

from omega.brain.store.migrations import FORMAT_MARKER, apply_migrations, create_meta, latest_version
from omega.errors import OmegaError

SQLITE_MAGIC = b"SQLite format 3\x00"
_HEADER_SIZE = 100

Synchronous = Literal["FULL", "NORMAL"]


def check_header(path: Path) -> None:
    """Raise OmegaError if an existing, non-empty file cannot be an intact SQLite database."""
    if not path.exists():
        return
    if not path.is_file():
        raise OmegaError(f"brain store {path} is not a regular file")
    size = path.stat().st_size
    if size == 0:
        return
    with path.open("rb") as handle:
        header = handle.read(_HEADER_SIZE)
    if not header.startswith(SQLITE_MAGIC) or len(header) < _HEADER_SIZE:
        raise OmegaError(f"brain store {path} is not a SQLite database (bad header); refusing to open it")
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    page_count = int.from_bytes(header[28:32], "big")
    # The in-header page count is only trustworthy when its "valid-for" counter
    # matches the change counter. With a non-empty WAL beside it, a crash during a
    # checkpoint may legitimately leave the file short until recovery, so skip then.
    count_valid = header[24:28] == header[92:96]
    wal = path.with_name(path.name + "-wal")
    wal_pending = wal.exists() and wal.stat().st_size > 0
    if count_valid and not wal_pending and size < page_count * page_size:
        raise OmegaError(
            f"brain store {path} is truncated ({size} bytes, header says {page_count * page_size}); "
            "refusing to open it"
        )


def _existing_tables(db: sqlite3.Connection) -> list[str]:
    rows = db.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'").fetchall()
    return sorted(name for (name,) in rows)


def _read_version(db: sqlite3.Connection, path: object) -> int | None:
    """The file's schema version, None for a blank database, OmegaError if not an omega-brain file."""
    tables = _existing_tables(db)
    if not tables:
        return None
    if "meta" not in tables:
        raise OmegaError(
            f"brain store {path} is another application's SQLite database "
            f"(tables: {', '.join(tables[:8])}); refusing to use it"
        )
    meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
    if meta.get("format") != FORMAT_MARKER:
        raise OmegaError(
            f"brain store {path} is not an omega-brain database (format marker {meta.get('format')!r}); refusing to use it"
        )
    try:
        version = int(meta["schema_version"])
    except (KeyError, ValueError):
        raise OmegaError(f"brain store {path} has no valid schema_version in its meta table") from None
    latest = latest_version()
    if version > latest:
        raise OmegaError(
            f"brain store {path} has schema version {version}, newer than this omega understands ({latest}); "
            "upgrade omega to open it"
        )
    return version


def open_brain_db(path: Path | str, *, synchronous: Synchronous = "FULL", busy_timeout_ms: int = 5000) -> sqlite3.Connection:
    """A validated, migrated connection in autocommit mode (transactions are explicit)."""
    in_memory = str(path) == ":memory:"
    if not in_memory:
        path = Path(path)
        check_header(path)
        if not path.parent.is_dir():
            raise OmegaError(f"brain store {path}: directory {path.parent} does not exist")
    if synchronous not in ("FULL", "NORMAL"):
        raise OmegaError(f"synchronous must be FULL or NORMAL, got {synchronous!r}")
    try:
        # isolation_level=None: we issue BEGIN/COMMIT ourselves (see BrainStore.transaction).
        # check_same_thread=False: BrainStore serialises access with its own lock.
        db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=busy_timeout_ms / 1000)
    except sqlite3.Error as exc:
        raise OmegaError(f"cannot open brain store {path}: {exc}") from None
    try:
        db.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        db.execute("PRAGMA foreign_keys = ON")
        _read_version(db, path)  # reads only: refuses foreign files before anything is written
        # WAL: readers never block the writer, and a crash never corrupts committed pages.
        db.execute("PRAGMA journal_mode = WAL")
        # FULL by default: in WAL mode NORMAL survives a process crash but may lose the
        # last commits on power loss, and a TV is switched off at the wall all the time.
        # Episodes are written one per viewing, so an fsync per commit costs nothing
        # noticeable; bulk writers (the simulator) may choose NORMAL.
        db.execute(f"PRAGMA synchronous = {synchronous}")
        _migrate(db, path)
    except OmegaError:
        db.close()
        raise
    except sqlite3.DatabaseError as exc:
        db.close()
        raise OmegaError(f"brain store {path} is unreadable or corrupt: {exc}") from None
    return db


def _migrate(db: sqlite3.Connection, path: object) -> None:
    # IMMEDIATE takes the write lock first, so two processes opening a new file
    # at once cannot both bootstrap it; the version is re-read under the lock.
    db.execute("BEGIN IMMEDIATE")
    try:
        version = _read_version(db, path)
        if version is None:
            create_meta(db)
            version = 0
        if version < latest_version():
            apply_migrations(db, version)
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
