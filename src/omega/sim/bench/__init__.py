"""Benchmarks of the edge and sync budgets: each returns one dict of figures (the CLI prints it as JSON).

- `run_brain_bench`: a TV brain on a real catalog (embed, search k=50, recommend, RSS, recall@50).
- `run_sync_bench`: one real sync server process under concurrent loopback clients.
- `run_poisoning_bench`: sybil device ids against honest TVs, through a real store and a real victim brain.
"""

from omega.sim.bench.brain import run_brain_bench
from omega.sim.bench.poisoning import run_poisoning_bench
from omega.sim.bench.sync import run_sync_bench

__all__ = ["run_brain_bench", "run_poisoning_bench", "run_sync_bench"]
