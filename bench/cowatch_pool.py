"""Pool `bench/cowatch_eval.py` runs of several tie seeds: each row's paired difference to the shipped row and to
the best baseline, per viewer, clustered by viewer over the seeds (`omega.sim.evaluation.seeds`).

    .venv/bin/python bench/cowatch_pool.py run-seed0.json run-seed1.json run-seed2.json > pooled.json
"""

from __future__ import annotations

import json
import sys

import numpy as np

from omega.sim.evaluation.seeds import clustered_bootstrap


def main() -> None:
    runs = [json.load(open(path)) for path in sys.argv[1:]]
    best = runs[0]["best_centralised"]
    rows = [n for n in runs[0]["cowatch_inspect"]["per_viewer"] if n != "users"]
    out: dict = {"files": sys.argv[1:], "seeds": [r["seed"] for r in runs], "best_centralised": best, "rows": {}}
    for name in rows:
        mean = float(np.mean([np.mean(r["cowatch_inspect"]["per_viewer"][name]) for r in runs]))
        row: dict = {"ndcg@10_mean_of_seeds": mean,
                     "per_seed": [float(np.mean(r["cowatch_inspect"]["per_viewer"][name])) for r in runs]}  # fmt: skip
        for against in ("shipped", best):
            diffs = []
            for r in runs:
                pv = r["cowatch_inspect"]["per_viewer"]
                d = np.asarray(pv[name]) - np.asarray(pv[against])
                diffs.append(dict(zip(pv["users"], d.tolist())))
            res = clustered_bootstrap(diffs, seed=0)
            row[f"vs_{against}"] = [res["diff"], res["ci95_low"], res["ci95_high"]]
        out["rows"][name] = row
    sr = out["rows"][best]["ndcg@10_mean_of_seeds"]
    for row in out["rows"].values():
        row[f"ratio_vs_{best}"] = row["ndcg@10_mean_of_seeds"] / sr
    json.dump(out, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
