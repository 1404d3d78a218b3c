"""The lifespan of one shard's server: open the store and everything around it, run the background jobs.

Beside the routes it runs the trend tracker (fed by the aggregator), federation
rounds when `--nats` is set, housekeeping and the dashboard's counter sampling
(see shard_services and dashboard). On shutdown it drains, stops them in
order (a last federation round first) and closes the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable

from starlette.applications import Starlette

from omega.constellation.admission import Admission, LocalAdmission, RedisAdmission
from omega.constellation.aggregation import AggregationPolicy, Aggregator
from omega.constellation.cache import LocalCache, PullCache, RedisCache
from omega.constellation.codebook import Codebook, placeholder_codebook
from omega.constellation.dashboard import Dashboard, ShardFacts
from omega.constellation.item_graph import REFRESH_S
from omega.constellation.metrics import ServerMetrics
from omega.constellation.server_state import ServerState
from omega.constellation.service import SyncService
from omega.constellation.settings import ServerSettings
from omega.constellation.shard_services import close_trends, open_trends, start_federation
from omega.constellation.store import open_store
from omega.errors import OmegaError

log = logging.getLogger("omega.serve")

_PAGE_KEY_LABEL = b"omega/pull-page-cache/v1"
DASHBOARD_TICK_S = 2.0  # counter sampling for the dashboard's rates; trend windows are closed on it too


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    """Starlette's lifespan: the shard runs while the app serves."""
    state: ServerState = app.state.omega
    started = False
    try:
        async with run_shard(state):
            started = True
            yield
    except OmegaError as exc:
        if not started:  # bad configuration or an unreachable service: the CLI reports it as one line
            state.startup_error = exc
        raise


def load_codebook(settings: ServerSettings) -> Codebook:
    if settings.codebook:
        return Codebook.load(settings.codebook)
    codebook = placeholder_codebook()
    log.warning("no codebook configured: using a seeded placeholder codebook (k=%d); "
                "build one with `omega codebook build`", codebook.k)  # fmt: skip
    return codebook


@contextlib.asynccontextmanager
async def run_shard(state: ServerState) -> AsyncIterator[None]:
    """Open the store, aggregator, cache, trends, service and federation into `state`; close them on exit."""
    settings = state.settings
    codebook = load_codebook(settings)
    # --shard-id names the store's origin (an existing store refuses another), which federation requires.
    store = await open_store(settings.store, origin=settings.shard_id)
    tasks: list[asyncio.Task] = []
    cache: PullCache | None = None
    admission: Admission | None = None
    try:
        policy = AggregationPolicy(k_min=settings.k_min, w_max=settings.w_max,
                                   dp_epsilon=settings.dp_epsilon or None, dp_delta=settings.dp_delta)  # fmt: skip
        aggregator = await Aggregator.open(store, codebook, state.salt, policy,
                                           clock_ms=lambda: int(state.clock() * 1000))  # fmt: skip
        cache = await _open_cache(settings, state.metrics, f"omega:{store.origin}")
        state.trends = aggregator.trends = open_trends(settings, store.origin, state.metrics.cache_fallbacks.inc)
        page_key = hmac.new(state.salt, _PAGE_KEY_LABEL, hashlib.sha256).digest()
        admission = _open_admission(settings, state.metrics, f"omega:{store.origin}")
        service = SyncService(aggregator, state.keyring, settings, state.metrics, cache, page_key=page_key,
                              clock=state.clock, admission=admission)  # fmt: skip
        await service.housekeeping()  # prune what expired while down; head and gauges
        await service.refined.refresh()
        state.service = service
        facts = ShardFacts(store.origin, settings.region, "sqlite" if settings.store.startswith("sqlite:") else
                           "postgresql", codebook.version, codebook.k, cache.backend, settings.trend_window_s)  # fmt: skip
        state.dashboard = Dashboard(facts, state.metrics, aggregator, state.trends)
        state.dashboard.tick()
        if state.periodic:
            tasks.append(asyncio.create_task(_every(settings.prune_interval_s, service.housekeeping, "housekeeping")))
            tasks.append(asyncio.create_task(_every(DASHBOARD_TICK_S, lambda: _tick(state), "dashboard tick")))
            tasks.append(asyncio.create_task(_every(REFRESH_S, service.refined.refresh, "refined neighbours")))
        # Merged remote entries change the served view: refresh the head and the consolidated gauge.
        state.federation = await start_federation(aggregator, settings, on_merged=service.housekeeping)
        if state.federation is not None:
            state.metrics.federation_lag.set_function(state.federation.lag_s)
        state.ready = True
        log.info("store %s (origin %s, region %s), codebook v%d k=%d, cache %s, federation %s",
                 settings.store.split("@")[-1], store.origin, settings.region, codebook.version, codebook.k,
                 cache.backend, f"over {_without_credentials(settings.nats)}" if state.federation else "off")  # fmt: skip
        yield
    finally:
        state.ready = False
        if state.connections or state.in_flight:
            await state.drain()
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if state.federation is not None:
            await state.federation.stop()  # a last round first: recent pushes leave before we go
        if state.trends is not None:
            await close_trends(state.trends)
        if cache is not None:
            await cache.close()
        if admission is not None:
            await admission.close()
        await store.close()
        log.info("store closed")


async def _open_cache(settings: ServerSettings, metrics: ServerMetrics, namespace: str) -> PullCache:
    local = LocalCache(settings.cache_entries, settings.cache_ttl_s)
    if not settings.redis:
        return local
    cache = RedisCache(
        settings.redis, namespace=namespace, fallback=local, on_fallback=metrics.cache_fallbacks.inc,
        ttl_s=settings.cache_ttl_s, timeout_s=settings.redis_timeout_s, cooldown_s=settings.redis_cooldown_s,
    )  # fmt: skip
    await cache.note_head(0)  # probes Redis: a failure here is logged and falls back, never fatal
    return cache


def _open_admission(settings: ServerSettings, metrics: ServerMetrics, namespace: str) -> Admission:
    """Rate limit and replay window: in this process, or shared by every worker through --redis."""
    local = LocalAdmission(settings.rate_per_s, settings.rate_burst, int(settings.replay_window_s * 1000))
    if not settings.redis:
        return local
    return RedisAdmission(settings.redis, namespace=namespace, fallback=local, on_fallback=metrics.cache_fallbacks.inc,
                          timeout_s=settings.redis_timeout_s, cooldown_s=settings.redis_cooldown_s)  # fmt: skip


def _without_credentials(urls: str | None) -> str:
    """URLs as they may be logged: `nats://user:pass@host` → `nats://host`."""
    return re.sub(r"//[^@/,]*@", "//", urls or "")


async def _every(interval_s: float, job: Callable[[], Awaitable[object] | object], name: str) -> None:
    while True:
        await asyncio.sleep(interval_s)
        try:
            result = job()
            if asyncio.iscoroutine(result):
                await result
        except Exception:  # keep serving; the next round retries
            log.exception("%s failed", name)


async def _tick(state: ServerState) -> None:
    if state.dashboard is not None:
        state.dashboard.tick()
    if state.trends is not None:
        await state.trends.advance(state.now_ms())  # closes trend windows even when no push arrives
