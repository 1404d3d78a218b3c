"""Cross-shard federation: shard → regional aggregator → global hub → broadcast (docs/architecture.md §4 "Federation").

Over NATS JetStream at scale, over an in-process bus when embedded; the CRDT
(omega.constellation.crdt) makes duplicated, reordered and replayed messages harmless.
"""

from omega.constellation.federation.bus import Bus, BusMessage, InProcessBus, JetStreamBus, Subscription
from omega.constellation.federation.roles import GlobalHub, RegionAggregator, ShardFederation, StepReport
from omega.constellation.federation.runtime import (
    FederationHandle,
    start_embedded_federation,
    start_shard_federation,
)
from omega.constellation.federation.topology import Topology

__all__ = [
    "Bus",
    "BusMessage",
    "FederationHandle",
    "GlobalHub",
    "InProcessBus",
    "JetStreamBus",
    "RegionAggregator",
    "ShardFederation",
    "StepReport",
    "Subscription",
    "Topology",
    "start_embedded_federation",
    "start_shard_federation",
]
