"""A Redis connection that fails fast, and the outage state of a part that falls back without it.

The pull cache and the admission state both keep their state in Redis when it is
given and fall back to in-process state on any Redis error: one short timeout
(no client-side retries), then the in-process state for a cool-down before Redis
is tried again; logged once when an outage starts and once when it ends.
"""

from __future__ import annotations

import logging
import time

log = logging.getLogger("omega.serve")


class RedisLink:
    """The client (`redis`) and whether to try it now (`available`); `failed`/`ok` after each try.

    `role` and `fallback` name, in the outage log line, the part and what it uses meanwhile;
    `up_note` ends the line logged when Redis answers again.
    """

    def __init__(
        self, url: str, *, role: str, fallback: str, up_note: str, timeout_s: float = 0.25, cooldown_s: float = 5.0
    ) -> None:
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        # No client-side retries: a dead Redis must cost one short timeout, then the cool-down.
        self.redis = aioredis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
        )  # fmt: skip
        self.cooldown_s = cooldown_s
        self._role = role
        self._fallback = fallback
        self._up_note = up_note
        self._down_until = 0.0
        self._outage = False

    def available(self) -> bool:
        """False during the cool-down after a failure: use the in-process state without trying Redis."""
        return time.monotonic() >= self._down_until

    def failed(self, exc: BaseException) -> None:
        self._down_until = time.monotonic() + self.cooldown_s
        if not self._outage:
            self._outage = True
            log.warning("redis unavailable for %s (%s: %s); using %s, retrying every %.0f s",
                        self._role, type(exc).__name__, exc, self._fallback, self.cooldown_s)  # fmt: skip

    def ok(self) -> None:
        if self._outage:
            self._outage = False
            log.warning("redis is back; %s", self._up_note)

    async def close(self) -> None:
        try:
            await self.redis.aclose()
        except Exception:  # closing a dead connection must not fail shutdown
            pass
