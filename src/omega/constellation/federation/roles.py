"""The three federation roles: shard → regional aggregator → global hub → broadcast back to shards.

Each role is a small asyncio service: `start()` subscribes, `step()` does one
round (tests call it directly instead of sleeping), `run(stop)` repeats it every
`interval_s` until the event is set, and `close()` unsubscribes.

- `ShardFederation` publishes its own CRDT entries changed since its watermark
  (its aggregator is their single writer) and merges the global broadcast into
  the served view with `aggregator.merge_remote` (a durable consumer, so a shard
  that was offline catches up on what it missed).
- `RegionAggregator` merges its shards' messages, `GlobalHub` merges the
  regions'; each publishes what changed since its last publish. Their state is
  only in memory: on (re)start they replay their input stream from its first
  message, which rebuilds exactly the state they had (CRDT merge), so there is
  no second copy to keep consistent.

Every role republishes its whole state once per `checkpoint_s` (default 1 h):
the streams keep `max_age` (24 h) of messages, and that checkpoint is what lets
a replay from the start of a stream rebuild everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from omega.constellation.aggregation import Aggregator
from omega.constellation.crdt import FederatedState, decode_delta
from omega.constellation.federation.bus import Bus, BusMessage, Subscription
from omega.constellation.federation.messages import encode_chunks, message_id
from omega.constellation.federation.topology import Topology, check_name
from omega.errors import OmegaError

log = logging.getLogger(__name__)

CHECKPOINT_S = 3600.0


@dataclass
class StepReport:
    """What one step did (counts of messages and CRDT entries)."""

    published: int = 0  # messages stored on the bus
    duplicates: int = 0  # messages the bus dropped as already seen (Nats-Msg-Id)
    received: int = 0  # messages consumed
    merged: int = 0  # entries that changed this role's state
    rejected: int = 0  # malformed or foreign-codebook messages skipped

    def __iadd__(self, other: StepReport) -> StepReport:
        self.published += other.published
        self.duplicates += other.duplicates
        self.received += other.received
        self.merged += other.merged
        self.rejected += other.rejected
        return self

    @property
    def busy(self) -> bool:
        return bool(self.published or self.received or self.rejected)


class _Service:
    """Schedule and lifecycle shared by the roles."""

    name: str

    def __init__(
        self, bus: Bus, topology: Topology, interval_s: float, checkpoint_s: float, clock: Callable[[], float]
    ) -> None:
        if not interval_s > 0 or not checkpoint_s > 0:
            raise OmegaError("federation interval and checkpoint period must be positive seconds")
        self.bus = bus
        self.topology = topology
        self.interval_s = float(interval_s)
        self.checkpoint_s = float(checkpoint_s)
        self._clock = clock
        self._last_full: float | None = None
        self._sub: Subscription | None = None

    async def start(self) -> None:
        if self._sub is None:
            await self.bus.ensure_streams(self.topology)
            self._sub = await self._subscribe()

    async def _subscribe(self) -> Subscription:
        raise NotImplementedError

    async def step(self) -> StepReport:
        raise NotImplementedError

    def _checkpoint_due(self) -> bool:
        """True (and restarts the period) when a full-state publish is due."""
        now = self._clock()
        if self._last_full is None or now - self._last_full >= self.checkpoint_s:
            self._last_full = now
            return True
        return False

    async def _publish_state(self, subject: str, state: FederatedState) -> StepReport:
        report = StepReport()
        for payload in encode_chunks(state):
            if await self.bus.publish(subject, payload, message_id(subject, payload)):
                report.published += 1
            else:
                report.duplicates += 1
        return report

    async def _receive(self, absorb: Callable[[FederatedState], object]) -> StepReport:
        """Pull everything pending and hand each decoded delta to `absorb` (sync or async)."""
        assert self._sub is not None, "call start() first"
        report = StepReport()

        async def handle(msg: BusMessage) -> None:
            report.received += 1
            try:
                result = absorb(decode_delta(msg.data))
                report.merged += int(await result if asyncio.iscoroutine(result) else result)  # type: ignore[arg-type]
            except OmegaError as exc:
                # A poison message must not block the stream forever: skip it (acked), say so.
                report.rejected += 1
                log.warning("%s: skipped federation message %s #%d: %s", self.name, msg.subject, msg.seq, exc)

        await self._sub.pull(handle)
        return report

    async def run(self, stop: asyncio.Event) -> None:
        """Step every `interval_s` until `stop` is set; a failing step (e.g. NATS down) is logged and retried."""
        await self.start()
        try:
            while not stop.is_set():
                try:
                    report = await self.step()
                    if report.busy:
                        log.info("%s: %s", self.name, report)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("%s: federation step failed; retrying in %.0f s", self.name, self.interval_s)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.interval_s)
        finally:
            await self.close()

    async def close(self) -> None:
        if self._sub is not None:
            sub, self._sub = self._sub, None
            await sub.close()


class ShardFederation(_Service):
    """One shard's side: publish own entries up to the region, merge the global broadcast down."""

    def __init__(
        self,
        aggregator: Aggregator,
        bus: Bus,
        region: str,
        *,
        topology: Topology | None = None,
        interval_s: float = 60.0,
        checkpoint_s: float = CHECKPOINT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(bus, topology or Topology(), interval_s, checkpoint_s, clock)
        self.aggregator = aggregator
        self.shard = check_name("shard", aggregator.origin)
        self.region = check_name("region", region)
        self.name = f"shard:{self.shard}"
        self.watermark = 0  # highest own version published (in memory: a restart republishes everything)

    async def _subscribe(self) -> Subscription:
        # Durable, named after the shard: a restarted shard resumes where it stopped.
        return await self.bus.subscribe(
            self.topology.broadcast_stream, self.topology.global_subject, durable=f"shard-{self.shard}"
        )

    async def publish(self) -> StepReport:
        since = 0 if self._checkpoint_due() else self.watermark
        state = await self.aggregator.export_state(since, origins=[self.shard])
        if not state.cells and not state.edges:
            return StepReport()
        report = await self._publish_state(self.topology.shard_subject(self.region, self.shard), state)
        # Only after every chunk is stored: a failed publish is retried from the old watermark.
        self.watermark = max(self.watermark, state.max_version(self.shard))
        return report

    async def receive(self) -> StepReport:
        return await self._receive(self.aggregator.merge_remote)

    async def step(self) -> StepReport:
        await self.start()
        report = await self.publish()
        report += await self.receive()
        return report


class _MergeRelay(_Service):
    """Merge every message of an input filter into one state; publish what changed to one subject."""

    def __init__(
        self, bus: Bus, topology: Topology | None, interval_s: float, checkpoint_s: float, clock: Callable[[], float]
    ) -> None:
        super().__init__(bus, topology or Topology(), interval_s, checkpoint_s, clock)
        self.name, self._input_stream, self._input_filter, self._output_subject = self._route()
        self.state = FederatedState()
        self._pending = FederatedState()  # entries that won a merge since the last publish

    def _route(self) -> tuple[str, str, str, str]:
        """(name, input stream, input filter, output subject) on `self.topology`."""
        raise NotImplementedError

    async def _subscribe(self) -> Subscription:
        # Ephemeral, from the stream's first message: a (re)started relay rebuilds its state by replay.
        return await self.bus.subscribe(self._input_stream, self._input_filter, durable=None)

    def absorb(self, incoming: FederatedState) -> int:
        """Merge a delta; returns how many entries changed. A delta of another codebook version is refused."""
        if not incoming.cells and not incoming.edges:
            return 0
        if self.state.cells or self.state.edges:
            if incoming.codebook_version != self.state.codebook_version:
                raise OmegaError(
                    f"delta for codebook version {incoming.codebook_version}, "
                    f"this {self.name} merges version {self.state.codebook_version}"
                )
        else:
            self.state.codebook_version = self._pending.codebook_version = incoming.codebook_version
        changed = 0
        for (origin, key), cell in incoming.cells.items():
            if self.state.put_cell(origin, key, cell):
                self._pending.put_cell(origin, key, cell)
                changed += 1
        for (origin, key), edge in incoming.edges.items():
            if self.state.put_edge(origin, key, edge):
                self._pending.put_edge(origin, key, edge)
                changed += 1
        return changed

    async def receive(self) -> StepReport:
        return await self._receive(self.absorb)

    async def publish(self) -> StepReport:
        out = self.state.copy() if self._checkpoint_due() else self._pending
        if not out.cells and not out.edges:
            return StepReport()
        report = await self._publish_state(self._output_subject, out)
        self._pending = FederatedState(self.state.codebook_version)
        return report

    async def step(self) -> StepReport:
        await self.start()
        report = await self.receive()
        report += await self.publish()
        return report


class RegionAggregator(_MergeRelay):
    """Merges the shards of one region and publishes the region's changes to the hub."""

    def __init__(
        self,
        bus: Bus,
        region: str,
        *,
        topology: Topology | None = None,
        interval_s: float = 300.0,
        checkpoint_s: float = CHECKPOINT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.region = check_name("region", region)
        super().__init__(bus, topology, interval_s, checkpoint_s, clock)

    def _route(self) -> tuple[str, str, str, str]:
        t = self.topology
        return f"region:{self.region}", t.shard_stream, t.region_shards(self.region), t.region_subject(self.region)


class GlobalHub(_MergeRelay):
    """Merges every region and broadcasts the global state's changes to all shards."""

    def __init__(
        self,
        bus: Bus,
        *,
        topology: Topology | None = None,
        interval_s: float = 900.0,
        checkpoint_s: float = CHECKPOINT_S,
        clock: Callable[[], float] = time.monotonic,
        name: str = "hub",
    ) -> None:
        self._hub_name = name
        super().__init__(bus, topology, interval_s, checkpoint_s, clock)

    def _route(self) -> tuple[str, str, str, str]:
        t = self.topology
        return self._hub_name, t.region_stream, t.all_regions, t.global_subject
