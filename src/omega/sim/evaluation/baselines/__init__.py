"""Centralised baselines trained on all training data: the bar the edge design must clear.

Each model has the same small API, in the spirit of the `implicit` library:
``fit(split)`` learns from the split's training histories, then
``scores(row, history)`` returns one score per catalog item (dense index).
``evaluate(model, split, k)`` ranks each user's held-out item over the whole
catalog minus their history.
"""

from __future__ import annotations

from omega.sim.evaluation.baselines.als import ALS
from omega.sim.evaluation.baselines.evaluate import Recommender, evaluate
from omega.sim.evaluation.baselines.itemknn import ItemKNN
from omega.sim.evaluation.baselines.mostpop import MostPop
from omega.sim.evaluation.baselines.seq_transition import SeqTransition
from omega.sim.evaluation.baselines.tuning import BASELINES, tune_and_evaluate

__all__ = [
    "ALS",
    "BASELINES",
    "ItemKNN",
    "MostPop",
    "Recommender",
    "SeqTransition",
    "evaluate",
    "tune_and_evaluate",
]
