"""`omega eval movielens` and `omega demo` through the CLI: JSON on stdout, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from omega.brain.config import BrainConfig
from omega.cli import main
from movielens_fixtures import write_fixture


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def cache(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("OMEGA_CACHE", str(tmp_path / "cache"))


def test_eval_movielens_json(tmp_path: Path, capsys, cache, embedder):
    data = write_fixture("ml-100k", tmp_path / "ml-100k", n_users=20, n_items=30)
    code, out, err = run(capsys, "eval", "movielens", "--data", str(data), "--json", "--no-tables", "--cold-users", "5")
    assert code == 0, err
    result = json.loads(out)  # stdout is exactly one JSON object: progress went to stderr
    assert set(result) >= {"dataset", "users", "items", "methods", "upload_bytes_per_tv", "push_bytes_p50"}
    assert set(result["methods"]) >= {"edge_only", "edge_federated", "cold_start", "mostpop", "itemknn", "als", "seq_transition"}
    assert set(result["upload_bytes_per_tv"]) == {"mean", "p95"}
    assert result["ranker"] == "Brain.recommend" and result["config"] == BrainConfig().to_dict()


def test_eval_runs_the_brains_with_a_given_config(tmp_path: Path, capsys, cache, embedder):
    data = write_fixture("ml-100k", tmp_path / "ml-100k", n_users=20, n_items=30)
    (tmp_path / "brain.json").write_text('{"pattern_match_threshold": 0.6, "w_global_pair": 2.0}')
    code, out, err = run(capsys, "eval", "movielens", "--data", str(data), "--json", "--no-tables", "--cold-users", "2",
                         "--config", str(tmp_path / "brain.json"))  # fmt: skip
    assert code == 0, err
    config = json.loads(out)["config"]
    assert config["pattern_match_threshold"] == 0.6 and config["w_global_pair"] == 2.0


def test_demo_quick_prints_a_summary(tmp_path: Path, capsys, cache, embedder):
    data = write_fixture("ml-latest", tmp_path / "ml", n_users=20, n_items=30)
    code, out, err = run(capsys, "demo", "--data", str(data), "--quick")
    assert code == 0, err
    for words in ("edge_federated", "seq_transition", "Sync traffic", "Wire audit", "no raw viewing episode", "latency",
                  "Viewer", "most distinct reasons"):
        assert words in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["eval", "movielens", "--data", "{tmp}/missing", "--json"], "MovieLens folder not found"),
        (["eval", "movielens", "--data", "{tmp}", "--json"], "is not a MovieLens folder"),
        (["eval", "movielens", "--data", "{tmp}", "--k-min", "0"], "--k-min must be a positive integer"),
        (["demo", "--data", "{tmp}/missing"], "MovieLens folder not found"),
        (["eval", "movielens", "--data", "{tmp}", "--config", "{tmp}/nope.json"], "cannot read brain config"),
    ],
)
def test_bad_data_exits_2_with_one_line(tmp_path: Path, capsys, argv, message):
    code, out, err = run(capsys, *[a.format(tmp=tmp_path) for a in argv])
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1 and message in err


def test_demo_without_any_data_says_what_to_do(tmp_path: Path, capsys, monkeypatch):
    monkeypatch.setenv("OMEGA_DATA", str(tmp_path))  # holds no MovieLens folder
    code, _, err = run(capsys, "demo")
    assert code == 2 and "no MovieLens data" in err and err.count("\n") == 1


def test_help(capsys):
    for argv in (["demo", "--help"], ["eval", "--help"], ["eval", "movielens", "--help"]):
        code, out, _ = run(capsys, *argv)
        assert code == 0 and "--data" in out or "movielens" in out
