"""The inputs of `omega eval movielens`'s fleet, for the bench scripts that replay it and rank it their way
(bench/pattern_floor.py, bench/ranking_tiers.py): the eval's sampling, split, catalog, codebook and events."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from omega.brain.catalog import Catalog
from omega.brain.config import BrainConfig
from omega.brain.embedder import Embedder
from omega.constellation.codebook import Codebook, build_codebook
from omega.datasets.movielens import load_movielens
from omega.sim.evaluation.evaluate import _subsample, _train_events  # the eval's own sampling and events
from omega.sim.evaluation.split import Split, leave_last_out_arrays
from omega.sim.fleet.catalog_cache import build_catalog
from omega.sim.fleet.simulator import ViewingEvent


@dataclass
class EvalFleetInputs:
    embedder: Embedder
    split: Split
    rows_by_user: dict[int, int]  # evaluated viewer → split row
    catalog: Catalog
    codebook: Codebook
    events: list[ViewingEvent]  # the evaluated viewers' training viewings, in replay order
    when: dict[int, float]  # viewer → the target's time


def eval_fleet_inputs(data_dir: Path, users: int | None, validation: bool, seed: int) -> EvalFleetInputs:
    """As `omega eval movielens --users USERS [--validation] --seed SEED` builds them (shipped BrainConfig)."""
    data = load_movielens(data_dir)
    embedder = Embedder(threads=1)
    user, item, stars, ts = _subsample(data, users, seed, validation=validation)
    split = leave_last_out_arrays(user, item, data.item_ids)
    rows_by_user = {int(u): r for r, u in enumerate(split.users.tolist())}
    catalog, matrix = build_catalog(data.items, embedder, BrainConfig(), lambda d, t: None)
    codebook = build_codebook(matrix, k=min(256, len(data.items)), seed=seed, iters=10)
    events, when = _train_events(user, item, stars, ts)
    events = [ev for ev in events if ev.user in rows_by_user]
    return EvalFleetInputs(embedder, split, rows_by_user, catalog, codebook, events, when)


def add_eval_fleet_args(ap: argparse.ArgumentParser) -> None:
    """The options `eval_fleet_inputs` takes, named as `omega eval movielens` names them."""
    ap.add_argument("--data", type=Path, default=Path("/work/shared/data/ml-latest-small"))
    ap.add_argument("--users", type=int, default=None)
    ap.add_argument("--validation", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
