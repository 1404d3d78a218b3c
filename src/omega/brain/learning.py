"""The brain's learning signal (docs/architecture.md §2) and how one viewing updates a pattern.

- reward = 0.7·watch_fraction + 0.3·engagement, clipped to [-1, 1]; engagement in
  [-1, 1] comes from explicit likes, ratings and rewatches.
- success = watch_fraction > 0.7.
- a pattern's success_rate = successes / uses, kept exactly (online counts).
- retrieval score = 0.4·similarity + 0.3·success_rate + 0.1·min(uses/1000, 1) + 0.2·avg_reward.

`episode_from_rating` is the one documented mapping from a MovieLens star
rating to a viewing, shared by the CLI, the fleet simulator and the evaluation.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import replace
from typing import NamedTuple

import numpy as np

from omega.brain.records import EMBEDDING_DIM, SUCCESS_FRACTION, Outcome, Pattern, TaskType
from omega.errors import OmegaError

REWARD_WATCH_WEIGHT = 0.7
REWARD_ENGAGEMENT_WEIGHT = 0.3
#: below this fraction a viewing is a skip (the viewer zapped past), not an abandonment
SKIP_FRACTION = 0.1
#: a rewatch of something already finished is itself a strong positive signal
REWATCH_ENGAGEMENT_BONUS = 0.5


def _number(name: str, value: object, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise OmegaError(f"{name} must be a number, got {value!r}")
    if not lo <= float(value) <= hi:  # also rejects NaN
        raise OmegaError(f"{name} must be in [{lo:g}, {hi:g}], got {value!r}")
    return float(value)


def check_fraction(watch_fraction: object) -> float:
    return _number("watch_fraction", watch_fraction, 0.0, 1.0)


def check_engagement(engagement: object) -> float:
    return _number("engagement", engagement, -1.0, 1.0)


def reward(watch_fraction: float, engagement: float = 0.0) -> float:
    """docs/architecture.md §2: 0.7·watch_fraction + 0.3·engagement, in [-1, 1]."""
    value = REWARD_WATCH_WEIGHT * check_fraction(watch_fraction) + REWARD_ENGAGEMENT_WEIGHT * check_engagement(
        engagement
    )
    return float(min(1.0, max(-1.0, value)))


def is_success(watch_fraction: float) -> bool:
    """docs/architecture.md §2: success = watch_fraction > 0.7."""
    return check_fraction(watch_fraction) > SUCCESS_FRACTION


def outcome(watch_fraction: float, *, rewatch: bool = False) -> Outcome:
    """'finished' above 0.7 ('rewatched' when seen to the end before), 'skipped' under 0.1, else 'abandoned'."""
    fraction = check_fraction(watch_fraction)
    if fraction > SUCCESS_FRACTION:
        return "rewatched" if rewatch else "finished"
    return "skipped" if fraction < SKIP_FRACTION else "abandoned"


def engagement_from_feedback(*, liked: bool | None = None, rating: float | None = None) -> float:
    """Explicit feedback → engagement in [-1, 1]: like +1, dislike -1, stars (r-3)/2; both given → their mean."""
    signals: list[float] = []
    if liked is not None:
        if not isinstance(liked, bool):
            raise OmegaError(f"liked must be true or false, got {liked!r}")
        signals.append(1.0 if liked else -1.0)
    if rating is not None:
        signals.append(rating_engagement(rating))
    if not signals:
        raise OmegaError("feedback needs liked and/or rating")
    return float(sum(signals) / len(signals))


def rating_engagement(stars: float) -> float:
    """A 0.5–5 star rating as engagement: (stars − 3) / 2, so 5★ → +1, 1★ → −1, 0.5★ → −1.25 clipped to −1."""
    value = _number("rating", stars, 0.5, 5.0)
    return float(min(1.0, max(-1.0, (value - 3.0) / 2.0)))


class RatedViewing(NamedTuple):
    watch_fraction: float
    engagement: float


def episode_from_rating(stars: float) -> RatedViewing:
    """A MovieLens rating read as a viewing: watch_fraction = clip(0.2 + 0.2·stars, 0, 1), engagement = (stars−3)/2.

    So 5★ and 4★ are finished viewings (1.0; 1.0), 3.5★ is finished (0.9),
    3★ is a borderline finish (0.8, engagement 0), 2★ an abandonment (0.6),
    0.5★ barely started (0.3). Ratings ≥ 3 count as successes.
    """
    value = _number("rating", stars, 0.5, 5.0)
    return RatedViewing(float(min(1.0, max(0.0, 0.2 + 0.2 * value))), rating_engagement(value))


# ---------------------------------------------------------------- patterns


def pattern_scores(
    similarity: np.ndarray,
    success_rate: np.ndarray,
    uses: np.ndarray,
    avg_reward: np.ndarray,
    weights: tuple[float, float, float, float] = (0.4, 0.3, 0.1, 0.2),
) -> np.ndarray:
    """docs/architecture.md §2 retrieval score, vectorised: w0·sim + w1·success_rate + w2·min(uses/1000, 1) + w3·avg_reward."""
    w_sim, w_success, w_uses, w_reward = weights
    return (
        w_sim * np.asarray(similarity, np.float32)
        + w_success * np.asarray(success_rate, np.float32)
        + w_uses * np.minimum(np.asarray(uses, np.float32) / 1000.0, 1.0)
        + w_reward * np.asarray(avg_reward, np.float32)
    ).astype(np.float32)


def _unit(vector: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(vector))
    if not np.isfinite(norm) or norm == 0.0:
        raise OmegaError("cannot learn from a zero or non-finite vector")
    return (vector / norm).astype(np.float32)


def new_pattern(
    vector: np.ndarray, *, reward_value: float, success: bool, now: float, task_type: TaskType = TaskType.CONTENT_MATCH,
    pattern_id: uuid.UUID | None = None,
) -> Pattern:
    """A pattern founded by one viewing (uses = 1); a random id unless `pattern_id` is given."""
    return Pattern(
        id=pattern_id or uuid.uuid4(), embedding=_unit(np.asarray(vector, np.float32)), task_type=task_type,
        success_rate=1.0 if success else 0.0, uses=1, successes=int(success), created_at=now, updated_at=now,
        last_used_at=now, reward_sum=float(reward_value), version=1,
    )  # fmt: skip


def update_pattern(
    pattern: Pattern, vector: np.ndarray, *, reward_value: float, success: bool, now: float, min_step: float = 0.02
) -> Pattern:
    """The pattern after one more viewing near it.

    Counts are exact (success_rate = successes/uses); the embedding moves toward
    the item as a running mean (step 1/(uses+1), never below `min_step`) and is
    re-normalised; the version is bumped so the sync agent sees a change.
    """
    uses = pattern.uses + 1
    successes = pattern.successes + int(success)
    step = max(1.0 / uses, min_step)
    moved = _unit((1.0 - step) * pattern.embedding + step * _unit(np.asarray(vector, np.float32)))
    reward_sum = float(np.clip(pattern.reward_sum + reward_value, -uses, uses))
    return replace(
        pattern, embedding=moved, uses=uses, successes=successes, success_rate=successes / uses,
        reward_sum=reward_sum, updated_at=now, last_used_at=now, version=pattern.version + 1,
    )  # fmt: skip


def adjust_pattern_reward(pattern: Pattern, delta: float, *, now: float) -> Pattern:
    """The pattern after feedback changed the reward of one of its viewings by `delta`."""
    reward_sum = float(np.clip(pattern.reward_sum + delta, -pattern.uses, pattern.uses))
    return replace(pattern, reward_sum=reward_sum, updated_at=now, version=pattern.version + 1)


# ---------------------------------------------------------------- the SkillLibrary's working set


class PatternMemory:
    """In-memory mirror of the store's patterns for nearest-pattern lookups and scoring.

    Compact: a pattern is one row of a few numpy arrays (unit embedding, the
    scoring stats, its counts and times, its 16-byte id) - about 1.6 KB per
    pattern, no Python object per pattern. A `Pattern` record is built only on
    demand (`get`, `nearest`, `patterns`), with the stored unit embedding.

    Rows live in arrays sized to the patterns held, grown by doubling up to
    `limit` rows (the brain's max_patterns), and a removed row is filled by the
    last one, so an update costs O(1) and a lookup is one matrix-vector product
    over at most `max_patterns` rows. Not preallocated to max_patterns: the
    untouched rows of an `np.empty` cost nothing only when its pages are fresh;
    placed in reused heap they were resident, ~0.68 MB per brain of ~20
    patterns in the evaluation's fleet of hundreds. The brain updates it only
    after the store committed, so it never holds what the store lost.
    """

    def __init__(
        self, patterns: Iterable[Pattern] | None = None, *, capacity: int = 0, limit: int | None = None
    ) -> None:
        self._n = 0
        self._row: dict[int, int] = {}  # uuid.int -> row
        self._limit = limit
        self._allocate(max(0, int(capacity)))
        for p in patterns or ():
            self.upsert(p)

    @classmethod
    def from_rows(cls, rows: Iterable[tuple], *, capacity: int = 0, limit: int | None = None) -> PatternMemory:
        """Fill from store rows (`id, embedding blob, task_type, success_rate, uses, successes, created_at,
        updated_at, last_used_at, reward_sum, version`), streamed: no Pattern object is made per row."""
        memory = cls(capacity=capacity, limit=limit)
        for id_, blob, task, success_rate, uses, successes, created, updated, used, reward_sum, version in rows:
            vector = np.frombuffer(blob, dtype="<f4")
            if vector.shape != (EMBEDDING_DIM,) or not np.all(np.isfinite(vector)):
                raise OmegaError("stored pattern has a malformed embedding")
            memory._put(
                uuid.UUID(bytes=bytes(id_)), vector, int(task), float(success_rate), int(uses), int(successes),
                float(created), float(updated), float(used), float(reward_sum), int(version),
            )  # fmt: skip
        return memory

    def _allocate(self, capacity: int) -> None:
        n = self._n
        old = getattr(self, "_matrix", None)
        matrix = np.empty((capacity, EMBEDDING_DIM), np.float32)
        stats = np.empty((capacity, 3), np.float32)  # success_rate, uses, avg_reward (what scoring reads)
        reals = np.empty((capacity, 5), np.float64)  # success_rate, created_at, updated_at, last_used_at, reward_sum
        counts = np.empty((capacity, 4), np.int64)  # uses, successes, version, task_type
        ids = np.empty((capacity, 16), np.uint8)
        if old is not None and n:
            matrix[:n], stats[:n], reals[:n] = self._matrix[:n], self._stats[:n], self._reals[:n]
            counts[:n], ids[:n] = self._counts[:n], self._ids[:n]
        self._matrix, self._stats, self._reals, self._counts, self._ids = matrix, stats, reals, counts, ids

    def __len__(self) -> int:
        return self._n

    @property
    def capacity(self) -> int:
        """Rows allocated (held patterns plus room to grow)."""
        return len(self._matrix)

    @property
    def matrix(self) -> np.ndarray:
        """(n, 384) float32 unit embeddings, row i = pattern i."""
        return self._matrix[: self._n]

    @property
    def stats(self) -> np.ndarray:
        """(n, 3): success_rate, uses, avg_reward."""
        return self._stats[: self._n]

    @property
    def nbytes(self) -> int:
        """Bytes held by the rows in use (arrays only)."""
        return self._n * sum(a.itemsize * (a.size // max(1, len(a))) for a in self._arrays())

    def _arrays(self) -> tuple[np.ndarray, ...]:
        return self._matrix, self._stats, self._reals, self._counts, self._ids

    @property
    def patterns(self) -> list[Pattern]:
        """Every pattern as a record (built on demand; row order)."""
        return [self._pattern(row) for row in range(self._n)]

    def ids(self) -> list[uuid.UUID]:
        return [uuid.UUID(bytes=self._ids[row].tobytes()) for row in range(self._n)]

    def _pattern(self, row: int) -> Pattern:
        success_rate, created, updated, used, reward_sum = self._reals[row].tolist()
        uses, successes, version, task = self._counts[row].tolist()
        return Pattern(
            id=uuid.UUID(bytes=self._ids[row].tobytes()), embedding=self._matrix[row], task_type=TaskType(task),
            success_rate=success_rate, uses=uses, successes=successes, created_at=created, updated_at=updated,
            last_used_at=used, reward_sum=reward_sum, version=version,
        )  # fmt: skip

    def get(self, pattern_id: uuid.UUID) -> Pattern | None:
        row = self._row.get(pattern_id.int)
        return None if row is None else self._pattern(row)

    def upsert(self, pattern: Pattern) -> None:
        self._put(
            pattern.id, pattern.embedding, int(pattern.task_type), pattern.success_rate, pattern.uses,
            pattern.successes, pattern.created_at, pattern.updated_at, pattern.last_used_at, pattern.reward_sum,
            pattern.version,
        )  # fmt: skip

    def _put(
        self, pattern_id: uuid.UUID, vector: np.ndarray, task: int, success_rate: float, uses: int, successes: int,
        created: float, updated: float, used: float, reward_sum: float, version: int,
    ) -> None:  # fmt: skip
        row = self._row.get(pattern_id.int)
        if row is None:
            row = self._n
            if row == len(self._matrix):
                grown = max(64, 2 * row)
                if self._limit is not None and row < self._limit:
                    grown = min(grown, self._limit)  # a full SkillLibrary fits exactly, with no doubled slack
                self._allocate(grown)
            self._n += 1
            self._row[pattern_id.int] = row
            self._ids[row] = np.frombuffer(pattern_id.bytes, np.uint8)
        norm = float(np.linalg.norm(vector))
        self._matrix[row] = vector / (norm if norm > 0 else 1.0)
        self._stats[row] = (success_rate, uses, reward_sum / uses if uses else 0.0)
        self._reals[row] = (success_rate, created, updated, used, reward_sum)
        self._counts[row] = (uses, successes, version, task)

    def remove(self, pattern_ids: list[uuid.UUID]) -> None:
        for pattern_id in pattern_ids:
            row = self._row.pop(pattern_id.int, None)
            if row is None:
                continue
            last = self._n - 1
            if row != last:  # move the last row into the hole
                for array in self._arrays():
                    array[row] = array[last]
                self._row[uuid.UUID(bytes=self._ids[row].tobytes()).int] = row
            self._n -= 1

    def nearest(self, vector: np.ndarray, threshold: float) -> tuple[Pattern, float] | None:
        """The most similar pattern at cosine >= threshold, or None."""
        if not self._n:
            return None
        sims = self.matrix @ np.asarray(vector, np.float32)
        row = int(np.argmax(sims))
        return (self._pattern(row), float(sims[row])) if sims[row] >= threshold else None
