"""The TV node: embedder, vector index, pattern store, recommender, sync agent. Never imports omega.constellation.

Its main types are importable from here (`from omega.brain import Brain, BrainConfig`).
The parts that load ONNX Runtime and the HNSW libraries (`Brain`, `Catalog`,
`Embedder`, `Recommender`, `VectorIndex`) are imported on first use, so that
importing a light part (`omega.brain.records`, `omega.brain.store`) stays light.
The sync agent has its own face, `omega.brain.sync`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from omega.brain.config import BrainConfig
from omega.brain.records import (
    EMBEDDING_DIM,
    CatalogItem,
    ConsolidatedRecord,
    Episode,
    Pattern,
    Recommendation,
    TaskType,
    TransitionStat,
    ViewingContext,
)
from omega.brain.store import BrainStore

if TYPE_CHECKING:
    from omega.brain.brain import Brain, context_at
    from omega.brain.catalog import Catalog
    from omega.brain.embedder import Embedder
    from omega.brain.index import VectorIndex
    from omega.brain.recommender import Recommender

#: Heavy exports: name -> the module that defines it, imported by `__getattr__` on first use.
_LAZY = {
    "Brain": "omega.brain.brain",
    "context_at": "omega.brain.brain",
    "Catalog": "omega.brain.catalog",
    "Embedder": "omega.brain.embedder",
    "Recommender": "omega.brain.recommender",
    "VectorIndex": "omega.brain.index",
}

__all__ = [
    "EMBEDDING_DIM", "Brain", "BrainConfig", "BrainStore", "Catalog", "CatalogItem", "ConsolidatedRecord",
    "Embedder", "Episode", "Pattern", "Recommendation", "Recommender", "TaskType", "TransitionStat",
    "VectorIndex", "ViewingContext", "context_at",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups find it without coming here
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
