"""`omega demo`: the whole system on embedded defaults, ending in a readable summary.

A constellation (the real sync server, in process on 127.0.0.1, SQLite) and one
TV brain per MovieLens viewer replay the viewings in time order and sync on their tiers; then the fleet is
scored against centralised baselines, real `Brain.recommend` calls are timed on
synced TVs, and one viewer's recommendations are shown with their reasons.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

from omega.brain import Recommendation
from omega.datasets import resolve_data_dir
from omega.sim.evaluation.evaluate import evaluate_movielens
from omega.sim.fleet.simulator import TV, Fleet

#: --quick: this many viewers (well under a minute on 2 cores once the catalog is embedded and cached)
QUICK_USERS = 60
#: the default demo: a seeded sample of viewers that fits 3 minutes on 2 cores; `omega eval movielens`
#: runs all of them, with the ablation and privacy tables the demo leaves out
DEMO_USERS = 200
LATENCY_TVS = 20
#: the example viewer is picked among this many TVs' top EXAMPLE_K lists (`_showcase`)
EXAMPLE_TVS = 50
EXAMPLE_K = 5


def inspect_fleet(fleet: Fleet, viewer: int | None = None) -> dict[str, Any]:
    """Recommendation latency on synced TVs (real `Brain.recommend`) and one viewer's list with reasons."""
    tvs = sorted(fleet.tvs.values(), key=lambda tv: tv.user)
    tvs = [tv for tv in tvs if tv.user < 10_000_000]  # fleet TVs, not the cold-start ones
    if not tvs:
        return {}
    latencies = []
    for tv in tvs[:LATENCY_TVS]:
        tv.brain.recommend(k=10)  # first call loads the working sets
        started = time.perf_counter()
        tv.brain.recommend(k=10)
        latencies.append((time.perf_counter() - started) * 1000)
    lists = {tv.user: tv.brain.recommend(k=EXAMPLE_K) for tv in tvs[:EXAMPLE_TVS]}
    chosen = next((tv for tv in tvs if tv.user == viewer), None) or _showcase(tvs[:EXAMPLE_TVS], lists)
    recent = [chosen.brain.catalog.item(c).title for c in chosen.brain.store.recent_content_ids(3)]
    recs = lists.get(chosen.user) or chosen.brain.recommend(k=EXAMPLE_K)
    kinds = [len(_distinct_reasons(r)) for r in lists.values()]
    return {
        "recommend_ms_p50": statistics.median(latencies),
        "example": {
            "viewer": chosen.user,
            "chosen_by": "given" if viewer is not None and chosen.user == viewer else "most distinct reasons",
            "lists_compared": len(lists),
            "distinct_reasons_p50": statistics.median(kinds),
            "tier": chosen.tier.name.lower(),
            "episodes": chosen.brain.store.episode_count(),
            "recently_watched": recent,
            "recommendations": [
                {"title": r.title, "score": round(r.score, 3), "reasons": list(r.reasons)} for r in recs
            ],
        },
    }


def _distinct_reasons(recs: list[Recommendation]) -> set[str]:
    return {reason for r in recs for reason in r.reasons}


def _showcase(tvs: list[TV], lists: dict[int, list[Recommendation]]) -> TV:
    """The TV whose top EXAMPLE_K shows the most distinct reasons (ties: viewing count nearest the median, then the
    lowest viewer id). The viewer with the most viewings, shown before, has watched what its neighbours' transitions
    point to, so its list came from the consolidated prior alone, one reason five times: a poor picture of the
    reasons a TV gives. The choice is printed with the summary, so the example is not passed off as typical."""
    counts = {tv.user: tv.brain.store.episode_count() for tv in tvs}
    middle = statistics.median(counts.values())
    return min(tvs, key=lambda tv: (-len(_distinct_reasons(lists[tv.user])), abs(counts[tv.user] - middle), tv.user))


def run_demo(
    data: Path | None, *, quick: bool, stage: Any, workdir: Path | None = None, users: int | None = None
) -> dict[str, Any]:
    folder = resolve_data_dir(data)
    return evaluate_movielens(
        folder,
        users=users or (QUICK_USERS if quick else DEMO_USERS),
        cold_users=20 if quick else 50,
        stage=stage,
        tables=False,
        workdir=workdir,
        inspect=inspect_fleet,
    )


def render(result: dict[str, Any]) -> None:
    """The readable summary on stdout."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(
        f"[bold]Exogenesis Omega demo[/] on {result['dataset']} ({result['layout']}): "
        f"{result['users']} TVs, {result['items']} items, {result['train_viewings']} viewings replayed, k_min {result['k_min']}"
    )
    table = Table(title="Quality (leave-last-out, full ranking over the catalog)")
    table.add_column("method")
    table.add_column("HR@10", justify="right")
    table.add_column("NDCG@10", justify="right")
    table.add_column("where")
    for name, m in result["methods"].items():
        where = "on the TV" if name.startswith(("edge", "cold")) else "centralised (sees everything)"
        table.add_row(name, f"{m['hr@10']:.4f}", f"{m['ndcg@10']:.4f}", where)
    table.caption = f"TVs rank with {result.get('ranker', 'Brain.recommend')}, the shipped config"
    console.print(table)
    best = result.get("best_centralised")
    versus = result.get("edge_federated_vs_best") or {}
    if best and versus.get("ci95"):
        lo, hi = versus["ci95"]
        verdict = (
            "better than" if lo > 0 else "worse than" if hi < 0 else f"within noise of ({result['users']} viewers)"
        )
        console.print(
            f"edge + federation is {verdict} the best centralised model ({best}): NDCG@10 difference "
            f"{versus['ndcg_diff']:+.4f}, 95 % interval [{lo:+.4f}, {hi:+.4f}] (paired bootstrap over viewers)."
        )
    cold = result["methods"].get("cold_start", {})
    if cold.get("tvs"):
        labels = {"mostpop_before": "most-popular as of then", "mostpop": "most-popular (all data, optimistic)",
                  "seq_transition": "seq_transition (all data, optimistic)"}  # fmt: skip
        refs = ", ".join(f"{labels.get(name, name)} {m['ndcg@10']:.4f}" for name, m in cold["reference"].items())
        console.print(
            f"Cold start: {cold['tvs']} new TVs that saw {cold['episodes']} viewings rank the next one, with only "
            f"what was published by then, at NDCG@10 {cold['ndcg@10']:.4f} (same task: {refs})."
        )
    up = result["upload_bytes_per_tv"]
    console.print(
        f"Sync traffic: push frame p50 {result['push_bytes_p50']:.0f} B over {result['pushes']} pushes; "
        f"upload per TV mean {up['mean'] / 1024:.1f} KiB, p95 {up['p95'] / 1024:.1f} KiB; "
        f"{result['published_edges']} transition edges and {result['published_pairs']} watched-together pairs "
        f"published (each by at least {result['k_min']} TVs)."
    )
    audit = result["wire_audit"]
    verdict = "no raw viewing episode left any TV" if audit["no_raw_episode_left"] else f"VIOLATIONS: {audit['violations']}"
    console.print(f"Wire audit: {audit['frames']} uplink frames decoded ({audit['kinds']}); {verdict}.")
    if "recommend_ms_p50" in result:
        console.print(f"Recommendation latency on a TV brain (p50 of {LATENCY_TVS}): {result['recommend_ms_p50']:.1f} ms")
    example = result.get("example")
    if example:
        console.print(
            f"\n[bold]Viewer {example['viewer']}[/] ({example['tier']} tier, {example['episodes']} viewings), "
            f"recently watched: {'; '.join(example['recently_watched'])}"
        )
        if example.get("chosen_by") == "most distinct reasons":
            console.print(
                f"  (of the first {example['lists_compared']} TVs' top {len(example['recommendations'])}, the list with "
                f"the most distinct reasons; a median list shows {example['distinct_reasons_p50']:g})"
            )
        for i, rec in enumerate(example["recommendations"], 1):
            console.print(f"  {i}. {rec['title']}  — {', '.join(rec['reasons']) or 'best overall score'}")
    console.print(f"\nTotal {result['timings_s']['total']:.0f} s.")
