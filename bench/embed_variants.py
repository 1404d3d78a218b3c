"""Measure the embedder variants: ms per embedding, RSS after load, INT8-vs-fp32 cosine.

Run: .venv/bin/python bench/embed_variants.py [--json]   (builds the model cache if needed)
Each variant is measured in a fresh subprocess so RSS is not shared between them.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np

TITLE = "Toy Story (1995) Adventure|Animation|Children|Comedy|Fantasy"
TEXTS = [
    "The Matrix (1999) Action|Sci-Fi|Thriller",
    "Pulp Fiction (1994) Comedy|Crime|Drama|Thriller",
    "Spirited Away (2001) Adventure|Animation|Fantasy",
    "March of the Penguins (2005) Documentary",
    "Friday night, 21:00, living room, two adults, want something funny",
    "Sunday morning with the kids, cartoons before breakfast",
    "late night alone, something scary and tense",
    "binge the next episode of a crime drama series",
]


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def measure(variant: str) -> dict:
    from omega.brain.embedder import Embedder
    from omega.modelbuild import ensure_model

    path = ensure_model()
    started = time.perf_counter()
    embedder = Embedder(path, threads=1, variant=variant)
    load_s = time.perf_counter() - started
    rss = _rss_mb()
    for _ in range(30):
        embedder.embed(TITLE)
    times = []
    for _ in range(300):
        t = time.perf_counter()
        embedder.embed(TITLE)
        times.append(time.perf_counter() - t)
    vectors = np.stack([embedder.embed(t) for t in TEXTS])
    return {
        "variant": variant,
        "tokens": len(embedder._tokenizer.encode(TITLE).ids),
        "load_s": round(load_s, 3),
        "rss_mb_after_load": round(rss, 1),
        "embed_ms_p50": round(float(np.median(times)) * 1e3, 3),
        "embed_ms_p90": round(float(np.percentile(times, 90)) * 1e3, 3),
        "vectors": vectors.tolist(),
    }


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(measure(sys.argv[2])))
        return
    results = {}
    for variant in ("fp32", "int8"):
        out = subprocess.run([sys.executable, __file__, "--child", variant], check=True, capture_output=True, text=True)
        results[variant] = json.loads(out.stdout)
    cos = (np.array(results["int8"].pop("vectors")) * np.array(results["fp32"].pop("vectors"))).sum(axis=1)
    report = {"variants": results, "int8_vs_fp32_cosine": {"min": round(float(cos.min()), 4), "mean": round(float(cos.mean()), 4)}}
    if "--json" in sys.argv:
        print(json.dumps(report))
        return
    for r in results.values():
        print(f"{r['variant']:5} {r['embed_ms_p50']:6.2f} ms/embedding p50 ({r['tokens']} tokens, 1 thread), "
              f"RSS {r['rss_mb_after_load']:.0f} MB, load {r['load_s']:.2f} s")
    print(f"INT8 vs fp32 cosine: min {report['int8_vs_fp32_cosine']['min']}, mean {report['int8_vs_fp32_cosine']['mean']}")


if __name__ == "__main__":
    main()
