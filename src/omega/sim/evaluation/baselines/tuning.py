"""Pick each baseline's parameters on the validation split, then score it on the test split.

The validation split holds out each user's second-to-last item, so the test
targets are never seen while tuning. Grids are deliberately small: each fit
takes seconds on ml-latest-small and the machine is shared. They bracket the
defaults, which come from wider searches on the ml-latest-small validation split
(ALS: factors 32..128, regularization 0.05..10, alpha 1..20; seq_transition:
window 1..20, decays, normalisations, popularity blend).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from omega.sim.evaluation.baselines.als import ALS
from omega.sim.evaluation.baselines.evaluate import Recommender, evaluate
from omega.sim.evaluation.baselines.itemknn import ItemKNN
from omega.sim.evaluation.baselines.mostpop import MostPop
from omega.sim.evaluation.baselines.seq_transition import SeqTransition
from omega.sim.evaluation.split import Split, validation_split

Grid = Mapping[str, Sequence[Any]]

# name -> (factory taking keyword parameters, default tuning grid)
BASELINES: dict[str, tuple[Callable[..., Recommender], Grid]] = {
    "mostpop": (MostPop, {}),
    "itemknn": (ItemKNN, {"neighbours": (20, 50, 200)}),
    "als": (ALS, {"factors": (32, 128), "regularization": (1.0,), "alpha": (1.0, 5.0)}),
    "seq_transition": (
        SeqTransition,
        {"window": (3, 5, 10), "recency_decay": (0.4, 0.6), "source_norm": (0.5, 1.0)},
    ),
}


def grid_points(grid: Grid) -> list[dict[str, Any]]:
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def tune_and_evaluate(
    name: str, split: Split, k: int = 10, grid: Grid | None = None, metric: str | None = None
) -> dict[str, Any]:
    """Tune `name` on the validation split by NDCG@k, refit on the full training part, evaluate on test.

    Returns ``{"hr@k", "ndcg@k", "params", "validation", "fit_s", "eval_s", "tune_s"}``.
    """
    if name not in BASELINES:
        raise KeyError(f"unknown baseline {name!r}; known: {', '.join(BASELINES)}")
    factory, default_grid = BASELINES[name]
    points = grid_points(default_grid if grid is None else grid)
    metric = metric or f"ndcg@{k}"
    started = time.perf_counter()
    best_params: dict[str, Any] = points[0] if points else {}
    best_val: dict[str, float] = {}
    if len(points) > 1:
        val = validation_split(split)
        for params in points:
            result = evaluate(factory(**params).fit(val), val, k)
            if not best_val or result[metric] > best_val[metric]:
                best_params, best_val = params, result
    tune_s = time.perf_counter() - started

    started = time.perf_counter()
    model = factory(**best_params).fit(split)
    fit_s = time.perf_counter() - started
    started = time.perf_counter()
    result: dict[str, Any] = dict(evaluate(model, split, k))
    eval_s = time.perf_counter() - started
    result.update(params=best_params, validation=best_val, fit_s=fit_s, eval_s=eval_s, tune_s=tune_s)
    return result
