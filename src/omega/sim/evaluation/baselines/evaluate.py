"""The evaluation loop shared by every baseline."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from omega.sim.evaluation.metrics import summarise, target_rank
from omega.sim.evaluation.split import Split


class Recommender(Protocol):
    """What `evaluate` needs from a model."""

    def fit(self, train: Split) -> Recommender: ...

    def scores(self, row: int, history: np.ndarray) -> np.ndarray:
        """Scores over all `train.n_items` items for the user in `row` with this history."""
        ...


def evaluate(model: Recommender, split: Split, k: int = 10) -> dict[str, float]:
    """Mean full-ranking HR@k / NDCG@k of a model already fitted on `split`."""
    ranks = (
        target_rank(model.scores(row, history), int(target), history)
        for row, (history, target) in enumerate(zip(split.histories, split.targets))
    )
    return summarise(ranks, k)
