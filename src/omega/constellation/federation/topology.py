"""Names of the federation's subjects and streams (one place, so deploy scripts can follow them).

Three JetStream streams carry the three hops; a message on any of them is an
encoded `FederatedState` delta (see omega.constellation.crdt):

| stream            | subjects                          | written by           | read by                |
|-------------------|-----------------------------------|----------------------|------------------------|
| `OMEGA_SHARD`     | `omega.fed.shard.<region>.<shard>`| each shard           | its region's aggregator|
| `OMEGA_REGION`    | `omega.fed.region.<region>`       | each region          | the hub                |
| `OMEGA_BROADCAST` | `omega.fed.global`                | the hub              | every shard            |

Tests use their own `prefix`/`stream_prefix` so they never touch real streams.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from omega.errors import OmegaError

# A subject token: no dots or wildcards (they would change which consumer sees the message).
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
DAY_S = 86_400.0


def check_name(kind: str, name: str) -> str:
    """A shard or region name usable as one subject token, else OmegaError."""
    if not isinstance(name, str) or not _TOKEN.match(name):
        raise OmegaError(f"{kind} name must be 1..64 characters of A-Z a-z 0-9 _ -, got {name!r}")
    return name


@dataclass(frozen=True)
class StreamSpec:
    name: str
    subjects: tuple[str, ...]


@dataclass(frozen=True)
class Topology:
    """Subject and stream names plus the stream settings every role creates them with.

    `max_age_s` must be longer than the roles' checkpoint interval (a full-state
    publish, default 1 h): a role restarted from its input stream rebuilds its
    state from what the stream still holds.
    """

    prefix: str = "omega.fed"
    stream_prefix: str = "OMEGA"
    replicas: int = 1  # 3 in production (a 3-node JetStream cluster); 1 for a single server
    max_age_s: float = DAY_S
    duplicate_window_s: float = 120.0  # Nats-Msg-Id dedupe window

    def __post_init__(self) -> None:
        if not 1 <= self.replicas <= 5:
            raise OmegaError(f"stream replicas must be 1..5, got {self.replicas}")
        if self.max_age_s < 0 or self.duplicate_window_s <= 0:
            raise OmegaError("max_age_s must be >= 0 and duplicate_window_s > 0")

    # ---- subjects -------------------------------------------------------------------
    def shard_subject(self, region: str, shard: str) -> str:
        return f"{self.prefix}.shard.{check_name('region', region)}.{check_name('shard', shard)}"

    def region_shards(self, region: str) -> str:
        """Filter matching every shard of one region."""
        return f"{self.prefix}.shard.{check_name('region', region)}.*"

    def region_subject(self, region: str) -> str:
        return f"{self.prefix}.region.{check_name('region', region)}"

    @property
    def all_regions(self) -> str:
        return f"{self.prefix}.region.*"

    @property
    def global_subject(self) -> str:
        return f"{self.prefix}.global"

    # ---- streams --------------------------------------------------------------------
    @property
    def shard_stream(self) -> str:
        return f"{self.stream_prefix}_SHARD"

    @property
    def region_stream(self) -> str:
        return f"{self.stream_prefix}_REGION"

    @property
    def broadcast_stream(self) -> str:
        return f"{self.stream_prefix}_BROADCAST"

    def streams(self) -> list[StreamSpec]:
        return [
            StreamSpec(self.shard_stream, (f"{self.prefix}.shard.>",)),
            StreamSpec(self.region_stream, (f"{self.prefix}.region.>",)),
            StreamSpec(self.broadcast_stream, (self.global_subject,)),
        ]
