"""The fleet simulator: many real TV brains syncing with a real constellation, and experiments on it.

- `Fleet`, `FleetConfig`, `TV`, `ViewingEvent`: TVs replay viewings and sync on their tiers (`simulator`).
- `build_catalog`, `catalog_embeddings`: a catalog embedded once and cached on disk (`catalog_cache`).
- `run_burst_experiment`: a planted trend burst against steady viewing (`trend_experiment`).
"""

from omega.sim.fleet.catalog_cache import build_catalog, catalog_embeddings
from omega.sim.fleet.simulator import TV, Fleet, FleetConfig, ViewingEvent
from omega.sim.fleet.trend_experiment import run_burst_experiment

__all__ = [
    "TV",
    "Fleet",
    "FleetConfig",
    "ViewingEvent",
    "build_catalog",
    "catalog_embeddings",
    "run_burst_experiment",
]
