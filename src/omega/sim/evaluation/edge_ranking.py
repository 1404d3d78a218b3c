"""Full-catalog scores computed on one TV from what its brain holds, for ranking metrics.

The Brain's `recommend` scores a candidate pool (a few hundred items) and
diversifies the top k; a full-ranking metric needs a score for every catalog
item. This scorer reads only the TV's own store and the shared catalog — its
recent viewings, its local transitions and patterns, the global transitions
and consolidated patterns it pulled — and combines:

- global: Σ over the last `n_recent` items a (recency weight decay^i) of the
  pulled transition row T[a, :] / out(a)^source_norm, scaled to max 1 (the
  order-aware collaborative signal, carried by federation);
- pair: the same over the pulled unordered pairs ("watched near each other",
  either order), which pass k_min far more often than ordered edges;
- popularity: in-weight of each item in the pulled transitions (no extra data);
- local: the same over the TV's own transitions;
- content: cosine of each item to the recency-weighted mean of recent items;
- consolidated: closeness to published global patterns times their quality
  (success × support, boosted by trend).

Parts can be switched off by weight 0 (the ablation table does exactly that).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from collections.abc import Callable

from omega.brain.brain import Brain
from omega.brain.records import TransitionStat

Lookup = Callable[[int], list[TransitionStat]]

_GATE = 0.5  # the recommender's gate: items at least this close to a pattern get credit


@dataclass(frozen=True)
class EdgeWeights:
    n_recent: int = 10
    recency_decay: float = 0.6
    source_norm: float = 0.5
    w_global: float = 1.0
    #: picked on the ml-latest-small validation split (bench/quality.py --grid pairs): 2 > 1, ≈ 3
    w_pair: float = 2.0
    w_popularity: float = 0.02
    w_local: float = 0.0
    w_content: float = 0.05
    content_recent: int = 5
    w_consolidated: float = 0.0

    def without(self, *parts: str) -> EdgeWeights:
        return replace(self, **{f"w_{p}": 0.0 for p in parts})


def _rows_scores(brain: Brain, recent: list[int], lookup: Lookup, weights: EdgeWeights) -> tuple[np.ndarray, np.ndarray]:
    """(transition score over catalog rows scaled to max 1, in-weight per row from the rows read)."""
    cat = brain.catalog
    scores = np.zeros(len(cat), np.float64)
    for i, src in enumerate(recent):
        stats = lookup(src)
        if not stats:
            continue
        dst_rows = cat.rows([s.dst for s in stats])
        if len(dst_rows) != len(stats):
            known = [s for s in stats if s.dst in cat]
            dst_rows = cat.rows([s.dst for s in known])
            stats = known
        w = np.array([max(s.weight, 0.0) for s in stats], np.float64)
        total = w.sum()
        if total <= 0:
            continue
        np.add.at(scores, dst_rows, weights.recency_decay**i * w / total**weights.source_norm)
    top = scores.max(initial=0.0)
    return (scores / top if top > 0 else scores), scores


_F32: dict[int, tuple[object, np.ndarray]] = {}


def _float32_rows(brain: Brain) -> np.ndarray:
    """The shared catalog's rows as float32, converted once per catalog (scoring runs once per TV)."""
    cat = brain.catalog
    held = _F32.get(id(cat))
    if held is None or held[0] is not cat:
        _F32.clear()  # one catalog at a time: don't pin old ones in memory
        held = _F32[id(cat)] = (cat, cat.matrix.astype(np.float32))
    return held[1]


def popularity(brain: Brain) -> np.ndarray:
    """In-weight of each catalog row in the TV's pulled global transitions, scaled to max 1."""
    cat = brain.catalog
    found = brain.store.global_in_weights()
    pop = np.zeros(len(cat), np.float64)
    known = [(d, w) for d, w in found if d in cat]
    if known:
        pop[cat.rows([d for d, _ in known])] = [w for _, w in known]
    top = pop.max(initial=0.0)
    return pop / top if top > 0 else pop


def score_catalog(
    brain: Brain, weights: EdgeWeights, *, pop: np.ndarray | None = None, global_lookup: Lookup | None = None,
    pair_lookup: Lookup | None = None,
) -> np.ndarray:
    """One score per catalog row (row order of `brain.catalog`) for this TV's viewer now.

    `global_lookup` and `pair_lookup` replace the store's pulled transitions and pairs (the privacy
    table scores other k_min settings from the constellation's published sets); `pop` then has to
    come with them.
    """
    cat = brain.catalog
    lookup = global_lookup or brain.store.global_transitions_from
    recent = brain.store.recent_content_ids(max(weights.n_recent, weights.content_recent))
    score = np.zeros(len(cat), np.float64)
    if weights.w_global > 0:
        score += weights.w_global * _rows_scores(brain, recent[: weights.n_recent], lookup, weights)[0]
    if weights.w_pair > 0:
        pairs = pair_lookup or brain.store.global_pairs_from
        score += weights.w_pair * _rows_scores(brain, recent[: weights.n_recent], pairs, weights)[0]
    if weights.w_popularity > 0:
        score += weights.w_popularity * (popularity(brain) if pop is None else pop)
    if weights.w_local > 0:
        score += weights.w_local * _rows_scores(brain, recent[: weights.n_recent], brain.store.transitions_from, weights)[0]
    content_recent = recent[: weights.content_recent]
    if weights.w_content > 0 and content_recent:
        vecs = cat.vectors(cat.rows(content_recent))
        query = (weights.recency_decay ** np.arange(len(vecs))) @ vecs
        query /= max(float(np.linalg.norm(query)), 1e-12)
        # Cubed: only near neighbours should move the ranking; far items all look alike.
        score += weights.w_content * np.clip(_float32_rows(brain) @ query.astype(np.float32), 0, 1) ** 3
    if weights.w_consolidated > 0:
        consolidated = brain.store.consolidated()
        if consolidated:
            matrix = np.stack([c.embedding for c in consolidated]).astype(np.float32)
            matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
            support = np.array([c.support for c in consolidated], np.float32)
            quality = (
                np.array([c.success_rate for c in consolidated], np.float32) * support / (support + 3.0)
                * (1.0 + np.clip([c.trend_score for c in consolidated], 0.0, 1.0))
            )  # fmt: skip
            sims = _float32_rows(brain) @ matrix.T
            credit = np.clip((sims - _GATE) / (1 - _GATE), 0, 1) * quality[None, :]
            score += weights.w_consolidated * credit.max(axis=1)
    return score
