"""End-to-end `omega eval movielens` on small synthetic fixtures in every MovieLens layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from omega.brain.config import BrainConfig
from omega.errors import OmegaError
from omega.sim.evaluation.evaluate import ablation_configs, evaluate_movielens, tuning_grid
from omega.sim.evaluation.scoring import score_tvs
from omega.sim.evaluation.split import leave_last_out_arrays
from omega.sim.evaluation.metrics import ndcg_at_k, summarise, target_rank
from movielens_fixtures import LAYOUTS, write_fixture

METHODS = ("edge_only", "edge_federated", "cold_start", "mostpop", "itemknn", "als", "seq_transition")


def test_metrics_against_hand_computed_cases():
    scores = [0.1, 0.9, 0.5, 0.5, 0.0]
    assert target_rank(scores, 2) == 2  # beaten by item 1 and, on the tie, by item 3
    assert target_rank(scores, 2, history=[1]) == 1  # the history is not ranked
    assert ndcg_at_k(0, 10) == 1.0 and ndcg_at_k(1, 10) == pytest.approx(1 / 1.5849625)
    assert summarise([0, 1, 10]) == pytest.approx({"hr@10": 2 / 3, "ndcg@10": (1 + 1 / 1.5849625) / 3})


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Catalog embeddings are cached under $OMEGA_CACHE: keep the tests' out of the user's cache."""
    monkeypatch.setenv("OMEGA_CACHE", str(tmp_path / "cache"))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_eval_runs_on_every_layout(tmp_path: Path, layout: str, embedder):
    data = write_fixture(layout, tmp_path / layout, n_users=30, n_items=40)
    stages: set[str] = set()
    result = evaluate_movielens(
        data, embedder=embedder, cold_users=10, stage=lambda name, done, total: stages.add(name),
        tables=layout == "ml-latest",
        inspect=lambda fleet: {"tv_pair_rows": sum(tv.brain.store.stats()["global_pairs"] for tv in fleet.tvs.values())},
    )  # fmt: skip
    assert result["dataset"] == layout and result["layout"] == layout
    assert result["ranker"] == "Brain.recommend" and result["config"] == BrainConfig().to_dict()
    assert result["ties"] == "seeded shuffle"
    overlap = result["after_overlap_with_itemknn"]
    assert overlap["titles"] > 0 and 0.0 < overlap["mean"] <= 1.0
    assert result["users"] == 30 and result["items"] == 40
    for name in METHODS:
        m = result["methods"][name]
        assert 0.0 <= m["ndcg@10"] <= m["hr@10"] <= 1.0
    # The synthetic viewers mostly watch item i+1 after item i: only federation sees that across TVs.
    assert result["methods"]["edge_federated"]["ndcg@10"] > result["methods"]["edge_only"]["ndcg@10"]
    assert result["methods"]["edge_federated"]["ndcg@10"] > result["methods"]["mostpop"]["ndcg@10"]
    cold = result["methods"]["cold_start"]
    assert cold["tvs"] == 10 and cold["target"] == "episode 4"
    assert set(cold["reference"]) == {"mostpop_before", "mostpop", "seq_transition"}
    assert cold["vs_mostpop_before"]["ci95"][0] <= cold["vs_mostpop_before"]["ndcg_diff"] <= cold["vs_mostpop_before"]["ci95"][1]
    assert result["upload_bytes_per_tv"]["mean"] > 0
    assert result["upload_bytes_per_tv"]["p95"] >= result["upload_bytes_per_tv"]["mean"] * 0.5
    assert 0 < result["push_bytes_p50"] <= 1024
    assert result["wire_audit"]["no_raw_episode_left"] is True
    assert 0.0 <= result["methods"]["edge_federated"]["hr@10"] <= result["methods"]["edge_federated"]["pool_recall"] <= 1.0
    others = {"edge_only", "edge_federated", *(n for n in METHODS[3:] if n != result["best_centralised"])}
    assert others <= set(result["versus_best"])
    versus = result["edge_federated_vs_best"]
    assert versus["baseline"] == result["best_centralised"] and versus["users"] == 30
    best_ndcg = result["methods"][versus["baseline"]]["ndcg@10"]
    assert versus["ndcg_diff"] == pytest.approx(result["methods"]["edge_federated"]["ndcg@10"] - best_ndcg)
    assert versus["ci95"][0] <= versus["ndcg_diff"] <= versus["ci95"][1]
    # The constellation derived unordered pairs from the pushed edges and the TVs pulled them.
    assert result["published_pairs"] > 0 and result["tv_pair_rows"] > 0
    assert {"replay viewings", "centralised baselines"} <= stages
    if layout == "ml-latest":
        privacy = result["tables"]["privacy"]
        # 40 items: the cell rows use a codebook of 40 // 4 = 10 cells
        assert [(row["k_min"], row["granularity"]) for row in privacy] == [
            (k, g) for k in (1, 3, 5, 10) for g in ("item", "item+pair", "item+cell10")
        ]
        cells = [row for row in privacy if row["granularity"] == "item+cell10"]
        assert all(row["upload_bytes_per_tv_mean"] > 0 and row["cell_edges_per_tv"] > 0 for row in cells)
        assert cells[0]["published_cell_edges"] >= cells[-1]["published_cell_edges"] > 0
        published = [row["published_edges"] for row in privacy if row["granularity"] == "item"]
        assert published == sorted(published, reverse=True) and published[0] > published[-1]
        # A pair is published whenever an ordered edge is (same TVs, or more), never less often.
        for row in privacy:
            if row["granularity"] == "item+pair":
                assert row["published_pairs"] > 0
        assert result["published_pairs"] > 0
        # ε rows: no noise (k_min 3) first, then OpenDP releases at ε 8..1 — a tiny fleet's supports are far
        # under their thresholds, so under DP nothing is published and edges carry no NDCG.
        dp_rows = result["tables"]["privacy_epsilon"]
        assert [row["epsilon"] for row in dp_rows] == [None, 8.0, 4.0, 2.0, 1.0]
        assert dp_rows[0]["published_edges"] == published[1] and all(r["published_edges"] == 0 for r in dp_rows[1:])
        # The what-if rows rank as the TVs do (support floor, held-back tier): the no-noise row and the k_min 3
        # item+pair row are the shipped published set, so they score exactly what the TVs scored.
        shipped = result["methods"]["edge_federated"]["ndcg@10"]
        assert dp_rows[0]["ndcg@10"] == shipped
        assert [r["ndcg@10"] for r in privacy if (r["k_min"], r["granularity"]) == (3, "item+pair")] == [shipped]
        assert [r["threshold"] for r in dp_rows[1:]] == sorted(r["threshold"] for r in dp_rows[1:])
        # Under DP the TVs rank without the k_min-published patterns (a DP release of them is one day's
        # contributions above the same threshold: none at this size).
        assert [r["consolidated_patterns"] for r in dp_rows] == ["pulled (k_min 3)"] + ["none"] * 4
        ablation = result["tables"]["ablation"]
        assert set(ablation) == set(ablation_configs(BrainConfig()))
        assert ablation["shipped"]["ndcg@10"] == result["methods"]["edge_federated"]["ndcg@10"]
        # Each row exercises an active part: the published edges carry the i -> i+1 habit.
        assert ablation["content+edges"]["ndcg@10"] > ablation["content"]["ndcg@10"]
        assert {f"ablation: {name}" for name in ablation} <= set(result["versus_best"])


def test_a_folder_that_is_no_movielens_layout_is_refused(tmp_path: Path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(OmegaError, match="not a MovieLens folder"):
        evaluate_movielens(tmp_path, tables=False, baselines=False)
    with pytest.raises(OmegaError, match="not found"):
        evaluate_movielens(tmp_path / "missing", tables=False, baselines=False)


def test_a_viewer_without_a_tv_is_an_error_not_a_skipped_row():
    split = leave_last_out_arrays(np.array([1, 1, 2, 2]), np.array([5, 6, 5, 6]), np.array([5, 6]))

    class NoTVs:
        tvs: dict = {}

    with pytest.raises(OmegaError, match="viewer 1 has no TV"):
        score_tvs(NoTVs(), split, {1: 0, 2: 1}, {1: 0.0, 2: 0.0})  # type: ignore[arg-type]


def test_same_second_ties_get_a_seeded_order_not_file_order():
    from types import SimpleNamespace

    from omega.sim.evaluation.evaluate import _subsample

    n = 200
    ratings = SimpleNamespace(
        user=np.zeros(n, np.int32), item=np.arange(n, dtype=np.int32), rating=np.ones(n, np.float32),
        timestamp=np.repeat(np.arange(n // 4), 4).astype(np.int64),  # four ratings per second, ascending ids
    )  # fmt: skip
    data = SimpleNamespace(ratings=ratings)
    _, item, _, ts = _subsample(data, None, seed=0)  # type: ignore[arg-type]
    assert np.all(np.diff(ts) >= 0)  # still in time order
    assert not np.array_equal(item, np.arange(n))  # but not in file order within a second
    assert np.array_equal(_subsample(data, None, seed=0)[1], item)  # seeded: the same every run


def test_validation_leaves_the_test_targets_out_and_scores_the_grid(tmp_path: Path, embedder):
    data = write_fixture("ml-latest", tmp_path / "v", n_users=20, n_items=30)
    test = evaluate_movielens(data, embedder=embedder, cold_users=5, tables=False, baselines=False)
    val = evaluate_movielens(data, embedder=embedder, cold_users=5, tables=False, baselines=False, validation=True)
    assert val["split"].startswith("validation") and test["split"].startswith("test")
    assert val["train_viewings"] == test["train_viewings"] - test["users"]  # one target fewer per viewer
    grid = val["tuning_grid"]
    assert set(grid) == set(tuning_grid(BrainConfig()))
    assert grid["shipped"]["ndcg@10"] == val["methods"]["edge_federated"]["ndcg@10"]
    assert grid["shipped"]["vs_shipped"]["ndcg_diff"] == 0.0
    assert "tuning_grid" not in test
