"""Conversions between records and SQLite rows. Vectors are stored as raw float32 bytes."""

from __future__ import annotations

import json
import sys
import uuid

import numpy as np

from omega.brain.records import (
    EMBEDDING_DIM,
    CatalogItem,
    ConsolidatedRecord,
    Episode,
    Pattern,
    ViewingContext,
)

EPISODE_COLUMNS = (
    "id, content_id, started_at, watched_s, duration_s, completion, reward, hour, weekday, profile, outcome, critique"
)
PATTERN_COLUMNS = (
    "id, embedding, task_type, success_rate, uses, successes, created_at, updated_at, last_used_at, reward_sum, version"
)
CONSOLIDATED_COLUMNS = "cluster_id, embedding, task_type, success_rate, support, trend_score, version"
CATALOG_COLUMNS = "content_id, title, genres, year, tags"


def vector_blob(vector: np.ndarray) -> bytes:
    return np.ascontiguousarray(vector, dtype="<f4").tobytes()


def blob_vector(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype="<f4").astype(np.float32)


def episode_row(ep: Episode) -> tuple:
    c = ep.context
    return (
        ep.id, ep.content_id, float(ep.started_at), float(ep.watched_s), float(ep.duration_s),
        float(ep.completion), float(ep.reward), int(c.hour), int(c.weekday), c.profile, ep.outcome, ep.critique,
    )  # fmt: skip


def row_episode(row: tuple) -> Episode:
    (id_, content_id, started_at, watched_s, duration_s, completion, reward, hour, weekday, profile, outcome, critique) = row
    return Episode(
        id=id_, content_id=content_id, started_at=started_at, watched_s=watched_s, duration_s=duration_s,
        completion=completion, reward=reward, context=ViewingContext(hour, weekday, profile),
        outcome=outcome, critique=critique,
    )  # fmt: skip


def pattern_row(p: Pattern) -> tuple:
    return (
        p.id.bytes, vector_blob(p.embedding), int(p.task_type), float(p.success_rate), int(p.uses), int(p.successes),
        float(p.created_at), float(p.updated_at), float(p.last_used_at), float(p.reward_sum), int(p.version),
    )  # fmt: skip


def row_pattern(row: tuple) -> Pattern:
    id_, blob, *rest = row
    return Pattern(uuid.UUID(bytes=bytes(id_)), blob_vector(blob), *rest)


def consolidated_row(c: ConsolidatedRecord, received_at: float) -> tuple:
    return (
        int(c.cluster_id), vector_blob(c.embedding), int(c.task_type), float(c.success_rate), int(c.support),
        float(c.trend_score), int(c.version), received_at,
    )  # fmt: skip


def row_consolidated(row: tuple) -> ConsolidatedRecord:
    cluster_id, blob, *rest = row
    return ConsolidatedRecord(cluster_id, blob_vector(blob), *rest)


def catalog_row(item: CatalogItem, embedding: np.ndarray) -> tuple:
    return (
        int(item.content_id), item.title, json.dumps(list(item.genres)), item.year, json.dumps(list(item.tags)),
        vector_blob(embedding),
    )  # fmt: skip


#: what items read together share (`row_catalog`): JSON texts of genres/tags -> tuples, years -> one int each
Shared = dict[str | int, tuple[str, ...] | int]


def row_catalog(row: tuple, shared: Shared | None = None) -> CatalogItem:
    """A catalog row as an item; rows read together pass one `shared` dict, so items with the same genres
    (or tags) share one tuple of interned strings (a 10K catalog holds ~20 genres in ~1K combinations), and
    items of the same year one int (SQLite makes a new int object per row: 32 bytes an item otherwise)."""
    content_id, title, genres, year, tags = row
    shared = {} if shared is None else shared
    if year is not None:
        year = shared.setdefault(year, year)
    return CatalogItem(content_id, title, _strings(genres, shared), year, _strings(tags, shared))


def _strings(text: str, shared: Shared) -> tuple[str, ...]:
    found = shared.get(text)
    if found is None:
        found = shared[text] = tuple(sys.intern(s) for s in json.loads(text))
    return found
