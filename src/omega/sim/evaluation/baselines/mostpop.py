"""Most popular: the same ranking for everyone, by distinct training users per item."""

from __future__ import annotations

import numpy as np

from omega.sim.evaluation.baselines.interactions import item_popularity
from omega.sim.evaluation.split import Split


class MostPop:
    def __init__(self) -> None:
        self.popularity = np.zeros(0, dtype=np.float64)

    def fit(self, train: Split) -> MostPop:
        self.popularity = item_popularity(train).astype(np.float64)
        return self

    def scores(self, row: int, history: np.ndarray) -> np.ndarray:
        return self.popularity.copy()
