"""Starting federation inside a server process: over NATS, or embedded over an in-process bus."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

from omega.constellation.aggregation import Aggregator
from omega.constellation.federation.bus import Bus, InProcessBus, JetStreamBus
from omega.constellation.federation.roles import GlobalHub, RegionAggregator, ShardFederation, StepReport
from omega.constellation.federation.topology import Topology
from omega.errors import OmegaError


@dataclass
class FederationHandle:
    """Running federation services; `await stop()` ends them (and closes the bus if it was opened here)."""

    bus: Bus
    shards: list[ShardFederation]
    regions: list[RegionAggregator] = field(default_factory=list)
    hub: GlobalHub | None = None
    owns_bus: bool = True
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def services(self) -> list[ShardFederation | RegionAggregator | GlobalHub]:
        return [*self.shards, *self.regions, *([self.hub] if self.hub else [])]

    async def sync_once(self) -> StepReport:
        """One full round now, in dependency order: shards up, regions, hub, shards down."""
        report = StepReport()
        for shard in self.shards:
            await shard.start()
            report += await shard.publish()
        for relay in [*self.regions, *([self.hub] if self.hub else [])]:
            report += await relay.step()
        for shard in self.shards:
            report += await shard.receive()
        return report

    def _launch(self) -> None:
        self._tasks = [asyncio.create_task(s.run(self._stop), name=s.name) for s in self.services]

    async def stop(self) -> None:
        self._stop.set()
        results = await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self.owns_bus:
            await self.bus.close()
        for r in results:
            if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError):
                raise r


async def start_shard_federation(
    aggregator: Aggregator,
    nats_url: str | None,
    shard_id: str | None,
    region: str,
    interval_s: float = 60.0,
    *,
    topology: Topology | None = None,
    run: bool = True,
) -> FederationHandle:
    """Federate one shard. With `nats_url`, over JetStream (regions and hub run as `omega aggregator`/`omega hub`);
    without, embedded: the region and hub run in this process over an in-process bus.

    `shard_id`, when given, must be the store's origin (the single writer of its entries).
    With `run=False` nothing is scheduled: call `handle.sync_once()` yourself.
    """
    if shard_id is not None and shard_id != aggregator.origin:
        raise OmegaError(f"--shard-id {shard_id!r} does not match the store's origin {aggregator.origin!r}")
    topology = topology or Topology()
    if nats_url is None:
        return await start_embedded_federation([(aggregator, region)], interval_s, topology=topology, run=run)
    bus = await JetStreamBus.connect(nats_url, name=f"omega-shard-{aggregator.origin}")
    try:
        shard = ShardFederation(aggregator, bus, region, topology=topology, interval_s=interval_s)
        await shard.start()
    except BaseException:
        await bus.close()
        raise
    handle = FederationHandle(bus, [shard])
    if run:
        handle._launch()
    return handle


async def start_embedded_federation(
    shards: Sequence[tuple[Aggregator, str]],
    interval_s: float = 60.0,
    *,
    region_interval_s: float | None = None,
    hub_interval_s: float | None = None,
    topology: Topology | None = None,
    run: bool = True,
) -> FederationHandle:
    """Shards (aggregator, region), one aggregator per region and a hub, all in this process on an InProcessBus."""
    if not shards:
        raise OmegaError("embedded federation needs at least one shard")
    topology = topology or Topology()
    bus = InProcessBus()
    shard_roles = [ShardFederation(agg, bus, region, topology=topology, interval_s=interval_s) for agg, region in shards]
    regions = [
        RegionAggregator(bus, region, topology=topology, interval_s=region_interval_s or interval_s)
        for region in sorted({region for _, region in shards})
    ]
    hub = GlobalHub(bus, topology=topology, interval_s=hub_interval_s or interval_s)
    handle = FederationHandle(bus, shard_roles, regions, hub)
    for service in handle.services:
        await service.start()
    if run:
        handle._launch()
    return handle


__all__ = ["FederationHandle", "start_embedded_federation", "start_shard_federation"]