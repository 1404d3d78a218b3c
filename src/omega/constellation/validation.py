"""Frame-level admission rules: the replay window and per-device rate limits (in-process).

Both keep per-device state in this process. A multi-worker deployment must pin
a device to one worker (`omega serve --pinned`: HAProxy `balance hdr(X-Omega-Device)`)
or move this state to Redis (admission.RedisAdmission); otherwise each worker has its
own window and bucket.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Reason codes for pushed items refused before aggregation (the aggregator has its own).
TOO_FEW_SAMPLES = "too_few_samples"  # uses < min_samples: too little evidence to share
STALE_CODEBOOK = "stale_codebook"  # cell-keyspace transitions numbered by another codebook version


class ReplayGuard:
    """Rejects frames whose timestamp is outside ±window of the server clock, or whose seq is not new.

    Per device it keeps the highest accepted seq and when it was seen; entries
    older than the window are forgotten (`sweep`), which is safe because any
    frame old enough to predate them fails the timestamp test anyway.
    """

    def __init__(self, window_ms: int) -> None:
        self.window_ms = int(window_ms)
        self._highest: dict[bytes, tuple[int, int]] = {}  # device -> (seq, server time seen)

    def check(self, device_id: bytes, seq: int, timestamp_ms: int, now_ms: int) -> str | None:
        """None if the frame is fresh (and record its seq), else a human-readable reason."""
        skew = timestamp_ms - now_ms
        if abs(skew) > self.window_ms:
            return f"timestamp is {skew / 1000:+.0f} s from the server clock (window ±{self.window_ms / 1000:.0f} s)"
        seen = self._highest.get(device_id)
        if seen is not None and now_ms - seen[1] <= self.window_ms and seq <= seen[0]:
            return f"seq {seq} is not above {seen[0]}, the highest seen from this device"
        self._highest[device_id] = (seq, now_ms)
        return None

    def sweep(self, now_ms: int) -> int:
        """Forget devices not seen within the window; returns how many."""
        stale = [d for d, (_, seen) in self._highest.items() if now_ms - seen > self.window_ms]
        for d in stale:
            del self._highest[d]
        return len(stale)

    def __len__(self) -> int:
        return len(self._highest)


@dataclass
class _Bucket:
    tokens: float
    at: float


class RateLimiter:
    """A token bucket per device: `rate` frames per second sustained, `burst` at once."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = float(rate)
        self.burst = int(burst)
        self._buckets: dict[bytes, _Bucket] = {}

    def take(self, device_id: bytes, now_s: float) -> int:
        """0 if a frame may pass now (and spend a token), else whole seconds until one may."""
        bucket = self._buckets.get(device_id)
        if bucket is None:
            bucket = self._buckets[device_id] = _Bucket(float(self.burst), now_s)
        else:
            bucket.tokens = min(float(self.burst), bucket.tokens + (now_s - bucket.at) * self.rate)
            bucket.at = now_s
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0
        return max(1, math.ceil((1.0 - bucket.tokens) / self.rate))

    def sweep(self, now_s: float) -> int:
        """Drop buckets that have refilled completely (they hold no information)."""
        full = [d for d, b in self._buckets.items() if b.tokens + (now_s - b.at) * self.rate >= self.burst]
        for d in full:
            del self._buckets[d]
        return len(full)
