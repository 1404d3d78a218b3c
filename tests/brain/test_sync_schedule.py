"""The contribution schedule (issue 14): what a TV learned leaves it at most once per window, at a random
moment, never in the sync right after a viewing; heartbeats do not move with viewings either."""

from __future__ import annotations

import math
import random
import uuid
from pathlib import Path

import pytest
from sync_peer import InProcessPeer, Peer, token_for
from sync_support import pattern

from omega.brain.records import Episode, ViewingContext
from omega.brain.store import BrainStore
from omega.brain.sync import SyncAgent, SyncConfig, policy_for
from omega.brain.sync.schedule import NEXT_KEY, ContributionSchedule
from omega.errors import OmegaError
from omega.protocol import Tier

DAY = 86_400.0
START = 20_000 * DAY  # a simulated midnight (2024-10-04 UTC)


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def view(store: BrainStore, clock: Clock, item: int) -> None:
    """One viewing: an episode, a transition and a new version of a pattern (what the brain would do)."""
    store.add_episode(Episode(None, item, clock.t - 600, 540.0, 600.0, 0.9, 0.8, ViewingContext(20, 1), "finished"))
    store.bump_transition(item, item + 1, 1.0)
    store.put_pattern(pattern(item % 5, version=int(clock.t)))


@pytest.fixture
def tv(tmp_path: Path):
    clock = Clock(START + 3600)
    peer = Peer()
    peer.clock_ms = lambda: int(clock.t * 1000)
    with BrainStore(tmp_path / "tv.db", clock=clock) as store:
        device = uuid.UUID(int=7).bytes
        agent = SyncAgent(store, server_url="http://127.0.0.1", device_id=device, token=token_for(device),
                          tier=Tier.ACTIVE, clock=clock, rng=random.Random(3), transport=InProcessPeer(peer))  # fmt: skip
        yield store, agent, peer, clock


async def test_at_most_one_contribution_per_window_at_a_random_moment_never_right_after_a_viewing(tv):
    store, agent, peer, clock = tv
    interval = policy_for(Tier.ACTIVE).interval_s
    rng = random.Random(11)
    contributions: list[float] = []
    last_view = -math.inf
    prev_sync = -math.inf
    for _ in range(int(4 * DAY / interval)):  # four days of syncs every 5 minutes, viewings now and then
        clock.t += interval
        if rng.random() < 0.05:
            clock.t += 1
            view(store, clock, rng.randrange(1, 50))
            last_view = clock.t
            clock.t += 1
        pushes_before = peer.kinds.count("push")
        report = await agent.sync_once()
        if report.contributed:
            contributions.append(clock.t)
            assert last_view < prev_sync, "sealed in the sync right after a viewing"
        if peer.kinds.count("push") > pushes_before:
            assert report.contributed  # no faults here: what a contribution seals goes out in that sync
        assert report.next_contribution_at > 0
        prev_sync = clock.t
    windows = [math.floor(t / DAY) for t in contributions]
    assert len(windows) == len(set(windows)) >= 3  # one per window, at most
    offsets = [t - w * DAY for t, w in zip(contributions, windows)]
    assert max(offsets) - min(offsets) > 3600  # not the same time every day
    assert peer.kinds.count("push") >= 3 and peer.kinds.count("heartbeat") == int(4 * DAY / interval)


async def test_the_sync_right_after_a_viewing_does_not_contribute_the_next_one_does(tv):
    store, agent, peer, clock = tv
    await agent.sync_once()  # the TV's first sync: it has never synced before, so nothing is sealed
    store.set_state(NEXT_KEY, "0")  # the window's moment has passed
    view(store, clock, 3)
    clock.t += 300
    first = await agent.sync_once()
    assert not first.contributed and "push" not in peer.kinds
    clock.t += 300
    second = await agent.sync_once()
    assert second.contributed and second.batches_acked == 1 and peer.kinds.count("push") == 1
    # the next moment is in the next window, at random
    assert math.floor(second.next_contribution_at / DAY) == math.floor(clock.t / DAY) + 1


async def test_heartbeats_do_not_move_with_viewings(tv):
    store, agent, peer, clock = tv
    for i in range(3):
        store.put_pattern(pattern(i))
    await agent.sync_once()
    store.set_state(NEXT_KEY, "0")
    clock.t += 300
    report = await agent.sync_once()  # contributes: the counters move here, with the push
    assert report.contributed
    before = peer.heartbeats[-1][1:]
    for k in range(5):  # viewings between syncs: new patterns, new versions
        view(store, clock, 10 + k)
        store.put_pattern(pattern(20 + k))
        clock.t += 300
        await agent.sync_once()
    assert [hb[1:] for hb in peer.heartbeats[-5:]] == [before] * 5


async def test_the_moment_survives_a_restart_and_a_new_tv_draws_one_in_its_window(tmp_path: Path):
    clock = Clock(START + 5000)
    with BrainStore(tmp_path / "tv.db", clock=clock) as store:
        first = ContributionSchedule(store, DAY, clock=clock, rng=random.Random(1)).next_at()
        assert START <= first < START + DAY
        again = ContributionSchedule(store, DAY, clock=clock, rng=random.Random(99)).next_at()
        assert again == first
        store.set_state(NEXT_KEY, "garbage")  # unreadable: drawn again, not an error
        assert START <= ContributionSchedule(store, DAY, clock=clock, rng=random.Random(2)).next_at() < START + DAY


async def test_period_zero_contributes_at_every_sync(tv):
    store, agent, peer, clock = tv
    agent.schedule = ContributionSchedule(store, 0, clock=clock, rng=random.Random(1))
    for i in range(3):
        store.put_pattern(pattern(i))
    view(store, clock, 1)
    report = await agent.sync_once()
    assert report.contributed and report.batches_acked == 1 and report.next_contribution_at == 0


def test_bad_periods_are_refused():
    with pytest.raises(OmegaError, match="contribution_period_s"):
        SyncConfig(contribution_period_s=30)
    with pytest.raises(OmegaError, match="contribution_period_s"):
        SyncConfig(contribution_period_s=30 * DAY)
