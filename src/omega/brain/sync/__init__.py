"""The TV's sync agent (docs/architecture.md §2 SyncAgent, §3, §4 Tiers): outbox, backoff, tiers, transports, agent."""

from omega.brain.sync.agent import SyncAgent
from omega.brain.sync.report import SyncFailed, SyncReport
from omega.brain.sync.backoff import Backoff
from omega.brain.sync.config import SyncConfig
from omega.brain.sync.outbox import Outbox, SealedBatch, push_frame_size
from omega.brain.sync.tiers import TierPolicy, TransportKind, parse_tier, policy_for, tier_name
from omega.brain.sync.transport import HttpTransport, TransportError, WebSocketTransport, endpoints, open_transport

__all__ = [
    "Backoff", "HttpTransport", "Outbox", "SealedBatch", "SyncAgent", "SyncConfig", "SyncFailed", "SyncReport",
    "TierPolicy", "TransportError", "TransportKind", "WebSocketTransport",
    "endpoints", "open_transport", "parse_tier", "policy_for", "push_frame_size", "tier_name",
]
