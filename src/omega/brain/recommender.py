"""`Recommender`: rank catalog items for one viewer, entirely on the TV.

This is the only ranking path: `Brain.recommend` calls it, and `omega eval
movielens` scores exactly the list it returns.

Candidate pool (a few hundred items, never the whole catalog):

- collaborative: successors (ordered edges) and pairs ("watched near each
  other", either order) of the recent items, up to `_PER_SOURCE` per source
  and key space, from the TV's own transitions and what it pulled;
- content: HNSW neighbours (k = candidates_k) of a query vector that blends the
  embedded viewing context with the recency-weighted mean of recent items;
- refined: the constellation's refined neighbours of the recent items (EASE over the published
  pair graph, `omega.constellation.item_graph`), when pulled;
- popular: the `popular_k` items the fleet's published edges lead into most;
- patterns: the neighbourhoods of the best local and consolidated patterns.

Score of a candidate (every part scaled to at most 1 over the pool, then
weighted by `BrainConfig`): for each key space, x = Σ_i decay^i · s^0.5 /
(Σ_row s^0.5)^0.5 over the recent items i (s = the edge's weight, the row
being that source's published successors: a rare source's edges say more than
a hub's); refined = Σ_i decay^i · w(i, item), linear as EASE scores are; content = cos³ to the query (only near neighbours move the ranking);
pattern and consolidated credit items near patterns that worked. Watched items
are excluded (finished ones always, all by default) and MMR trades relevance
for variety (`diversity_lambda`, 1 = off).

Order in tiers (issue 14): every item some part scores (≥ `_UNSCORED`) comes before every item none
scores, and among the unscored, more support from the published edges and pairs the support floor holds
back (Σ_i decay^i · support) comes first; MMR trades relevance for variety inside a tier only. Variety
alone never lifts an item with no evidence over one with evidence, and the held-back edges, which a few
device ids can forge, only order what nothing else separates (a title 3 honest TVs lead into, under the
floor, above a title no one does).
"""

from __future__ import annotations

import math

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from omega.brain.catalog import Catalog
from omega.brain.config import BrainConfig
from omega.brain.learning import PatternMemory, pattern_scores
from omega.brain.records import ConsolidatedRecord, Recommendation, ViewingContext
from omega.errors import OmegaError

MAX_K = 1000
_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
#: items at least this close to a pattern get credit from it (cosine, mapped to 0..1 above it)
_GATE = 0.5
#: successors / pairs read per source item and key space (the store returns them heaviest first)
_PER_SOURCE = 200
#: a part must carry at least this share of an item's score to be given as a reason
_REASON_SHARE = 0.25
#: support that makes a consolidated pattern half-trusted
_SUPPORT_HALF = 3.0
#: a score below this is float noise, not evidence: w_content·cos³ of an item at cos ≈ 0.003 to the query
#: (float32 rounding leaves ~1e-5 on vectors orthogonal to it); every other part is 0 or far above it
_UNSCORED = 1e-9

#: src → [(dst, weight), ...] heaviest first, for each of the sources asked (one read for all the recent items)
TransitionLookup = Callable[[Sequence[int]], Mapping[int, Sequence[tuple[int, float]]]]
#: (ordered edges by source, pairs by either end, most-followed items, the edges and pairs the support floor
#: holds back): what a TV pulled, or a stand-in
Published = tuple[TransitionLookup, TransitionLookup, Callable[[], Sequence[int]], TransitionLookup]


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

    patterns: list[ConsolidatedRecord]
    matrix: np.ndarray
    quality: np.ndarray

    @classmethod
    def of(cls, patterns: list[ConsolidatedRecord], floor_c: float = 0.0) -> ConsolidatedPrior:
        """The prior over `patterns` that pass the support floor: support ≥ floor_c·√S, S = the total support
        of all of them (issue 14, bounded influence; the edges' rule and c, protocol.SUPPORT_FLOOR_C).

        k_min alone lets three sybil ids publish a pattern that this prior reads as "popular with viewers of
        your taste"; the floor grows with the fleet (S is ~ TVs × patterns each), as a key's support does.
        Post-processing of what was pulled: under DP it costs no budget. Validation (200 viewers,
        bench/pattern_floor.py): 10 of 38 patterns kept per TV, no top-10 changed."""
        if patterns and floor_c > 0:
            floor = floor_c * math.sqrt(sum(p.support for p in patterns))
            patterns = [p for p in patterns if p.support >= floor]
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


@dataclass
class Ranking:
    """What one ranking produced: the top-k and the candidate pool it was chosen from."""

    recommendations: list[Recommendation]
    pool: frozenset[int] = field(default_factory=frozenset)


#: the score parts, in the order reasons are preferred on a tie
PARTS = ("pair", "refined", "global", "local", "content", "pattern", "consolidated")


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
        popular: Callable[[], Sequence[int]] | None = None,
        refined: TransitionLookup | None = None,
        held_back: TransitionLookup | None = None,
    ) -> None:
        self.catalog = catalog
        self.config = config
        self.embed = embed
        self._local = local_transitions
        self._global = global_transitions
        self._pairs = global_pairs or (lambda srcs: {})
        self._popular = popular or (lambda: ())
        self.refined: TransitionLookup = refined or (lambda srcs: {})
        #: published edges and pairs under the support floor, src → [(dst, support)] (the unscored items' tier)
        self.held_back: TransitionLookup = held_back or (lambda srcs: {})

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
        return self.rank(context, k, recent=recent, exclude=exclude, patterns=patterns, prior=prior).recommendations

    def rank(
        self,
        context: ViewingContext,
        k: int,
        *,
        recent: Sequence[int],
        exclude: Collection[int],
        patterns: PatternMemory,
        prior: ConsolidatedPrior,
    ) -> Ranking:
        """`recommend`, also returning the candidate pool (the evaluation reports its recall)."""
        cat, cfg = self.catalog, self.config
        if not len(cat):
            raise OmegaError("catalog is empty: run omega brain ingest")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= MAX_K:
            raise OmegaError(f"k must be an integer in 1..{MAX_K}, got {k!r}")
        recent = [c for c in recent if c in cat][: cfg.recent_items]
        exclude = set(exclude)

        query, recent_vectors = self._query(context, recent)
        pool: dict[int, None] = {}  # insertion-ordered set of candidate content ids
        content_width = min(len(cat), cfg.candidates_k + min(len(exclude), cfg.candidates_k))
        self._add(pool, cat.search(query, content_width)[0], exclude)
        sources = {
            name: self._support(recent, lookup, pool, exclude) if weight > 0 else ({}, {})
            for name, lookup, weight in (
                ("local", self._local, cfg.w_local_transition),
                ("global", self._global, cfg.w_global_transition),
                ("pair", self._pairs, cfg.w_global_pair),
            )
        }
        sources["refined"] = self._linear(recent, pool, exclude) if cfg.w_refined > 0 else ({}, {})
        self._add(pool, list(self._popular())[: cfg.popular_k], exclude)
        top_p, p_scores = self._top_patterns(query, patterns, pool, exclude)
        top_c, _ = self._top_consolidated(query, prior, pool, exclude, cold=not recent)
        if len(pool) < k and len(exclude):  # the viewer has seen most of the neighbourhood: look further
            self._add(pool, cat.search(query, min(len(cat), k + len(exclude)))[0], exclude)
        if not pool:
            return Ranking([], frozenset())

        ids = np.fromiter(pool, dtype=np.int64, count=len(pool))
        known = cat.row_index  # every pooled id is in the catalog (`_add`)
        rows = np.fromiter((known[c] for c in pool), dtype=np.int64, count=len(pool))
        X = cat.vectors(rows)
        cos = np.clip(X @ query, 0.0, 1.0)
        parts = {
            "content": cfg.w_content * (cos**3 if recent else cos),
            "pattern": cfg.w_pattern * self._pattern_affinity(X, patterns, top_p, p_scores),
        }
        cons, cons_best = self._consolidated_affinity(X, prior, top_c)
        parts["consolidated"] = cfg.w_consolidated * cons
        for name, weight in (("local", cfg.w_local_transition), ("global", cfg.w_global_transition),
                             ("pair", cfg.w_global_pair), ("refined", cfg.w_refined)):  # fmt: skip
            parts[name] = weight * _scaled(pool, sources[name][0])
        score = sum(parts.values())
        chosen = _mmr(X, score, k, cfg.diversity_lambda, self._tiers(ids, score, recent))
        return Ranking(
            [
                Recommendation(
                    content_id=int(ids[i]), score=float(score[i]),
                    reasons=self._reasons(i, int(ids[i]), parts, sources, prior, cons_best, recent, recent_vectors, X,
                                          context),
                    title=cat.items[rows[i]].title,
                )  # fmt: skip
                for i in chosen
            ],
            frozenset(pool),
        )

    def after(self, content_id: int, k: int) -> list[int]:
        """The k items this TV's collaborative parts propose right after `content_id` alone (edges, pairs, refined
        neighbours and its own transitions, weighted as in `rank`; no content, no diversity), best first."""
        cfg = self.config
        score: dict[int, float] = {}
        for lookup, weight in ((self._local, cfg.w_local_transition), (self._global, cfg.w_global_transition),
                               (self._pairs, cfg.w_global_pair), (None, cfg.w_refined)):  # fmt: skip
            if weight <= 0:
                continue
            if lookup is None:
                found, _ = self._linear([content_id], {}, {content_id})
            else:
                found, _ = self._support([content_id], lookup, {}, {content_id})
            top = max(found.values(), default=0.0)
            for dst, x in found.items():
                score[dst] = score.get(dst, 0.0) + weight * x / top
        return sorted(score, key=lambda dst: (-score[dst], dst))[:k]

    # ------------------------------------------------------------------ pieces

    def _query(self, context: ViewingContext, recent: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """The query vector, and the recent items' vectors it blends in (the reasons use them again)."""
        cat, cfg = self.catalog, self.config
        titles = [cat.item(c).title for c in recent[:3]]
        ctx = np.asarray(self.embed(context_text(context, titles)), np.float32)
        recent_vectors = cat.vectors(cat.rows(recent))
        if not recent:
            return _unit(ctx), recent_vectors
        weights = cfg.recent_decay ** np.arange(len(recent), dtype=np.float32)
        history = _unit(weights @ recent_vectors)
        return _unit(cfg.context_weight * ctx + (1.0 - cfg.context_weight) * history).astype(np.float32), recent_vectors

    def _add(self, pool: dict[int, None], ids: np.ndarray | list[int], exclude: set[int]) -> None:
        known = self.catalog.row_index
        pool.update(dict.fromkeys(cid for cid in (ids.tolist() if isinstance(ids, np.ndarray) else ids)
                                  if cid not in exclude and cid in known))  # fmt: skip

    def _support(
        self, recent: list[int], lookup: TransitionLookup, pool: dict[int, None], exclude: set[int]
    ) -> tuple[dict[int, float], dict[int, int]]:
        """dst → Σ_i decay^i · s^0.5 / (Σ_row s^0.5)^0.5 over the recent items i, and dst → the source that gave most.

        The square roots damp both ends: a heavy edge counts less than its weight (support is
        heavy-tailed), and a hub's successors share a larger but not linear budget."""
        scores: dict[int, float] = {}
        top: dict[int, float] = {}  # dst → the largest gain a single source gave it, from `via[dst]`
        via: dict[int, int] = {}
        decay = self.config.recent_decay
        found = lookup(recent) if recent else {}
        known = self.catalog.row_index
        for step, src in enumerate(recent):
            edges = [(dst, weight) for dst, weight in found.get(src, ())[:_PER_SOURCE] if weight > 0]
            if not edges:
                continue
            roots = [weight**0.5 for _, weight in edges]
            scale = decay**step / sum(roots) ** 0.5
            for (dst, _), root in zip(edges, roots):
                if dst in exclude or dst not in known:
                    continue
                gain = root * scale
                scores[dst] = scores.get(dst, 0.0) + gain
                if gain > top.get(dst, 0.0):
                    top[dst], via[dst] = gain, src
        pool.update(dict.fromkeys(scores))  # each one known and not excluded (checked above)
        return scores, via

    def _linear(
        self, recent: list[int], pool: dict[int, None], exclude: set[int]
    ) -> tuple[dict[int, float], dict[int, int]]:
        """dst → Σ_i decay^i · w(i, dst) over the refined neighbours of the recent items (EASE scores add
        up linearly), and dst → the recent item that gave most."""
        scores: dict[int, float] = {}
        top: dict[int, float] = {}  # dst → the largest gain a single source gave it, from `via[dst]`
        via: dict[int, int] = {}
        decay = self.config.recent_decay
        found = self.refined(recent) if recent else {}
        known = self.catalog.row_index
        for step, src in enumerate(recent):
            for dst, weight in found.get(src, ()):
                if weight <= 0 or dst in exclude or dst not in known:
                    continue
                gain = weight * decay**step
                scores[dst] = scores.get(dst, 0.0) + gain
                if gain > top.get(dst, 0.0):
                    top[dst], via[dst] = gain, src
        pool.update(dict.fromkeys(scores))  # each one known and not excluded (checked above)
        return scores, via

    def _tiers(self, ids: np.ndarray, score: np.ndarray, recent: list[int]) -> np.ndarray:
        """The tier of each pool item (higher first; module docstring): +inf when any part scores it, else
        Σ_i decay^i · support of the held-back edges and pairs into it from the recent items i (0: none)."""
        unscored = ~(score >= _UNSCORED)
        tier = np.where(unscored, 0.0, np.inf)
        if not recent or not unscored.any():
            return tier
        held: dict[int, float] = {}
        found = self.held_back(recent)
        for step, src in enumerate(recent):
            for dst, support in found.get(src, ()):
                held[dst] = held.get(dst, 0.0) + support * self.config.recent_decay**step
        if held:
            for i in np.flatnonzero(unscored).tolist():
                tier[i] = held.get(int(ids[i]), 0.0)
        return tier

    def _top_patterns(
        self, query: np.ndarray, patterns: PatternMemory, pool: dict[int, None], exclude: set[int]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Rows of the local patterns that best fit the query (docs/architecture.md §2 score), and their scores."""
        cfg = self.config
        if not len(patterns) or cfg.top_patterns == 0 or cfg.w_pattern == 0:
            return np.empty(0, np.int64), np.empty(0, np.float32)
        stats = patterns.stats
        weights = (cfg.pattern_w_similarity, cfg.pattern_w_success, cfg.pattern_w_uses, cfg.pattern_w_reward)
        scores = pattern_scores(patterns.matrix @ query, stats[:, 0], stats[:, 1], stats[:, 2], weights)
        top = _top(scores, cfg.top_patterns)
        # The two best patterns that worked (success ≥ 0.5) also propose their own neighbourhood.
        for row in [r for r in top if stats[r, 0] >= 0.5][:2]:
            self._add(pool, self.catalog.neighbours(patterns.matrix[row], 20), exclude)
        return top, scores[top]

    def _top_consolidated(
        self, query: np.ndarray, prior: ConsolidatedPrior, pool: dict[int, None], exclude: set[int], *, cold: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        """Rows of consolidated patterns relevant to the query, plus the globally best ones."""
        m = self.config.top_consolidated
        if not len(prior) or m == 0 or self.config.w_consolidated == 0:
            return np.empty(0, np.int64), np.empty(0, np.float32)
        relevance = prior.quality * np.clip(prior.matrix @ query, 0.0, 1.0)
        by_relevance = _top(relevance, max(1, m // 2))
        by_quality = _top(prior.quality, max(1, m - len(by_relevance)))
        top = _sorted_unique(np.concatenate([by_relevance, by_quality]))
        # Without history the prior is all there is: let more of it propose items.
        for row in by_relevance[: 3 if cold else 1]:
            self._add(pool, self.catalog.neighbours(prior.matrix[row], 20), exclude)
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
        self, i: int, content_id: int, parts: dict[str, np.ndarray],
        sources: dict[str, tuple[dict[int, float], dict[int, int]]], prior: ConsolidatedPrior,
        cons_best: np.ndarray, recent: list[int], recent_vectors: np.ndarray, X: np.ndarray, context: ViewingContext,
    ) -> tuple[str, ...]:  # fmt: skip
        """The one or two parts that carried this item's score, in a viewer's words."""
        value = {name: float(parts[name][i]) for name in PARTS}
        total = sum(value.values())
        ranked = sorted(PARTS, key=lambda name: -value[name])
        carried = [n for n in ranked[:2] if value[n] > 0 and value[n] >= _REASON_SHARE * total] or ranked[:1]
        title = lambda cid: self.catalog.item(cid).title  # noqa: E731
        reasons: list[str] = []
        for name in carried:
            via = sources.get(name, ({}, {}))[1].get(content_id)
            if name == "global" and via is not None:
                reasons.append(f"viewers who watched {title(via)} watched it next")
            elif name == "pair" and via is not None:
                reasons.append(f"viewers who watched {title(via)} also watched it")
            elif name == "refined" and via is not None:
                reasons.append(f"viewers who liked {title(via)} also liked it")
            elif name == "local" and via is not None:
                reasons.append(f"you often watch it after {title(via)}")
            elif name == "content" and recent:
                closest = recent[int(np.argmax(recent_vectors @ X[i]))]
                reasons.append(f"similar to {title(closest)}")
            elif name == "content":
                reasons.append(f"fits your {daypart(context.hour)} viewing")
            elif name == "pattern":
                reasons.append("close to what you usually enjoy")
            elif name == "consolidated":
                best = int(cons_best[i])
                trending = best >= 0 and prior.patterns[best].trend_score >= self.config.trend_min_score
                reasons.append("trending with viewers of your taste" if trending else "popular with viewers of your taste")
            else:
                reasons.append("popular with viewers right now")
        return tuple(dict.fromkeys(reasons))


# ---------------------------------------------------------------- helpers


def _scaled(ids: Collection[int], scores: dict[int, float]) -> np.ndarray:
    """Scores of `ids` (the pool, in its order) from a dict (0 where absent), divided by their maximum over the pool."""
    if not scores:
        return np.zeros(len(ids), np.float32)
    get = scores.get
    raw = np.fromiter((get(c, 0.0) for c in ids), dtype=np.float32, count=len(ids))
    top = float(raw.max(initial=0.0))
    return raw / top if top > 0 else raw



def _sorted_unique(values: np.ndarray) -> np.ndarray:
    """`np.unique` of a 1-d array (sorted, each value once), without it: its masked-array check imports numpy.ma
    (1.1 MB of RSS) into a TV process that uses nothing else of it."""
    ordered = np.sort(values)
    keep = np.ones(len(ordered), dtype=bool)
    np.not_equal(ordered[1:], ordered[:-1], out=keep[1:])
    return ordered[keep]


def _top(scores: np.ndarray, m: int) -> np.ndarray:
    """Indices of the m largest scores, best first."""
    m = min(m, len(scores))
    if m <= 0:
        return np.empty(0, np.int64)
    part = np.argpartition(-scores, m - 1)[:m]
    return part[np.argsort(-scores[part], kind="stable")]


def _mmr(X: np.ndarray, score: np.ndarray, k: int, lam: float, tier: np.ndarray | None = None) -> list[int]:
    """Maximal marginal relevance: trade relevance (scaled to 0..1) against similarity to what is chosen;
    with `tier`, the highest tier left is used up first (the trade happens inside a tier only)."""
    n = len(score)
    k = min(k, n)
    span = float(score.max() - score.min())
    rel = (score - score.min()) / span if span > 0 else np.ones(n, np.float32)
    gain, keep = lam * rel, 1.0 - lam
    max_sim: np.ndarray | None = None  # similarity to the closest chosen item (no penalty before the first pick)
    chosen: list[int] = []
    levels = [None] if tier is None else _sorted_unique(tier)[::-1].tolist()  # highest tier first
    level = 0
    available = np.ones(n, bool) if tier is None else tier == levels[0]
    for _ in range(k):
        while not available.any():  # this tier is used up: the next one (k <= n, so there is one)
            level += 1
            available = tier == levels[level]  # type: ignore[operator]
        mmr = gain if max_sim is None else gain - keep * max_sim
        pick = int(np.argmax(np.where(available, mmr, -np.inf)))
        chosen.append(pick)
        available[pick] = False
        sims = X @ X[pick]
        max_sim = sims if max_sim is None else np.maximum(max_sim, sims)
    return chosen
