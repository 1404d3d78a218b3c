"""Order-aware item-to-item transition statistics: the core the TVs will share with the cloud.

A viewer's sequence contributes a weighted count for every pair (a, b) where b
was watched within `window` steps after a; a pair `d` steps apart weighs
``step_decay ** (d - 1)``. A TV can compute these pairs from its own history
alone, and counts from many viewers simply add up, so the same statistics can
be accumulated locally and aggregated centrally.

Scoring a viewer: take their last `n_recent` items, weight the most recent one
1, the one before `recency_decay`, and so on, and sum the (normalised)
transition rows of those items.

Only numpy here, so the TV side can use it without scipy.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def transition_pairs(
    sequence: np.ndarray, window: int, step_decay: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(source, target, weight) for every ordered pair within `window` steps; self-pairs skipped."""
    if window < 1:
        raise ValueError("window must be >= 1")
    seq = np.asarray(sequence)
    sources, targets, weights = [], [], []
    for d in range(1, min(window, seq.size - 1) + 1):
        src, dst = seq[:-d], seq[d:]
        distinct = src != dst  # a rewatch straight after is not a transition
        sources.append(src[distinct])
        targets.append(dst[distinct])
        weights.append(np.full(int(distinct.sum()), step_decay ** (d - 1), dtype=np.float32))
    if not sources:
        empty = np.zeros(0, dtype=seq.dtype if seq.size else np.int32)
        return empty, empty.copy(), np.zeros(0, dtype=np.float32)
    return np.concatenate(sources), np.concatenate(targets), np.concatenate(weights)


def recent_items(history: np.ndarray, n_recent: int, recency_decay: float) -> tuple[np.ndarray, np.ndarray]:
    """The last `n_recent` items, most recent first, with weights 1, decay, decay², …"""
    recent = np.asarray(history)[::-1][:n_recent]
    return recent, recency_decay ** np.arange(recent.size, dtype=np.float64)


def score_from_transitions(
    recent: np.ndarray,
    weights: np.ndarray,
    row: Callable[[int], tuple[np.ndarray, np.ndarray]],
    n_items: int,
) -> np.ndarray:
    """Σ weight(a) · T[a, :] over the recent items a; `row(a)` gives T[a]'s (targets, values)."""
    scores = np.zeros(n_items, dtype=np.float64)
    for a, w in zip(np.asarray(recent).tolist(), np.asarray(weights).tolist()):
        targets, values = row(a)
        np.add.at(scores, targets, w * np.asarray(values, dtype=np.float64))
    return scores
