"""`BrainStore`: the TV's durable local memory, one SQLite file per TV.

It holds the catalog (with embeddings), ReflexionMemory (episodes), the
SkillLibrary (patterns), local transition statistics, the ReasoningBank
(consolidated patterns from the cloud), global transitions and sync state.

Every public method is atomic. `transaction()` groups several calls (and raw
SQL on the yielded connection, e.g. an outbox row) into one atomic change;
nested `transaction()` blocks become savepoints, so an inner block that fails
rolls back only its own changes and the outer one may carry on.
"""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

import numpy as np

from omega.brain.records import (
    EMBEDDING_DIM,
    CatalogItem,
    ConsolidatedPattern,
    Episode,
    Pattern,
    TransitionStat,
)
from omega.brain.store import rows
from omega.brain.store.opening import Synchronous, open_brain_db
from omega.errors import OmegaError

MAX_PATTERNS = 10_000
_DAY_S = 86_400.0
#: Recency half-life-like scale of the eviction utility (days).
RECENCY_DAYS = 30.0

# Eviction utility, the same formula as `pattern_utility` below: DESIGN §2's
# retrieval score without the similarity term, plus a small recency bonus
# (0.05 for a pattern used just now, 0.025 for one unused for RECENCY_DAYS), so
# that among equally useful patterns the stale ones go first and a brand-new
# pattern is not evicted the moment it is inserted into a full store.
_UTILITY_SQL = f"""
    0.3 * success_rate
    + 0.1 * MIN(uses / 1000.0, 1.0)
    + 0.2 * (CASE WHEN uses > 0 THEN reward_sum / uses ELSE 0.0 END)
    + 0.05 / (1.0 + MAX(:now - last_used_at, 0.0) / ({_DAY_S} * {RECENCY_DAYS}))
"""


def pattern_utility(p: Pattern, now: float) -> float:
    """How much a pattern is worth keeping (higher = keep). Mirrors the SQL used by eviction."""
    age_days = max(now - p.last_used_at, 0.0) / _DAY_S
    return (
        0.3 * p.success_rate
        + 0.1 * min(p.uses / 1000.0, 1.0)
        + 0.2 * p.avg_reward
        + 0.05 / (1.0 + age_days / RECENCY_DAYS)
    )


class BrainStore:
    """Durable local memory of one TV (see module docstring)."""

    def __init__(
        self,
        path: Path | str,
        *,
        max_patterns: int = MAX_PATTERNS,
        synchronous: Synchronous = "FULL",
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_patterns < 1:
            raise OmegaError(f"max_patterns must be at least 1, got {max_patterns}")
        self.path = path if str(path) == ":memory:" else Path(path)
        self.max_patterns = max_patterns
        self._clock = clock
        self._lock = threading.RLock()
        self._depth = 0
        self._db: sqlite3.Connection | None = open_brain_db(path, synchronous=synchronous)

    # ------------------------------------------------------------------ plumbing

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                if self._depth:
                    raise OmegaError("cannot close the brain store inside a transaction")
                self._db.close()
                self._db = None

    def __enter__(self) -> BrainStore:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise OmegaError(f"brain store {self.path} is closed")
        return self._db

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic change; yields the connection for raw SQL. Nesting uses savepoints."""
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

    # ------------------------------------------------------------------ catalog

    def upsert_catalog(self, items: Sequence[CatalogItem], embeddings: np.ndarray) -> int:
        """Insert or replace catalog items with their (n, 384) embeddings; returns n."""
        matrix = np.asarray(embeddings, dtype=np.float32)
        if matrix.shape != (len(items), EMBEDDING_DIM):
            raise OmegaError(f"embeddings must have shape ({len(items)}, {EMBEDDING_DIM}), got {matrix.shape}")
        if not np.all(np.isfinite(matrix)):
            raise OmegaError("catalog embeddings contain NaN or infinite values")
        for item in items:
            if not isinstance(item, CatalogItem):
                raise OmegaError(f"catalog entries must be CatalogItem, got {type(item).__name__}")
        with self.transaction() as db:
            db.executemany(
                "INSERT INTO catalog (content_id, title, genres, year, tags, embedding) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (content_id) DO UPDATE SET title = excluded.title, genres = excluded.genres, "
                "year = excluded.year, tags = excluded.tags, embedding = excluded.embedding",
                (rows.catalog_row(item, vector) for item, vector in zip(items, matrix)),
            )
        return len(items)

    def catalog_items(self) -> list[CatalogItem]:
        found = self._query(f"SELECT {rows.CATALOG_COLUMNS} FROM catalog ORDER BY content_id")
        return [rows.row_catalog(r) for r in found]

    def catalog_embeddings(self) -> tuple[np.ndarray, np.ndarray]:
        """(content ids as int64, (n, 384) float32 matrix), ordered by content id."""
        found = self._query("SELECT content_id, embedding FROM catalog ORDER BY content_id")
        ids = np.fromiter((r[0] for r in found), dtype=np.int64, count=len(found))
        return ids, rows.blobs_matrix([r[1] for r in found])

    def get_item(self, content_id: int) -> CatalogItem | None:
        found = self._query(f"SELECT {rows.CATALOG_COLUMNS} FROM catalog WHERE content_id = ?", (int(content_id),))
        return rows.row_catalog(found[0]) if found else None

    def get_item_embedding(self, content_id: int) -> np.ndarray | None:
        blob = self._scalar("SELECT embedding FROM catalog WHERE content_id = ?", (int(content_id),))
        return None if blob is None else rows.blob_vector(blob)  # type: ignore[arg-type]

    # ------------------------------------------------------------------ episodes (ReflexionMemory)

    def add_episode(self, episode: Episode) -> int:
        """Store an episode and return its id (assigned here when `episode.id` is None)."""
        if not isinstance(episode, Episode):
            raise OmegaError(f"expected an Episode, got {type(episode).__name__}")
        with self.transaction() as db:
            try:
                cursor = db.execute(
                    f"INSERT INTO episodes ({rows.EPISODE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    rows.episode_row(episode),
                )
            except sqlite3.IntegrityError:
                raise OmegaError(f"episode id {episode.id} already exists") from None
            return int(cursor.lastrowid)

    def episodes(self, limit: int | None = None, since: float | None = None) -> list[Episode]:
        """Episodes in time order; `since` keeps started_at >= since; `limit` keeps the most recent ones."""
        sql = f"SELECT {rows.EPISODE_COLUMNS} FROM episodes"
        params: list = []
        if since is not None:
            sql += " WHERE started_at >= ?"
            params.append(float(since))
        sql += " ORDER BY started_at DESC, id DESC"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(int(limit))
        return [rows.row_episode(r) for r in reversed(self._query(sql, params))]

    def episode_count(self) -> int:
        return int(self._scalar("SELECT COUNT(*) FROM episodes"))  # type: ignore[arg-type]

    def recent_content_ids(self, n: int) -> list[int]:
        """Distinct content ids of the latest episodes, most recent first, at most n."""
        found = self._query(
            "SELECT content_id FROM episodes GROUP BY content_id ORDER BY MAX(started_at) DESC, MAX(id) DESC LIMIT ?",
            (int(n),),
        )
        return [r[0] for r in found]

    def watched_content_ids(self) -> set[int]:
        return {r[0] for r in self._query("SELECT DISTINCT content_id FROM episodes")}

    # ------------------------------------------------------------------ patterns (SkillLibrary)

    def put_pattern(self, pattern: Pattern) -> None:
        """Insert or replace a pattern (by id), then evict down to `max_patterns`.

        The store keeps `version` as given: bump it when a pattern changes enough
        to be worth pushing again; the sync agent pushes version > pushed_version.
        """
        if not isinstance(pattern, Pattern):
            raise OmegaError(f"expected a Pattern, got {type(pattern).__name__}")
        with self.transaction() as db:
            db.execute(
                f"INSERT INTO patterns ({rows.PATTERN_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET embedding = excluded.embedding, task_type = excluded.task_type, "
                "success_rate = excluded.success_rate, uses = excluded.uses, successes = excluded.successes, "
                "created_at = excluded.created_at, updated_at = excluded.updated_at, "
                "last_used_at = excluded.last_used_at, reward_sum = excluded.reward_sum, version = excluded.version",
                rows.pattern_row(pattern),
            )
            self.evict_patterns()

    def get_pattern(self, pattern_id: uuid.UUID) -> Pattern | None:
        found = self._query(f"SELECT {rows.PATTERN_COLUMNS} FROM patterns WHERE id = ?", (pattern_id.bytes,))
        return rows.row_pattern(found[0]) if found else None

    def patterns(self) -> list[Pattern]:
        """All patterns, oldest first."""
        found = self._query(f"SELECT {rows.PATTERN_COLUMNS} FROM patterns ORDER BY created_at, id")
        return [rows.row_pattern(r) for r in found]

    def pattern_embeddings(self) -> tuple[list[uuid.UUID], np.ndarray]:
        """(pattern ids, (n, 384) float32 matrix) in the order of `patterns()`, for building an index."""
        found = self._query("SELECT id, embedding FROM patterns ORDER BY created_at, id")
        return [uuid.UUID(bytes=bytes(r[0])) for r in found], rows.blobs_matrix([r[1] for r in found])

    def pattern_count(self) -> int:
        return int(self._scalar("SELECT COUNT(*) FROM patterns"))  # type: ignore[arg-type]

    def high_quality_patterns(
        self, min_success: float = 0.8, min_uses: int = 10, limit: int = 10, only_unpushed: bool = True
    ) -> list[Pattern]:
        """Patterns worth pushing (DESIGN §2), best first; by default only versions not yet pushed."""
        sql = f"SELECT {rows.PATTERN_COLUMNS} FROM patterns WHERE success_rate >= ? AND uses >= ?"
        if only_unpushed:
            sql += " AND version > pushed_version"
        sql += " ORDER BY success_rate DESC, uses DESC, updated_at DESC LIMIT ?"
        found = self._query(sql, (float(min_success), int(min_uses), int(limit)))
        return [rows.row_pattern(r) for r in found]

    def mark_pushed(self, ids_versions: Iterable[tuple[uuid.UUID, int]]) -> None:
        """Record that these pattern versions reached the cloud (never moves backwards)."""
        with self.transaction() as db:
            db.executemany(
                "UPDATE patterns SET pushed_version = MAX(pushed_version, ?) WHERE id = ?",
                ((int(version), pattern_id.bytes) for pattern_id, version in ids_versions),
            )

    def evict_patterns(self, max_patterns: int | None = None, now: float | None = None) -> list[uuid.UUID]:
        """Delete the lowest-utility patterns beyond `max_patterns`; return their ids.

        Utility (see `pattern_utility`): 0.3*success_rate + 0.1*min(uses/1000, 1)
        + 0.2*avg_reward + 0.05/(1 + days_since_last_use/30).
        """
        keep = self.max_patterns if max_patterns is None else int(max_patterns)
        if keep < 0:
            raise OmegaError(f"max_patterns must be non-negative, got {keep}")
        when = self._clock() if now is None else float(now)
        with self.transaction() as db:
            excess = db.execute("SELECT COUNT(*) FROM patterns").fetchone()[0] - keep
            if excess <= 0:
                return []
            victims = db.execute(
                f"SELECT id FROM patterns ORDER BY {_UTILITY_SQL} ASC, last_used_at ASC, id LIMIT :excess",
                {"now": when, "excess": excess},
            ).fetchall()
            db.executemany("DELETE FROM patterns WHERE id = ?", victims)
        return [uuid.UUID(bytes=bytes(v[0])) for v in victims]

    # ------------------------------------------------------------------ transitions (local)

    def bump_transition(self, src: int, dst: int, weight: float = 1.0) -> None:
        """Add `weight` (quality of the follow-up viewing) to the src -> dst statistic."""
        TransitionStat(src, dst, weight, 0)  # validates
        with self.transaction() as db:
            db.execute(
                "INSERT INTO transitions (src, dst, weight, count, updated_at) VALUES (?, ?, ?, 1, ?) "
                "ON CONFLICT (src, dst) DO UPDATE SET weight = weight + excluded.weight, count = count + 1, "
                "updated_at = excluded.updated_at",
                (int(src), int(dst), float(weight), self._clock()),
            )

    def transitions_from(self, src: int) -> list[TransitionStat]:
        """Successors of `src`, heaviest first."""
        found = self._query(
            "SELECT src, dst, weight, count FROM transitions WHERE src = ? ORDER BY weight DESC, dst", (int(src),)
        )
        return [TransitionStat(*r) for r in found]

    def all_transitions(self) -> list[TransitionStat]:
        found = self._query("SELECT src, dst, weight, count FROM transitions ORDER BY src, dst")
        return [TransitionStat(*r) for r in found]

    # ------------------------------------------------------------------ consolidated (ReasoningBank)

    def put_consolidated(self, patterns: Iterable[ConsolidatedPattern]) -> int:
        """Upsert consolidated patterns; an older version never overwrites a newer one. Returns rows changed."""
        batch = list(patterns)
        for c in batch:
            if not isinstance(c, ConsolidatedPattern):
                raise OmegaError(f"expected ConsolidatedPattern, got {type(c).__name__}")
        now = self._clock()
        with self.transaction() as db:
            before = db.total_changes
            db.executemany(
                f"INSERT INTO consolidated ({rows.CONSOLIDATED_COLUMNS}, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (cluster_id) DO UPDATE SET embedding = excluded.embedding, "
                "task_type = excluded.task_type, success_rate = excluded.success_rate, support = excluded.support, "
                "trend_score = excluded.trend_score, version = excluded.version, received_at = excluded.received_at "
                "WHERE excluded.version >= consolidated.version",
                (rows.consolidated_row(c, now) for c in batch),
            )
            return db.total_changes - before

    def consolidated(self) -> list[ConsolidatedPattern]:
        found = self._query(f"SELECT {rows.CONSOLIDATED_COLUMNS} FROM consolidated ORDER BY cluster_id")
        return [rows.row_consolidated(r) for r in found]

    # ------------------------------------------------------------------ global transitions (from the cloud)

    def merge_global_transitions(self, stats: Iterable[TransitionStat], *, replace: bool = False) -> int:
        """Store the cloud's aggregated transitions (`count` = support, distinct TVs).

        Each incoming (src, dst) replaces the stored value, because the cloud
        sends totals, not increments. `replace=True` treats `stats` as a full
        snapshot and drops every pair it does not mention.
        """
        batch = list(stats)
        for s in batch:
            if not isinstance(s, TransitionStat):
                raise OmegaError(f"expected TransitionStat, got {type(s).__name__}")
        with self.transaction() as db:
            if replace:
                db.execute("DELETE FROM global_transitions")
            db.executemany(
                "INSERT INTO global_transitions (src, dst, weight, support) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (src, dst) DO UPDATE SET weight = excluded.weight, support = excluded.support",
                ((int(s.src), int(s.dst), float(s.weight), int(s.count)) for s in batch),
            )
        return len(batch)

    def global_transitions_from(self, src: int) -> list[TransitionStat]:
        """Global successors of `src`, heaviest first (`count` holds the support)."""
        found = self._query(
            "SELECT src, dst, weight, support FROM global_transitions WHERE src = ? ORDER BY weight DESC, dst",
            (int(src),),
        )
        return [TransitionStat(*r) for r in found]

    def merge_global_pairs(self, stats: Iterable[TransitionStat]) -> int:
        """Store the cloud's unordered pair totals (src < dst on the wire) under both orientations,
        so `global_pairs_from` is one indexed lookup. Totals replace, as for transitions."""
        batch = list(stats)
        for s in batch:
            if not isinstance(s, TransitionStat):
                raise OmegaError(f"expected TransitionStat, got {type(s).__name__}")
        rows = [(int(a), int(b), float(s.weight), int(s.count)) for s in batch for a, b in ((s.src, s.dst), (s.dst, s.src))]
        with self.transaction() as db:
            db.executemany(
                "INSERT INTO global_pairs (src, dst, weight, support) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (src, dst) DO UPDATE SET weight = excluded.weight, support = excluded.support",
                (r for r in rows if r[0] != r[1]),
            )
        return len(batch)

    def global_pairs_from(self, src: int) -> list[TransitionStat]:
        """Items published as watched near `src` (either order), heaviest first (`count` holds the support)."""
        found = self._query(
            "SELECT src, dst, weight, support FROM global_pairs WHERE src = ? ORDER BY weight DESC, dst", (int(src),)
        )
        return [TransitionStat(*r) for r in found]

    # ------------------------------------------------------------------ sync state

    def get_state(self, key: str, default: str | None = None) -> str | None:
        value = self._scalar("SELECT value FROM sync_state WHERE key = ?", (key,))
        return default if value is None else str(value)

    def set_state(self, key: str, value: str) -> None:
        if not isinstance(key, str) or not isinstance(value, str):
            raise OmegaError("sync state keys and values must be text")
        with self.transaction() as db:
            db.execute(
                "INSERT INTO sync_state (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    # ------------------------------------------------------------------ inspection

    def schema_version(self) -> int:
        return int(self._scalar("SELECT value FROM meta WHERE key = 'schema_version'"))  # type: ignore[arg-type]

    def stats(self) -> dict[str, int]:
        """Row counts of every data table (tables added by later migrations appear too), plus a few derived counts."""
        tables = [
            r[0]
            for r in self._query(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
                "AND name NOT IN ('meta', 'sync_state') ORDER BY name"
            )
        ]
        counts = {name: int(self._scalar(f'SELECT COUNT(*) FROM "{name}"')) for name in tables}  # type: ignore[arg-type]
        counts["high_quality_patterns"] = int(
            self._scalar("SELECT COUNT(*) FROM patterns WHERE success_rate >= 0.8 AND uses >= 10")  # type: ignore[arg-type]
        )
        counts["unpushed_patterns"] = int(
            self._scalar("SELECT COUNT(*) FROM patterns WHERE version > pushed_version")  # type: ignore[arg-type]
        )
        counts["schema_version"] = self.schema_version()
        return counts

    def integrity_check(self) -> list[str]:
        """SQLite's full integrity check: an empty list means the file is sound."""
        found = [r[0] for r in self._query("PRAGMA integrity_check")]
        return [] if found == ["ok"] else found

