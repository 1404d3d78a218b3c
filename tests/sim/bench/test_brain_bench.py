"""`run_brain_bench` end to end on a tiny catalog: built here, measured in a fresh process, every key reported.

Figures are not asserted (benchmarks measure, tests check behaviour): only that each one is there and sane.
"""

from __future__ import annotations

import os
from pathlib import Path

from movielens_fixtures import write_fixture
from omega.errors import OmegaError
from omega.sim.bench import run_brain_bench
from omega.sim.bench.brain import SYNC_RSS_KEYS, _sync_figures
from omega.sim.load import server_process

DESIGN_KEYS = (
    "embed_ms_p50", "search_us_p50", "recommend_ms_p50", "recommend_same_context_ms_p50", "recommend_cpu_ms_p50",
    "recommend_same_context_cpu_ms_p50", "recommend_new_daypart_ms_p50", "recommend_new_daypart_cpu_ms_p50", "rss_mb",
    "recall_at_50", "recommend_after_pull_ms_p50", "recommend_after_pull_cpu_ms_p50",
)


def test_a_tiny_brain_is_built_and_measured_in_a_child(tmp_path: Path, embedder, monkeypatch) -> None:
    monkeypatch.setenv("OMEGA_CACHE", str(tmp_path / "cache"))
    data = write_fixture("ml-latest", tmp_path / "ml", n_users=12, n_items=120)
    said: list[str] = []
    servers_before = _sync_servers()
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
    # after the figures above: the same brain synced once with a real server, which is gone again
    assert list(report)[-len(SYNC_RSS_KEYS) - 3 : -3] == list(SYNC_RSS_KEYS)
    assert all(report[key] > 0 for key in SYNC_RSS_KEYS), report
    assert "rss_after_sync_reason" not in report
    assert report["sync_session"]["tier"] == "active"  # the shipped default
    assert report["rss_after_sync_mb"] > report["rss_before_sync_mb"]  # the sync stack is loaded by the sync
    # and each tier of the seed, each over its own transport; the shipped default's figures are its tier's
    by_tier = report["rss_after_sync_by_tier"]
    assert {tier: figures["transport"] for tier, figures in by_tier.items()} == {
        "premium": "ws-persistent", "active": "ws-on-demand", "casual": "http"}
    assert all(figures[key] > 0 for figures in by_tier.values() for key in ("rss_mb", "anon_mb", "file_mb"))
    assert by_tier["active"]["rss_mb"] == report["rss_after_sync_mb"]
    assert _sync_servers() <= servers_before


def _sync_servers() -> set[int]:
    """Sync servers (`python -m omega.constellation`) this test process runs."""
    out = set()
    for pid in server_process.proc_tree(os.getpid())[1:]:
        try:
            if b"omega.constellation" in Path(f"/proc/{pid}/cmdline").read_bytes():
                out.add(pid)
        except OSError:
            continue
    return out


def test_a_server_that_does_not_start_gives_a_reason_not_a_traceback(tmp_path: Path, monkeypatch) -> None:
    def refuse(*_: object, **__: object) -> None:
        raise OmegaError("the server exited (1): port in use")

    monkeypatch.setattr(server_process, "start_server", refuse)
    said: list[str] = []
    synced = _sync_figures(tmp_path / "brain.db", tmp_path / "server", dict(os.environ), said.append)
    assert all(synced[key] is None for key in SYNC_RSS_KEYS)
    assert "did not start" in synced["rss_after_sync_reason"] and "port in use" in synced["rss_after_sync_reason"]
    assert said == [f"bench brain: no RSS after a sync: {synced['rss_after_sync_reason']}"]


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
