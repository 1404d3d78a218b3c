"""`BrainStore`: the TV's durable local memory, one SQLite file per TV.

It holds the catalog (with embeddings), ReflexionMemory (episodes), the
SkillLibrary (patterns), local transition statistics, the ReasoningBank
(consolidated patterns from the cloud), global transitions and pairs, small
named values (`get_state`) and the sync outbox (`outbox`, see `outbox.py`).
It is the only code that runs SQL on these tables.

Every public method is atomic; `transaction()` (see `database.py`) groups
several calls into one atomic change, e.g. a viewing and what it teaches.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from omega.brain.records import (
    EMBEDDING_DIM,
    CatalogItem,
    ConsolidatedRecord,
    Episode,
    Pattern,
    TransitionStat,
    require_all,
)
from omega.brain.store import rows
from omega.brain.store.database import Database
from omega.brain.store.edges import EdgeReader
from omega.brain.store.opening import Synchronous
from omega.brain.store.outbox import OutboxTable
from omega.errors import OmegaError

MAX_PATTERNS = 10_000
_DAY_S = 86_400.0
#: Recency half-life-like scale of the eviction utility (days).
RECENCY_DAYS = 30.0

# Eviction utility, the same formula as `pattern_utility` below: docs/architecture.md §2's
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


# Edge tables: the TV's own transitions (`count`: viewings) and the cloud's totals (`support`: distinct TVs),
# read as TransitionStat with that number in `count`. Reads by source go through `EdgeReader` (edges.py).
_EDGE_COLUMNS = {
    "transitions": "src, dst, weight, count",
    "global_transitions": "src, dst, weight, support",
    "global_pairs": "src, dst, weight, support",
    "refined_neighbours": "src, dst, weight, support",
}
#: what a TV holds from the cloud (written only by pulls)
_PULLED_TABLES = ("consolidated", "global_transitions", "global_pairs", "refined_neighbours")
_ALL_EDGES = {t: f"SELECT {c} FROM {t} ORDER BY src, dst" for t, c in _EDGE_COLUMNS.items()}


class BrainStore(Database):
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
        super().__init__(path, synchronous=synchronous, clock=clock)
        self.max_patterns = max_patterns
        self.outbox = OutboxTable(self)
        #: the edge tables read by source, with the support floor on published edges (edges.py)
        self.edges = EdgeReader(self)

    @property
    def support_floor_c(self) -> float:
        """c of the support floor on global edges and consolidated patterns (see protocol.SUPPORT_FLOOR_C and
        recommender.ConsolidatedPrior.of; 0 turns it off)."""
        return self.edges.floor_c

    @support_floor_c.setter
    def support_floor_c(self, value: float) -> None:
        self.edges.floor_c = float(value)

    # ------------------------------------------------------------------ catalog

    def upsert_catalog(self, items: Sequence[CatalogItem], embeddings: np.ndarray) -> int:
        """Insert or replace catalog items with their (n, 384) embeddings; returns n."""
        matrix = np.asarray(embeddings, dtype=np.float32)
        if matrix.shape != (len(items), EMBEDDING_DIM):
            raise OmegaError(f"embeddings must have shape ({len(items)}, {EMBEDDING_DIM}), got {matrix.shape}")
        if not np.all(np.isfinite(matrix)):
            raise OmegaError("catalog embeddings contain NaN or infinite values")
        require_all(items, CatalogItem, "catalog entries must be CatalogItem")
        with self.transaction() as db:
            db.executemany(
                "INSERT INTO catalog (content_id, title, genres, year, tags, embedding) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (content_id) DO UPDATE SET title = excluded.title, genres = excluded.genres, "
                "year = excluded.year, tags = excluded.tags, embedding = excluded.embedding",
                (rows.catalog_row(item, vector) for item, vector in zip(items, matrix)),
            )
        return len(items)

    def catalog_items(self) -> list[CatalogItem]:
        """Every item, ordered by content id. Made row by row as SQLite returns them: a list of all the rows
        first (fetchall) left its freed tuples as holes between the items for good (+1.9 MB for 9,742 items)."""
        shared: rows.Shared = {}
        with self.snapshot() as db:
            found = db.execute(f"SELECT {rows.CATALOG_COLUMNS} FROM catalog ORDER BY content_id")
            return [rows.row_catalog(r, shared) for r in found]

    def catalog_embeddings(self) -> tuple[np.ndarray, np.ndarray]:
        """(content ids as int64, (n, 384) float32 matrix), ordered by content id.

        Streamed into the matrix row by row, in one read (`snapshot`): no list of rows and no joined copy
        of the blobs on the way (those held three copies of the vectors at once while a TV loaded). The
        schema checks every blob's length (384 float32)."""
        with self.snapshot() as db:
            n = db.execute("SELECT count(*) FROM catalog").fetchone()[0]
            ids = np.empty(n, dtype=np.int64)
            matrix = np.empty((n, EMBEDDING_DIM), dtype=np.float32)
            for row, (content_id, blob) in enumerate(
                db.execute("SELECT content_id, embedding FROM catalog ORDER BY content_id")
            ):
                ids[row] = content_id
                matrix[row] = np.frombuffer(blob, dtype="<f4")
        return ids, matrix

    @contextmanager
    def catalog_embedding_blocks(self, block_rows: int) -> Iterator[tuple[np.ndarray, Iterator[np.ndarray]]]:
        """(content ids as int64, the embeddings in the same order as float32 blocks of at most `block_rows` rows).

        For a reader that keeps the vectors in another form (the catalog's float16 matrix): the whole float32
        matrix is never held, only one block, which the next one overwrites. Ids and blocks come from one read
        (`snapshot`), consumed inside the `with`."""
        if block_rows < 1:
            raise OmegaError(f"block_rows must be at least 1, got {block_rows}")
        with self.snapshot() as db:
            found = db.execute("SELECT content_id FROM catalog ORDER BY content_id")
            ids = np.fromiter((content_id for (content_id,) in found), dtype=np.int64)
            yield ids, self._embedding_blocks(db, min(block_rows, len(ids)))

    @staticmethod
    def _embedding_blocks(db: sqlite3.Connection, block_rows: int) -> Iterator[np.ndarray]:
        block = np.empty((block_rows, EMBEDDING_DIM), dtype=np.float32)
        filled = 0
        for (blob,) in db.execute("SELECT embedding FROM catalog ORDER BY content_id"):
            block[filled] = np.frombuffer(blob, dtype="<f4")
            filled += 1
            if filled == block_rows:
                yield block
                filled = 0
        if filled:
            yield block[:filled]

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

    def latest_episode(self, content_id: int) -> Episode | None:
        """The most recent viewing of `content_id`, or None."""
        found = self._query(
            f"SELECT {rows.EPISODE_COLUMNS} FROM episodes WHERE content_id = ? ORDER BY started_at DESC, id DESC LIMIT 1",
            (int(content_id),),
        )
        return rows.row_episode(found[0]) if found else None

    def set_episode_feedback(self, episode_id: int, *, reward: float, critique: str | None) -> None:
        """Replace an episode's reward and critique (explicit feedback given after the viewing)."""
        with self.transaction() as db:
            db.execute("UPDATE episodes SET reward = ?, critique = ? WHERE id = ?", (reward, critique, episode_id))

    def episode_count(self) -> int:
        return int(self._scalar("SELECT COUNT(*) FROM episodes"))  # type: ignore[arg-type]

    def last_episode_id(self) -> int:
        """The id of the newest episode recorded (0: none); ids only grow, so a larger one means a new viewing."""
        return int(self._scalar("SELECT COALESCE(MAX(id), 0) FROM episodes"))  # type: ignore[arg-type]

    def recent_content_ids(self, n: int) -> list[int]:
        """Distinct content ids of the latest episodes, most recent first, at most n."""
        found = self._query(
            "SELECT content_id FROM episodes GROUP BY content_id ORDER BY MAX(started_at) DESC, MAX(id) DESC LIMIT ?",
            (int(n),),
        )
        return [r[0] for r in found]

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

    @contextmanager
    def pattern_rows(self) -> Iterator[Iterable[tuple]]:
        """Every pattern as a raw row, oldest first, streamed inside one read (`snapshot`).

        Columns as `rows.PATTERN_COLUMNS`, the vector as float32 bytes: a reader can
        build a compact working set without a `Pattern` object per row.
        """
        with self.snapshot() as db:
            yield db.execute(f"SELECT {rows.PATTERN_COLUMNS} FROM patterns ORDER BY created_at, id")

    def patterns(self) -> list[Pattern]:
        """All patterns, oldest first."""
        with self.pattern_rows() as found:
            return [rows.row_pattern(r) for r in found]

    def pattern_count(self) -> int:
        return int(self._scalar("SELECT COUNT(*) FROM patterns"))  # type: ignore[arg-type]

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

    def _edges(self, sql: str, *params: int) -> list[TransitionStat]:
        return [TransitionStat(*r) for r in self._query(sql, params)]

    def transitions_from(self, src: int) -> list[TransitionStat]:
        """Successors of `src`, heaviest first."""
        return [TransitionStat(*r) for r in self.edges.rows_from("transitions", [src])]

    def all_transitions(self) -> list[TransitionStat]:
        return self._edges(_ALL_EDGES["transitions"])

    # ------------------------------------------------------------------ what sync pulled from the cloud

    def merge_pulled(
        self, patterns: Iterable[ConsolidatedRecord], transitions: Iterable[TransitionStat],
        pairs: Iterable[TransitionStat] = (), *, replace_transitions: bool = False, fresh: bool = False,
    ) -> tuple[int, int]:  # fmt: skip
        """Merge one pulled page in one transaction; returns (consolidated rows changed, transitions + pairs stored).
        `fresh`: the page starts a full snapshot (PullReply.reset), so every consolidated pattern, global
        transition and pair held goes first (refined neighbours are their own release: kept)."""
        with self.transaction() as db:
            if fresh:
                self.edges.published_changed()
                for table in ("consolidated", "global_transitions", "global_pairs"):
                    db.execute(f"DELETE FROM {table}")
            changed = self.put_consolidated(patterns)
            stored = self.merge_global_transitions(transitions, replace=replace_transitions)
            stored += self.merge_global_pairs(pairs)
        return changed, stored

    def put_consolidated(self, patterns: Iterable[ConsolidatedRecord]) -> int:
        """Upsert consolidated patterns; an older version never overwrites a newer one. Returns rows changed.

        A pattern of support 0 is the cloud's removal (it is no longer published): the held row goes,
        unless it is newer. Deleting what is not held changes nothing, so a repeated removal is harmless."""
        batch = require_all(patterns, ConsolidatedRecord)
        removed = [(c.cluster_id, c.version) for c in batch if c.support == 0]
        batch = [c for c in batch if c.support > 0]
        now = self._clock()
        with self.transaction() as db:
            before = db.total_changes
            db.executemany("DELETE FROM consolidated WHERE cluster_id = ? AND version <= ?", removed)
            db.executemany(
                f"INSERT INTO consolidated ({rows.CONSOLIDATED_COLUMNS}, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (cluster_id) DO UPDATE SET embedding = excluded.embedding, "
                "task_type = excluded.task_type, success_rate = excluded.success_rate, support = excluded.support, "
                "trend_score = excluded.trend_score, version = excluded.version, received_at = excluded.received_at "
                "WHERE excluded.version >= consolidated.version",
                (rows.consolidated_row(c, now) for c in batch),
            )
            return db.total_changes - before

    def consolidated(self) -> list[ConsolidatedRecord]:
        found = self._query(f"SELECT {rows.CONSOLIDATED_COLUMNS} FROM consolidated ORDER BY cluster_id")
        return [rows.row_consolidated(r) for r in found]

    def merge_global_transitions(self, stats: Iterable[TransitionStat], *, replace: bool = False) -> int:
        """Store the cloud's aggregated transitions (`count` = support, distinct TVs).

        Each incoming (src, dst) replaces the stored value, because the cloud
        sends totals, not increments; a count of 0 is a removal (no longer
        published) and drops it. `replace=True` treats `stats` as a full
        snapshot and drops every pair it does not mention.
        """
        batch = require_all(stats, TransitionStat)
        self.edges.published_changed()
        with self.transaction() as db:
            if replace:
                db.execute("DELETE FROM global_transitions")
            self._put_totals("global_transitions", ((s.src, s.dst, s.weight, s.count) for s in batch))
        return len(batch)

    def merge_global_pairs(self, stats: Iterable[TransitionStat]) -> int:
        """Store the cloud's unordered pair totals (src < dst on the wire) under both orientations,
        so `global_pairs_from` is one indexed lookup. Totals replace (a count of 0 drops), as for transitions."""
        batch = require_all(stats, TransitionStat)
        both = ((a, b, s.weight, s.count) for s in batch for a, b in ((s.src, s.dst), (s.dst, s.src)))
        self._put_totals("global_pairs", (r for r in both if r[0] != r[1]))
        return len(batch)

    def copy_pulled(self, source: BrainStore) -> int:
        """Replace what this store holds from the cloud (consolidated patterns, global transitions, pairs, refined neighbours)
        by `source`'s, in one transaction; returns the rows copied.

        The fleet simulator's shortcut for a TV that would pull the very pages another TV merged (same
        server head, from cursor 0): merging is deterministic, so the tables come out the same, without
        decoding ~30K edges once per TV. Both stores must be files; `source`'s committed state is read."""
        if str(self.path) == ":memory:" or str(source.path) == ":memory:":
            raise OmegaError("copy_pulled needs two brain files")
        with self._lock:
            db = self._conn()
            try:
                db.execute("ATTACH DATABASE ? AS pulled_src", (str(source.path),))
            except sqlite3.Error as exc:
                raise OmegaError(f"brain store {self.path}: cannot read {source.path}: {exc}") from None
            try:
                copied = 0
                self.edges.published_changed()
                with self.transaction():
                    for table in _PULLED_TABLES:
                        db.execute(f"DELETE FROM {table}")
                        copied += db.execute(f"INSERT INTO {table} SELECT * FROM pulled_src.{table}").rowcount
                return copied
            finally:
                db.execute("DETACH DATABASE pulled_src")
                db.execute("PRAGMA shrink_memory")  # the copied pages need not stay in this connection's cache

    def _put_totals(self, table: str, totals: Iterable[tuple[int, int, float, int]], *, removals: bool = True) -> None:
        """Upsert (src, dst, weight, support) totals of a global edge table: a total replaces the stored one,
        and (with `removals`) a support of 0, the cloud's removal of an edge no longer published, deletes it."""
        rows = [(int(src), int(dst), float(weight), int(support)) for src, dst, weight, support in totals]
        gone = [r[:2] for r in rows if removals and r[3] == 0]
        with self.transaction() as db:
            # Every write to a published table comes here or says so itself; inside the transaction, which holds
            # the store's lock, so no other thread reads the old rows under the new count.
            self.edges.published_changed()
            db.executemany(f"DELETE FROM {table} WHERE src = ? AND dst = ?", gone)
            db.executemany(
                f"INSERT INTO {table} (src, dst, weight, support) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (src, dst) DO UPDATE SET weight = excluded.weight, support = excluded.support",
                [r for r in rows if not (removals and r[3] == 0)],
            )

    def global_transitions_from(self, src: int) -> list[TransitionStat]:
        """Global successors of `src` that pass the support floor, heaviest first (`count` holds the support)."""
        return [TransitionStat(*r) for r in self.edges.rows_from("global_transitions", [src])]

    def global_pairs_from(self, src: int) -> list[TransitionStat]:
        """Items published as watched near `src` (either order) that pass the support floor, heaviest first."""
        return [TransitionStat(*r) for r in self.edges.rows_from("global_pairs", [src])]

    def all_global_transitions(self) -> list[TransitionStat]:
        return self._edges(_ALL_EDGES["global_transitions"])

    def all_global_pairs(self) -> list[TransitionStat]:
        """Every stored pair, in both orientations."""
        return self._edges(_ALL_EDGES["global_pairs"])

    def put_refined(self, stats: Iterable[TransitionStat], *, fresh: bool = False) -> int:
        """Store a pulled page of refined neighbours; `fresh`: it starts a new release, so the old one goes."""
        batch = require_all(stats, TransitionStat)
        with self.transaction() as db:
            self.edges.published_changed()
            if fresh:
                db.execute("DELETE FROM refined_neighbours")
            # A release replaces the last one whole (`fresh`): no removals within it.
            self._put_totals("refined_neighbours", ((s.src, s.dst, s.weight, 0) for s in batch if s.src != s.dst),
                             removals=False)
        return len(batch)

    def refined_from(self, src: int) -> list[TransitionStat]:
        """The refined neighbours of `src`, best first (no support floor: the cloud applied it before refining)."""
        return [TransitionStat(*r) for r in self.edges.rows_from("refined_neighbours", [src])]

    def global_in_weights(self) -> list[tuple[int, float]]:
        """(dst, total weight of the global transitions into it) for every item some transition reaches."""
        return self._query("SELECT dst, SUM(weight) FROM global_transitions GROUP BY dst")

    # ------------------------------------------------------------------ named values (sync state, index fingerprint)

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
