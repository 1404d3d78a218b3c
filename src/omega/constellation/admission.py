"""Admission of an authenticated frame: the per-device rate limit and the replay window, in one step.

The service calls `admit` as soon as a frame's tag has verified (its header —
device, seq, timestamp — is then authentic) and before the body is inflated or
parsed, so a device that floods costs one HMAC per frame, never a decode.

`LocalAdmission` keeps the state in this process (validation.ReplayGuard and
RateLimiter). `RedisAdmission` keeps it in Redis — one Lua script, one round
trip per frame — so every worker of a shard and a restarted worker share it:
a captured frame accepted once is refused by all of them for the whole window.
On a Redis error it falls back to the in-process state (logged once per
outage, counted in `omega_cache_fallbacks_total`), like the pull cache.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from omega.constellation.redis_link import RedisLink
from omega.constellation.validation import RateLimiter, ReplayGuard

#: Width of a seq in Redis: zero-padded decimal, so Lua compares the full uint64 as a string.
_SEQ_DIGITS = 20


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a frame is refused: an error code, its message, and the seconds to wait (rate limit)."""

    code: str
    message: str
    retry_after: int | None = None


def _window_refusal(window_ms: int, timestamp_ms: int, now_ms: int) -> Refusal | None:
    skew = timestamp_ms - now_ms
    if abs(skew) > window_ms:
        return Refusal("replay", f"timestamp is {skew / 1000:+.0f} s from the server clock (window ±{window_ms / 1000:.0f} s)")
    return None


class Admission(Protocol):
    backend: str

    async def admit(self, device_id: bytes, seq: int, timestamp_ms: int, now_ms: int, bucket_s: float) -> Refusal | None:
        """None if the frame may be answered (a token is spent, its seq recorded), else why not."""
        ...

    def sweep(self, now_ms: int, bucket_s: float) -> None: ...

    async def close(self) -> None: ...


class LocalAdmission:
    """Rate limit then replay window, per device, in this process."""

    backend = "local"

    def __init__(self, rate_per_s: float, burst: int, window_ms: int) -> None:
        self.limiter = RateLimiter(rate_per_s, burst)
        self.replay = ReplayGuard(window_ms)

    async def admit(self, device_id: bytes, seq: int, timestamp_ms: int, now_ms: int, bucket_s: float) -> Refusal | None:
        return self.admit_now(device_id, seq, timestamp_ms, now_ms, bucket_s)

    def admit_now(self, device_id: bytes, seq: int, timestamp_ms: int, now_ms: int, bucket_s: float) -> Refusal | None:
        wait = self.limiter.take(device_id, bucket_s)
        if wait:
            return Refusal("rate_limited", f"too many frames from this device; retry in {wait} s", wait)
        why = self.replay.check(device_id, seq, timestamp_ms, now_ms)
        return None if why is None else Refusal("replay", why)

    def sweep(self, now_ms: int, bucket_s: float) -> None:
        self.replay.sweep(now_ms)
        self.limiter.sweep(bucket_s)

    async def close(self) -> None:
        pass


# KEYS: bucket hash, seq string. ARGV: now ms, rate per s, burst, seq (padded), window ms.
# Returns {0} admitted, {1, wait_s} rate limited, {2, highest seq} replayed.
_ADMIT_LUA = """
local now = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local burst = tonumber(ARGV[3])
local b = redis.call('HMGET', KEYS[1], 't', 'a')
local tokens = tonumber(b[1])
local at = tonumber(b[2])
if tokens == nil or at == nil then tokens = burst at = now end
if now > at then tokens = math.min(burst, tokens + (now - at) / 1000 * rate) end
local ttl = math.ceil(burst / rate * 1000) + 1000
if tokens < 1 then
  redis.call('HSET', KEYS[1], 't', tostring(tokens), 'a', tostring(math.max(now, at)))
  redis.call('PEXPIRE', KEYS[1], ttl)
  return {1, tostring(math.max(1, math.ceil((1 - tokens) / rate)))}
end
redis.call('HSET', KEYS[1], 't', tostring(tokens - 1), 'a', tostring(math.max(now, at)))
redis.call('PEXPIRE', KEYS[1], ttl)
local cur = redis.call('GET', KEYS[2])
if cur and cur >= ARGV[4] then return {2, cur} end
redis.call('SET', KEYS[2], ARGV[4], 'PX', ARGV[5])
return {0, ''}
"""


class RedisAdmission:
    """Rate limit and replay window shared by every worker through Redis; in-process fallback."""

    backend = "redis"

    def __init__(
        self,
        url: str,
        *,
        namespace: str,
        fallback: LocalAdmission,
        on_fallback: Callable[[], None] | None = None,
        timeout_s: float = 0.25,
        cooldown_s: float = 5.0,
    ) -> None:
        self._link = RedisLink(url, role="admission", fallback="in-process replay and rate state",
                               up_note="admission state is shared again", timeout_s=timeout_s, cooldown_s=cooldown_s)
        self._redis = self._link.redis
        self._ns = namespace
        self.fallback = fallback
        self._on_fallback = on_fallback
        self._script = self._redis.register_script(_ADMIT_LUA)
        self._rate = repr(float(fallback.limiter.rate))
        self._burst = str(fallback.limiter.burst)
        self._window_ms = fallback.replay.window_ms

    async def admit(self, device_id: bytes, seq: int, timestamp_ms: int, now_ms: int, bucket_s: float) -> Refusal | None:
        too_far = _window_refusal(self._window_ms, timestamp_ms, now_ms)
        if too_far is not None:
            return too_far
        if self._link.available():
            dev = device_id.hex()
            try:
                code, value = await self._script(
                    keys=[f"{self._ns}:rl:{dev}", f"{self._ns}:seq:{dev}"],
                    args=[now_ms, self._rate, self._burst, str(seq).zfill(_SEQ_DIGITS), self._window_ms],
                )
            except Exception as exc:  # any Redis/socket/timeout failure: this worker's own state
                self._link.failed(exc)
            else:
                self._link.ok()
                code = int(code)
                if code == 1:
                    wait = int(value)
                    return Refusal("rate_limited", f"too many frames from this device; retry in {wait} s", wait)
                if code == 2:
                    highest = int(value)
                    return Refusal("replay", f"seq {seq} is not above {highest}, the highest seen from this device")
                # This worker learns the seq too: during a later outage it still refuses this frame.
                self.fallback.replay.check(device_id, seq, timestamp_ms, now_ms)
                return None
        if self._on_fallback is not None:
            self._on_fallback()
        return self.fallback.admit_now(device_id, seq, timestamp_ms, now_ms, bucket_s)

    def sweep(self, now_ms: int, bucket_s: float) -> None:
        self.fallback.sweep(now_ms, bucket_s)

    async def close(self) -> None:
        await self._link.close()
