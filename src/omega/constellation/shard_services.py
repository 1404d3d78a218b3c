"""Background services a shard's sync server runs beside its routes: trend windows and federation rounds.

- Trends: a `TrendTracker` fed by the aggregator (accepted cells' member
  hashes). With Redis the distinct counts are HyperLogLogs shared by every worker
  of the shard; a Redis outage falls back to in-process counting, so it can
  degrade trend counts but never fail a push.
- Federation (only with `--nats`): one round every `federation_interval_s`
  publishes this shard's changed CRDT entries and merges the global broadcast.
  Without NATS there is nobody to federate with: a single shard's own entries
  already are its served view (and the in-process bus would keep every message
  in memory for the life of the server), so nothing runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from omega.constellation.aggregation import Aggregator
from omega.constellation.crdt import CellKey
from omega.constellation.federation import FederationHandle, StepReport, Topology, start_shard_federation
from omega.constellation.settings import ServerSettings
from omega.constellation.trends import DistinctCounter, ExactCounter, RedisHLLCounter, TrendTracker

log = logging.getLogger("omega.serve")

FINAL_ROUND_TIMEOUT_S = 5.0


# ---- trends ---------------------------------------------------------------------------
class FallbackCounter(DistinctCounter):
    """Redis HyperLogLog counts with an in-process fallback while Redis fails (then a cool-down before retrying).

    During an outage the devices seen are counted locally and added to whatever
    Redis still reports for the window (a device counted in both is counted
    twice: an overestimate bounded by the outage). `forget` leaves the Redis keys
    to their TTL, because other workers of the shard may not have scored that
    window yet.
    """

    def __init__(self, primary: DistinctCounter, *, cooldown_s: float = 5.0,
                 on_fallback: Callable[[], object] | None = None) -> None:  # fmt: skip
        self.primary = primary
        self.local = ExactCounter()
        self._cooldown_s = cooldown_s
        self._down_until = 0.0
        self._on_fallback = on_fallback
        self.fallbacks = 0

    def _available(self) -> bool:
        return time.monotonic() >= self._down_until

    def _failed(self, exc: BaseException) -> None:
        if self._down_until == 0.0 or time.monotonic() >= self._down_until:
            log.warning("trend counts: redis failed (%s: %s); counting in-process for %.0f s",
                        type(exc).__name__, exc, self._cooldown_s)  # fmt: skip
        self._down_until = time.monotonic() + self._cooldown_s

    def _fell_back(self) -> None:
        self.fallbacks += 1
        if self._on_fallback is not None:
            self._on_fallback()

    async def add(self, window: int, items: Sequence[tuple[CellKey, bytes]]) -> None:
        if self._available():
            try:
                await self.primary.add(window, items)
                return
            except Exception as exc:  # any Redis/socket/timeout failure
                self._failed(exc)
        self._fell_back()
        await self.local.add(window, items)

    async def counts(self, window: int) -> dict[CellKey, int]:
        local = await self.local.counts(window)
        remote: dict[CellKey, int] = {}
        if self._available():
            try:
                remote = await self.primary.counts(window)
            except Exception as exc:
                self._failed(exc)
                self._fell_back()
        return {cell: remote.get(cell, 0) + local.get(cell, 0) for cell in remote.keys() | local.keys()}

    async def forget(self, window: int) -> None:
        await self.local.forget(window)

    async def close(self) -> None:
        close = getattr(self.primary, "close", None)
        if close is not None:
            with contextlib.suppress(Exception):
                await close()


def open_trends(settings: ServerSettings, origin: str, on_fallback: Callable[[], object] | None = None) -> TrendTracker:
    """The shard's trend tracker: exact in-process sets, or Redis HLL (per-shard keys) with a fallback."""
    counter: DistinctCounter | None = None
    if settings.redis:
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        # As the pull cache: no client retries, short timeouts, so a dead Redis costs one timeout per cool-down.
        client = aioredis.Redis.from_url(
            settings.redis, socket_timeout=settings.redis_timeout_s, socket_connect_timeout=settings.redis_timeout_s,
            retry=Retry(NoBackoff(), 0), health_check_interval=0,
        )  # fmt: skip
        primary = RedisHLLCounter(client, prefix=f"omega:{origin}:trends")
        counter = FallbackCounter(primary, cooldown_s=settings.redis_cooldown_s, on_fallback=on_fallback)
    return TrendTracker(window_s=settings.trend_window_s, counter=counter)


async def close_trends(tracker: TrendTracker) -> None:
    close = getattr(tracker.counter, "close", None)
    if close is not None:
        await close()


# ---- federation -----------------------------------------------------------------------
def federation_topology(settings: ServerSettings) -> Topology:
    return Topology(prefix=settings.federation_prefix, stream_prefix=settings.federation_stream_prefix,
                    replicas=settings.federation_replicas)  # fmt: skip


class FederationLoop:
    """Federation rounds on a timer, with what the dashboard and `omega_federation_lag_seconds` show.

    Lag is the time since this shard last completed a round (published its
    changes and merged the global broadcast): how stale its view of the other
    shards can be. A failing round (NATS down) is logged and retried next interval.
    """

    def __init__(self, handle: FederationHandle, interval_s: float, *, mode: str = "nats",
                 on_merged: Callable[[], Awaitable[None]] | None = None) -> None:  # fmt: skip
        self.handle = handle
        self.interval_s = float(interval_s)
        self.mode = mode
        self._on_merged = on_merged
        self.started = time.monotonic()
        self.last_ok: float | None = None
        self.last_error: str | None = None
        self.rounds = 0
        self.failures = 0
        self.totals = StepReport()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def lag_s(self) -> float:
        return time.monotonic() - (self.last_ok if self.last_ok is not None else self.started)

    async def round(self) -> StepReport:
        """One round now (also what the timer runs); errors propagate."""
        report = await self.handle.sync_once()
        self.rounds += 1
        self.last_ok = time.monotonic()
        self.last_error = None
        self.totals += report
        if report.busy:
            log.info("federation round: %s", report)
        if report.merged and self._on_merged is not None:
            await self._on_merged()
        return report

    async def _run(self) -> None:
        while not self._stop.is_set():
            try:
                await self.round()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.failures += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("federation round failed (%s); retrying in %.0f s", self.last_error, self.interval_s)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.interval_s)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="federation")

    async def stop(self) -> None:
        """Stop the timer, run a last round (bounded) so recent pushes leave, then close the bus."""
        self._stop.set()
        if self._task is not None:
            await self._task
            self._task = None
        try:
            await asyncio.wait_for(self.round(), FINAL_ROUND_TIMEOUT_S)
        except Exception as exc:  # shutting down anyway: the next start republishes from its watermark
            log.warning("final federation round failed: %s: %s", type(exc).__name__, exc)
        for service in self.handle.services:
            with contextlib.suppress(Exception):
                await service.close()
        try:  # closing drains the NATS connection: bounded, so a dead NATS cannot hold up the exit
            await asyncio.wait_for(self.handle.stop(), FINAL_ROUND_TIMEOUT_S)
        except Exception as exc:
            log.warning("closing the federation bus failed: %s: %s", type(exc).__name__, exc)

    def to_json(self) -> dict[str, object]:
        return {
            "mode": self.mode,
            "interval_s": self.interval_s,
            "lag_s": round(self.lag_s(), 3),
            "rounds": self.rounds,
            "failures": self.failures,
            "last_error": self.last_error,
            "published": self.totals.published,
            "received": self.totals.received,
            "merged": self.totals.merged,
            "rejected": self.totals.rejected,
        }


async def start_federation(
    aggregator: Aggregator, settings: ServerSettings, on_merged: Callable[[], Awaitable[None]] | None = None
) -> FederationLoop | None:
    """Connect this shard to the NATS federation of `settings` and start its rounds; None without `--nats`.

    Fails with OmegaError when NATS is unreachable at start (a misconfiguration is
    reported, not hidden); later outages are ridden out by reconnecting.
    """
    if not settings.nats:
        return None
    handle = await start_shard_federation(
        aggregator, settings.nats, settings.shard_id, settings.region, settings.federation_interval_s,
        topology=federation_topology(settings), run=False,
    )  # fmt: skip
    loop = FederationLoop(handle, settings.federation_interval_s, on_merged=on_merged)
    loop.start()
    return loop
