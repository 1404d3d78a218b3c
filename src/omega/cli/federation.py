"""Federation services: `omega aggregator --region R` and `omega hub`, over NATS JetStream."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from typing import Annotated

import typer

NATS_HELP = "NATS server(s), comma-separated: nats://HOST:4222[,nats://…]"
REPLICAS_HELP = "replicas of streams this command creates (3 on a 3-node JetStream cluster); existing streams are kept"


# The options both services take.
Nats = Annotated[str, typer.Option("--nats", envvar="OMEGA_NATS", help=NATS_HELP)]
Replicas = Annotated[int, typer.Option("--replicas", envvar="OMEGA_NATS_REPLICAS", help=REPLICAS_HELP)]
SubjectPrefix = Annotated[str, typer.Option("--subject-prefix", hidden=True)]
StreamPrefix = Annotated[str, typer.Option("--stream-prefix", hidden=True)]


def aggregator(
    region: Annotated[str, typer.Option("--region", help="the region whose shards this aggregator merges")],
    nats: Nats,
    interval: Annotated[float, typer.Option("--interval", help="seconds between merges/publishes to the hub")] = 300.0,
    replicas: Replicas = 1,
    once: Annotated[bool, typer.Option("--once", help="replay the input stream, publish once and exit")] = False,
    subject_prefix: SubjectPrefix = "omega.fed",
    stream_prefix: StreamPrefix = "OMEGA",
) -> None:
    """Regional aggregator: merge the region's shards (CRDT) and publish the result to the hub."""
    from omega.constellation.federation import RegionAggregator

    topology = _topology(subject_prefix, stream_prefix, replicas)
    _serve(nats, lambda bus: RegionAggregator(bus, region, topology=topology, interval_s=interval), once)


def hub(
    nats: Nats,
    interval: Annotated[float, typer.Option("--interval", help="seconds between merges/global broadcasts")] = 900.0,
    replicas: Replicas = 1,
    once: Annotated[bool, typer.Option("--once", help="replay the input stream, broadcast once and exit")] = False,
    subject_prefix: SubjectPrefix = "omega.fed",
    stream_prefix: StreamPrefix = "OMEGA",
) -> None:
    """Global hub: merge every region and broadcast the consolidated state to all shards."""
    from omega.constellation.federation import GlobalHub

    topology = _topology(subject_prefix, stream_prefix, replicas)
    _serve(nats, lambda bus: GlobalHub(bus, topology=topology, interval_s=interval), once)


def register(root: typer.Typer) -> None:
    """Attach `omega aggregator` and `omega hub` to the root app."""
    root.command("aggregator")(aggregator)
    root.command("hub")(hub)


def _topology(subject_prefix: str, stream_prefix: str, replicas: int):  # noqa: ANN202
    from omega.constellation.federation import Topology

    return Topology(prefix=subject_prefix, stream_prefix=stream_prefix, replicas=replicas)


def _serve(nats_url: str, build, once: bool) -> None:  # noqa: ANN001
    """Connect, then step once (`--once`) or run until SIGINT/SIGTERM; progress goes to stderr."""
    from omega.constellation.federation import JetStreamBus

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")

    async def main() -> None:
        bus = await JetStreamBus.connect(nats_url)
        try:
            service = build(bus)
            await service.start()
            if once:
                report = await service.step()
                await service.close()
                print(f"{service.name}: {report}", file=sys.stderr)
                return
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            print(f"{service.name}: running every {service.interval_s:g} s on {nats_url}", file=sys.stderr)
            await service.run(stop)
        finally:
            await bus.close()

    asyncio.run(main())
