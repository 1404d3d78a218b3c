"""What crosses the simulated wire: the tap that records every uplink frame, and the socket-free transport.

`WireTap` keeps every uplink frame (for the wire audit) and counts downlink bytes; `TappedTransport`
wraps a TV's real transport to feed it; `ServiceTransport` hands a frame straight to `SyncService.handle`
(the fleet's "direct" mode).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from omega.brain.sync.transport import Reply, Transport
from omega.constellation.service import SyncService


@dataclass
class WireTap:
    """Every uplink frame that crossed the wire, as bytes, and how many bytes came down."""

    uplink: list[tuple[bytes, bytes]] = field(default_factory=list)  # (device id, frame)
    #: downlink bytes only (the audit reads the uplink; a full run's pull pages would be ~200 MB held)
    downlink_bytes: int = 0


class TappedTransport:
    """A transport that records the bytes of every exchange of the transport it wraps."""

    def __init__(self, inner: Transport, device_id: bytes, tap: WireTap) -> None:
        self.inner = inner
        self.device_id = device_id
        self.tap = tap

    async def exchange(self, data: bytes) -> Reply:
        self.tap.uplink.append((self.device_id, data))
        reply = await self.inner.exchange(data)
        self.tap.downlink_bytes += len(reply.data)
        return reply

    async def close(self) -> None:
        await self.inner.close()


class ServiceTransport:
    """No sockets: a frame goes straight to `SyncService.handle`, as the server's POST /v1/sync would pass it."""

    def __init__(self, service: SyncService) -> None:
        self.service = service

    async def exchange(self, data: bytes) -> Reply:
        reply = await self.service.handle(data)
        return Reply(reply.body, reply.status, float(reply.retry_after or 0))

    async def close(self) -> None:
        return None
