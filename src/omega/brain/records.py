"""The TV brain's records (docs/architecture.md §2). Field names are a contract: add, never rename.

Every record validates itself on construction and raises `OmegaError` for
out-of-range input, so nothing invalid can reach the store or the wire.
Timestamps are Unix epoch seconds (float).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import numpy as np

from omega.errors import OmegaError
from omega.protocol.messages import EMBEDDING_DIM, TaskType

Outcome = Literal["finished", "abandoned", "skipped", "rewatched"]
OUTCOMES: frozenset[str] = frozenset({"finished", "abandoned", "skipped", "rewatched"})

#: docs/architecture.md §2: an episode counts as a success when more than this fraction was watched.
SUCCESS_FRACTION = 0.7


def _check_range(name: str, value: float, lo: float, hi: float) -> None:
    if not isinstance(value, (int, float, np.integer, np.floating)) or isinstance(value, bool):
        raise OmegaError(f"{name} must be a number, got {value!r}")
    if not (lo <= value <= hi):  # also rejects NaN
        raise OmegaError(f"{name} must be in [{lo}, {hi}], got {value!r}")


def _check_count(name: str, value: int) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
        raise OmegaError(f"{name} must be a non-negative integer, got {value!r}")


def _check_finite(name: str, value: float) -> None:
    if not isinstance(value, (int, float, np.integer, np.floating)) or not math.isfinite(value):
        raise OmegaError(f"{name} must be a finite number, got {value!r}")


def as_embedding(value: Any, name: str = "embedding") -> np.ndarray:
    """A read-only, contiguous float32 copy of a 384-d finite vector, or OmegaError."""
    try:
        array = np.array(value, dtype=np.float32, copy=True)
    except (TypeError, ValueError) as exc:
        raise OmegaError(f"{name} is not a numeric vector: {exc}") from None
    if array.shape != (EMBEDDING_DIM,):
        raise OmegaError(f"{name} must have shape ({EMBEDDING_DIM},), got {array.shape}")
    if not np.all(np.isfinite(array)):
        raise OmegaError(f"{name} contains NaN or infinite values")
    array.setflags(write=False)  # records are frozen; so is their vector
    return array


R = TypeVar("R")


def require_all(values: Iterable[Any], kind: type[R], what: str | None = None) -> list[R]:
    """`values` as a list, or OmegaError ("{what}, got <type>") at the first one that is not a `kind`."""
    batch = list(values)
    for value in batch:
        if not isinstance(value, kind):
            raise OmegaError(f"{what or 'expected ' + kind.__name__}, got {type(value).__name__}")
    return batch


def _task_type(value: Any) -> TaskType:
    try:
        return TaskType(value)
    except ValueError:
        raise OmegaError(f"unknown task_type {value!r}") from None


@dataclass(frozen=True, slots=True)
class ViewingContext:
    """When and for whom something is watched."""

    hour: int
    weekday: int  # 0 = Monday, as datetime.weekday()
    profile: str = "default"

    def __post_init__(self) -> None:
        _check_range("hour", self.hour, 0, 23)
        _check_range("weekday", self.weekday, 0, 6)
        if int(self.hour) != self.hour or int(self.weekday) != self.weekday:
            raise OmegaError(f"hour and weekday must be integers, got {self.hour!r}, {self.weekday!r}")
        if not isinstance(self.profile, str):
            raise OmegaError(f"profile must be a string, got {self.profile!r}")


@dataclass(frozen=True, slots=True)
class Episode:
    """One viewing (ReflexionMemory). `id` is None until the store assigns one."""

    id: int | None
    content_id: int
    started_at: float
    watched_s: float
    duration_s: float
    completion: float
    reward: float
    context: ViewingContext
    outcome: Outcome
    critique: str | None = None

    def __post_init__(self) -> None:
        if self.id is not None:
            _check_count("id", self.id)
        _check_count("content_id", self.content_id)
        _check_finite("started_at", self.started_at)
        _check_range("watched_s", self.watched_s, 0.0, math.inf)
        _check_range("duration_s", self.duration_s, 0.0, math.inf)
        _check_range("completion", self.completion, 0.0, 1.0)
        _check_range("reward", self.reward, -1.0, 1.0)
        if not isinstance(self.context, ViewingContext):
            raise OmegaError(f"context must be a ViewingContext, got {type(self.context).__name__}")
        if self.outcome not in OUTCOMES:
            raise OmegaError(f"outcome must be one of {sorted(OUTCOMES)}, got {self.outcome!r}")
        if self.critique is not None and not isinstance(self.critique, str):
            raise OmegaError(f"critique must be text or None, got {self.critique!r}")

    @property
    def success(self) -> bool:
        """docs/architecture.md §2: success = watch_fraction > 0.7."""
        return self.completion > SUCCESS_FRACTION


class _HoldsEmbedding:
    """Value equality for a frozen record holding an ndarray; unhashable, as the array is."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, type(self)):
            return NotImplemented
        return all(
            np.array_equal(getattr(self, f), getattr(other, f)) if f == "embedding" else getattr(self, f) == getattr(other, f)
            for f in self.__dataclass_fields__  # type: ignore[attr-defined]
        )

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True, slots=True, eq=False)
class Pattern(_HoldsEmbedding):
    """A learned pattern (SkillLibrary): a context vector and how well it worked."""

    id: uuid.UUID
    embedding: np.ndarray = field(repr=False)
    task_type: TaskType
    success_rate: float
    uses: int
    successes: int
    created_at: float
    updated_at: float
    last_used_at: float
    reward_sum: float = 0.0
    version: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.id, uuid.UUID):
            raise OmegaError(f"pattern id must be a uuid.UUID, got {self.id!r}")
        object.__setattr__(self, "embedding", as_embedding(self.embedding))
        object.__setattr__(self, "task_type", _task_type(self.task_type))
        _check_range("success_rate", self.success_rate, 0.0, 1.0)
        _check_count("uses", self.uses)
        _check_count("successes", self.successes)
        if self.successes > self.uses:
            raise OmegaError(f"successes ({self.successes}) cannot exceed uses ({self.uses})")
        for name in ("created_at", "updated_at", "last_used_at", "reward_sum"):
            _check_finite(name, getattr(self, name))
        if abs(self.reward_sum) > max(self.uses, 0) + 1e-6:
            raise OmegaError(f"reward_sum {self.reward_sum} is impossible for {self.uses} uses of rewards in [-1, 1]")
        _check_count("version", self.version)

    @property
    def avg_reward(self) -> float:
        return self.reward_sum / self.uses if self.uses else 0.0


@dataclass(frozen=True, slots=True, eq=False)
class ConsolidatedRecord(_HoldsEmbedding):
    """A global pattern received from the cloud (ReasoningBank)."""

    cluster_id: int
    embedding: np.ndarray = field(repr=False)
    task_type: TaskType
    success_rate: float
    support: int  # distinct TVs
    trend_score: float
    version: int

    def __post_init__(self) -> None:
        _check_count("cluster_id", self.cluster_id)
        object.__setattr__(self, "embedding", as_embedding(self.embedding))
        object.__setattr__(self, "task_type", _task_type(self.task_type))
        _check_range("success_rate", self.success_rate, 0.0, 1.0)
        _check_count("support", self.support)
        _check_finite("trend_score", self.trend_score)
        _check_count("version", self.version)


@dataclass(frozen=True, slots=True)
class TransitionStat:
    """Order-aware statistic: after `src`, the viewer watched `dst` (quality-weighted)."""

    src: int
    dst: int
    weight: float
    count: int

    def __post_init__(self) -> None:
        _check_count("src", self.src)
        _check_count("dst", self.dst)
        _check_finite("weight", self.weight)
        _check_count("count", self.count)


@dataclass(frozen=True, slots=True)
class CatalogItem:
    """A piece of content the TV can recommend."""

    content_id: int
    title: str
    genres: tuple[str, ...]
    year: int | None = None
    tags: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_count("content_id", self.content_id)
        if not isinstance(self.title, str) or not self.title.strip():
            raise OmegaError(f"catalog item {self.content_id}: title must be non-empty text")
        # Accept any iterable of strings but store tuples, so items stay hashable.
        for name in ("genres", "tags"):
            value = getattr(self, name)
            if isinstance(value, str) or not all(isinstance(v, str) for v in value):
                raise OmegaError(f"catalog item {self.content_id}: {name} must be a sequence of strings")
            object.__setattr__(self, name, tuple(value))
        if self.year is not None and (
            not isinstance(self.year, (int, np.integer)) or isinstance(self.year, bool) or not 1800 <= self.year <= 2200
        ):
            raise OmegaError(f"catalog item {self.content_id}: implausible year {self.year!r}")

    def text(self) -> str:
        """The text to embed, e.g. 'Toy Story (1995). Genres: Adventure, Animation. Tags: pixar'."""
        parts = [f"{self.title} ({self.year})" if self.year is not None else self.title]
        if self.genres:
            parts.append("Genres: " + ", ".join(self.genres))
        if self.tags:
            parts.append("Tags: " + ", ".join(self.tags))
        return ". ".join(parts)


@dataclass(frozen=True, slots=True)
class Recommendation:
    """One ranked item, with the reasons the recommender chose it."""

    content_id: int
    score: float
    reasons: tuple[str, ...] = field(default=())
    title: str = ""

    def __post_init__(self) -> None:
        _check_count("content_id", self.content_id)
        _check_finite("score", self.score)
        object.__setattr__(self, "reasons", tuple(self.reasons))
