"""`run_brain_bench` end to end on a tiny catalog: built here, measured in a fresh process, every key reported.

Figures are not asserted (benchmarks measure, tests check behaviour): only that each one is there and sane.
"""

from __future__ import annotations

from pathlib import Path

from movielens_fixtures import write_fixture
from omega.sim.bench import run_brain_bench

DESIGN_KEYS = (
    "embed_ms_p50", "search_us_p50", "recommend_ms_p50", "recommend_same_context_ms_p50", "recommend_cpu_ms_p50",
    "recommend_same_context_cpu_ms_p50", "recommend_new_daypart_ms_p50", "recommend_new_daypart_cpu_ms_p50", "rss_mb",
    "recall_at_50", "recommend_after_pull_ms_p50", "recommend_after_pull_cpu_ms_p50",
)


def test_a_tiny_brain_is_built_and_measured_in_a_child(tmp_path: Path, embedder, monkeypatch) -> None:
    monkeypatch.setenv("OMEGA_CACHE", str(tmp_path / "cache"))
    data = write_fixture("ml-latest", tmp_path / "ml", n_users=12, n_items=120)
    said: list[str] = []
    report = run_brain_bench(data, repeats=5, progress=said.append)
    for key in DESIGN_KEYS:
        assert report[key] > 0, key
    assert 0.0 <= report["recall_at_50"] <= 1.0
    assert report["catalog_items"] == 120 and report["patterns"] >= 1 and report["repeats"] == 5
    assert report["first_calls_after_a_viewing"] == 5  # each after a viewing of a title not watched before
    assert report["pattern_fill"].startswith("learned")
    assert set(report["rss_breakdown_mb"]) == {"runtime", "store", "embedder", "catalog", "patterns", "first_recommend"}
    # the same steps by kind of page; the process's own (anon) and mapped-file pages make up its RSS
    assert set(report["rss_breakdown_kinds_mb"]) == set(report["rss_breakdown_mb"])
    assert all(set(kinds) == {"anon", "file"} for kinds in report["rss_breakdown_kinds_mb"].values())
    assert report["rss_anon_mb"] > 0 and report["rss_file_mb"] > 0
    assert abs(report["rss_anon_mb"] + report["rss_file_mb"] - report["rss_mb"]) < 2.0
    assert set(report["backend_comparison"]) == {"usearch_f16", "hnswlib_f32"}
    assert any("fresh process" in line for line in said)


def test_the_skill_library_is_learned_from_every_title_or_synthetic(tmp_path: Path, embedder, monkeypatch) -> None:
    """The default fill is what Brain.on_user_action learns from one viewing of each title: every viewing (the
    catalog's, then the history's) lands in exactly one pattern. `n_patterns` gives that many synthetic ones."""
    from omega.brain.brain import Brain
    from omega.sim.bench.brain import _build_bench_brain

    monkeypatch.setenv("OMEGA_CACHE", str(tmp_path / "cache"))
    data = write_fixture("ml-latest", tmp_path / "ml", n_users=12, n_items=120)
    built = _build_bench_brain(data, tmp_path / "learned.db", n_patterns=None, max_items=None, progress=lambda _: None)
    with Brain(tmp_path / "learned.db") as brain:
        patterns = brain.store.patterns()
    assert built["pattern_fill"].startswith("learned") and built["patterns"] == len(patterns) >= 1
    assert sum(p.uses for p in patterns) == built["catalog_items"] + built["episodes"]
    assert not (tmp_path / "scratch.db").exists()  # the scratch viewer's brain is removed

    built = _build_bench_brain(data, tmp_path / "synthetic.db", n_patterns=30, max_items=None, progress=lambda _: None)
    assert built["pattern_fill"] == "synthetic" and built["patterns"] >= 30
