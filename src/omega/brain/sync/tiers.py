"""The three sync tiers (docs/architecture.md §4; seed §5.3), each with its transport, interval and reconnect policy.

- PREMIUM: one persistent WebSocket, a sync each minute; a dropped connection
  is retried at once, then with backoff (base 1 s).
- ACTIVE: an on-demand WebSocket (connect, sync, close) every 5 minutes; reconnect base 5 s.
- CASUAL: HTTP polling every 15 minutes; backoff base 30 s.

Schedules are jittered (±10 % by default) so TVs that started together drift
apart instead of syncing in lock-step.

A server's hints (`next_sync_s`, `retry_after_s`, Retry-After) are obeyed only up
to `max_hint_s`: ten intervals of the tier, never more than an hour, so a hostile
or broken reply cannot silence a TV for years.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from enum import Enum

from omega.brain.sync.backoff import Backoff
from omega.errors import OmegaError
from omega.protocol import SYNC_TIERS, Tier

#: No server hint makes a TV wait longer than this.
MAX_HINT_S = 3600.0
#: ...nor longer than this many of its tier's intervals.
HINT_INTERVALS = 10


class TransportKind(str, Enum):
    WS_PERSISTENT = "ws-persistent"
    WS_ON_DEMAND = "ws-on-demand"
    HTTP = "http"


@dataclass(frozen=True, slots=True)
class TierPolicy:
    """How one tier syncs: transport, interval, and reconnect policy."""

    tier: Tier
    transport: TransportKind
    interval_s: float
    backoff_base_s: float
    backoff_cap_s: float
    #: Retry the first failure immediately (only the persistent connection does).
    reconnect_immediately: bool = False
    #: Relative jitter of the interval: each wait is interval * uniform(1 - j, 1 + j).
    interval_jitter: float = 0.1

    def __post_init__(self) -> None:
        if not self.interval_s > 0:
            raise OmegaError(f"sync interval must be positive, got {self.interval_s!r}")
        if not 0 < self.backoff_base_s <= self.backoff_cap_s:
            raise OmegaError("backoff needs 0 < base <= cap")
        if not 0 <= self.interval_jitter < 1:
            raise OmegaError("interval_jitter must be in [0, 1)")

    @property
    def max_hint_s(self) -> float:
        """The longest pause a signed server hint can impose: ten intervals, at most an hour."""
        return min(MAX_HINT_S, HINT_INTERVALS * self.interval_s)

    def clamp_hint(self, hint_s: float) -> float:
        """A signed server hint (seconds) as obeyed: 0 for none or nonsense, else at most `max_hint_s`."""
        try:
            value = float(hint_s)
        except (TypeError, ValueError):
            return 0.0
        if not value > 0:  # also NaN
            return 0.0
        return min(value, self.max_hint_s)

    def backoff(self, rng: random.Random | None = None) -> Backoff:
        return Backoff(self.backoff_base_s, self.backoff_cap_s, rng=rng, first_immediate=self.reconnect_immediately)

    def next_sync_delay(self, rng: random.Random, server_hint_s: float = 0.0) -> float:
        """Seconds until the next sync after a success; a server's next_sync_s hint replaces the interval.

        The hint is clamped (`clamp_hint`) and so is the jittered wait it gives.
        """
        hint = self.clamp_hint(server_hint_s)
        base = hint if hint > 0 else self.interval_s
        delay = base * rng.uniform(1.0 - self.interval_jitter, 1.0 + self.interval_jitter)
        return min(delay, self.max_hint_s) if hint > 0 else delay

    def first_sync_delay(self, rng: random.Random) -> float:
        """A daemon's first sync lands anywhere in the first interval's jitter band, not at start-up."""
        return rng.uniform(0.0, self.interval_s * self.interval_jitter)

    def with_interval(self, interval_s: float) -> TierPolicy:
        return replace(self, interval_s=float(interval_s))


_POLICIES: dict[Tier, TierPolicy] = {
    Tier.PREMIUM: TierPolicy(Tier.PREMIUM, TransportKind.WS_PERSISTENT, 60.0, 1.0, 60.0, reconnect_immediately=True),
    Tier.ACTIVE: TierPolicy(Tier.ACTIVE, TransportKind.WS_ON_DEMAND, 300.0, 5.0, 300.0),
    Tier.CASUAL: TierPolicy(Tier.CASUAL, TransportKind.HTTP, 900.0, 30.0, 900.0),
}
TIER_NAMES: dict[str, Tier] = {tier.label: tier for tier in SYNC_TIERS}


def policy_for(tier: Tier) -> TierPolicy:
    """The default policy of a tier."""
    try:
        return _POLICIES[Tier(tier)]
    except (KeyError, ValueError):
        raise OmegaError(f"no sync policy for tier {tier!r}; use premium, active or casual") from None


def parse_tier(text: str) -> Tier:
    """'premium' | 'active' | 'casual' (any case) -> Tier."""
    tier = TIER_NAMES.get(str(text).strip().lower())
    if tier is None:
        raise OmegaError(f"tier must be one of {', '.join(TIER_NAMES)}, got {text!r}")
    return tier


def tier_name(tier: Tier) -> str:
    return {v: k for k, v in TIER_NAMES.items()}[Tier(tier)]
