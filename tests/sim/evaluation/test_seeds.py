"""`omega eval movielens --seeds N`: per-seed NDCG@10, means and a paired interval clustered by viewer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from omega.errors import OmegaError
from omega.sim.evaluation.evaluate import evaluate_movielens
from omega.sim.evaluation.seeds import PER_VIEWER, clustered_bootstrap, combine_seeds, per_viewer
from movielens_fixtures import write_fixture


def _run(seed: int, edge: list[float], best: list[float], users: list[int]) -> dict:
    return {
        "seed": seed, "timings_s": {"total": 1.0}, "rss_mb": {"peak": 100.0 + seed},
        "methods": {"edge_federated": {"ndcg@10": float(np.mean(edge))}, "mostpop": {"ndcg@10": float(np.mean(best))},
                    "itemknn": {"ndcg@10": 0.0}},
        PER_VIEWER: per_viewer(users, {"edge_federated": np.array(edge), "mostpop": np.array(best),
                                       "itemknn": np.zeros(len(users))}),
    }  # fmt: skip


def test_seeds_give_per_seed_values_means_and_a_paired_interval_against_the_best_mean():
    runs = [_run(0, [1.0, 0.5, 0.0], [0.5, 0.5, 0.0], [1, 2, 3]), _run(1, [1.0, 0.0, 0.5], [0.0, 0.0, 0.5], [1, 2, 4])]
    out = combine_seeds(runs, ("mostpop", "itemknn"))
    block = out["seeds"]
    assert block["seeds"] == [0, 1] and PER_VIEWER not in out and out["seed"] == 0
    assert block["ndcg@10"]["edge_federated"]["per_seed"] == pytest.approx([0.5, 0.5])
    assert block["ndcg@10"]["mostpop"]["mean"] == pytest.approx((1 / 3 + 1 / 6) / 2)
    assert block["best_centralised"] == "mostpop" and block["peak_rss_mb"] == 101.0
    versus = block["versus_best"]["edge_federated"]
    # viewer 1: differences 0.5 and 1.0 (mean 0.75); viewers 2, 3, 4: 0.0 -> mean over 4 viewers 0.1875
    assert versus["viewers"] == 4 and versus["runs"] == 2 and versus["ndcg_diff"] == pytest.approx(0.1875)
    assert versus["ci95"][0] <= versus["ndcg_diff"] <= versus["ci95"][1]
    assert "mostpop" not in block["versus_best"] and "itemknn" in block["versus_best"]


def test_a_viewer_seen_under_every_seed_is_one_unit_of_the_bootstrap():
    same = clustered_bootstrap([{1: 1.0, 2: 0.0}, {1: 1.0, 2: 0.0}, {1: 1.0, 2: 0.0}])
    once = clustered_bootstrap([{1: 1.0, 2: 0.0}])
    assert same["viewers"] == once["viewers"] == 2 and same["diff"] == once["diff"] == 0.5
    assert same["ci95_low"] == once["ci95_low"] and same["ci95_high"] == once["ci95_high"]


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMEGA_CACHE", str(tmp_path / "cache"))


def test_two_seeds_run_two_fleets_and_report_each(tmp_path: Path, embedder):
    data = write_fixture("ml-latest", tmp_path / "s", n_users=20, n_items=30)
    result = evaluate_movielens(data, embedder=embedder, cold_users=3, tables=False, seeds=2)
    block = result["seeds"]
    assert block["seeds"] == [0, 1] and len(block["total_s"]) == 2
    assert set(block["ndcg@10"]) == set(result["methods"])
    assert block["ndcg@10"]["edge_federated"]["per_seed"][0] == result["methods"]["edge_federated"]["ndcg@10"]
    best = block["best_centralised"]
    assert best in ("mostpop", "itemknn", "als", "seq_transition")
    assert {"edge_only", "edge_federated"} <= set(block["versus_best"]) and block["versus_best"]["edge_federated"]["viewers"] == 20
    # where time and memory went, per stage
    assert {"replay_s", "catch_up_s", "fleet_s"} <= set(result["timings_s"]) and result["rss_mb"]["peak"] > 0
    with pytest.raises(OmegaError, match="--seeds must be an integer in 1..10"):
        evaluate_movielens(data, embedder=embedder, seeds=0)
