"""One seed, one result: the fleet's replay is reproducible (no wall clock, no unseeded ids)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np

from omega.brain.catalog import Catalog
from omega.brain.config import BrainConfig
from omega.constellation.codebook import build_codebook
from omega.datasets.movielens import load_movielens
from omega.sim.evaluation.scoring import published_edges
from omega.sim.fleet.simulator import Fleet, FleetConfig, ViewingEvent
from movielens_fixtures import write_fixture

DAY_S = 86_400.0


async def _fleet(tmp_path: Path, name: str, **config) -> tuple[Fleet, list[ViewingEvent]]:
    data = load_movielens(write_fixture("ml-latest", tmp_path / "data", n_users=20, n_items=30))
    rng = np.random.default_rng(0)
    matrix = rng.standard_normal((len(data.items), 384)).astype(np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    catalog = Catalog.from_vectors(data.items, matrix, BrainConfig())
    fleet = await Fleet.open(tmp_path / name, catalog, build_codebook(matrix, k=8), config=FleetConfig(k_min=2, **config))
    r = data.ratings
    events = [ViewingEvent(int(u), int(i), float(s), float(t)) for u, i, s, t in zip(r.user, r.item, r.rating, r.timestamp)]
    return fleet, events


def test_two_replays_with_one_seed_send_the_same_bytes(tmp_path: Path):
    """Every uplink frame, byte for byte (batch and pattern ids seeded by the device), and what is published."""

    async def run(name: str) -> tuple[list[tuple[bytes, bytes]], list]:
        fleet, events = await _fleet(tmp_path, name, seed=3)
        try:
            await fleet.replay(events)
            await fleet.catch_up()
            return list(fleet.tap.uplink), await published_edges(fleet, 2)
        finally:
            await fleet.aclose()

    first, second = asyncio.run(run("a")), asyncio.run(run("b"))
    assert first[0] and first[1]
    assert first == second


def test_the_servers_periodic_jobs_run_on_the_simulated_clock(tmp_path: Path):
    """No wall-clock timer runs in the fleet's server (it would fire at load-dependent simulated moments);
    the contribution window expires what it should when the simulated clock passes it."""

    async def main() -> None:
        fleet, events = await _fleet(tmp_path, "f", window_epochs=3)
        try:
            assert fleet.app.state.omega.periodic is False
            timers = [t for t in asyncio.all_tasks() if getattr(t.get_coro(), "__name__", "") == "_every"]
            assert timers == []
            await fleet.replay(events)
            assert await published_edges(fleet, 2)
            await fleet.advance(fleet.now + 1.0)  # within the same epoch: nothing expires
            assert await published_edges(fleet, 2)
            await fleet.advance(fleet.now + 4 * DAY_S)  # past the 3-epoch window: every contribution left it
            assert await published_edges(fleet, 2) == []
            # the served head moved past the prune's changes (TVs pull them), without the gauges' counts
            assert fleet.service.head == (await fleet.aggregator.store.stats()).head > 0
            await fleet.advance(fleet.now - 10 * DAY_S)  # the clock never goes back
            assert fleet.now >= events[-1].timestamp + 4 * DAY_S
        finally:
            await fleet.aclose()

    asyncio.run(main())
