"""What one sync did (`SyncReport`) and how it stopped early (`SyncFailed`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from omega.errors import OmegaError

#: Error codes after which retrying with the same credentials is pointless.
AUTH_CODES = frozenset({"bad_signature", "unauthorized"})


class SyncFailed(OmegaError):
    """A sync stopped early. The outbox and cursor keep everything not acknowledged/committed."""

    def __init__(
        self,
        message: str,
        *,
        code: str = "transport",
        retry_after_s: float = 0.0,
        report: SyncReport | None = None,
        signed: bool = False,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.retry_after_s = retry_after_s
        self.report = report
        #: retry_after_s came in a reply verified under the device key (else anyone on the path could forge it).
        self.signed = signed

    @property
    def auth(self) -> bool:
        """The server refused our credentials: fix the token, don't hammer the server."""
        return self.code in AUTH_CODES


@dataclass
class SyncReport:
    """What one sync did. Byte counts are frames on the wire (uplink for push/heartbeat, downlink for pull)."""

    pushed_patterns: int = 0
    pushed_edges: int = 0
    push_bytes: int = 0
    pulled_patterns: int = 0
    pulled_edges: int = 0
    pull_bytes: int = 0
    heartbeat_bytes: int = 0
    duration_s: float = 0.0
    errors: list[str] = field(default_factory=list)
    batches_acked: int = 0
    #: This sync sealed the window's contribution (new batches may be 0 if nothing was learned).
    contributed: bool = False
    #: When the next contribution may be sealed (epoch seconds; 0: the schedule is off, every sync).
    next_contribution_at: float = 0.0
    #: Outbox batches retired before the cloud's idempotency window ends: re-sealed under a new id / dropped.
    batches_renewed: int = 0
    batches_expired: int = 0
    duplicates: int = 0
    rejected_patterns: int = 0
    pull_pages: int = 0
    #: The last page said more was waiting: the pull stopped at `max_pull_pages` and resumes next sync.
    pull_more: bool = False
    #: Pulled items skipped because this TV cannot store them (e.g. a cluster id beyond int64).
    skipped_items: int = 0
    cursor: int = 0
    outbox_pending: int = 0
    #: The server's HeartbeatAck hints (0: none).
    next_sync_s: float = 0.0
    retry_after_s: float = 0.0
    bytes_up: int = 0
    bytes_down: int = 0

    def to_dict(self) -> dict:
        return asdict(self)
