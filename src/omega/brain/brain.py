"""`Brain`: one TV's complete recommender — memory, learning and ranking, all local.

It ties the store (SQLite), the catalog (embeddings + HNSW), the embedder
(loaded lazily: only ingesting and recommending need it) and the recommender
together. Every viewing is recorded together with what it teaches (pattern and
transition updates) in one SQLite transaction; in-memory working sets are
updated only after that commit, so they never hold what the store does not.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import replace
from functools import partial
from itertools import islice
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from omega.brain import learning
from omega.brain.catalog import Catalog, index_path_for
from omega.brain.config import BrainConfig
from omega.brain.embedder import Embedder
from omega.brain.learning import PatternMemory
from omega.brain.records import (
    CatalogItem,
    ConsolidatedRecord,
    Episode,
    Recommendation,
    TaskType,
    TransitionStat,
    ViewingContext,
    require_all,
)
from omega.brain.recommender import MAX_K, ConsolidatedPrior, Published, Ranking, Recommender, TransitionLookup
from omega.brain.store import BrainStore, Synchronous
from omega.errors import OmegaError
from omega.progress import Progress

#: context texts whose embeddings a brain keeps (a session asks for the same context again and again)
_CONTEXT_CACHE = 8


_malloc_trim: Callable[[int], int] | None | bool = False  # False: not looked up yet


def release_freed_memory() -> None:
    """Give the C heap's free pages back to the OS (glibc `malloc_trim`; a no-op elsewhere).

    Loading parses tens of MB of short-lived objects (SQLite rows, the ONNX
    protobuf, the index file); freed, they stay in the process's RSS as heap
    holes until trimmed. Measured on the bench brain: about -10 MB after the
    onnxruntime session, -25 MB after the catalog.
    """
    global _malloc_trim
    if _malloc_trim is False:
        try:
            import ctypes

            # The process's own symbols (dlopen(NULL)), where the C library's are: no ctypes.util.find_library,
            # which runs ldconfig in a subprocess and imports subprocess, shutil and tempfile (~1.5 MB of RSS).
            _malloc_trim = ctypes.CDLL(None).malloc_trim
        except (OSError, AttributeError):
            _malloc_trim = None
    if _malloc_trim:
        _malloc_trim(0)


def context_at(timestamp: float | None = None, profile: str = "default") -> ViewingContext:
    """The viewing context of a moment in the TV's local time (now by default)."""
    moment = time.localtime(time.time() if timestamp is None else timestamp)
    return ViewingContext(hour=moment.tm_hour, weekday=moment.tm_wday, profile=profile)


class _History:
    """What the viewer has watched: distinct ids in order of last viewing, and the finished ones."""

    def __init__(self, episodes: Sequence[Episode]) -> None:
        self._order: dict[int, None] = {}
        self.finished: set[int] = set()
        for ep in episodes:
            self.add(ep.content_id, ep.success)

    def add(self, content_id: int, finished: bool) -> None:
        self._order.pop(content_id, None)
        self._order[content_id] = None
        if finished:
            self.finished.add(content_id)

    @property
    def watched(self) -> set[int]:
        return set(self._order)

    def recent(self, n: int) -> list[int]:
        """The n most recently watched distinct ids, most recent first."""
        return list(islice(reversed(self._order), n))


class Brain:
    """One TV's brain (see module docstring). Use as a context manager or call `close()`."""

    def __init__(
        self,
        db_path: Path | str,
        *,
        embedder: Embedder | None = None,
        catalog: Catalog | None = None,
        config: BrainConfig | None = None,
        synchronous: Synchronous = "FULL",
        new_id: Callable[[], uuid.UUID] = uuid.uuid4,
    ) -> None:
        """`new_id` gives new patterns their ids (random; a simulation passes a seeded source so that one
        seed gives the same wire bytes)."""
        self.config = config or BrainConfig()
        self._new_id = new_id
        self.store = BrainStore(db_path, max_patterns=self.config.max_patterns, synchronous=synchronous)
        self.store.limit_cache(self.config.store_cache_kib)
        self._embedder = embedder
        self._catalog = catalog
        self._patterns: PatternMemory | None = None
        self._prior: ConsolidatedPrior | None = None
        self._history: _History | None = None
        self._popular: list[int] | None = None
        self._context_vectors: dict[str, np.ndarray] = {}
        self._recommender: Recommender | None = None

    # ------------------------------------------------------------------ lazily loaded parts

    @property
    def embedder(self) -> Embedder:
        """The embedder, loaded from the default model dir on first use."""
        if self._embedder is None:
            self._embedder = Embedder(threads=self.config.threads)
            release_freed_memory()
        return self._embedder

    @property
    def catalog(self) -> Catalog:
        """The shared catalog given at construction, else the store's (index loaded or rebuilt)."""
        if self._catalog is None:
            self._catalog = Catalog.from_store(self.store, self.config)
            release_freed_memory()
        return self._catalog

    def _memory(self) -> PatternMemory:
        if self._patterns is None:
            # Streamed from SQLite into compact arrays: no list of 10K Pattern records on the way.
            # Sized to what the store holds (a TV far from max_patterns holds a few dozen rows), growing up to
            # max_patterns (more only if the store already holds more).
            count = self.store.pattern_count()
            with self.store.pattern_rows() as found:
                self._patterns = PatternMemory.from_rows(
                    found, capacity=count, limit=max(self.config.max_patterns, count)
                )
            release_freed_memory()
        return self._patterns

    def _consolidated(self) -> ConsolidatedPrior:
        if self._prior is None:
            self._prior = ConsolidatedPrior.of(self.store.consolidated(), self.store.support_floor_c)
        return self._prior

    def _hist(self) -> _History:
        if self._history is None:
            self._history = _History(self.store.episodes())
        return self._history

    def _embed_context(self, text: str) -> np.ndarray:
        """The context text's embedding; the last few are kept, since the text (daypart, weekday, the last
        titles) stays the same across the calls of one viewing session."""
        cache = self._context_vectors
        vector = cache.pop(text, None)
        if vector is None:
            vector = self.embedder.embed(text)
        cache[text] = vector
        while len(cache) > _CONTEXT_CACHE:
            cache.pop(next(iter(cache)))
        return vector

    def _most_followed(self) -> list[int]:
        """The `popular_k` items the pulled global edges lead into most (recomputed after each pull)."""
        if self._popular is None:
            found = sorted(self.store.global_in_weights(), key=lambda row: (-row[1], row[0]))
            self._popular = [int(dst) for dst, _ in found[:MAX_K]]
        return self._popular

    def _ranker(self) -> Recommender:
        if self._recommender is None or self._recommender.catalog is not self.catalog:
            own = partial(self.store.edges.successors, "transitions")
            glob, pairs, popular, held_back = self._published()
            self._recommender = Recommender(
                self.catalog, self.config, self._embed_context, own, glob, pairs, popular, self._refined(), held_back
            )
        return self._recommender

    def _published(self) -> Published:
        """What this TV pulled, as the ranker reads it: edges and pairs by source (one read for all the recent
        items, support floor applied), the most-followed items, and what the floor holds back."""
        successors = self.store.edges.successors
        return (partial(successors, "global_transitions"), partial(successors, "global_pairs"), self._most_followed,
                self._held_back)  # fmt: skip

    def _held_back(self, srcs: Sequence[int]) -> dict[int, list[tuple[int, float]]]:
        """The pulled edges and pairs out of `srcs` that the support floor holds back, src → [(dst, support)]
        (they order the items nothing else scores: `Recommender._tiers`)."""
        out: dict[int, list[tuple[int, float]]] = {}
        for table in ("global_transitions", "global_pairs"):
            for src, rows in self.store.edges.successors(table, srcs, under_floor=True).items():
                out.setdefault(src, []).extend(rows)
        return out

    def _refined(self) -> TransitionLookup:
        """The refined neighbours this TV pulled (EASE over the published pairs, computed by the cloud), by source."""
        return partial(self.store.edges.successors, "refined_neighbours")

    # ------------------------------------------------------------------ catalog

    def ingest_catalog(self, items: Sequence[CatalogItem], *, progress: Progress | None = None) -> int:
        """Embed and store catalog items (new or updated), then rebuild and save the index; returns how many."""
        items = list(items)
        if not items:
            raise OmegaError("no catalog items to ingest")
        require_all(items, CatalogItem, "catalog entries must be CatalogItem")
        # The store gets the embedder's float32 vectors; the index is built once, over everything the
        # store now holds (earlier items included), and saved.
        matrix = self.embedder.embed_batch([it.text() for it in items], progress=progress)
        self.store.upsert_catalog(items, matrix)
        del matrix
        self._catalog = None
        self._catalog = Catalog.from_store(self.store, self.config)
        release_freed_memory()
        return len(items)

    # ------------------------------------------------------------------ learning

    def on_user_action(
        self,
        content_id: int,
        *,
        watch_fraction: float,
        engagement: float = 0.0,
        context: ViewingContext | None = None,
        started_at: float | None = None,
        duration_s: float | None = None,
    ) -> Episode:
        """Record a viewing and learn from it, atomically; returns the stored episode.

        `duration_s=None` means unknown: the episode then stores 0 for both
        watched_s and duration_s, and `completion` carries the fraction.
        """
        if isinstance(content_id, bool) or not isinstance(content_id, (int, np.integer)):
            raise OmegaError(f"content_id must be an integer, got {content_id!r}")
        content_id = int(content_id)
        vector = self.catalog.vector(content_id)  # OmegaError for an unknown id
        fraction = learning.check_fraction(watch_fraction)
        engagement = learning.check_engagement(engagement)
        if duration_s is not None and (not np.isfinite(duration_s) or duration_s < 0):
            raise OmegaError(f"duration_s must be a non-negative number, got {duration_s!r}")
        when = time.time() if started_at is None else float(started_at)
        history = self._hist()
        success = learning.is_success(fraction)
        rewatch = success and content_id in history.finished
        if rewatch:
            engagement = min(1.0, engagement + learning.REWATCH_ENGAGEMENT_BONUS)
        reward = learning.reward(fraction, engagement)
        duration = float(duration_s or 0.0)
        episode = Episode(
            id=None, content_id=content_id, started_at=when, watched_s=fraction * duration, duration_s=duration,
            completion=fraction, reward=reward, context=context or context_at(when),
            outcome=learning.outcome(fraction, rewatch=rewatch),
        )  # fmt: skip

        memory = self._memory()
        match = memory.nearest(vector, self.config.pattern_match_threshold)
        if match is not None:
            pattern = learning.update_pattern(
                match[0], vector, reward_value=reward, success=success, now=when, min_step=self.config.pattern_min_step
            )
        else:
            pattern = learning.new_pattern(vector, reward_value=reward, success=success, now=when,
                                           task_type=TaskType.CONTENT_MATCH, pattern_id=self._new_id())  # fmt: skip
        # "After A the viewer happily watched B": only good viewings teach a transition.
        sources = [c for c in history.recent(self.config.transition_window + 1) if c != content_id]
        sources = sources[: self.config.transition_window] if success and reward > 0 else []
        window = self.config.cowatch_window if success and reward > 0 else 0
        cowatched = [c for c in history.recent(window + 1) if c != content_id][:window] if window else []

        evicted: list = []
        with self.store.transaction():
            episode_id = self.store.add_episode(episode)
            if match is None and len(memory) >= self.config.max_patterns:
                # Make room first, so the newest observation always gets a slot.
                evicted = self.store.evict_patterns(self.config.max_patterns - 1, now=when)
            self.store.put_pattern(pattern)
            for step, src in enumerate(sources):
                self.store.bump_transition(src, content_id, reward * self.config.transition_decay**step)
            if cowatched:
                self.store.outbox.queue_cowatch(content_id, cowatched)
        # Committed: now the working sets may follow.
        memory.remove(evicted)
        memory.upsert(pattern)
        history.add(content_id, success)
        return replace(episode, id=episode_id)

    def feedback(self, content_id: int, *, liked: bool | None = None, rating: float | None = None) -> Episode:
        """Explicit feedback on the latest viewing of an item: replaces its engagement, so its reward.

        The pattern that learned from that viewing gets the reward difference.
        Transitions keep the weight they were given when the viewing happened.
        """
        engagement = learning.engagement_from_feedback(liked=liked, rating=rating)
        vector = self.catalog.vector(content_id)
        critique = ", ".join(
            ([("liked" if liked else "disliked")] if liked is not None else []) + ([f"rated {rating:g}"] if rating is not None else [])
        )
        memory = self._memory()
        match = memory.nearest(vector, self.config.pattern_match_threshold)
        with self.store.transaction():
            old = self.store.latest_episode(content_id)
            if old is None:
                raise OmegaError(f"no viewing of content {content_id} to give feedback on")
            new_reward = learning.reward(old.completion, engagement)
            self.store.set_episode_feedback(old.id, reward=new_reward, critique=critique)  # type: ignore[arg-type]
            pattern = None
            if match is not None:
                pattern = learning.adjust_pattern_reward(match[0], new_reward - old.reward, now=time.time())
                self.store.put_pattern(pattern)
        if pattern is not None:
            memory.upsert(pattern)
        return replace(old, reward=new_reward, critique=critique)

    # ------------------------------------------------------------------ ranking

    def recommend(self, context: ViewingContext | None = None, k: int = 10) -> list[Recommendation]:
        """Top-k items for now (or `context`), with reasons. Entirely local."""
        return self.rank(context, k).recommendations

    def rank(
        self, context: ViewingContext | None = None, k: int = 10, *, config: BrainConfig | None = None,
        published: Published | None = None, refined: TransitionLookup | None = None,
        prior: ConsolidatedPrior | None = None,
    ) -> Ranking:  # fmt: skip
        """`recommend` plus the candidate pool the list was chosen from (for the evaluation's pool recall).

        The evaluation asks what-if questions of the same ranking code: `config` ranks with other
        recommend settings (ablations), `published` with another published edge set than the one pulled
        (the privacy table's k_min rows), `refined` with other refined neighbours than the pulled ones,
        `prior` with other consolidated patterns than the pulled ones (the ε rows' DP release)."""
        history = self._hist()
        exclude = history.watched if self.config.exclude_watched else history.finished
        ranker = self._ranker()
        if config is not None or published is not None or refined is not None:
            own = partial(self.store.edges.successors, "transitions")
            glob, pairs, popular, held_back = published or self._published()
            ranker = Recommender(self.catalog, config or self.config, ranker.embed, own, glob, pairs, popular,
                                 refined or self._refined(), held_back)  # fmt: skip
            config = config or self.config
        return ranker.rank(
            context or context_at(),
            k,
            recent=history.recent((config or self.config).recent_items),
            exclude=exclude,
            patterns=self._memory(),
            prior=self._consolidated() if prior is None else prior,
        )

    def after(self, content_id: int, k: int = 10) -> list[int]:
        """What this TV would propose right after `content_id` from what viewers did next (its own and the
        fleet's published edges and pairs), best first."""
        return self._ranker().after(int(content_id), k)

    # ------------------------------------------------------------------ sync results

    def apply_consolidated(
        self, patterns: Sequence[ConsolidatedRecord], transitions: Sequence[TransitionStat], *,
        replace_transitions: bool = False, pairs: Sequence[TransitionStat] = (), fresh: bool = False,
    ) -> tuple[int, int]:
        """Merge what sync pulled (one transaction); returns (consolidated rows changed, transitions + pairs stored).
        `fresh`: the page starts a full snapshot that replaces everything pulled before (`BrainStore.merge_pulled`)."""
        changed, stored = self.store.merge_pulled(patterns, transitions, pairs, replace_transitions=replace_transitions,
                                                  fresh=fresh)  # fmt: skip
        self._prior = None  # reload on the next recommend
        self._popular = None
        return changed, stored

    def copy_pulled(self, source: Brain) -> int:
        """Hold what `source` pulled (see `BrainStore.copy_pulled`: the fleet simulator's shortcut for pulling
        the same published pages again); returns the rows copied."""
        copied = self.store.copy_pulled(source.store)
        self._prior = None  # reload on the next recommend
        self._popular = None
        return copied

    # ------------------------------------------------------------------ inspection and lifetime

    def stats(self) -> dict[str, Any]:
        """Row counts of the store plus the in-memory index sizes."""
        out: dict[str, Any] = dict(self.store.stats())
        catalog = self.catalog
        out["catalog_index_vectors"] = len(catalog.index)
        out["pattern_memory"] = len(self._memory())
        out["consolidated_memory"] = len(self._consolidated())
        path = index_path_for(self.store.path)
        out["catalog_index_bytes"] = path.stat().st_size if path is not None and path.is_file() else 0
        return out

    def release_caches(self) -> None:
        """Drop what ranking keeps in memory of the pulled edges (kept successors, volumes, the most-followed
        items, the ranker built over them); the next ranking reads them again from the store. For processes
        that hold hundreds of brains (the evaluation's fleet), where these copies add up."""
        self.store.edges.release()
        self._recommender = None
        self._popular = None

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> Brain:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
