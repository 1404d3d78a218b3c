"""HR@k and NDCG@k against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from omega.sim.evaluation.metrics import hit_at_k, ndcg_at_k, ndcg_values, paired_bootstrap, summarise, target_rank


def test_rank_counts_items_scoring_higher() -> None:
    scores = np.array([0.1, 0.9, 0.5, 0.7, 0.3])
    assert target_rank(scores, 1) == 0
    assert target_rank(scores, 2) == 2  # behind 0.9 and 0.7
    assert target_rank(scores, 0) == 4


def test_history_is_excluded_from_the_ranking() -> None:
    scores = np.array([0.1, 0.9, 0.5, 0.7, 0.3])
    assert target_rank(scores, 2, history=np.array([1, 3])) == 0
    assert target_rank(scores, 0, history=np.array([1])) == 3


def test_target_in_history_is_still_ranked() -> None:
    assert target_rank(np.array([0.2, 0.8, 0.5]), 2, history=np.array([2, 1])) == 0


def test_ties_count_against_the_target() -> None:
    scores = np.array([0.5, 0.5, 0.5, 0.1])
    assert target_rank(scores, 0) == 2
    assert target_rank(np.zeros(100), 7) == 99


def test_nan_scores_are_refused() -> None:
    with pytest.raises(ValueError):
        target_rank(np.array([0.1, np.nan]), 0)


def test_hit_and_ndcg_by_hand() -> None:
    assert hit_at_k(0, 10) == 1.0 and hit_at_k(9, 10) == 1.0 and hit_at_k(10, 10) == 0.0
    assert ndcg_at_k(0, 10) == 1.0
    assert ndcg_at_k(1, 10) == pytest.approx(1 / math.log2(3))
    assert ndcg_at_k(9, 10) == pytest.approx(1 / math.log2(11))
    assert ndcg_at_k(10, 10) == 0.0


def test_summary_averages_over_users() -> None:
    # ranks 0, 2, 15 with k=10: HR = 2/3; NDCG = (1 + 1/log2(4) + 0) / 3 = 0.5
    result = summarise([0, 2, 15], k=10)
    assert result == {"hr@10": pytest.approx(2 / 3), "ndcg@10": pytest.approx(0.5)}
    assert summarise([3], k=3) == {"hr@3": 0.0, "ndcg@3": 0.0}


def test_ndcg_values_per_user_by_hand() -> None:
    assert ndcg_values([0, 1, 9, 10]).tolist() == pytest.approx([1.0, 1 / math.log2(3), 1 / math.log2(11), 0.0])


def test_paired_bootstrap_of_a_constant_difference_is_that_difference() -> None:
    a = np.array([0.5, 0.2, 1.0, 0.0])
    out = paired_bootstrap(a, a - 0.1, seed=3)
    assert out == pytest.approx({"diff": 0.1, "ci95_low": 0.1, "ci95_high": 0.1})


def test_paired_bootstrap_interval_holds_the_mean_and_is_seeded() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.random(200), rng.random(200)
    out = paired_bootstrap(a, b, seed=1)
    assert out["ci95_low"] < out["diff"] < out["ci95_high"]
    assert out["diff"] == pytest.approx(float((a - b).mean()))
    assert paired_bootstrap(a, b, seed=1) == out
    with pytest.raises(ValueError, match="same 1-d shape"):
        paired_bootstrap(a, b[:5])
