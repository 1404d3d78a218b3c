"""Hot cache of pull pages and distinct-device counts: in-process LRU, or Redis with fallback.

A page is cached under (store head, since cursor, budget): a push moves the
head, so pages for the old head are simply never asked for again (they expire
by TTL). A page computed at an older head is still correct, only less fresh:
its cursor is the head it was computed at, so a TV that commits it misses
nothing. Pages are opaque bytes here; the service stores them as frames
signed with a server-derived key, so a tampered Redis entry is never served.

RedisCache falls back to the in-process cache on any Redis error: it logs
once per outage, counts `omega_cache_fallbacks_total` per operation served by
the fallback, and tries Redis again after a cool-down.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Protocol

from omega.constellation.redis_link import RedisLink

HOUR_MS = 3_600_000


class PullCache(Protocol):
    backend: str

    async def get_page(self, head: int, since: int, budget: int) -> bytes | None: ...

    async def put_page(self, head: int, since: int, budget: int, page: bytes) -> None: ...

    async def note_head(self, head: int) -> int:
        """Record a store head seen by this worker; returns the highest head known (shared across workers)."""
        ...

    async def add_device(self, device_id: bytes, now_ms: int) -> None: ...

    async def distinct_devices(self, now_ms: int) -> int:
        """Distinct devices seen in the current hour window."""
        ...

    async def close(self) -> None: ...


class LocalCache:
    """In-process LRU with a TTL, and exact per-hour device sets (bounded)."""

    backend = "local"

    def __init__(self, entries: int = 4096, ttl_s: float = 30.0, max_devices: int = 1_000_000) -> None:
        self._pages: OrderedDict[tuple[int, int, int], tuple[float, bytes]] = OrderedDict()
        self._entries = entries
        self._ttl = ttl_s
        self._head = 0
        self._hour = -1
        self._devices: set[bytes] = set()
        self._max_devices = max_devices

    async def get_page(self, head: int, since: int, budget: int) -> bytes | None:
        hit = self._pages.get((head, since, budget))
        if hit is None:
            return None
        if hit[0] < time.monotonic():
            del self._pages[(head, since, budget)]
            return None
        self._pages.move_to_end((head, since, budget))
        return hit[1]

    async def put_page(self, head: int, since: int, budget: int, page: bytes) -> None:
        self._pages[(head, since, budget)] = (time.monotonic() + self._ttl, page)
        self._pages.move_to_end((head, since, budget))
        while len(self._pages) > self._entries:
            self._pages.popitem(last=False)

    async def note_head(self, head: int) -> int:
        self._head = max(self._head, head)
        return self._head

    async def add_device(self, device_id: bytes, now_ms: int) -> None:
        hour = now_ms // HOUR_MS
        if hour != self._hour:
            self._hour, self._devices = hour, set()
        if len(self._devices) < self._max_devices:
            self._devices.add(device_id[:8])

    async def distinct_devices(self, now_ms: int) -> int:
        return len(self._devices) if now_ms // HOUR_MS == self._hour else 0

    async def close(self) -> None:
        self._pages.clear()


class RedisCache:
    """Redis as the shared hot cache (pages with TTL, shared head, HyperLogLog per hour), LRU fallback."""

    backend = "redis"

    def __init__(
        self,
        url: str,
        *,
        namespace: str,
        fallback: LocalCache,
        on_fallback=None,  # noqa: ANN001  (called once per operation served by the fallback)
        ttl_s: float = 30.0,
        timeout_s: float = 0.25,
        cooldown_s: float = 5.0,
    ) -> None:
        self._link = RedisLink(url, role="the pull cache", fallback="the in-process cache", up_note="using it again",
                               timeout_s=timeout_s, cooldown_s=cooldown_s)  # fmt: skip
        self._redis = self._link.redis
        self._ns = namespace
        self.fallback = fallback
        self._on_fallback = on_fallback
        self._ttl_ms = max(1, int(ttl_s * 1000))
        self.redis_ops = 0  # operations Redis answered (tests and stats)
        self.fallback_ops = 0
        self._raise_head = self._redis.register_script(
            "local c = tonumber(redis.call('GET', KEYS[1]) or '0') "
            "local n = tonumber(ARGV[1]) "
            "if n > c then redis.call('SET', KEYS[1], ARGV[1]) return n end return c"
        )

    def _ok(self) -> None:
        self.redis_ops += 1
        self._link.ok()

    def _fell_back(self) -> None:
        self.fallback_ops += 1
        if self._on_fallback is not None:
            self._on_fallback()

    async def _call(self, op, fallback):  # noqa: ANN001, ANN202
        if self._link.available():
            try:
                result = await op()
            except Exception as exc:  # any Redis/socket/timeout failure: serve from the fallback
                self._link.failed(exc)
            else:
                self._ok()
                return result
        self._fell_back()
        return await fallback()

    def _page_key(self, head: int, since: int, budget: int) -> str:
        return f"{self._ns}:pull:{head}:{since}:{budget}"

    async def get_page(self, head: int, since: int, budget: int) -> bytes | None:
        async def op() -> bytes | None:
            return await self._redis.get(self._page_key(head, since, budget))

        return await self._call(op, lambda: self.fallback.get_page(head, since, budget))

    async def put_page(self, head: int, since: int, budget: int, page: bytes) -> None:
        async def op() -> None:
            await self._redis.set(self._page_key(head, since, budget), page, px=self._ttl_ms)

        await self._call(op, lambda: self.fallback.put_page(head, since, budget, page))

    async def note_head(self, head: int) -> int:
        local = await self.fallback.note_head(head)

        async def op() -> int:
            return max(local, int(await self._raise_head(keys=[f"{self._ns}:head"], args=[head])))

        async def fb() -> int:
            return local

        return await self._call(op, fb)

    async def add_device(self, device_id: bytes, now_ms: int) -> None:
        hour = now_ms // HOUR_MS

        async def op() -> None:
            key = f"{self._ns}:devices:{hour}"
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.pfadd(key, device_id)
                pipe.pexpire(key, 2 * HOUR_MS)
                await pipe.execute()

        await self._call(op, lambda: self.fallback.add_device(device_id, now_ms))

    async def distinct_devices(self, now_ms: int) -> int:
        async def op() -> int:
            return int(await self._redis.pfcount(f"{self._ns}:devices:{now_ms // HOUR_MS}"))

        return await self._call(op, lambda: self.fallback.distinct_devices(now_ms))

    async def close(self) -> None:
        await self._link.close()
        await self.fallback.close()
