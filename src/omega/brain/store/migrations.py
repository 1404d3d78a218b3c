"""Numbered schema migrations of the brain's SQLite file.

How to add a migration (a one-function change): append a function below,
decorated with `@migration(N)` where N is the next number, that runs its DDL/DML
on the connection it is given. Never edit a migration that has shipped; add a
new one. `apply_migrations` runs every missing migration, in order, inside the
caller's transaction and records the new `schema_version` in `meta`, so a crash
mid-upgrade leaves the file at the old version, untouched. Use `db.execute` or
`run_script(db, sql)` inside a migration, never `db.executescript` (it COMMITs
first and would break that atomicity).

Example::

    @migration(2)
    def _outbox(db: sqlite3.Connection) -> None:
        db.execute("CREATE TABLE outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, ...)")
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

FORMAT_MARKER = "omega-brain"
#: Written into the SQLite header too, so `file`/`sqlite3` tools can tell what this is ("OMGB").
APPLICATION_ID = 0x4F4D4742

Migration = Callable[[sqlite3.Connection], None]
_MIGRATIONS: dict[int, Migration] = {}


def migration(number: int) -> Callable[[Migration], Migration]:
    """Register `fn` as migration `number` (numbers must be 1, 2, 3, ... without gaps)."""

    def register(fn: Migration) -> Migration:
        if number in _MIGRATIONS:
            raise RuntimeError(f"migration {number} is defined twice")
        _MIGRATIONS[number] = fn
        return fn

    return register


def latest_version() -> int:
    numbers = sorted(_MIGRATIONS)
    if numbers != list(range(1, len(numbers) + 1)):
        raise RuntimeError(f"migration numbers must be 1..N without gaps, got {numbers}")
    return len(numbers)


def apply_migrations(db: sqlite3.Connection, current: int) -> int:
    """Run migrations current+1..latest on `db` (inside the caller's transaction); return the new version."""
    target = latest_version()
    for number in range(current + 1, target + 1):
        _MIGRATIONS[number](db)
        db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(number),))
    return target


def run_script(db: sqlite3.Connection, script: str) -> None:
    """Run several statements one by one.

    Unlike `Connection.executescript`, which first COMMITs any open transaction,
    this keeps a migration inside the caller's transaction.
    """
    statement = ""
    for line in script.splitlines(keepends=True):
        statement += line
        if sqlite3.complete_statement(statement):
            db.execute(statement)
            statement = ""
    if statement.strip():
        raise RuntimeError(f"incomplete SQL statement in migration: {statement.strip()[:80]}")


def create_meta(db: sqlite3.Connection) -> None:
    """The bootstrap every brain file starts with: the format marker at schema version 0."""
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID")
    db.executemany(
        "INSERT INTO meta (key, value) VALUES (?, ?)",
        [("format", FORMAT_MARKER), ("schema_version", "0")],
    )
    db.execute(f"PRAGMA application_id = {APPLICATION_ID}")


def _totals_table(name: str) -> str:
    """A table of the cloud's aggregated (src, dst) totals: their weight and support (distinct TVs)."""
    return f"""CREATE TABLE {name} (
            src     INTEGER NOT NULL,
            dst     INTEGER NOT NULL,
            weight  REAL NOT NULL,
            support INTEGER NOT NULL CHECK (support >= 0),
            PRIMARY KEY (src, dst)
        ) WITHOUT ROWID;"""


@migration(1)
def _initial_schema(db: sqlite3.Connection) -> None:
    run_script(
        db,
        f"""
        CREATE TABLE catalog (
            content_id INTEGER PRIMARY KEY,
            title      TEXT NOT NULL,
            genres     TEXT NOT NULL,          -- JSON array of strings
            year       INTEGER,
            tags       TEXT NOT NULL,          -- JSON array of strings
            embedding  BLOB NOT NULL CHECK (length(embedding) = 1536)   -- 384 x float32
        );

        -- ReflexionMemory
        CREATE TABLE episodes (
            id          INTEGER PRIMARY KEY AUTOINCREMENT,   -- ids are never reused
            content_id  INTEGER NOT NULL,
            started_at  REAL NOT NULL,
            watched_s   REAL NOT NULL CHECK (watched_s >= 0),
            duration_s  REAL NOT NULL CHECK (duration_s >= 0),
            completion  REAL NOT NULL CHECK (completion BETWEEN 0 AND 1),
            reward      REAL NOT NULL CHECK (reward BETWEEN -1 AND 1),
            hour        INTEGER NOT NULL CHECK (hour BETWEEN 0 AND 23),
            weekday     INTEGER NOT NULL CHECK (weekday BETWEEN 0 AND 6),
            profile     TEXT NOT NULL,
            outcome     TEXT NOT NULL CHECK (outcome IN ('finished', 'abandoned', 'skipped', 'rewatched')),
            critique    TEXT
        );
        CREATE INDEX episodes_by_time ON episodes (started_at);

        -- SkillLibrary
        -- A rowid table with the vector last: rows of 1.6 KB are too big for
        -- WITHOUT ROWID, and scans for quality/eviction never touch the blob.
        CREATE TABLE patterns (
            id             BLOB NOT NULL UNIQUE CHECK (length(id) = 16),   -- UUID bytes
            task_type      INTEGER NOT NULL,
            success_rate   REAL NOT NULL CHECK (success_rate BETWEEN 0 AND 1),
            uses           INTEGER NOT NULL CHECK (uses >= 0),
            successes      INTEGER NOT NULL CHECK (successes BETWEEN 0 AND uses),
            reward_sum     REAL NOT NULL,
            created_at     REAL NOT NULL,
            updated_at     REAL NOT NULL,
            last_used_at   REAL NOT NULL,
            version        INTEGER NOT NULL,
            pushed_version INTEGER NOT NULL DEFAULT 0,    -- highest version the sync agent pushed
            embedding      BLOB NOT NULL CHECK (length(embedding) = 1536)
        );
        -- Covers the quality filter and the eviction utility, so neither reads the vectors.
        CREATE INDEX patterns_by_quality
            ON patterns (success_rate, uses, reward_sum, last_used_at, version, pushed_version, id);

        -- Local order-aware statistics: after src the viewer watched dst.
        CREATE TABLE transitions (
            src        INTEGER NOT NULL,
            dst        INTEGER NOT NULL,
            weight     REAL NOT NULL,
            count      INTEGER NOT NULL CHECK (count >= 0),
            updated_at REAL NOT NULL,
            PRIMARY KEY (src, dst)
        ) WITHOUT ROWID;

        -- ReasoningBank: consolidated patterns received from the cloud.
        CREATE TABLE consolidated (
            cluster_id   INTEGER PRIMARY KEY,
            task_type    INTEGER NOT NULL,
            success_rate REAL NOT NULL CHECK (success_rate BETWEEN 0 AND 1),
            support      INTEGER NOT NULL CHECK (support >= 0),
            trend_score  REAL NOT NULL,
            version      INTEGER NOT NULL,
            received_at  REAL NOT NULL,
            embedding    BLOB NOT NULL CHECK (length(embedding) = 1536)
        );

        -- Global transition statistics from the cloud (already aggregated there).
        {_totals_table("global_transitions")}

        CREATE TABLE sync_state (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
        """,
    )


@migration(2)
def _sync_outbox(db: sqlite3.Connection) -> None:
    """The sync agent's durable outbox and what it needs to push only real changes."""
    run_script(
        db,
        """
        -- What the sync agent last sealed of each pattern, so it pushes a new
        -- version only when the vector or the success statistics moved enough.
        ALTER TABLE patterns ADD COLUMN pushed_embedding BLOB;        -- 384 x float32, NULL = never pushed
        ALTER TABLE patterns ADD COLUMN pushed_uses INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE patterns ADD COLUMN pushed_success_rate REAL NOT NULL DEFAULT 0;

        -- Transition weight already sealed into a push: the delta queued is weight - pushed_weight.
        ALTER TABLE transitions ADD COLUMN pushed_weight REAL NOT NULL DEFAULT 0;

        -- Sealed pushes waiting for the cloud's PushAck; a row is deleted only on a verified ack.
        CREATE TABLE sync_outbox (
            id              INTEGER PRIMARY KEY AUTOINCREMENT,     -- FIFO order, never reused
            batch_id        BLOB NOT NULL UNIQUE CHECK (length(batch_id) = 16),
            push            BLOB NOT NULL,                        -- the Push, as a locally sealed frame
            patterns        INTEGER NOT NULL CHECK (patterns >= 0),
            edges           INTEGER NOT NULL CHECK (edges >= 0),
            created_at      REAL NOT NULL,
            attempts        INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
            next_attempt_at REAL NOT NULL,
            last_error      TEXT
        );
        """,
    )


@migration(3)
def _global_pairs(db: sqlite3.Connection) -> None:
    """Unordered item pairs from the cloud ("watched near each other"), kept in both orientations."""
    run_script(db, _totals_table("global_pairs"))


@migration(4)
def _refined_neighbours(db: sqlite3.Connection) -> None:
    """The cloud's refined neighbours (EASE over the published pairs): src predicts dst with `weight` (0..1]."""
    run_script(db, _totals_table("refined_neighbours"))


@migration(5)
def _cowatch(db: sqlite3.Connection) -> None:
    """Co-watched pairs this TV queued for its co-watch upload (Keyspace.COWATCH): each pair once, ever."""
    run_script(
        db,
        """
        -- (a, b), a < b: watched within the last W distinct titles, the later one liked. The primary key keeps
        -- a pair queued once for the TV's lifetime (the cloud counts a pair once per TV); `sealed` 1: in a push.
        CREATE TABLE cowatch (
            a      INTEGER NOT NULL,
            b      INTEGER NOT NULL,
            sealed INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (a, b)
        ) WITHOUT ROWID;
        CREATE INDEX cowatch_unsealed ON cowatch (a, b) WHERE sealed = 0;
        """,
    )
