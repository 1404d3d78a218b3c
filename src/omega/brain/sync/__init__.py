"""The TV's sync agent (docs/architecture.md §2 SyncAgent, §3, §4 Tiers): outbox, backoff, tiers, transports, agent."""

from omega.brain.sync.agent import SyncAgent
from omega.brain.sync.report import SyncFailed, SyncReport
from omega.brain.sync.backoff import Backoff
from omega.brain.sync.config import SyncConfig
from omega.brain.sync.outbox import Outbox, SealedBatch, push_frame_size
from omega.brain.sync.tiers import TierPolicy, TransportKind, parse_tier, policy_for, tier_name
from omega.brain.sync.transport import TransportError, endpoints, open_transport

__all__ = [
    "Backoff", "HttpTransport", "Outbox", "SealedBatch", "SyncAgent", "SyncConfig", "SyncFailed", "SyncReport",
    "TierPolicy", "TransportError", "TransportKind", "WebSocketTransport",
    "endpoints", "open_transport", "parse_tier", "policy_for", "push_frame_size", "tier_name",
]


def __getattr__(name: str) -> object:
    """`HttpTransport` and `WebSocketTransport` on first use: each imports its library (httpx, websockets), which a
    TV on the other tier never loads (see `omega.brain.sync.transport`)."""
    if name == "HttpTransport":
        from omega.brain.sync.http_transport import HttpTransport

        return HttpTransport
    if name == "WebSocketTransport":
        from omega.brain.sync.ws_transport import WebSocketTransport

        return WebSocketTransport
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
