"""The cloud: sync server, validation, stores, aggregation, trends, federation. Never imports omega.brain.

The main types are importable from here (`from omega.constellation import create_app,
ServerSettings`). They load on first use, so `import omega.constellation.crdt` (a region
or hub merging deltas) does not pull in the server stack (Starlette, uvicorn, asyncpg).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS: dict[str, str] = {
    # the server
    "create_app": "app",
    "ServerState": "server_state",
    "ServerSettings": "settings",
    "load_settings": "settings",
    "with_dev_secret": "settings",
    "SyncService": "service",
    "EmbeddedServer": "runner",
    "serve": "runner",
    "Keyring": "keyring",
    # aggregation and its stores
    "Aggregator": "aggregation",
    "AggregationPolicy": "aggregation",
    "ApplyResult": "aggregation",
    "Contribution": "aggregation",
    "Transition": "aggregation",
    "ConstellationStore": "store",
    "open_store": "store",
    "Codebook": "codebook",
    "build_codebook": "codebook",
    "TrendTracker": "trends",
    # the federation CRDT
    "CellKey": "crdt",
    "EdgeKey": "crdt",
    "ConsolidatedEdge": "crdt",
    "ConsolidatedCell": "crdt",
    "FederatedState": "crdt",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


if TYPE_CHECKING:
    from omega.constellation.aggregation import AggregationPolicy, Aggregator, ApplyResult, Contribution, Transition
    from omega.constellation.app import create_app
    from omega.constellation.codebook import Codebook, build_codebook
    from omega.constellation.crdt import CellKey, ConsolidatedCell, ConsolidatedEdge, EdgeKey, FederatedState
    from omega.constellation.keyring import Keyring
    from omega.constellation.runner import EmbeddedServer, serve
    from omega.constellation.server_state import ServerState
    from omega.constellation.service import SyncService
    from omega.constellation.settings import ServerSettings, load_settings, with_dev_secret
    from omega.constellation.store import ConstellationStore, open_store
    from omega.constellation.trends import TrendTracker
