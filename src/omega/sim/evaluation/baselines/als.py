"""Implicit-feedback ALS (Hu, Koren & Volinsky 2008) from the `implicit` library, CPU model."""

from __future__ import annotations

import numpy as np
from implicit.cpu.als import AlternatingLeastSquares
from threadpoolctl import threadpool_limits

from omega.sim.evaluation.baselines.interactions import user_item_matrix
from omega.sim.evaluation.split import Split


class ALS:
    """Factorises the binary user × item matrix; scores are user · item factors."""

    def __init__(
        self,
        factors: int = 32,
        regularization: float = 1.0,
        iterations: int = 15,
        alpha: float = 5.0,
        num_threads: int = 1,
        random_state: int = 0,
    ) -> None:
        self.params = dict(
            factors=factors, regularization=regularization, iterations=iterations, alpha=alpha
        )
        self.num_threads = num_threads
        self.random_state = random_state
        self.user_factors = np.zeros((0, factors), dtype=np.float32)
        self.item_factors = np.zeros((0, factors), dtype=np.float32)

    def fit(self, train: Split) -> ALS:
        # implicit's own solver is threaded; BLAS stays single-threaded so the two don't
        # oversubscribe (implicit checks, and warns, when the model is built).
        with threadpool_limits(1, "blas"):
            model = AlternatingLeastSquares(
                **self.params, num_threads=self.num_threads, random_state=self.random_state
            )
            model.fit(user_item_matrix(train), show_progress=False)
        self.user_factors = np.ascontiguousarray(model.user_factors, dtype=np.float64)
        self.item_factors = np.ascontiguousarray(model.item_factors, dtype=np.float64)
        return self

    def scores(self, row: int, history: np.ndarray) -> np.ndarray:
        return self.item_factors @ self.user_factors[row]
