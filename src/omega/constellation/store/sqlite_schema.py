"""Schema and migrations of the SQLite constellation store (one file per shard).

`PRAGMA user_version` is the schema version (`MIGRATIONS[i]` takes version i to
i + 1; v2 adds the covering index `served (seq, support)` for the pull scan) and
`PRAGMA application_id` marks the file as ours. Tables:
- `meta`: origin name, codebook fingerprint/version, salt check value.
- `push_keys`: keyed hash of (device, batch_id) + time — idempotency, pruned after the replay window.
- `members`: per-key keyed hashes of (key, device) — exact distinct support within the
  contribution window; `epoch` is the epoch of the member's last contribution (the flood check
  and the window), and (v6) what that contribution counts in the key's accumulator (weight; a
  cell's counts and float16 embedding), which its next contribution replaces (latest wins);
  `prune` deletes the member once it leaves the window, subtracting what it held. A member hash
  differs per key, so rows of one device in different cells cannot be linked without the salt.
  (v7) A rowid table found by the unique index `members_key`, so new members are appended.
- `cell_state` / `edge_state`: CRDT entries per (origin, key); this shard's own rows are
  its accumulators (version = change seq of their last change).
- `served`: the global view's change index: per key, global support, the change
  sequence `seq` (unique, store-wide monotonic) of its last change, and (v5) `peak`, the
  highest support it ever had (a published key's removal is served to TVs).
  (v8) A rowid table keyed by `seq` (so a change's row is appended), found by the unique index `served_key`.
  (v9) The pull scan reads the partial index `served_published` (the keys whose peak reached the store's
  pull floor, `meta.pull_floor`: the aggregator's k_min), not every key a push ever named.
- `dp_releases`, `dp_day_keys` (DP mode): the day's noised release as first drawn, and the
  keys each device-day added to (keyed hash of epoch ‖ device); pruned with the window. `dp_grants`
  (v5): per push, the keys granted to it (a retry is granted the same, not more).
- `contributions`: log of accepted pattern contributions within the window (key, weight, counts,
  float16 embedding, epoch) — no device id or pseudonym, time only to the epoch; the day's DP
  release reads it, `prune` deletes the rows that leave the window. Rows from before v6 (`legacy`,
  edges too) are what their members counted: `prune` subtracts them as they leave (store/window.py).
"""

from __future__ import annotations

import sqlite3

from omega.constellation.privacy import DEFAULT_K_MIN, check_k_min
from omega.errors import OmegaError

APPLICATION_ID = 0x4F4D4743  # "OMGC": marks an omega constellation store
#: The writer's page cache (KiB). A push inserts ~22 keys at random places in four B-trees (state, served,
#: member and its epoch index), so a group of 30 dirties ~1,000-2,000 pages: with SQLite's default 2 MiB cache
#: they spilled to the WAL mid-transaction and were read back (bench/push_path.py: ~250 KB read and written
#: per push). 32 MiB holds a group's pages and the hot part of the tables; only pages in use take memory.
WRITER_CACHE_KIB = 32_768
#: WAL pages between checkpoints (SQLite's default is 1,000): a checkpoint copies each page once however often
#: it was rewritten in the WAL since the last one, and with the default nearly every group commit of the sync
#: bench ran one (reading its pages back from the WAL). Run by the store's checkpointer thread.
WAL_AUTOCHECKPOINT_PAGES = 10_000
#: The writer's own automatic checkpoint, a bound only: the checkpoints every WAL_AUTOCHECKPOINT_PAGES run on
#: another thread (sqlite_engine.Checkpointer), so the writer's COMMIT does not carry them; past this many WAL
#: pages (the checkpointer lags, or a reader pins old frames) the writer checkpoints itself, as it used to.
WAL_WRITER_BOUND_PAGES = 40_000

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

# v3: the contribution window (store/window.py). A member's `epoch` is kept as its last
# contribution's epoch until it leaves the window (v2 cleared it after the day), and edges are
# logged too; `prune` finds what left the window by these epoch indexes. Marks cleared by v2 get
# the last logged epoch minus one: a full window from the last activity the file knows of.
_SCHEMA_V3 = """
UPDATE members SET epoch = (SELECT coalesce(max(epoch), 0) - 1 FROM contributions) WHERE epoch IS NULL;
CREATE INDEX members_epoch ON members (epoch);
CREATE INDEX contributions_epoch ON contributions (epoch)
"""

# v4: DP mode's state (omega.constellation.dp_release): each day's release as first drawn, and
# per device-day (a keyed hash of epoch ‖ device, unlinkable across days) the keys it added to.
_SCHEMA_V4 = """
CREATE TABLE dp_releases (epoch INTEGER PRIMARY KEY, release BLOB NOT NULL);
CREATE TABLE dp_day_keys (
    epoch INTEGER NOT NULL, tag BLOB NOT NULL, used INTEGER NOT NULL,
    PRIMARY KEY (epoch, tag)) WITHOUT ROWID
"""

# v5: retraction (issue 14). `served.peak` is the highest global support a key ever had, so a key that
# was published (peak ≥ k_min) and left the published state is served as a removal (logic.removal),
# while a key that never reached k_min stays unserved. The pull scan's covering index gains it.
# Existing rows start at their current support (what was published before is not known).
# Also `dp_grants`: per push (its idempotency key) the day's keys DP mode granted it, so a retried
# batch is granted the same again and uses no more of the device-day's keys (pruned with the window).
_SCHEMA_V5 = """
CREATE TABLE dp_grants (push_key BLOB PRIMARY KEY, epoch INTEGER NOT NULL, granted INTEGER NOT NULL) WITHOUT ROWID;
CREATE INDEX dp_grants_epoch ON dp_grants (epoch);
ALTER TABLE served ADD COLUMN peak INTEGER NOT NULL DEFAULT 0;
UPDATE served SET peak = support;
DROP INDEX served_seq_support;
CREATE INDEX served_seq_support ON served (seq, support, peak)
"""

# v6: latest wins per member per key (issue 14, logic.GroupWrites). A member row holds what it counts in
# its key's accumulator (its last contribution: weight, and for a cell counts and the float16 embedding), so
# its next contribution replaces it and the window subtracts only it. Members from before hold nothing
# (NULL): their contributions are the log rows marked `legacy`, which the window still subtracts. Edges are
# no longer logged (their member rows hold their weight); cells are, for the day's DP release.
_SCHEMA_V6 = """
ALTER TABLE members ADD COLUMN weight REAL;
ALTER TABLE members ADD COLUMN successes REAL;
ALTER TABLE members ADD COLUMN trials REAL;
ALTER TABLE members ADD COLUMN embedding BLOB;
ALTER TABLE contributions ADD COLUMN legacy INTEGER NOT NULL DEFAULT 0;
UPDATE contributions SET legacy = 1
"""

# v7: the same member rows in a rowid table, found by a unique index on their key. Keyed by (kind, k1, k2, k3,
# member) itself (WITHOUT ROWID), every new member went to a random page of the table and another of the epoch
# index (sorted by key within an epoch): two random B-tree pages per pushed key. Now a new member's row and its
# epoch entry (epoch, rowid) are appended, and only the key index (~35-byte entries) takes a random page.
_SCHEMA_V7 = """
CREATE TABLE members_v7 (
    kind INTEGER NOT NULL, k1 INTEGER NOT NULL, k2 INTEGER NOT NULL, k3 INTEGER NOT NULL,
    member BLOB NOT NULL, epoch INTEGER, weight REAL, successes REAL, trials REAL, embedding BLOB);
INSERT INTO members_v7 SELECT kind, k1, k2, k3, member, epoch, weight, successes, trials, embedding
    FROM members ORDER BY epoch;
DROP TABLE members;
ALTER TABLE members_v7 RENAME TO members;
CREATE UNIQUE INDEX members_key ON members (kind, k1, k2, k3, member);
CREATE INDEX members_epoch ON members (epoch)
"""

# v8: the served rows in a rowid table keyed by their change `seq` (INTEGER PRIMARY KEY, so still unique), found
# by a unique index on their key. Keyed by the key (WITHOUT ROWID) with two indexes on seq (`served_seq` for
# uniqueness, `served_seq_support` covering the pull scan), every change wrote three B-trees; now two: the row
# itself, appended (a change takes the next seq), and its key's index entry. The pull scan reads the table in
# seq order (its rows are as small as the index entries were), the head is the last rowid.
_SCHEMA_V8 = """
CREATE TABLE served_v8 (
    seq INTEGER PRIMARY KEY, kind INTEGER NOT NULL, k1 INTEGER NOT NULL, k2 INTEGER NOT NULL, k3 INTEGER NOT NULL,
    support INTEGER NOT NULL, peak INTEGER NOT NULL DEFAULT 0);
INSERT INTO served_v8 (seq, kind, k1, k2, k3, support, peak) SELECT seq, kind, k1, k2, k3, support, peak
    FROM served ORDER BY seq;
DROP TABLE served;
ALTER TABLE served_v8 RENAME TO served;
CREATE UNIQUE INDEX served_key ON served (kind, k1, k2, k3)
"""

#: The pull scan's index: the served rows of the keys whose support ever reached the pull floor (a key's peak
#: never falls, so once in, a key stays in). A pull with k_min ≥ the floor needs no other row: a row it serves has
#: support ≥ k_min or (a removal) peak ≥ k_min, and peak ≥ support. Most served keys are named by one or two
#: TVs and never published (the 10k load run: 196,451 served rows, 208 published), and the scan of every row
#: after the cursor read them all (a page from cursor 0: 16.6 ms, now 0.35; bench/pull_scan.py); an unpublished
#: key's change writes no entry here. Covering: the scan reads no table row.
PUBLISHED_INDEX = "served_published"


def published_index_sql(floor: int) -> str:
    """The statement that creates the pull scan's index for pull floor `floor` (a literal: SQLite uses a partial
    index only for a query whose WHERE contains the index's own terms)."""
    return (f"CREATE INDEX {PUBLISHED_INDEX} ON served (seq, support, peak, kind, k1, k2, k3) "
            f"WHERE peak >= {check_k_min(floor)}")  # fmt: skip


# v9: the pull scan's partial index (above), for the default k_min until the aggregator says its own
# (`set_pull_floor`). Rows, cursors and the next seq are untouched.
_SCHEMA_V9 = f"""
{published_index_sql(DEFAULT_K_MIN)};
INSERT OR REPLACE INTO meta VALUES ('pull_floor', '{DEFAULT_K_MIN}')
"""

# Index i holds the script that migrates schema version i to i + 1.
MIGRATIONS: list[str] = [
    _SCHEMA_V1, _SCHEMA_V2, _SCHEMA_V3, _SCHEMA_V4, _SCHEMA_V5, _SCHEMA_V6, _SCHEMA_V7, _SCHEMA_V8, _SCHEMA_V9
]
SCHEMA_VERSION = len(MIGRATIONS)


def open_schema(conn: sqlite3.Connection, path: str) -> None:
    """Check the file is ours (or empty), set up the writer's connection and migrate the file to the current
    schema."""
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
    conn.execute(f"PRAGMA cache_size=-{WRITER_CACHE_KIB}")
    conn.execute(f"PRAGMA wal_autocheckpoint={WAL_WRITER_BOUND_PAGES}")
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


def pull_floor(conn: sqlite3.Connection) -> int:
    """The k_min the pull scan's index is built for (read in the caller's transaction: the index it names)."""
    return int(conn.execute("SELECT value FROM meta WHERE key = 'pull_floor'").fetchone()[0])


def set_pull_floor(conn: sqlite3.Connection, floor: int) -> bool:
    """Rebuild the pull scan's index for pull floor `floor` if it is built for another; True if it was.

    Runs outside a transaction (the writer's "raw" mode): the usual case, the same floor, is one read and no
    commit. A rebuild reads every served row once (17-34 ms for 196,000, bench/pull_scan.py); a pull with a
    k_min below the floor still gets every change it must, from a scan of every served row."""
    floor = check_k_min(floor)
    if pull_floor(conn) == floor:
        return False
    conn.execute("BEGIN IMMEDIATE")
    try:
        if pull_floor(conn) != floor:
            conn.execute(f"DROP INDEX IF EXISTS {PUBLISHED_INDEX}")
            conn.execute(published_index_sql(floor))
            conn.execute("UPDATE meta SET value = ? WHERE key = 'pull_floor'", (str(floor),))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return True
