"""Static checks of deploy/ (docker is not available on the build machine, so nothing is started)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
METRICS = {
    "omega_connections", "omega_syncs_total", "omega_rejections_total", "omega_sync_latency_seconds",
    "omega_store_latency_seconds", "omega_aggregation_lag_seconds", "omega_federation_lag_seconds",
    "omega_bytes_total", "omega_cache_fallbacks_total", "omega_consolidated_patterns",
}
SERVICES = {"sync-worker", "haproxy", "pg-primary", "pg-replica-1", "pg-replica-2", "redis",
            "nats-1", "nats-2", "nats-3", "nats-init", "prometheus", "grafana"}
_HISTOGRAM_SUFFIX = re.compile(r"_(bucket|sum|count)$")


def _metric_names(expr: str) -> set[str]:
    names = set()
    for token in re.findall(r"\bomega_[a-z0-9_]+", expr):
        base = _HISTOGRAM_SUFFIX.sub("", token)
        names.add(base if base in METRICS else token)
    return names


def test_dashboard_uses_only_server_metrics() -> None:
    dash = json.loads((DEPLOY / "grafana" / "omega-dashboard.json").read_text())
    assert dash["panels"], "dashboard has no panels"
    seen: set[str] = set()
    for panel in dash["panels"]:
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            names = _metric_names(target["expr"])
            assert names, f"panel {panel['title']!r}: {target['expr']!r} uses no omega metric"
            assert names <= METRICS, f"panel {panel['title']!r}: unknown metrics {names - METRICS}"
            seen |= names
    assert seen == METRICS, f"metrics without a panel: {METRICS - seen}"


def test_metric_name_check_can_fail() -> None:
    assert _metric_names("rate(omega_syncs_totl[1m])") - METRICS == {"omega_syncs_totl"}
    assert _metric_names("omega_sync_latency_seconds_bucket") == {"omega_sync_latency_seconds"}


def test_compose_mentions_every_service() -> None:
    text = (DEPLOY / "docker-compose.yml").read_text()
    for service in SERVICES:
        assert re.search(rf"^  {re.escape(service)}:", text, re.M), service


def test_compose_structure() -> None:
    yaml = pytest.importorskip("yaml")
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == SERVICES
    worker = services["sync-worker"]
    command = " ".join(worker["command"])
    for flag in ("omega serve", "--store", "--redis", "--nats", "--shard-id", "--region"):
        assert flag in command
    for var in ("OMEGA_SECRET", "OMEGA_STORE", "OMEGA_REDIS", "OMEGA_NATS", "OMEGA_SHARD_ID", "OMEGA_REGION"):
        assert var in worker["environment"]
    assert worker["environment"]["OMEGA_STORE"].startswith("postgresql://")
    # behind HAProxy: no per-address cap in the workers (HAProxy caps per source), operator endpoints by token
    assert worker["environment"]["OMEGA_MAX_CONNECTIONS_PER_IP"] == "0"
    assert "OMEGA_ADMIN_TOKEN" in worker["environment"]
    assert services["prometheus"]["secrets"] == ["omega_admin_token"]
    for name in ("pg-primary", "pg-replica-1", "pg-replica-2"):
        assert services[name]["image"].startswith("pgvector/pgvector:")
    assert {services[n]["environment"]["REPLICATION_SLOT"] for n in ("pg-replica-1", "pg-replica-2")} == {
        "replica_1", "replica_2"}
    # every bind-mounted file exists in deploy/
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (DEPLOY / source).exists(), f"{name}: {source} missing"


def test_prometheus_and_grafana_provisioning() -> None:
    yaml = pytest.importorskip("yaml")
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in prom["scrape_configs"]}
    assert jobs["omega-sync-worker"]["metrics_path"] == "/metrics"
    assert jobs["omega-sync-worker"]["dns_sd_configs"][0]["names"] == ["sync-worker"]
    assert jobs["omega-sync-worker"]["authorization"]["credentials_file"] == "/run/secrets/omega_admin_token"
    ds = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    uid = ds["datasources"][0]["uid"]
    dash = json.loads((DEPLOY / "grafana" / "omega-dashboard.json").read_text())
    assert all(p["datasource"]["uid"] == uid for p in dash["panels"])


def test_haproxy_nats_and_scripts() -> None:
    cfg = (DEPLOY / "haproxy" / "haproxy.cfg").read_text()
    for needle in ("balance leastconn", "uri /readyz", "timeout tunnel", "hdr(Upgrade) -i websocket",
                   "timeout http-request", "sc0_conn_cur gt"):
        assert needle in cfg
    nats = (DEPLOY / "nats" / "nats.conf").read_text()
    assert "jetstream" in nats and nats.count("nats-route://") == 3
    assert "--replicas 3" in (DEPLOY / "nats" / "init-streams.sh").read_text()
    readme = (DEPLOY / "README.md").read_text()
    assert "docker is not available" in readme.lower()
    for script in ("postgres/primary-init.sh", "postgres/replica-entrypoint.sh", "nats/init-streams.sh"):
        path = DEPLOY / script
        shell = "bash" if path.read_text().startswith("#!/bin/bash") else "sh"
        if shutil.which(shell):
            subprocess.run([shell, "-n", str(path)], check=True)


def test_nats_config_accepted_by_nats_server() -> None:
    server = shutil.which("nats-server")
    if server is None:
        pytest.skip("nats-server not installed")
    env = {**os.environ, "NATS_SERVER_NAME": "nats-1"}
    result = subprocess.run([server, "-t", "-c", str(DEPLOY / "nats" / "nats.conf")], env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_pinned_haproxy_hashes_the_device_header_over_one_port_per_worker() -> None:
    """haproxy-pinned.cfg: the Redis-less layout (omega serve --workers N --pinned): worker i on 8700 + i."""
    from omega.protocol import DEVICE_HEADER

    cfg = (DEPLOY / "haproxy" / "haproxy-pinned.cfg").read_text()
    live = "\n".join(line for line in cfg.splitlines() if not line.lstrip().startswith("#"))
    for needle in (f"balance hdr({DEVICE_HEADER})", "hash-type consistent", "uri /readyz", "timeout tunnel",
                   "hdr(Upgrade) -i websocket", "sc0_conn_cur gt"):  # fmt: skip
        assert needle in live, needle
    assert "leastconn" not in live and "slowstart" not in live  # a ramping weight would move devices
    ports = [int(p) for p in re.findall(r"server w\d+ sync-worker:(\d+)", live)]
    assert ports == list(range(8700, 8700 + len(ports))) and len(ports) >= 2
    assert f"--workers {len(ports)} --pinned --port 8700" in cfg
    if shutil.which("haproxy"):
        done = subprocess.run(["haproxy", "-c", "-f", str(DEPLOY / "haproxy" / "haproxy-pinned.cfg")],
                              capture_output=True, text=True)  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("name", ["haproxy.cfg", "haproxy-pinned.cfg"])
def test_haproxy_accepts_both_configs_without_warnings(name: str) -> None:
    # A warning here has meant rules that read in one order and run in another (tcp-request after http-request).
    if shutil.which("haproxy") is None:
        pytest.skip("haproxy not installed (scripts/haproxy installs it as root)")
    done = subprocess.run(["haproxy", "-c", "-f", str(DEPLOY / "haproxy" / name)], capture_output=True, text=True)
    assert done.returncode == 0 and "WARNING" not in done.stdout + done.stderr, done.stdout + done.stderr
