"""Centralised baselines rank sensibly on crafted data and in sane ranges on real data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from omega.datasets.movielens import load_movielens
from omega.sim.evaluation.baselines import ALS, BASELINES, ItemKNN, MostPop, SeqTransition, evaluate, tune_and_evaluate
from omega.sim.evaluation.baselines.transitions import recent_items, score_from_transitions, transition_pairs
from omega.sim.evaluation.split import Split, leave_last_out, leave_last_out_arrays
from movielens_fixtures import write_fixture


def make_split(sequences: list[list[int]], n_items: int) -> Split:
    """Users 1..n with the given item sequences (items 0..n_items-1 as content ids)."""
    user = np.concatenate([np.full(len(s), u + 1) for u, s in enumerate(sequences)])
    item = np.concatenate([np.array(s) for s in sequences])
    return leave_last_out_arrays(user, item, np.arange(n_items))


def top(scores: np.ndarray, history: list[int] | np.ndarray = (), n: int = 3) -> list[int]:
    masked = scores.astype(float).copy()
    masked[np.asarray(history, dtype=int)] = -np.inf
    return [int(i) for i in np.argsort(-masked, kind="stable")[:n]]


# ---------------------------------------------------------------- transition core


def test_transition_pairs_by_hand() -> None:
    src, dst, w = transition_pairs(np.array([7, 8, 7, 9]), window=2, step_decay=0.5)
    got = sorted(zip(src.tolist(), dst.tolist(), w.tolist()))
    # d=1: 7→8, 8→7, 7→9 (weight 1); d=2: 7→7 skipped (self), 8→9 (weight 0.5)
    assert got == [(7, 8, 1.0), (7, 9, 1.0), (8, 7, 1.0), (8, 9, 0.5)]
    assert transition_pairs(np.array([3]), window=3, step_decay=0.5)[0].size == 0


def test_recent_items_most_recent_first() -> None:
    items, weights = recent_items(np.array([1, 2, 3, 4]), n_recent=3, recency_decay=0.5)
    assert items.tolist() == [4, 3, 2]
    np.testing.assert_allclose(weights, [1.0, 0.5, 0.25])


def test_score_from_a_plain_dict_table() -> None:
    # The TV side can keep its table as a dict; the scorer only needs a row lookup.
    table = {4: (np.array([0, 1]), np.array([2.0, 1.0])), 3: (np.array([1]), np.array([4.0]))}
    empty = (np.zeros(0, int), np.zeros(0))
    scores = score_from_transitions(
        np.array([4, 3]), np.array([1.0, 0.5]), lambda a: table.get(a, empty), n_items=5
    )
    np.testing.assert_allclose(scores, [2.0, 3.0, 0.0, 0.0, 0.0])


# ---------------------------------------------------------------- models on crafted data


def test_mostpop_ranks_by_distinct_users_and_evaluate_excludes_history() -> None:
    # item 0 watched by 4 users, item 1 by 3, item 2 by 2, items 3..5 by one each
    split = make_split([[0, 1, 2, 3], [0, 1, 2, 4], [0, 1, 5, 3], [0, 4, 5, 1]], n_items=6)
    model = MostPop().fit(split)
    # train histories: [0,1,2], [0,1,2], [0,1,5], [0,4,5]
    assert top(model.scores(0, split.histories[0]), n=3) == [0, 1, 2]
    # Train popularity of items 3, 4, 5 is 0, 1, 2. Targets 3, 4, 3 lose to an unseen more
    # popular item; only user 3 (history 0, 4, 5; target 1, the most popular unseen) hits.
    assert evaluate(model, split, k=1) == {"hr@1": 0.25, "ndcg@1": 0.25}


def test_evaluate_mostpop_by_hand() -> None:
    # Train popularity: item 0 → 3 users, item 1 → 2, item 2 → 1; every target is item 3 (popularity 0)
    # except user 2, whose target is item 1.
    split = make_split([[0, 1, 3], [0, 1, 3], [0, 2, 1]], n_items=4)
    result = evaluate(MostPop().fit(split), split, k=2)
    # Users 0, 1: history {0,1} → candidates 2 (pop 1), 3 (pop 0): target 3 at rank 1 → hit, NDCG 1/log2(3).
    # User 2: history {0,2} → candidates 1 (pop 2), 3: target 1 at rank 0 → hit, NDCG 1.
    assert result["hr@2"] == pytest.approx(1.0)
    assert result["ndcg@2"] == pytest.approx((2 / np.log2(3) + 1) / 3)


def test_seq_transition_recommends_what_usually_follows() -> None:
    # A=0 is followed by B=1 for most viewers; C=2 is more popular overall but never right after A.
    sequences = [[2, 0, 1, 3], [2, 0, 1, 4], [2, 5, 0, 1], [2, 0, 1, 5], [2, 3, 4, 5], [3, 2, 4, 0]]
    split = make_split(sequences, n_items=6)
    model = SeqTransition(window=2, n_recent=2).fit(split)
    scores = model.scores(-1, np.array([3, 0]))  # just watched A
    assert top(scores, history=[3, 0], n=1) == [1]
    # Transitions are directional: B follows A, never the other way round.
    assert model.counts[0, 1] > 0 and model.counts[1, 0] == 0


def test_seq_transition_falls_back_to_popularity_for_unknown_recent_items() -> None:
    split = make_split([[0, 1, 2], [0, 1, 3], [0, 2, 3]], n_items=5)
    model = SeqTransition().fit(split)
    scores = model.scores(-1, np.array([4]))  # item 4 has no transitions at all
    assert top(scores, n=1) == [0]


def test_itemknn_scores_co_watched_items() -> None:
    # Two taste groups: {0,1,2,3} and {4,5,6,7}.
    sequences = [[0, 1, 2, 3], [1, 2, 3, 0], [2, 3, 0, 1], [4, 5, 6, 7], [5, 6, 7, 4], [6, 7, 4, 5]]
    split = make_split(sequences, n_items=8)
    model = ItemKNN(neighbours=3).fit(split)
    scores = model.scores(0, np.array([0, 1]))
    assert set(top(scores, history=[0, 1], n=2)) == {2, 3}
    assert scores[4:].max() == 0.0
    assert np.all(model.similarity.getnnz(axis=1) <= 3)


def test_itemknn_built_block_by_block_is_the_cosine_top_n(monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks of item rows (memory) give exactly the top-N of the whole cosine matrix, computed densely here."""
    from omega.sim.evaluation.baselines import itemknn

    rng = np.random.default_rng(4)
    sequences = [list(rng.choice(30, size=int(rng.integers(3, 12)), replace=False)) for _ in range(40)]
    split = make_split(sequences, n_items=30)
    monkeypatch.setattr(itemknn, "_BLOCK", 7)  # 30 items: five blocks, the last one short
    sim = ItemKNN(neighbours=4).fit(split).similarity.toarray()
    x = np.zeros((split.n_users, 30))
    for user, items in enumerate(split.histories):
        x[user, items] = 1.0
    dense = x.T @ x
    np.fill_diagonal(dense, 0.0)
    norms = np.sqrt(x.sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        dense = np.nan_to_num(dense / np.outer(norms, norms)).astype(np.float32)
    for row in range(30):
        kept = np.flatnonzero(sim[row])
        assert len(kept) == min(4, np.count_nonzero(dense[row]))
        np.testing.assert_allclose(sim[row, kept], dense[row, kept], rtol=1e-6)
        # nothing left out beats what was kept
        assert dense[row].max(initial=0.0) <= sim[row].max(initial=0.0) + 1e-6
        assert np.delete(dense[row], kept).max(initial=0.0) <= sim[row, kept].min(initial=np.inf) + 1e-6


def test_als_separates_taste_groups() -> None:
    group_a = [[0, 1, 2, 3, 4], [1, 2, 3, 4, 0], [2, 3, 4, 0, 1], [3, 4, 0, 1, 2]]
    group_b = [[5, 6, 7, 8, 9], [6, 7, 8, 9, 5], [7, 8, 9, 5, 6], [8, 9, 5, 6, 7]]
    split = make_split(group_a + group_b, n_items=10)
    # Two factors for two groups: with more, ALS memorises each tiny history instead.
    model = ALS(factors=2, regularization=0.1, alpha=10.0, iterations=20).fit(split)
    for row in range(split.n_users):
        history = split.histories[row]
        scores = model.scores(row, history)
        group = set(range(5)) if row < 4 else set(range(5, 10))
        assert top(scores, history, n=1)[0] in group
    assert evaluate(model, split, k=1)["hr@1"] == 1.0


def test_sequence_model_beats_popularity_on_sequential_data(tmp_path: Path) -> None:
    split = leave_last_out(load_movielens(write_fixture("ml-latest", tmp_path, n_users=60)))
    pop = evaluate(MostPop().fit(split), split)
    seq = evaluate(SeqTransition().fit(split), split)
    assert seq["hr@10"] > 0.5
    assert seq["ndcg@10"] > 2 * pop["ndcg@10"]


def test_tune_and_evaluate_picks_params_from_the_grid(tmp_path: Path) -> None:
    split = leave_last_out(load_movielens(write_fixture("ml-100k", tmp_path)))
    result = tune_and_evaluate("seq_transition", split, grid={"window": (1, 3), "n_recent": (1, 4)})
    assert result["params"]["window"] in (1, 3) and result["params"]["n_recent"] in (1, 4)
    assert 0.0 <= result["ndcg@10"] <= result["hr@10"] <= 1.0
    assert set(result["validation"]) == {"hr@10", "ndcg@10"}
    with pytest.raises(KeyError):
        tune_and_evaluate("nope", split)
    assert set(BASELINES) == {"mostpop", "itemknn", "als", "seq_transition"}


def test_real_ml_latest_small_in_sane_ranges(ml_latest_small: Path) -> None:
    split = leave_last_out(load_movielens(ml_latest_small))
    assert split.n_users == 610 and split.n_items == 9742
    pop = evaluate(MostPop().fit(split), split)
    seq = evaluate(SeqTransition().fit(split), split)
    assert 0.005 < pop["ndcg@10"] < 0.05 and 0.01 < pop["hr@10"] < 0.1
    assert 0.03 < seq["ndcg@10"] < 0.2 and 0.06 < seq["hr@10"] < 0.35
    assert seq["ndcg@10"] > 2 * pop["ndcg@10"]
