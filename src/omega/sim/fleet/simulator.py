"""The fleet simulator: one real Brain per viewer, replayed in time order, syncing on a simulated clock.

Each MovieLens user is one TV: its own SQLite brain (synchronous=NORMAL, the
read-only catalog shared — a TV receives catalog metadata anyway) and its own
real `SyncAgent`, syncing with the real constellation: `create_app` (the
`omega serve` app: SyncService, SQLite store, Aggregator, trends, housekeeping)
runs on the fleet's simulated clock and, by default (`transport="loopback"`),
is served by uvicorn on 127.0.0.1 (a free port) in the same event loop. Each
agent uses its tier's real transport against it — HTTP polling for casual TVs
(one shared httpx connection pool), an on-demand WebSocket for active ones, a
persistent WebSocket for premium ones. `transport="direct"` skips the sockets
and hands each frame to the same `SyncService.handle`. Either way every frame
is recorded in a `WireTap` around the transport, for the wire audit.

The server is configured for a simulation: the fleet's secret and salt, its
k_min, `min_samples` equal to the brains' high-quality threshold, and rate
limits no simulated TV reaches (a TV catching up runs many frames within one
simulated second); the store may sit on tmpfs (`store_dir`).

Rating → viewing (`omega.brain.learning.episode_from_rating`): watch_fraction =
clip(0.2 + 0.2·stars, 0, 1) and engagement = (stars − 3)/2, so ≥ 3★ is a
finished (successful) viewing and only those teach transitions, weighted by
their reward 0.7·fraction + 0.3·engagement.

Clock and schedules: ratings are replayed in global time order; the clock is
the rating's timestamp. A TV is given a tier (premium 1 min, active 5 min,
casual 15 min; seeded mix) and a random phase, and syncs at the tier's ticks
while it has something queued — a viewing makes it dirty, a sync that leaves
nothing queued makes it clean. What a TV learned leaves it on its contribution
schedule (`omega.brain.sync.schedule`: once a simulated day at a random moment,
not in the sync right after a viewing), so a TV whose only work is a queue
waiting for that moment sleeps until the first tick at or after it. Syncs of
a clean TV would only pull and heartbeat; they are elided (the simulated fleet would otherwise be millions of
idle syncs over the years MovieLens spans) and `catch_up` pulls everything
published before evaluation instead. By default (`FleetConfig.defer_pulls`) the
replay's syncs push and heartbeat but skip their pulls forward, and catch-up
pulls the published state once from the start: the TVs then hold the same
published state, and the replay stays linear in the number of viewings.
"""

from __future__ import annotations

import contextlib
import heapq
import random
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import httpx
import numpy as np
from starlette.applications import Starlette

from omega.brain.brain import Brain, context_at
from omega.brain.catalog import Catalog
from omega.brain.config import BrainConfig
from omega.brain.embedder import Embedder
from omega.brain.learning import episode_from_rating
from omega.brain.sync import SyncAgent, SyncConfig, SyncFailed, open_transport, policy_for, state
from omega.brain.sync.transport import Transport
from omega.constellation.aggregation import Aggregator
from omega.constellation.app import ServerState, create_app
from omega.constellation.codebook import Codebook
from omega.constellation.privacy import DEFAULT_K_MIN
from omega.constellation.runner import EmbeddedServer
from omega.constellation.service import SyncService
from omega.constellation.settings import ServerSettings
from omega.errors import OmegaError
from omega.progress import Progress
from omega.protocol import SYNC_TIERS, Tier
from omega.sim.fleet.wire import ServiceTransport, TappedTransport, WireTap


#: Syncs one TV may run back to back while catching up on published deltas.
_MAX_CATCH_UP_SYNCS = 200
#: Rate limits of the simulation's server: far above what any simulated TV sends in one simulated second.
_SIM_RATE_PER_S = 1e9
_SIM_RATE_BURST = 1_000_000_000
SHARD_ID = "sim-shard-0"


@dataclass(frozen=True)
class FleetConfig:
    """How the simulated fleet is built and synced."""

    k_min: int = DEFAULT_K_MIN
    #: Epochs (days) a contribution counts for (the server's AggregationPolicy.window_epochs, 30 when
    #: served). SIMULATION ONLY: a replay runs MovieLens's 22 years through one clock, and most viewers
    #: rated within a few days, where a live fleet's viewers watch at the same time. With 30 days only the
    #: data's last month stays published; with 3650 (the old fixed value) the last 10 years (3,851 edges vs
    #: 12,387 with nothing expired, full test run). None (default): the window spans the replayed viewings
    #: (`replay` sets it from their first and last timestamps), so nothing replayed expires.
    window_epochs: int | None = None
    #: share of premium, active and casual TVs
    tier_mix: tuple[float, float, float] = (0.2, 0.5, 0.3)
    #: the shipped TV defaults: the fleet measures the brain a TV runs
    brain: BrainConfig = field(default_factory=BrainConfig)
    sync: SyncConfig = field(default_factory=SyncConfig)
    seed: int = 0
    #: the server secret the device tokens derive from (the simulation's own)
    secret: bytes = b"omega-fleet-simulator-secret-0001"
    salt: bytes = b"omega-fleet-simulator-salt-00001"
    #: "loopback": the server on 127.0.0.1 over HTTP/WebSocket; "direct": the same SyncService.handle, no sockets
    transport: Literal["loopback", "direct"] = "loopback"
    #: During the replay a TV's pulls start at the newest change (so they come back empty) and `catch_up`
    #: pulls the whole published state once, from cursor 0, before scoring. Nothing a TV pulls mid-replay
    #: is ranked with (scoring happens after catch-up), but pulling every change as it happens made the
    #: replay superlinear (every TV re-pulled every edge each time its support grew: 33 of 38 minutes).
    defer_pulls: bool = True
    #: In `catch_up`, a TV with nothing to send copies what the previous TV pulled from cursor 0 instead of
    #: decoding the same pages again (identical tables, tested); the per-TV decode was O(TVs x published
    #: edges): at 610 TVs ~18M edges decoded and merged, most of the fleet's time and its RSS.
    copy_catch_up: bool = True
    #: Sim-only: the server's pull staleness bound (ServerSettings.pull_snapshot_s, 5 s shipped) is wall-clock
    #: seconds, and the replay runs days of the simulated clock in one: pulls see the live head here (0).
    pull_snapshot_s: float = 0.0

    def __post_init__(self) -> None:
        if len(self.tier_mix) != 3 or min(self.tier_mix) < 0 or sum(self.tier_mix) <= 0:
            raise OmegaError("tier_mix must be three non-negative shares with a positive sum")
        if self.transport not in ("loopback", "direct"):
            raise OmegaError(f"fleet transport must be 'loopback' or 'direct', got {self.transport!r}")


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
    #: its replay pulls were skipped forward (`FleetConfig.defer_pulls`): catch-up starts from cursor 0
    deferred: bool = False
    #: No sync is useful before this (its next contribution moment) unless something is in flight.
    not_before: float = 0.0
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
    """Many TVs and one constellation (in process, on 127.0.0.1 by default) on a simulated clock.

    Build with `await Fleet.open(...)`, end with `await fleet.aclose()`.
    """

    def __init__(self, workdir: Path, catalog: Catalog, embedder: Embedder | None, config: FleetConfig) -> None:
        self.workdir = Path(workdir)
        self.catalog = catalog
        self.embedder = embedder
        self.config = config
        self.now = 0.0
        self.tvs: dict[int, TV] = {}
        self.tap = WireTap()
        self._rng = random.Random(config.seed)
        self.app: Starlette
        self.service: SyncService
        self.aggregator: Aggregator
        #: the uvicorn server on 127.0.0.1 (None in "direct" mode) and its base URL
        self.server: EmbeddedServer | None = None
        self.url: str | None = None
        self._http: httpx.AsyncClient | None = None
        self._lifespan: contextlib.AsyncExitStack | None = None
        self._refined_at = -1  # the store head the refined release was last computed at
        self._pruned_epoch = -1  # the epoch (simulated day) the store was last pruned in

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
        codebook_path = fleet.workdir / "codebook.npz"  # the server reads its codebook as `omega serve` does
        codebook.save(codebook_path)
        cfg = fleet.config
        settings = ServerSettings(
            host="127.0.0.1", port=0, store=f"sqlite:{where / 'constellation.db'}", shard_id=SHARD_ID,
            codebook=str(codebook_path), secrets={1: cfg.secret}, active_key_id=1, salt=cfg.salt, k_min=cfg.k_min,
            min_samples=cfg.brain.high_quality_min_uses, rate_per_s=_SIM_RATE_PER_S, rate_burst=_SIM_RATE_BURST,
            log_level="warning", pull_snapshot_s=cfg.pull_snapshot_s,
        )  # fmt: skip
        # The server's periodic jobs run on the simulated clock (`advance`), not on wall-clock timers.
        fleet.app = create_app(settings, clock=fleet.clock, periodic=False)
        try:
            if cfg.transport == "loopback":
                fleet.server = await EmbeddedServer.start(settings, fleet.app)
                fleet.url = fleet.server.url
                # Casual TVs poll over HTTP: one keep-alive pool for the whole fleet, not a client (and a
                # TLS context) per TV per sync; no proxy from the environment: the traffic stays on loopback.
                fleet._http = httpx.AsyncClient(timeout=cfg.sync.request_timeout_s, follow_redirects=False,
                                                trust_env=False)  # fmt: skip
            else:
                fleet._lifespan = contextlib.AsyncExitStack()
                await fleet._lifespan.enter_async_context(fleet.app.router.lifespan_context(fleet.app))
            shard: ServerState = fleet.app.state.omega
            if shard.service is None:
                raise OmegaError("the fleet's constellation did not start")
        except BaseException:
            await fleet._stop_server()
            raise
        fleet.service = shard.service
        fleet.aggregator = shard.service.aggregator
        if cfg.window_epochs is not None:
            fleet.aggregator.policy = replace(fleet.aggregator.policy, window_epochs=cfg.window_epochs)
        return fleet

    def clock(self) -> float:
        return self.now

    async def advance(self, t: float) -> None:
        """Move the simulated clock to `t` (never back) and run the server's periodic jobs due by then.

        A served shard runs them on wall-clock timers (`create_app(periodic=True)`); here they would fire
        at moments of the replay that depend on the machine's load, so the same seed would publish
        different states. On the simulated clock: the contribution window's prune once per epoch (it
        only moves per epoch, so this is what a prune every minute would do; `SyncService.prune`, the
        store's part of the housekeeping job: its gauges' table counts cost more than the prune) and
        trend windows closed as time passes."""
        self.now = max(self.now, float(t))
        now_ms = int(self.now * 1000)
        epoch = now_ms // self.aggregator.policy.epoch_ms
        if epoch != self._pruned_epoch:
            self._pruned_epoch = epoch
            await self.service.prune()
        trends = self.app.state.omega.trends
        if trends is not None:
            await trends.advance(now_ms)

    def token_for(self, device_id: bytes) -> str:
        """The device token the server issues (`omega device token`)."""
        return self.service.keyring.token(device_id)

    def _transport(self, device_id: bytes, tier: Tier, sync: SyncConfig) -> Transport:
        if self.url is None:
            inner: Transport = ServiceTransport(self.service)
        else:
            inner = open_transport(policy_for(tier), self.url, timeout_s=sync.request_timeout_s, http_client=self._http,
                                   device_id=device_id)
        return TappedTransport(inner, device_id, self.tap)

    # ------------------------------------------------------------------ TVs

    def add_tv(
        self, user: int, *, name: str | None = None, sync: SyncConfig | None = None, rng: random.Random | None = None
    ) -> TV:
        """A new TV with an empty brain for `user` (its device id is random but seeded). Its device id, tier
        and phase come from `rng` (default: the fleet's), so TVs added mid-replay need not shift the draws
        of the fleet's later TVs."""
        rng = rng or self._rng
        device_id = uuid.UUID(int=rng.getrandbits(128), version=4).bytes
        tier = rng.choices(SYNC_TIERS, weights=self.config.tier_mix)[0]
        # Pattern and batch ids seeded by the device id (random on a real TV): the same seed sends the same
        # bytes, and the fleet's own draws are not shifted.
        ids = random.Random(b"pattern-ids" + device_id)
        batches = random.Random(b"batch-ids" + device_id)
        brain = Brain(
            self.workdir / f"{name or f'tv-{user}'}.db", embedder=self.embedder, catalog=self.catalog,
            config=self.config.brain, synchronous="NORMAL",
            new_id=lambda: uuid.UUID(int=ids.getrandbits(128), version=4),
        )  # fmt: skip
        sync = sync or self.config.sync
        agent = SyncAgent(
            brain, server_url=self.url or "http://127.0.0.1", device_id=device_id, token=self.token_for(device_id),
            tier=tier, config=sync, clock=self.clock, rng=random.Random(rng.random()),
            transport=self._transport(device_id, tier, sync), new_batch_id=lambda: batches.randbytes(16),
        )  # fmt: skip
        tv = TV(user, device_id, tier, brain, agent, phase_s=rng.uniform(0, policy_for(tier).interval_s))
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
        in_flight = report.outbox_pending > 0 or report.pull_more
        tv.not_before = 0.0 if in_flight else report.next_contribution_at
        return in_flight or self._queued(tv)

    def _next_sync(self, tv: TV) -> float:
        """The TV's next useful tick: the next one, or the first at/after its contribution moment."""
        return tv.next_tick(max(self.now, tv.not_before - 1e-6))

    @staticmethod
    def _queued(tv: TV) -> bool:
        """Unsent transition deltas, co-watched pairs or high-quality pattern versions remain."""
        outbox, queue = tv.agent.outbox, tv.brain.store.outbox
        return (queue.has_unsent_edges(outbox.config.min_edge_delta) or queue.has_unsent_cowatch()
                or outbox.queued_patterns() > 0)

    # ------------------------------------------------------------------ the replay

    def span_window(self, first_s: float, last_s: float) -> int:
        """Simulation only: the aggregator's contribution window widened to cover first_s..last_s (the
        replayed viewings) plus one epoch, so no replayed contribution expires; never narrowed."""
        policy = self.aggregator.policy
        need = int((last_s - first_s) * 1000 // policy.epoch_ms) + 2
        if need > policy.window_epochs:
            self.aggregator.policy = replace(policy, window_epochs=need)
        return self.aggregator.policy.window_epochs

    async def replay(
        self, events: Sequence[ViewingEvent], progress: Progress | None = None, *,
        probes: Sequence[tuple[float, Callable[[], Awaitable[None]]]] = (), hold: Mapping[int, float] | None = None,
    ) -> None:  # fmt: skip
        """Feed every event to its TV in time order, running each TV's syncs at its tier ticks in between.

        `probes`: (time, coroutine function) run once the clock reaches that time: after every sync due by
        then, before any later viewing (the evaluation's cold-start TVs). `hold`: user -> time before which
        that user's TV does not sync (offline: what it learned leaves it at its first tick after)."""
        if self.config.window_epochs is None and events:
            self.span_window(min(ev.timestamp for ev in events), max(ev.timestamp for ev in events))
        syncs: list[tuple[float, int, int]] = []  # (time, tie-break, user)
        scheduled: set[int] = set()
        counter = 0
        total = len(events)
        hold = hold or {}
        pending = sorted(probes, key=lambda p: p[0])
        next_probe = 0

        async def run_syncs_until(t: float) -> None:
            nonlocal counter
            while syncs and syncs[0][0] <= t:
                when, _, user = heapq.heappop(syncs)
                if when < hold.get(user, when):
                    counter += 1
                    heapq.heappush(syncs, (self.tvs[user].next_tick(hold[user]), counter, user))
                    continue
                scheduled.discard(user)
                await self.advance(when)
                tv = self.tvs[user]
                if self.config.defer_pulls:
                    with tv.brain.store.transaction():
                        state.set_cursor(tv.brain.store, self.service.head)
                    tv.deferred = True
                still = await self.sync(tv)
                tv.dirty = still
                if still:
                    counter += 1
                    heapq.heappush(syncs, (self._next_sync(tv), counter, user))
                    scheduled.add(user)

        async def run_probes_until(t: float) -> None:
            nonlocal next_probe
            while next_probe < len(pending) and pending[next_probe][0] <= t:
                when, probe = pending[next_probe]
                next_probe += 1
                await run_syncs_until(when)
                await self.advance(when)
                await probe()

        for done, ev in enumerate(events, 1):
            await run_probes_until(ev.timestamp)
            await run_syncs_until(ev.timestamp)
            await self.advance(float(ev.timestamp))
            tv = self.tvs.get(ev.user) or self.add_tv(ev.user)
            self.watch(tv, ev.content_id, ev.stars, float(ev.timestamp))
            if ev.user not in scheduled:
                counter += 1
                heapq.heappush(syncs, (self._next_sync(tv), counter, ev.user))
                scheduled.add(ev.user)
            if progress is not None and (done % 500 == 0 or done == total):
                progress(done, total)
        await run_probes_until(float("inf"))
        await run_syncs_until(float("inf"))

    async def catch_up(self, tvs: Iterable[TV] | None = None, progress: Progress | None = None) -> None:
        """Sync each TV until it holds everything published (what its idle syncs would have pulled).

        With `FleetConfig.copy_catch_up`, a TV whose replay pulls were deferred and that has nothing to send
        holds what the TV caught up before it pulled (`Brain.copy_pulled`) when the server's head has not
        moved since: it would pull the same pages from cursor 0 (the server serves them from its page cache)
        and merge them into the same tables. The first such TV, and the first after a push, pull for real.
        """
        chosen = list(self.tvs.values() if tvs is None else tvs)
        # The shard's periodic refinement job (hourly on a real server, on the wall clock) runs at a full
        # catch-up, on what is published then: the replay's simulated years would otherwise see it never
        # or constantly. A catch-up of a few TVs (cold start) pulls the release as it stands.
        head = self.service.head
        if (tvs is None or not self.service.refined.release) and head != self._refined_at:
            await self.service.refined.refresh()
            self._refined_at = head
        reference: tuple[TV, int] | None = None  # a TV that pulled everything from cursor 0, and the head then
        for done, tv in enumerate(chosen, 1):
            head = self.service.head
            if tv.deferred and reference is not None and reference[1] == head and self._idle(tv):
                source = reference[0]
                tv.brain.copy_pulled(source.brain)  # its own transaction (SQLite attaches outside one)
                with tv.brain.store.transaction():
                    state.set_cursor(tv.brain.store, state.cursor(source.brain.store))
                    state.set_refined_cursor(tv.brain.store, state.refined_cursor(source.brain.store))
                tv.deferred = False
            else:
                from_zero = tv.deferred
                if tv.deferred:
                    with tv.brain.store.transaction():
                        state.set_cursor(tv.brain.store, 0)
                    tv.deferred = False
                for _ in range(_MAX_CATCH_UP_SYNCS):
                    await self.sync(tv)
                    head = self.service.head
                    if state.cursor(tv.brain.store) >= head:
                        break
                if from_zero and self.config.copy_catch_up and state.cursor(tv.brain.store) >= head:
                    reference = (tv, head)
            if progress is not None:
                progress(done, len(chosen))

    def _idle(self, tv: TV) -> bool:
        """Nothing waits to be sent: a sync of this TV would only pull and heartbeat."""
        return tv.agent.outbox.pending_count() == 0 and not self._queued(tv)

    async def retire(self, tv: TV) -> None:
        """Take a TV out of the fleet: close its connection and brain (what it sent stays in the tap)."""
        self.tvs.pop(tv.user, None)
        try:
            await tv.agent.close()
        finally:
            tv.brain.close()

    def close(self) -> None:
        for tv in self.tvs.values():
            tv.brain.close()

    async def aclose(self) -> None:
        """Close every TV's connection and brain, then shut the server down (its lifespan closes the store)."""
        try:
            for tv in self.tvs.values():
                await tv.agent.close()
            self.close()
        finally:
            await self._stop_server()

    async def _stop_server(self) -> None:
        try:
            if self._http is not None:
                await self._http.aclose()
                self._http = None
        finally:
            if self.server is not None:
                server, self.server = self.server, None
                await server.stop()
            if self._lifespan is not None:
                stack, self._lifespan = self._lifespan, None
                await stack.aclose()
