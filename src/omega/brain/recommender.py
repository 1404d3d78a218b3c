"""`Recommender`: rank catalog items for one viewer, entirely on the TV.

Candidates come from four sources, each scored in [0, 1]-ish and combined
with the weights of `BrainConfig`:

- content: HNSW search (k = candidates_k) around a query vector that blends the
  embedded viewing context (time of day, weekday, profile, recent titles) with
  the recency-weighted mean of the recently watched items;
- transitions: "after A the viewer happily watched B", locally learned and
  pulled from the cloud (global), from the last few items with recency weights;
- pairs: "the fleet watched A and B near each other" (the cloud's unordered
  pairs, which reach k_min TVs far more often than ordered edges), read the same way;
- local patterns (SkillLibrary): docs/architecture.md §2's pattern score of the patterns
  nearest the query, credited to items close to them;
- consolidated patterns (ReasoningBank): items near global patterns with high
  success, support and trend — the prior that carries a cold start.

Watched items are excluded (finished ones always, all by default), and the
final list is diversified with MMR over the item embeddings. All scoring is
numpy over the candidate set (a few hundred rows), never over the catalog.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

import numpy as np

from omega.brain.catalog import Catalog
from omega.brain.config import BrainConfig
from omega.brain.learning import PatternMemory, pattern_scores
from omega.brain.records import ConsolidatedPattern, Recommendation, TransitionStat, ViewingContext
from omega.errors import OmegaError

MAX_K = 1000
_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
#: items at least this close to a pattern get credit from it (cosine, mapped to 0..1 above it)
_GATE = 0.5
#: transitions read per source item (the store returns them heaviest first)
_TRANSITIONS_PER_SOURCE = 20
#: a component must add this much to the score to be given as a reason
_REASON_MIN = 0.05
#: support that makes a consolidated pattern half-trusted
_SUPPORT_HALF = 3.0

TransitionLookup = Callable[[int], list[TransitionStat]]


def daypart(hour: int) -> str:
    if 5 <= hour < 9:
        return "early morning"
    if 9 <= hour < 12:
        return "morning"
    if 12 <= hour < 17:
        return "afternoon"
    if 17 <= hour < 21:
        return "evening"
    return "late night"


def context_text(context: ViewingContext, recent_titles: Sequence[str] = ()) -> str:
    """The words the context is embedded from, e.g. 'Evening on a Friday. Recently watched: Heat; Alien'."""
    text = f"{daypart(context.hour).capitalize()} on a {_WEEKDAYS[context.weekday]}"
    if context.profile and context.profile != "default":
        text += f", viewer profile {context.profile}"
    if recent_titles:
        text += ". Recently watched: " + "; ".join(recent_titles)
    return text


def _unit(vector: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 0 else vector


def _gate(sims: np.ndarray) -> np.ndarray:
    return np.clip((sims - _GATE) / (1.0 - _GATE), 0.0, 1.0)


@dataclass
class ConsolidatedPrior:
    """The ReasoningBank as arrays: unit embeddings and a quality per consolidated pattern."""

    patterns: list[ConsolidatedPattern]
    matrix: np.ndarray
    quality: np.ndarray

    @classmethod
    def of(cls, patterns: list[ConsolidatedPattern]) -> ConsolidatedPrior:
        if not patterns:
            return cls([], np.empty((0, 384), np.float32), np.empty(0, np.float32))
        matrix = np.stack([_unit(np.asarray(p.embedding, np.float32)) for p in patterns])
        success = np.array([p.success_rate for p in patterns], np.float32)
        support = np.array([p.support for p in patterns], np.float32)
        trend = np.array([p.trend_score for p in patterns], np.float32)
        # Quality: how well it works × how many TVs vouch for it × a boost while it grows.
        quality = success * support / (support + _SUPPORT_HALF) * (1.0 + np.clip(trend, 0.0, 1.0))
        return cls(patterns, matrix.astype(np.float32), quality.astype(np.float32))

    def __len__(self) -> int:
        return len(self.patterns)


class Recommender:
    """Ranks one brain's catalog (see module docstring). Stateless between calls."""

    def __init__(
        self,
        catalog: Catalog,
        config: BrainConfig,
        embed: Callable[[str], np.ndarray],
        local_transitions: TransitionLookup,
        global_transitions: TransitionLookup,
        global_pairs: TransitionLookup | None = None,
    ) -> None:
        self.catalog = catalog
        self.config = config
        self._embed = embed
        self._local = local_transitions
        self._global = global_transitions
        self._pairs = global_pairs or (lambda src: [])

    def recommend(
        self,
        context: ViewingContext,
        k: int,
        *,
        recent: Sequence[int],
        exclude: Collection[int],
        patterns: PatternMemory,
        prior: ConsolidatedPrior,
    ) -> list[Recommendation]:
        """Top-k items for `context` given the recent history (most recent first)."""
        cat, cfg = self.catalog, self.config
        if not len(cat):
            raise OmegaError("catalog is empty: run omega brain ingest")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= MAX_K:
            raise OmegaError(f"k must be an integer in 1..{MAX_K}, got {k!r}")
        recent = [c for c in recent if c in cat][: cfg.recent_items]
        exclude = set(exclude)

        query = self._query(context, recent)
        pool: dict[int, None] = {}  # insertion-ordered set of candidate content ids
        content_width = min(len(cat), cfg.candidates_k + min(len(exclude), cfg.candidates_k))
        self._add(pool, cat.search(query, content_width)[0], exclude)
        local, local_src = self._transitions(recent, self._local, pool, exclude)
        glob, glob_src = self._transitions(recent, self._global, pool, exclude)
        pair, pair_src = self._transitions(recent, self._pairs, pool, exclude)
        top_p, p_scores = self._top_patterns(query, patterns, pool, exclude)
        top_c, c_relevance = self._top_consolidated(query, prior, pool, exclude, cold=not recent)
        if len(pool) < k and len(exclude):  # the viewer has seen most of the neighbourhood: look further
            self._add(pool, cat.search(query, min(len(cat), k + len(exclude)))[0], exclude)
        if not pool:
            return []

        ids = np.fromiter(pool, dtype=np.int64, count=len(pool))
        rows = cat.rows(ids)
        X = cat.vectors(rows)
        content = np.clip(X @ query, 0.0, 1.0)
        lt = _lookup(ids, local)
        gt = _lookup(ids, glob)
        pt = _lookup(ids, pair)
        pat = self._pattern_affinity(X, patterns, top_p, p_scores)
        cons, cons_best = self._consolidated_affinity(X, prior, top_c)

        parts = {
            "content": cfg.w_content * content,
            "local": cfg.w_local_transition * lt,
            "global": cfg.w_global_transition * gt,
            "pair": cfg.w_global_pair * pt,
            "pattern": cfg.w_pattern * pat,
            "consolidated": cfg.w_consolidated * cons,
        }
        score = sum(parts.values())
        chosen = _mmr(X, score, k, cfg.diversity_lambda)
        return [
            Recommendation(
                content_id=int(ids[i]),
                score=float(score[i]),
                reasons=self._reasons(
                    i, int(ids[i]), parts, (local_src, glob_src, pair_src), prior, cons_best, bool(recent), context
                ),
                title=cat.items[rows[i]].title,
            )
            for i in chosen
        ]

    # ------------------------------------------------------------------ pieces

    def _query(self, context: ViewingContext, recent: list[int]) -> np.ndarray:
        cat, cfg = self.catalog, self.config
        titles = [cat.item(c).title for c in recent[:3]]
        ctx = np.asarray(self._embed(context_text(context, titles)), np.float32)
        if not recent:
            return _unit(ctx)
        weights = cfg.recent_decay ** np.arange(len(recent), dtype=np.float32)
        history = _unit(weights @ cat.vectors(cat.rows(recent)))
        return _unit(cfg.context_weight * ctx + (1.0 - cfg.context_weight) * history).astype(np.float32)

    def _add(self, pool: dict[int, None], ids: np.ndarray | list[int], exclude: set[int]) -> None:
        for cid in ids.tolist() if isinstance(ids, np.ndarray) else ids:
            if cid not in exclude and cid in self.catalog:
                pool[cid] = None

    def _transitions(
        self, recent: list[int], lookup: TransitionLookup, pool: dict[int, None], exclude: set[int]
    ) -> tuple[dict[int, float], dict[int, int]]:
        """dst → recency-weighted transition probability × confidence, and dst → the source that gave most."""
        scores: dict[int, float] = {}
        best: dict[int, tuple[float, int]] = {}
        for step, src in enumerate(recent):
            stats = lookup(src)[:_TRANSITIONS_PER_SOURCE]
            total = sum(max(s.weight, 0.0) for s in stats)
            if total <= 0:
                continue
            count = sum(s.count for s in stats)
            # Confidence grows with evidence: one lone transition is a hint, fifty are a habit.
            scale = self.config.recent_decay**step * count / (count + 2.0) / total
            for s in stats:
                if s.weight <= 0 or s.dst in exclude or s.dst not in self.catalog:
                    continue
                gain = s.weight * scale
                scores[s.dst] = scores.get(s.dst, 0.0) + gain
                if gain > best.get(s.dst, (0.0, 0))[0]:
                    best[s.dst] = (gain, src)
        self._add(pool, list(scores), exclude)
        return scores, {dst: src for dst, (_, src) in best.items()}

    def _top_patterns(
        self, query: np.ndarray, patterns: PatternMemory, pool: dict[int, None], exclude: set[int]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Rows of the local patterns that best fit the query (docs/architecture.md §2 score), and their scores."""
        cfg = self.config
        if not len(patterns) or cfg.top_patterns == 0:
            return np.empty(0, np.int64), np.empty(0, np.float32)
        stats = patterns.stats
        weights = (cfg.pattern_w_similarity, cfg.pattern_w_success, cfg.pattern_w_uses, cfg.pattern_w_reward)
        scores = pattern_scores(patterns.matrix @ query, stats[:, 0], stats[:, 1], stats[:, 2], weights)
        top = _top(scores, cfg.top_patterns)
        # The two best patterns that worked (success ≥ 0.5) also propose their own neighbourhood.
        for row in [r for r in top if stats[r, 0] >= 0.5][:2]:
            self._add(pool, self.catalog.search(patterns.matrix[row], 20)[0], exclude)
        return top, scores[top]

    def _top_consolidated(
        self, query: np.ndarray, prior: ConsolidatedPrior, pool: dict[int, None], exclude: set[int], *, cold: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        """Rows of consolidated patterns relevant to the query, plus the globally best ones."""
        m = self.config.top_consolidated
        if not len(prior) or m == 0:
            return np.empty(0, np.int64), np.empty(0, np.float32)
        relevance = prior.quality * np.clip(prior.matrix @ query, 0.0, 1.0)
        by_relevance = _top(relevance, max(1, m // 2))
        by_quality = _top(prior.quality, max(1, m - len(by_relevance)))
        top = np.unique(np.concatenate([by_relevance, by_quality]))
        # Without history the prior is all there is: let more of it propose items.
        for row in by_relevance[: 3 if cold else 1]:
            self._add(pool, self.catalog.search(prior.matrix[row], 20)[0], exclude)
        return top, relevance[top]

    @staticmethod
    def _pattern_affinity(X: np.ndarray, patterns: PatternMemory, top: np.ndarray, scores: np.ndarray) -> np.ndarray:
        if not len(top):
            return np.zeros(len(X), np.float32)
        gate = _gate(X @ patterns.matrix[top].T)  # (n, m)
        return (gate * scores[None, :]).max(axis=1).astype(np.float32)

    @staticmethod
    def _consolidated_affinity(X: np.ndarray, prior: ConsolidatedPrior, top: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if not len(top):
            return np.zeros(len(X), np.float32), np.full(len(X), -1, np.int64)
        credit = _gate(X @ prior.matrix[top].T) * prior.quality[top][None, :]
        best = credit.argmax(axis=1)
        return credit.max(axis=1).astype(np.float32), np.where(credit.max(axis=1) > 0, top[best], -1)

    def _reasons(
        self,
        i: int,
        content_id: int,
        parts: dict[str, np.ndarray],
        sources: tuple[dict[int, int], dict[int, int], dict[int, int]],
        prior: ConsolidatedPrior,
        cons_best: np.ndarray,
        has_history: bool,
        context: ViewingContext,
    ) -> tuple[str, ...]:
        reasons: list[str] = []

        def add(reason: str) -> None:
            if reason not in reasons:
                reasons.append(reason)

        for kind, by_dst in zip(("local", "global", "pair"), sources):
            if parts[kind][i] >= _REASON_MIN and content_id in by_dst:
                title = self.catalog.item(by_dst[content_id]).title
                add(f"often watched with {title}" if kind == "pair" else f"because you watched {title}")
                if kind == "global":
                    add("popular with viewers like you")
        if parts["content"][i] >= 0.3 * self.config.w_content and self.config.w_content > 0:
            add("similar to your recent viewing" if has_history else f"fits your {daypart(context.hour)} viewing")
        if parts["pattern"][i] >= _REASON_MIN:
            add("matches what you usually enjoy")
        if parts["consolidated"][i] >= _REASON_MIN and cons_best[i] >= 0:
            add("popular with viewers like you")
            if prior.patterns[int(cons_best[i])].trend_score >= self.config.trend_min_score:
                add("trending")
        if not reasons:  # say at least why it made the list at all
            strongest = max(parts, key=lambda name: parts[name][i])
            add({"content": "similar to your recent viewing" if has_history else "fits the moment",
                 "local": "follows what you watched", "global": "popular with viewers like you",
                 "pair": "viewers watch it alongside yours",
                 "pattern": "matches what you usually enjoy", "consolidated": "popular with viewers like you"}[strongest])  # fmt: skip
        return tuple(reasons)


# ---------------------------------------------------------------- helpers


def _lookup(ids: np.ndarray, scores: dict[int, float]) -> np.ndarray:
    """Scores of `ids` from a dict (0 where absent), clipped to [0, 1]."""
    if not scores:
        return np.zeros(len(ids), np.float32)
    raw = np.fromiter((scores.get(c, 0.0) for c in ids.tolist()), dtype=np.float32, count=len(ids))
    return np.clip(raw, 0.0, 1.0)


def _top(scores: np.ndarray, m: int) -> np.ndarray:
    """Indices of the m largest scores, best first."""
    m = min(m, len(scores))
    if m <= 0:
        return np.empty(0, np.int64)
    part = np.argpartition(-scores, m - 1)[:m]
    return part[np.argsort(-scores[part], kind="stable")]


def _mmr(X: np.ndarray, score: np.ndarray, k: int, lam: float) -> list[int]:
    """Maximal marginal relevance: trade relevance (scaled to 0..1) against similarity to what is chosen."""
    n = len(score)
    k = min(k, n)
    span = float(score.max() - score.min())
    rel = (score - score.min()) / span if span > 0 else np.ones(n, np.float32)
    max_sim = np.full(n, -np.inf, np.float32)
    chosen: list[int] = []
    available = np.ones(n, bool)
    for _ in range(k):
        penalty = np.where(np.isfinite(max_sim), max_sim, 0.0)
        mmr = np.where(available, lam * rel - (1.0 - lam) * penalty, -np.inf)
        pick = int(np.argmax(mmr))
        chosen.append(pick)
        available[pick] = False
        max_sim = np.maximum(max_sim, X @ X[pick])
    return chosen
