"""Retraction end to end: a real server (`create_app`, on an injected clock), a real TV brain and its SyncAgent.

Four device ids pushed source → target on day 0 and went silent; three honest TVs pushed source →
title on day 20. A victim that watched the source pulls both and ranks the target high. Thirty days
later the target's supporters have left the window: the victim's next sync drops the edge and the
pair, and the target no longer ranks; the honest edge stays.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from omega.brain import Brain, BrainConfig
from omega.brain.sync.agent import SyncAgent
from omega.brain.sync.config import SyncConfig
from omega.constellation.app import create_app
from omega.constellation.service import SyncService
from omega.constellation.settings import load_settings
from omega.protocol import Keyspace
from omega.sim.bench.poisoning import SOURCE, TARGET, VICTIM_CONTEXT, poisoning_catalog
from omega.sim.fleet.wire import ServiceTransport

from .server_support import SECRET, small_codebook

pytestmark = pytest.mark.timeout(240)

DAY_S = 86_400
T0_S = 1_700_000_000 // DAY_S * DAY_S
TITLE = 5


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _device(n: int) -> bytes:
    return n.to_bytes(4, "big") * 4


#: (the server's service, the victim TV's brain, its SyncAgent)
Served = tuple[SyncService, Brain, SyncAgent]


@contextlib.asynccontextmanager
async def _served_victim(tmp_path: Path, clock: Clock, **settings: object) -> AsyncIterator[Served]:
    """A real server on `clock` (settings beyond store and codebook from `settings`), and a victim TV brain
    whose SyncAgent talks to it in process."""
    small_codebook().save(tmp_path / "codebook.npz")
    app = create_app(load_settings(env={"OMEGA_SECRET": SECRET}, overrides={
        "store": f"sqlite:{tmp_path / 'c.db'}", "codebook": str(tmp_path / "codebook.npz"), **settings}),
        clock=clock)  # fmt: skip
    victim = Brain(tmp_path / "victim.db", catalog=poisoning_catalog(), config=BrainConfig(), synchronous="NORMAL")
    try:
        async with app.router.lifespan_context(app):
            service = app.state.omega.service
            dev = _device(99)
            agent = SyncAgent(victim, server_url="http://127.0.0.1:1", device_id=dev, token=service.keyring.token(dev),
                              config=SyncConfig(contribution_period_s=0), clock=clock, rng=random.Random(1),
                              transport=ServiceTransport(service))  # fmt: skip
            try:
                yield service, victim, agent
            finally:
                await agent.close()
    finally:
        victim.close()


async def test_a_tv_drops_what_left_the_published_state_and_stops_ranking_it(tmp_path: Path) -> None:
    clock = Clock(T0_S + 3600)
    async with _served_victim(tmp_path, clock) as (service, victim, agent):
        agg = service.aggregator
        item = int(Keyspace.ITEM)
        for n in range(4):
            await agg.apply(_device(n), b"t", [], [(item, SOURCE, TARGET, 1.0)], int(clock.t * 1000))
        for n in range(10, 13):
            await agg.apply(_device(n), b"h", [], [(item, SOURCE, TITLE, 1.0)], int((clock.t + 20 * DAY_S) * 1000))
        victim.on_user_action(SOURCE, watch_fraction=1.0, started_at=clock.t)

        clock.t += 21 * DAY_S
        await agent.sync_once()
        held = {(t.src, t.dst): t.count for t in victim.store.all_global_transitions()}
        assert held == {(SOURCE, TARGET): 4, (SOURCE, TITLE): 3}
        pairs = {(t.src, t.dst) for t in victim.store.all_global_pairs()}
        assert (SOURCE, TARGET) in pairs
        top = [r.content_id for r in victim.recommend(VICTIM_CONTEXT, k=10)]
        assert top.index(TARGET) < 2, top

        clock.t += 10 * DAY_S  # day 31: day 0 has left the 30-day window, day 20 has not
        await service.housekeeping()
        await agent.sync_once()
        held = {(t.src, t.dst): t.count for t in victim.store.all_global_transitions()}
        assert held == {(SOURCE, TITLE): 3}
        pairs = {(t.src, t.dst) for t in victim.store.all_global_pairs()}
        assert (SOURCE, TARGET) not in pairs and (TARGET, SOURCE) not in pairs and (SOURCE, TITLE) in pairs
        recs = victim.recommend(VICTIM_CONTEXT, k=10)
        top = [r.content_id for r in recs]
        assert TARGET not in top, top
        assert top[0] == TITLE, top
        # Replay-safe: syncing again (the same removals are not re-sent, a repeat would change nothing).
        await agent.sync_once()
        assert {(t.src, t.dst) for t in victim.store.all_global_transitions()} == {(SOURCE, TITLE)}


async def test_under_dp_a_tv_at_yesterdays_release_gets_todays_without_waiting_for_a_push(tmp_path: Path) -> None:
    """The day's DP release replaces yesterday's (its new keys, its removals): housekeeping moves the served
    head to it, so a TV that holds yesterday's whole release is not told "nothing new" until some push arrives."""
    clock = Clock(T0_S + 3600)
    # pull_snapshot_s 0, the live head: this test compares a pull with what just changed
    async with _served_victim(tmp_path, clock, dp_epsilon=8.0, pull_snapshot_s=0) as (service, victim, agent):
        report = await agent.sync_once()  # day 0's release, drawn now: empty; the TV holds all of it
        assert report.pulled_edges == 0 and victim.store.all_global_transitions() == []
        item = int(Keyspace.ITEM)
        for n in range(150):  # far above ε 8's threshold (57 TVs, σ 9.8): in tomorrow's release
            await service.aggregator.apply(_device(1000 + n), b"t", [], [(item, SOURCE, TARGET, 1.0)],
                                           int(clock.t * 1000))  # fmt: skip
        clock.t += DAY_S
        await service.housekeeping()  # the periodic job; no push reaches the server on day 1
        await agent.sync_once()
        held = {(t.src, t.dst) for t in victim.store.all_global_transitions()}
        assert held == {(SOURCE, TARGET)}


async def test_under_dp_a_tv_offline_longer_than_the_window_drops_what_left_while_it_was_away(tmp_path: Path) -> None:
    """The day's removals name only keys of the window's earlier releases. A TV whose last pull was a release
    older than the window may hold a key that left before any of them: its pull is told to reset (drop all it
    pulled, take the day's release whole), so it converges instead of ranking that key for ever."""
    clock = Clock(T0_S + 3600)
    async with _served_victim(tmp_path, clock, dp_epsilon=8.0, pull_snapshot_s=0) as (service, victim, agent):
        agg = service.aggregator
        item = int(Keyspace.ITEM)
        for n in range(150):  # far above ε 8's threshold (57 TVs): selected while they are in the window
            await agg.apply(_device(1000 + n), b"t", [], [(item, SOURCE, TARGET, 1.0)], int(clock.t * 1000))
        victim.on_user_action(SOURCE, watch_fraction=1.0, started_at=clock.t)
        clock.t += DAY_S
        await service.housekeeping()
        await agent.sync_once()  # day 1's release: the victim holds the edge and the pair, then goes offline
        assert {(t.src, t.dst) for t in victim.store.all_global_transitions()} == {(SOURCE, TARGET)}
        assert TARGET in [r.content_id for r in victim.recommend(VICTIM_CONTEXT, k=10)]
        for day in (20, 40, 50):  # the server goes on releasing daily (other TVs pull); the victim is away
            clock.t = T0_S + 3600 + day * DAY_S
            if day == 50:
                for n in range(150):
                    await agg.apply(_device(3000 + n), b"h", [], [(item, SOURCE, TITLE, 1.0)], int(clock.t * 1000))
            await service.housekeeping()
        # Day 40's release no longer held the edge (its supporters left the window on day 30); on day 60 the
        # window's releases are days 31-59, none of which held it, so no removal names it.
        clock.t = T0_S + 3600 + 60 * DAY_S
        await service.housekeeping()
        await agent.sync_once()
        held = {(t.src, t.dst) for t in victim.store.all_global_transitions()}
        assert held == {(SOURCE, TITLE)}
        pairs = {(t.src, t.dst) for t in victim.store.all_global_pairs()}
        assert (SOURCE, TARGET) not in pairs and (TARGET, SOURCE) not in pairs and (SOURCE, TITLE) in pairs
        assert TARGET not in [r.content_id for r in victim.recommend(VICTIM_CONTEXT, k=10)]
        # Back in step: the next day's pull is an ordinary delta (no reset), and what it holds stays.
        clock.t += DAY_S
        await service.housekeeping()
        await agent.sync_once()
        assert {(t.src, t.dst) for t in victim.store.all_global_transitions()} == {(SOURCE, TITLE)}


async def test_a_tv_at_a_dp_release_when_dp_is_turned_off_resets_instead_of_staying_stuck(tmp_path: Path) -> None:
    """A TV's cursor into a DP release (>= 2^62) is past any store change number: with DP turned off it was
    told "nothing new" at every pull, holding what the release held for ever. Its pull is now a reset."""
    clock = Clock(T0_S + 3600)
    item = int(Keyspace.ITEM)
    async with _served_victim(tmp_path, clock, dp_epsilon=8.0, pull_snapshot_s=0) as (service, victim, agent):
        for n in range(150):  # far above ε 8's threshold: in day 1's release
            await service.aggregator.apply(_device(1000 + n), b"t", [], [(item, SOURCE, TARGET, 1.0)],
                                           int(clock.t * 1000))  # fmt: skip
        clock.t += DAY_S
        await service.housekeeping()
        await agent.sync_once()
        assert {(t.src, t.dst) for t in victim.store.all_global_transitions()} == {(SOURCE, TARGET)}
    clock.t += 40 * DAY_S  # the edge's supporters left the window; three honest TVs push another
    async with _served_victim(tmp_path, clock, pull_snapshot_s=0) as (service, victim, agent):
        await service.housekeeping()
        for n in range(3):
            await service.aggregator.apply(_device(n), b"h", [], [(item, SOURCE, TITLE, 1.0)], int(clock.t * 1000))
        await agent.sync_once()
        assert {(t.src, t.dst) for t in victim.store.all_global_transitions()} == {(SOURCE, TITLE)}
        await agent.sync_once()  # in step now: an ordinary delta, nothing dropped
        assert {(t.src, t.dst) for t in victim.store.all_global_transitions()} == {(SOURCE, TITLE)}
