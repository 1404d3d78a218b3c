"""The fleet simulator: one real Brain per viewer, replayed in time order, syncing on a simulated clock.

Each MovieLens user is one TV: its own SQLite brain (synchronous=NORMAL, the
read-only catalog shared — a TV receives catalog metadata anyway) and its own
real `SyncAgent`, whose frames go through the real codec, device keys and
`Aggregator` of a `LocalConstellation` (in process, tapped for audit).

Rating → viewing (`omega.brain.learning.episode_from_rating`): watch_fraction =
clip(0.2 + 0.2·stars, 0, 1) and engagement = (stars − 3)/2, so ≥ 3★ is a
finished (successful) viewing and only those teach transitions, weighted by
their reward 0.7·fraction + 0.3·engagement.

Clock and schedules: ratings are replayed in global time order; the clock is
the rating's timestamp. A TV is given a tier (premium 1 min, active 5 min,
casual 15 min; seeded mix) and a random phase, and syncs at the tier's ticks
while it has something queued — a viewing makes it dirty, a sync that leaves
nothing queued makes it clean. Syncs of a clean TV would only pull and
heartbeat; they are elided (the simulated fleet would otherwise be millions of
idle syncs over the years MovieLens spans) and `catch_up` pulls everything
published before evaluation instead.
"""

from __future__ import annotations

import heapq
import random
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from omega.brain.brain import Brain, context_at
from omega.brain.catalog import Catalog
from omega.brain.config import BrainConfig
from omega.brain.embedder import Embedder
from omega.brain.learning import episode_from_rating
from omega.brain.sync import SyncAgent, SyncConfig, SyncFailed, policy_for, state
from omega.constellation.aggregation import AggregationPolicy, Aggregator
from omega.constellation.codebook import Codebook
from omega.constellation.store import open_store
from omega.errors import OmegaError
from omega.protocol import Tier
from omega.sim.local_constellation import InProcessTransport, LocalConstellation, WireTap

Progress = Callable[[int, int], None]

#: Brain settings for the simulated fleet: transitions over 5 steps decaying by 0.8 (the plateau that the
#: centralised transition model found on the validation split), the rest TV defaults.
SIM_BRAIN_CONFIG = BrainConfig(transition_window=5, transition_decay=0.8)
TIERS = (Tier.PREMIUM, Tier.ACTIVE, Tier.CASUAL)
#: Syncs one TV may run back to back while catching up on published deltas.
_MAX_CATCH_UP_SYNCS = 200


@dataclass(frozen=True)
class FleetConfig:
    """How the simulated fleet is built and synced."""

    k_min: int = 3
    #: share of premium, active and casual TVs
    tier_mix: tuple[float, float, float] = (0.2, 0.5, 0.3)
    brain: BrainConfig = SIM_BRAIN_CONFIG
    sync: SyncConfig = field(default_factory=SyncConfig)
    seed: int = 0
    #: the server secret the device tokens derive from (the simulation's own)
    secret: bytes = b"omega-fleet-simulator-secret-0001"
    salt: bytes = b"omega-fleet-simulator-salt-00001"

    def __post_init__(self) -> None:
        if len(self.tier_mix) != 3 or min(self.tier_mix) < 0 or sum(self.tier_mix) <= 0:
            raise OmegaError("tier_mix must be three non-negative shares with a positive sum")


@dataclass
class TV:
    """One simulated television."""

    user: int
    device_id: bytes
    tier: Tier
    brain: Brain
    agent: SyncAgent
    phase_s: float
    dirty: bool = False
    syncs: int = 0
    failures: int = 0
    bytes_up: int = 0
    bytes_down: int = 0

    def next_tick(self, now: float) -> float:
        """The first tick of this TV's tier schedule strictly after `now`."""
        interval = policy_for(self.tier).interval_s
        return self.phase_s + (np.floor((now - self.phase_s) / interval) + 1) * interval


@dataclass(frozen=True)
class ViewingEvent:
    """One rating replayed as a viewing on the user's TV."""

    user: int
    content_id: int
    stars: float
    timestamp: float


class Fleet:
    """Many TVs and one in-process constellation on a simulated clock. Build with `await Fleet.open(...)`."""

    def __init__(self, workdir: Path, catalog: Catalog, embedder: Embedder | None, config: FleetConfig) -> None:
        self.workdir = Path(workdir)
        self.catalog = catalog
        self.embedder = embedder
        self.config = config
        self.now = 0.0
        self.tvs: dict[int, TV] = {}
        self.tap = WireTap()
        self._rng = random.Random(config.seed)
        self.server: LocalConstellation
        self.aggregator: Aggregator

    @classmethod
    async def open(
        cls, workdir: Path | str, catalog: Catalog, codebook: Codebook, *, embedder: Embedder | None = None,
        config: FleetConfig | None = None, store_dir: Path | str | None = None,
    ) -> Fleet:  # fmt: skip
        """`store_dir` holds the constellation's SQLite file (default: `workdir`). The evaluation puts it on
        tmpfs: the store fsyncs every commit, and with one simulated push at a time (no group commit to share
        the fsync) the replay would measure the disk instead of the system."""
        fleet = cls(Path(workdir), catalog, embedder, config or FleetConfig())
        fleet.workdir.mkdir(parents=True, exist_ok=True)
        where = Path(store_dir) if store_dir is not None else fleet.workdir
        store = await open_store(f"sqlite:{where / 'constellation.db'}", origin="sim-shard-0")
        policy = AggregationPolicy(k_min=fleet.config.k_min)
        fleet.aggregator = await Aggregator.open(store, codebook, fleet.config.salt, policy)
        fleet.server = LocalConstellation(fleet.aggregator, fleet.config.secret, clock=lambda: fleet.now)
        return fleet

    def clock(self) -> float:
        return self.now

    # ------------------------------------------------------------------ TVs

    def add_tv(self, user: int, *, name: str | None = None, sync: SyncConfig | None = None) -> TV:
        """A new TV with an empty brain for `user` (its device id is random but seeded)."""
        device_id = uuid.UUID(int=self._rng.getrandbits(128), version=4).bytes
        tier = self._rng.choices(TIERS, weights=self.config.tier_mix)[0]
        brain = Brain(
            self.workdir / f"{name or f'tv-{user}'}.db", embedder=self.embedder, catalog=self.catalog,
            config=self.config.brain, synchronous="NORMAL",
        )  # fmt: skip
        transport = InProcessTransport(self.server, device_id, self.tap)
        agent = SyncAgent(
            brain, server_url="http://in-process.invalid", device_id=device_id,
            token=self.server.token_for(device_id), tier=tier, config=sync or self.config.sync,
            clock=self.clock, rng=random.Random(self._rng.random()), transport=transport,
        )  # fmt: skip
        tv = TV(user, device_id, tier, brain, agent, phase_s=self._rng.uniform(0, policy_for(tier).interval_s))
        self.tvs[user] = tv
        return tv

    def watch(self, tv: TV, content_id: int, stars: float, timestamp: float) -> None:
        """Record one rating as a viewing on the TV (see the module docstring for the mapping)."""
        viewing = episode_from_rating(stars)
        tv.brain.on_user_action(
            content_id, watch_fraction=viewing.watch_fraction, engagement=viewing.engagement,
            context=context_at(timestamp), started_at=timestamp,
        )  # fmt: skip
        tv.dirty = True

    async def sync(self, tv: TV) -> bool:
        """One real sync of one TV; returns whether it still has something queued afterwards."""
        try:
            report = await tv.agent.sync_once()
        except SyncFailed as exc:
            tv.failures += 1
            report = exc.report
            if report is None:
                return True
        tv.syncs += 1
        tv.bytes_up += report.bytes_up
        tv.bytes_down += report.bytes_down
        return report.outbox_pending > 0 or self._queued(tv)

    @staticmethod
    def _queued(tv: TV) -> bool:
        """Unsent transition deltas or high-quality pattern versions remain."""
        outbox = tv.agent.outbox
        with tv.brain.store.transaction() as db:
            edges = db.execute(
                "SELECT 1 FROM transitions WHERE weight - pushed_weight >= ? LIMIT 1", (outbox.config.min_edge_delta,)
            ).fetchone()
        return edges is not None or outbox.queued_patterns() > 0

    # ------------------------------------------------------------------ the replay

    async def replay(self, events: Sequence[ViewingEvent], progress: Progress | None = None) -> None:
        """Feed every event to its TV in time order, running each TV's syncs at its tier ticks in between."""
        syncs: list[tuple[float, int, int]] = []  # (time, tie-break, user)
        scheduled: set[int] = set()
        counter = 0
        total = len(events)

        async def run_syncs_until(t: float) -> None:
            nonlocal counter
            while syncs and syncs[0][0] <= t:
                when, _, user = heapq.heappop(syncs)
                scheduled.discard(user)
                self.now = max(self.now, when)
                tv = self.tvs[user]
                still = await self.sync(tv)
                tv.dirty = still
                if still:
                    counter += 1
                    heapq.heappush(syncs, (tv.next_tick(self.now), counter, user))
                    scheduled.add(user)

        for done, ev in enumerate(events, 1):
            await run_syncs_until(ev.timestamp)
            self.now = max(self.now, float(ev.timestamp))
            tv = self.tvs.get(ev.user) or self.add_tv(ev.user)
            self.watch(tv, ev.content_id, ev.stars, float(ev.timestamp))
            if ev.user not in scheduled:
                counter += 1
                heapq.heappush(syncs, (tv.next_tick(self.now), counter, ev.user))
                scheduled.add(ev.user)
            if progress is not None and (done % 500 == 0 or done == total):
                progress(done, total)
        await run_syncs_until(float("inf"))

    async def catch_up(self, tvs: Iterable[TV] | None = None, progress: Progress | None = None) -> None:
        """Sync each TV until it holds everything published (what its idle syncs would have pulled)."""
        chosen = list(self.tvs.values() if tvs is None else tvs)
        for done, tv in enumerate(chosen, 1):
            for _ in range(_MAX_CATCH_UP_SYNCS):
                await self.sync(tv)
                if state.cursor(tv.brain.store) >= (await self.aggregator.store.stats()).head:
                    break
            if progress is not None:
                progress(done, len(chosen))

    def close(self) -> None:
        for tv in self.tvs.values():
            tv.brain.close()

    async def aclose(self) -> None:
        self.close()
        await self.aggregator.store.close()
