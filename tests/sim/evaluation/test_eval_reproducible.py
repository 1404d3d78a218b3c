"""`omega eval movielens` is reproducible: the same seed gives the same JSON, timings aside."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from omega.sim.evaluation.evaluate import evaluate_movielens
from movielens_fixtures import write_fixture

#: what measures the machine, not the evaluation
MACHINE_KEYS = ("timings_s", "rss_mb")


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMEGA_CACHE", str(tmp_path / "cache"))


def test_two_runs_with_one_seed_give_identical_tables(tmp_path: Path, embedder):
    data = write_fixture("ml-latest", tmp_path / "data", n_users=24, n_items=40)

    def run() -> str:
        result = evaluate_movielens(data, embedder=embedder, cold_users=6, seed=5)
        return json.dumps({k: v for k, v in result.items() if k not in MACHINE_KEYS}, sort_keys=True, default=float)

    first, second = run(), run()
    assert '"tables"' in first and '"privacy"' in first and '"ablation"' in first
    assert first == second
