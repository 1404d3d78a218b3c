"""`SyncConfig`: the tunables of the TV's sync agent (what to push, how big, how patient)."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from omega.errors import OmegaError
from omega.protocol import DEFAULT_PULL_BYTES, MAX_PATTERNS_PER_PUSH, MAX_TRANSITIONS, WEIGHT_SCALE


@dataclass(frozen=True, slots=True)
class SyncConfig:
    """What the sync agent pushes and pulls per sync, and its time limits.

    The quality thresholds (success >= 0.8, uses >= 10) come from BrainConfig;
    the rest decides how much of the queue goes into one push.
    """

    #: Bits per embedding dimension on the wire (4: 192 B per pattern, 8: 384 B).
    embedding_bits: int = 4
    #: Patterns per push and per sync (docs/architecture.md §2: <= 10).
    max_patterns_per_sync: int = MAX_PATTERNS_PER_PUSH
    #: Budget of one push frame; a push always carries at least one item even if over it.
    max_push_bytes: int = 1024
    #: Pushes (new or retried) per sync.
    max_batches_per_sync: int = 3
    #: Transition edges per push, largest delta first.
    max_edges_per_push: int = 48
    #: A queued pattern is pushed again only when its vector's cosine to the last
    #: pushed one falls below this, or its success statistics moved (below).
    resend_cosine: float = 0.98
    resend_success_delta: float = 0.05
    #: ...or its uses grew by this fraction since the last push.
    resend_uses_growth: float = 0.5
    #: Pages of consolidated deltas per sync (the rest waits for the next sync).
    max_pull_pages: int = 8
    pull_max_bytes: int = DEFAULT_PULL_BYTES
    #: Seconds to wait for one reply (and to open a connection).
    request_timeout_s: float = 10.0
    #: A signed reply is accepted only if its timestamp lies within this many seconds of the request's
    #: (the server's own replay window is +-300 s by default).
    reply_skew_s: float = 300.0
    #: Outbox batches older than this are retired (`Outbox.expire`): under the cloud's one-day
    #: idempotency window (`omega.constellation.aggregation`, replay_window_ms), with margin for clock skew.
    batch_ttl_s: float = 20 * 3600.0
    #: Contribution window (`omega.brain.sync.schedule`): what the TV learned is sealed at most once per
    #: window, at a random moment, never in the sync right after a viewing. 0: at every sync (tests, benchmarks).
    contribution_period_s: float = 86_400.0

    def __post_init__(self) -> None:
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise OmegaError(f"sync config: {what}")

        for f in fields(self):
            value = getattr(self, f.name)
            need(
                not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value),
                f"{f.name} must be a finite number, got {value!r}",
            )
        need(self.embedding_bits in (4, 8), f"embedding_bits must be 4 or 8, got {self.embedding_bits}")
        need(
            1 <= self.max_patterns_per_sync <= MAX_PATTERNS_PER_PUSH,
            f"max_patterns_per_sync must be in 1..{MAX_PATTERNS_PER_PUSH}",
        )
        need(256 <= self.max_push_bytes <= 16 * 1024, "max_push_bytes must be in 256..16384")
        need(1 <= self.max_batches_per_sync <= 100, "max_batches_per_sync must be in 1..100")
        need(0 <= self.max_edges_per_push <= MAX_TRANSITIONS, f"max_edges_per_push must be in 0..{MAX_TRANSITIONS}")
        need(-1.0 <= self.resend_cosine <= 1.0, "resend_cosine must be in [-1, 1]")
        need(0.0 <= self.resend_success_delta <= 1.0, "resend_success_delta must be in [0, 1]")
        need(self.resend_uses_growth >= 0.0, "resend_uses_growth must be >= 0")
        need(1 <= self.max_pull_pages <= 1000, "max_pull_pages must be in 1..1000")
        need(256 <= self.pull_max_bytes <= 16 * 1024, "pull_max_bytes must be in 256..16384")
        need(0.0 < self.request_timeout_s <= 600.0, "request_timeout_s must be in (0, 600]")
        need(1.0 <= self.reply_skew_s <= 86_400.0, "reply_skew_s must be in [1, 86400]")
        need(self.contribution_period_s == 0 or 60.0 <= self.contribution_period_s <= 7 * 86_400.0,
             "contribution_period_s must be 0 (every sync) or in [60, 604800]")  # fmt: skip
        need(60.0 <= self.batch_ttl_s <= 22 * 3600.0, "batch_ttl_s must be in [60, 79200] (under the cloud's one-day window)")

    @property
    def min_edge_delta(self) -> float:
        """The smallest transition weight the wire can carry (its fixed-point step)."""
        return 1.0 / WEIGHT_SCALE
