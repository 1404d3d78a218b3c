"""Benchmarks of the edge and sync budgets: each returns one dict of figures (the CLI prints it as JSON).

- `run_brain_bench`: a TV brain on a real catalog (embed, search k=50, recommend, RSS, recall@50).
- `run_sync_bench`: one real sync server process under concurrent loopback clients.
- `run_poisoning_bench`: sybil device ids against honest TVs, through a real store and a real victim brain.

Each is imported on first use: the brain bench measures a TV's RSS in a child process that imports
`omega.sim.bench.brain`, which must not bring the sync bench's server stack along.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from omega.sim.bench.brain import run_brain_bench
    from omega.sim.bench.poisoning import run_poisoning_bench
    from omega.sim.bench.sync import run_sync_bench

_LAZY = {
    "run_brain_bench": "omega.sim.bench.brain",
    "run_poisoning_bench": "omega.sim.bench.poisoning",
    "run_sync_bench": "omega.sim.bench.sync",
}

__all__ = ["run_brain_bench", "run_poisoning_bench", "run_sync_bench"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
