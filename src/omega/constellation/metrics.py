"""Prometheus metrics of one sync server (names fixed: deploy/grafana's dashboard queries them).

Each app gets its own CollectorRegistry, so tests can build several apps in one process.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from omega.protocol import SYNC_TIERS

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.connections = Gauge("omega_connections", "WebSocket connections held, by tier", ["tier"], registry=r)
        self.syncs = Counter("omega_syncs_total", "frames answered successfully, by kind", ["kind"], registry=r)
        self.rejections = Counter("omega_rejections_total", "refused frames and pushed items, by reason", ["reason"], registry=r)
        self.sync_latency = Histogram(
            "omega_sync_latency_seconds", "time to answer one frame", ["kind"], buckets=_LATENCY_BUCKETS, registry=r
        )
        self.store_latency = Histogram(
            "omega_store_latency_seconds", "time of one store operation", ["op"], buckets=_LATENCY_BUCKETS, registry=r
        )
        self.aggregation_lag = Gauge(
            "omega_aggregation_lag_seconds", "receipt of the last accepted push to its durable aggregate", registry=r
        )
        self.federation_lag = Gauge("omega_federation_lag_seconds", "age of the newest merged federation state", registry=r)
        self.bytes = Counter("omega_bytes_total", "frame bytes on the wire, by direction", ["direction"], registry=r)
        self.cache_fallbacks = Counter("omega_cache_fallbacks_total", "cache operations served in-process because Redis failed", registry=r)
        self.consolidated = Gauge("omega_consolidated_patterns", "consolidated cells in the served view", registry=r)
        self.connections_open = Gauge("omega_connections_open", "open client connections (HTTP and WebSocket)", registry=r)
        self.connections_refused = Counter(
            "omega_connections_refused_total", "connections closed as accepted: total_cap, ip_cap or fd_limit",
            ["reason"], registry=r,
        )  # fmt: skip
        self.connections_closed = Counter(
            "omega_connections_closed_total", "connections closed by a deadline: request_timeout or ws_auth_timeout",
            ["reason"], registry=r,
        )  # fmt: skip
        self.fd_exhaustion = Counter(
            "omega_fd_exhaustion_total", "connections refused because file descriptors ran out", registry=r
        )
        # Pre-create the label values the dashboard expects, so they show as 0 rather than missing.
        for kind in ("push", "pull", "heartbeat"):
            self.syncs.labels(kind)
        for direction in ("in", "out"):
            self.bytes.labels(direction)
        for tier in SYNC_TIERS:
            self.connections.labels(tier.label)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def sample(self, name: str, labels: dict[str, str] | None = None) -> float:
        """Current value of one sample (0.0 if absent): for tests and the bench."""
        value = self.registry.get_sample_value(name, labels or {})
        return 0.0 if value is None else float(value)
