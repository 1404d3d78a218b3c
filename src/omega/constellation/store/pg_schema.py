"""Schema and migrations of the PostgreSQL constellation store.

Every table is prefixed `omega_`, so the store can live in a database shared
with other applications. `omega_schema.version` is the schema version;
`MIGRATIONS[i]` takes version i to i + 1. Migrating runs in one transaction
under an advisory lock, so several workers starting at once against a fresh
database neither race nor half-create the schema.

Tables (schema v1) mirror the SQLite store (see sqlite_schema.py for the why of each):
- `omega_meta`: origin name, codebook fingerprint/version, salt check value.
- `omega_head`: one row, the last change sequence number handed out. A writer
  locks it to number its changes and holds it to its COMMIT, so change numbers
  are assigned in commit order (a reader never sees seq N+1 committed before
  seq N, so a pull cursor never skips a change) and stay gap-free. Push groups
  take it only at the end of their transaction, after their work under per-member
  advisory locks, and read-modify-write their cells' accumulators under it; every
  other writer takes it first. Lock order: pg_engine.py.
- `omega_push_keys`, `omega_members`: idempotency keys and per-key member hashes (v5: with what the
  member's last contribution counts, which its next one replaces).
- `omega_cell_state` / `omega_edge_state`: CRDT entries per (origin, key);
  `sum_wx` is 384 little-endian float64 (bytea) so a federation round trip is exact.
- `omega_served`: the global view's change index per key (seq, global support; v4: `peak`, the
  highest support it ever had, so a published key's removal is served; v6: the pull scan reads the
  partial index `omega_served_published`, the keys whose peak reached `omega_meta.pull_floor`).
- `omega_cell_vectors`: per cell, `embedding vector(384)`, the normalised global
  mean, with an HNSW cosine index (m = 32, ef_construction = 200) for
  `nearest_consolidated`. An HNSW insert costs ~5 ms here (m = 32,
  ef_construction = 200), ten times a whole push without it, so pushes do not
  write vectors: they mark the cell in `omega_dirty_cells` (with the change
  seq), and a refresher rewrites the vectors of dirty cells in batches —
  every second in the background, and before every search (so a search sees
  every acknowledged push). A cell pushed to 100 times in a second costs one
  insert, and only when its direction moved enough to matter
  (postgres.VECTOR_REFRESH).
- `omega_dp_releases`, `omega_dp_day_keys`: DP mode's state (v3); `omega_dp_grants` (v4): per push the
  keys granted to it, so a retried batch uses no more.
- `omega_contributions`: log of accepted contributions within the window (v2: edges too, an epoch index;
  v5: pattern contributions only, for the DP release; older rows `legacy`, subtracted when they expire).
"""

from __future__ import annotations

import asyncpg

from omega.constellation.privacy import DEFAULT_K_MIN, check_k_min
from omega.errors import OmegaError
from omega.protocol import EMBEDDING_DIM

# Arbitrary constant: the advisory lock id that serialises schema migrations.
MIGRATION_LOCK_ID = 0x4F4D4743_0001
# Advisory lock id held by the one vector refresher running per database at a time.
REFRESH_LOCK_ID = 0x4F4D4743_0002

HNSW_M = 32
HNSW_EF_CONSTRUCTION = 200

_SCHEMA_V1 = f"""
CREATE TABLE omega_meta (key text PRIMARY KEY, value bytea NOT NULL);
CREATE TABLE omega_head (id int PRIMARY KEY CHECK (id = 1), seq bigint NOT NULL);
INSERT INTO omega_head VALUES (1, 0);
CREATE TABLE omega_push_keys (key bytea PRIMARY KEY, at_ms bigint NOT NULL);
CREATE INDEX omega_push_keys_at ON omega_push_keys (at_ms);
CREATE TABLE omega_members (
    kind smallint NOT NULL, k1 bigint NOT NULL, k2 bigint NOT NULL, k3 bigint NOT NULL,
    member bytea NOT NULL, epoch bigint,
    PRIMARY KEY (kind, k1, k2, k3, member));
CREATE INDEX omega_members_epoch ON omega_members (epoch) WHERE epoch IS NOT NULL;
CREATE TABLE omega_cell_state (
    origin text NOT NULL, task_type int NOT NULL, cell bigint NOT NULL,
    sum_w float8 NOT NULL, sum_wx bytea NOT NULL, support bigint NOT NULL,
    successes float8 NOT NULL, trials float8 NOT NULL, version bigint NOT NULL,
    PRIMARY KEY (task_type, cell, origin));
ALTER TABLE omega_cell_state ALTER COLUMN sum_wx SET STORAGE EXTERNAL;
CREATE INDEX omega_cell_state_version ON omega_cell_state (version);
CREATE TABLE omega_edge_state (
    origin text NOT NULL, keyspace bigint NOT NULL, src bigint NOT NULL, dst bigint NOT NULL,
    weight float8 NOT NULL, support bigint NOT NULL, version bigint NOT NULL,
    PRIMARY KEY (keyspace, src, dst, origin));
CREATE INDEX omega_edge_state_version ON omega_edge_state (version);
CREATE TABLE omega_served (
    kind smallint NOT NULL, k1 bigint NOT NULL, k2 bigint NOT NULL, k3 bigint NOT NULL,
    seq bigint NOT NULL UNIQUE, support bigint NOT NULL,
    PRIMARY KEY (kind, k1, k2, k3));
CREATE TABLE omega_cell_vectors (
    task_type int NOT NULL, cell bigint NOT NULL, embedding vector({EMBEDDING_DIM}) NOT NULL,
    PRIMARY KEY (task_type, cell));
CREATE INDEX omega_cell_vectors_embedding ON omega_cell_vectors
    USING hnsw (embedding vector_cosine_ops) WITH (m = {HNSW_M}, ef_construction = {HNSW_EF_CONSTRUCTION});
CREATE TABLE omega_dirty_cells (
    task_type int NOT NULL, cell bigint NOT NULL, seq bigint NOT NULL, PRIMARY KEY (task_type, cell));
CREATE TABLE omega_contributions (
    id bigserial PRIMARY KEY, epoch bigint NOT NULL, kind smallint NOT NULL,
    k1 bigint NOT NULL, k2 bigint NOT NULL, k3 bigint NOT NULL,
    weight float8 NOT NULL, successes float8, trials float8, embedding bytea)
"""

# v2: the contribution window (store/window.py; the SQLite store's v3 says why).
_SCHEMA_V2 = """
UPDATE omega_members SET epoch = (SELECT coalesce(max(epoch), 0) - 1 FROM omega_contributions) WHERE epoch IS NULL;
CREATE INDEX omega_contributions_epoch ON omega_contributions (epoch)
"""

# v3: DP mode's state (the SQLite store's v4 says why).
_SCHEMA_V3 = """
CREATE TABLE omega_dp_releases (epoch bigint PRIMARY KEY, release bytea NOT NULL);
CREATE TABLE omega_dp_day_keys (
    epoch bigint NOT NULL, tag bytea NOT NULL, used bigint NOT NULL, PRIMARY KEY (epoch, tag))
"""

# v4: retraction, `omega_served.peak`, and `omega_dp_grants` (the SQLite store's v5 says why).
_SCHEMA_V4 = """
CREATE TABLE omega_dp_grants (push_key bytea PRIMARY KEY, epoch bigint NOT NULL, granted bigint NOT NULL);
CREATE INDEX omega_dp_grants_epoch ON omega_dp_grants (epoch);
ALTER TABLE omega_served ADD COLUMN peak bigint NOT NULL DEFAULT 0;
UPDATE omega_served SET peak = support;
CREATE INDEX omega_served_seq_support ON omega_served (seq, support, peak)
"""

# v5: latest wins per member per key (the SQLite store's v6 says why). Existing log rows are `legacy`
# (a fast default, then new rows default to false: no table rewrite).
_SCHEMA_V5 = """
ALTER TABLE omega_members ADD COLUMN weight float8, ADD COLUMN successes float8, ADD COLUMN trials float8,
    ADD COLUMN embedding bytea;
ALTER TABLE omega_contributions ADD COLUMN legacy boolean NOT NULL DEFAULT true;
ALTER TABLE omega_contributions ALTER COLUMN legacy SET DEFAULT false
"""

#: The pull scan's index (the SQLite store's v9 says why): the served rows of the keys whose support ever reached
#: the pull floor, in seq order, covering the scan.
PUBLISHED_INDEX = "omega_served_published"


def published_index_sql(floor: int) -> str:
    """The statement that creates the pull scan's index for pull floor `floor` (a literal: the planner uses a
    partial index for a query whose WHERE implies the index's, and a parameter's value is not known to it)."""
    return (f"CREATE INDEX {PUBLISHED_INDEX} ON omega_served (seq) INCLUDE (kind, k1, k2, k3, support, peak) "
            f"WHERE peak >= {check_k_min(floor)}")  # fmt: skip


# v6: the pull scan's partial index, for the default k_min until the aggregator says its own
# (PostgresStore.set_pull_floor). It replaces v4's (seq, support, peak), which held every served key: a pull
# with a k_min below the floor (DP mode's daily draw, k_min 1) reads the seq order of the UNIQUE (seq) index.
_SCHEMA_V6 = f"""
DROP INDEX IF EXISTS omega_served_seq_support;
{published_index_sql(DEFAULT_K_MIN)};
INSERT INTO omega_meta VALUES ('pull_floor', '{DEFAULT_K_MIN}'::bytea)
    ON CONFLICT (key) DO UPDATE SET value = excluded.value
"""

# v7: no table changes. Push groups lock member rows instead of key buckets and read-modify-write their cells
# under the head row (pg_engine.py, 4150afc). A worker of the old protocol beside a new one could lose a cell's
# update, so the version moves: an older omega refuses this database at start (`migrate`). Workers that were
# already running are not stopped by it: upgrade by stopping every old worker first (deploy/README.md).
_SCHEMA_V7 = """
INSERT INTO omega_meta VALUES ('push_lock_protocol', '2'::bytea)
    ON CONFLICT (key) DO UPDATE SET value = excluded.value
"""

MIGRATIONS: list[str] = [_SCHEMA_V1, _SCHEMA_V2, _SCHEMA_V3, _SCHEMA_V4, _SCHEMA_V5, _SCHEMA_V6, _SCHEMA_V7]
SCHEMA_VERSION = len(MIGRATIONS)


async def migrate(conn: asyncpg.Connection, where: str) -> int:
    """Bring the database to SCHEMA_VERSION (idempotent); returns the version found before."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_ID)
        try:
            await conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        except asyncpg.PostgresError as exc:
            raise OmegaError(f"{where} has no usable pgvector extension ({exc}); install pgvector there") from None
        await conn.execute("CREATE TABLE IF NOT EXISTS omega_schema (version int NOT NULL)")
        found = await conn.fetchval("SELECT max(version) FROM omega_schema")
        if found is None:
            found = 0
            await conn.execute("INSERT INTO omega_schema VALUES (0)")
        if found > SCHEMA_VERSION:
            raise OmegaError(f"{where} has schema version {found}, newer than this omega ({SCHEMA_VERSION})")
        for step in range(found, SCHEMA_VERSION):
            await conn.execute(MIGRATIONS[step])
            await conn.execute("UPDATE omega_schema SET version = $1", step + 1)
        return int(found)
