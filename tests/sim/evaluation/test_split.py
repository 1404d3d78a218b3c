"""Time-ordered leave-last-out and the validation split inside it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from omega.datasets.movielens import load_movielens
from omega.errors import OmegaError
from omega.sim.evaluation.split import leave_last_out, leave_last_out_arrays, validation_split
from movielens_fixtures import write_fixture, write_latest


def test_last_interaction_is_the_target_and_ties_follow_file_order(tmp_path: Path) -> None:
    split = leave_last_out(load_movielens(write_latest(tmp_path)))
    ids = split.item_ids
    np.testing.assert_array_equal(ids, [1, 2, 3, 5])
    # User 3 has a single rating and is dropped.
    np.testing.assert_array_equal(split.users, [1, 2])
    # User 1: 1@100, then 2@200 and 3@200 tied -> file order puts 3 last.
    assert ids[split.targets[0]] == 3
    np.testing.assert_array_equal(ids[split.histories[0]], [1, 2])
    # User 2: 1@50, then 3@300 and 5@300 tied -> 5 last.
    assert ids[split.targets[1]] == 5
    np.testing.assert_array_equal(ids[split.histories[1]], [1, 3])


def test_validation_holds_out_second_to_last_and_drops_short_users() -> None:
    user = np.array([1, 2, 1, 2, 1, 3, 3])
    item = np.array([10, 20, 30, 10, 20, 10, 40])
    split = leave_last_out_arrays(user, item, np.array([40, 30, 20, 10]))
    np.testing.assert_array_equal(split.item_ids, [10, 20, 30, 40])
    assert split.n_items == 4 and split.n_users == 3
    val = validation_split(split)
    # Only user 1 has >= 3 interactions: train [10], validation target 30, test target 20 untouched.
    np.testing.assert_array_equal(val.users, [1])
    assert split.item_ids[val.targets[0]] == 30
    np.testing.assert_array_equal(split.item_ids[val.histories[0]], [10])
    assert split.item_ids[split.targets[0]] == 20


def test_train_interactions_cover_every_history() -> None:
    split = leave_last_out_arrays(np.array([5, 5, 5, 6, 6]), np.array([1, 2, 3, 3, 1]), np.array([1, 2, 3]))
    rows, items = split.train_interactions()
    np.testing.assert_array_equal(rows, [0, 0, 1])
    np.testing.assert_array_equal(items, [0, 1, 2])


def test_items_outside_the_catalog_are_rejected() -> None:
    with pytest.raises(OmegaError, match="outside the catalog"):
        leave_last_out_arrays(np.array([1, 1]), np.array([1, 9]), np.array([1, 2]))


def test_synthetic_fixture_split_sizes(tmp_path: Path) -> None:
    data = load_movielens(write_fixture("ml-1m", tmp_path))
    split = leave_last_out(data)
    assert split.n_users == 30 and split.n_items == 40
    total_train = sum(h.size for h in split.histories)
    assert total_train + split.n_users == len(data.ratings)
    val = validation_split(split)
    assert val.n_users == 30
    assert all(v.size == h.size - 1 for v, h in zip(val.histories, split.histories))
