"""One evaluation over several seeds: every method's NDCG@10 per seed, its mean, and a paired interval
against the best baseline over all seeds.

A seed changes the same-second tie shuffle (so some targets), the viewer sample (`--users`), the TVs'
tiers, phases and device ids, the codebook and every bootstrap. The interval is clustered by viewer: a
viewer evaluated under several seeds is one unit (their per-seed differences averaged), since those runs
share that viewer's history and are not independent draws.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: key under which one run hands its per-viewer NDCG@10 values to `combine_seeds` (not in the JSON)
PER_VIEWER = "_per_viewer"


def per_viewer(users: list[int], ndcg: dict[str, np.ndarray]) -> dict[str, Any]:
    """What one run keeps for the seed combination: the viewer of each row and each method's NDCG@10."""
    return {"users": list(users), "ndcg": {name: np.asarray(v, np.float64) for name, v in ndcg.items()}}


def clustered_bootstrap(
    diffs: list[dict[int, float]], *, resamples: int = 2000, seed: int = 0
) -> dict[str, float | int]:
    """Mean per-viewer difference (each viewer's mean over the seeds that evaluated them) and its 95 %
    percentile-bootstrap interval, viewers resampled."""
    by_viewer: dict[int, list[float]] = {}
    for run in diffs:
        for user, d in run.items():
            by_viewer.setdefault(user, []).append(d)
    if not by_viewer:
        return {"diff": 0.0, "ci95_low": 0.0, "ci95_high": 0.0, "viewers": 0}
    means = np.array([np.mean(v) for v in by_viewer.values()], np.float64)
    rng = np.random.default_rng(seed)
    boot = means[rng.integers(0, means.size, size=(resamples, means.size))].mean(axis=1)
    low, high = np.percentile(boot, [2.5, 97.5])
    return {"diff": float(means.mean()), "ci95_low": float(low), "ci95_high": float(high), "viewers": int(means.size)}


def combine_seeds(runs: list[dict[str, Any]], baselines: tuple[str, ...]) -> dict[str, Any]:
    """The first run's JSON with a `seeds` block: per-seed NDCG@10 of every method, mean and sd, and each
    method's paired difference to the best baseline (best by mean NDCG@10) over all seeds."""
    if not runs:
        raise ValueError("no runs to combine")
    names = list(runs[0]["methods"])
    table = {}
    for name in names:
        values = [float(r["methods"][name]["ndcg@10"]) for r in runs if name in r["methods"]]
        table[name] = {"per_seed": values, "mean": float(np.mean(values)),
                       "sd": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0}  # fmt: skip
    present = [b for b in baselines if b in table]
    best = max(present, key=lambda b: table[b]["mean"], default=None)
    versus: dict[str, Any] = {}
    if best is not None:
        compared = sorted({m for r in runs for m in r[PER_VIEWER]["ndcg"]} - {best})
        for name in compared:
            diffs = []
            for r in runs:
                pv = r[PER_VIEWER]
                if name in pv["ndcg"] and best in pv["ndcg"]:
                    d = pv["ndcg"][name] - pv["ndcg"][best]
                    diffs.append(dict(zip(pv["users"], d.tolist())))
            result = clustered_bootstrap(diffs, seed=int(runs[0]["seed"]))
            versus[name] = {"baseline": best, "ndcg_diff": result["diff"], "ci95": [result["ci95_low"], result["ci95_high"]],
                            "viewers": result["viewers"], "runs": len(diffs)}  # fmt: skip
    out = {k: v for k, v in runs[0].items() if k != PER_VIEWER}
    out["seeds"] = {
        "seeds": [int(r["seed"]) for r in runs],
        "ndcg@10": table,
        "best_centralised": best,
        "versus_best": versus,
        "interval": "paired per viewer, clustered by viewer over the seeds, 2000 bootstrap resamples",
        "total_s": [r["timings_s"]["total"] for r in runs],
        "peak_rss_mb": max(r["rss_mb"]["peak"] for r in runs),
    }
    return out
