"""End-to-end `omega eval movielens` on small synthetic fixtures in every MovieLens layout."""

from __future__ import annotations

from pathlib import Path

import pytest

from omega.errors import OmegaError
from omega.sim.evaluation.evaluate import evaluate_movielens
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
    assert result["users"] == 30 and result["items"] == 40
    for name in METHODS:
        m = result["methods"][name]
        assert 0.0 <= m["ndcg@10"] <= m["hr@10"] <= 1.0
    # The synthetic viewers mostly watch item i+1 after item i: only federation sees that across TVs.
    assert result["methods"]["edge_federated"]["ndcg@10"] > result["methods"]["edge_only"]["ndcg@10"]
    assert result["methods"]["edge_federated"]["ndcg@10"] > result["methods"]["mostpop"]["ndcg@10"]
    cold = result["methods"]["cold_start"]
    assert cold["tvs"] == 10 and cold["target"] == "episode 4" and set(cold["reference"]) == {"mostpop", "seq_transition"}
    assert result["upload_bytes_per_tv"]["mean"] > 0
    assert result["upload_bytes_per_tv"]["p95"] >= result["upload_bytes_per_tv"]["mean"] * 0.5
    assert 0 < result["push_bytes_p50"] <= 1024
    assert result["wire_audit"]["no_raw_episode_left"] is True
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
        assert set(result["tables"]["ablation"]) >= {
            "content", "content+local", "content+global+popularity", "content+global+pairs+popularity"
        }


def test_a_folder_that_is_no_movielens_layout_is_refused(tmp_path: Path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(OmegaError, match="not a MovieLens folder"):
        evaluate_movielens(tmp_path, tables=False, baselines=False)
    with pytest.raises(OmegaError, match="not found"):
        evaluate_movielens(tmp_path / "missing", tables=False, baselines=False)
