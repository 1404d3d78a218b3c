"""Full-ranking HR@k and NDCG@k for one held-out item per user.

The held-out item is ranked against the whole catalog minus the user's training
history (no sampled negatives). Ties are broken *against* the held-out item: it
ranks after every other candidate with the same score, so a model gains nothing
from giving many items equal scores (a constant scorer gets HR 0).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def target_rank(scores: np.ndarray, target: int, history: np.ndarray | None = None) -> int:
    """0-based rank of `target` among all items except the history (target itself never excluded)."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1 or not 0 <= target < scores.shape[0]:
        raise ValueError(f"target {target} outside a score vector of shape {scores.shape}")
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN")
    s = scores[target]
    at_least = scores >= s
    if history is not None and len(history):
        excluded = np.unique(np.asarray(history))
        excluded = excluded[excluded != target]
        at_least[excluded] = False
    return int(np.count_nonzero(at_least)) - 1  # minus the target itself


def hit_at_k(rank: int, k: int) -> float:
    return 1.0 if rank < k else 0.0


def ndcg_at_k(rank: int, k: int) -> float:
    """With one relevant item, IDCG = 1, so NDCG = 1/log2(rank + 2) inside the top k."""
    return float(1.0 / np.log2(rank + 2)) if rank < k else 0.0


def summarise(ranks: Iterable[int], k: int = 10) -> dict[str, float]:
    """Mean HR@k and NDCG@k over users given their 0-based target ranks."""
    r = np.fromiter(ranks, dtype=np.int64)
    if r.size == 0:
        return {f"hr@{k}": 0.0, f"ndcg@{k}": 0.0}
    inside = r < k
    ndcg = np.where(inside, 1.0 / np.log2(r + 2.0), 0.0)
    return {f"hr@{k}": float(inside.mean()), f"ndcg@{k}": float(ndcg.mean())}
