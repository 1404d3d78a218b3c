"""Capacity model: arithmetic on hand-computed cases, the seed's own rows, parsing, bad bench files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from omega.errors import OmegaError
from omega.sim.capacity import (
    SEED,
    bandwidth,
    compute,
    parse_count,
    parse_quantity,
    read_bench,
    resolve_inputs,
    seed_method_bandwidth,
    syncs_per_device_per_min,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("400M", 400_000_000), ("10M", 10_000_000), ("2.5K", 2500), ("1e6", 1_000_000), ("1,000", 1000),
     ("10_000", 10_000), ("7", 7), ("1.5b", 1_500_000_000), (" 3k ", 3000)],
)
def test_parse_count(text: str, expected: int) -> None:
    assert parse_count(text) == expected


@pytest.mark.parametrize("text", ["", "abc", "1.5", "-3", "0", "M", "1e400x", "nan", "inf", "2.5Q"])
def test_parse_count_rejects(text: str) -> None:
    with pytest.raises(OmegaError):
        parse_count(text, "--users")


def test_parse_quantity_fractions() -> None:
    assert parse_quantity("0.02") == pytest.approx(0.02)
    assert parse_quantity("1.5K") == 1500.0
    with pytest.raises(OmegaError):
        parse_quantity("-1")


def test_tier_mix_rate() -> None:
    # 10% every 1 min + 40% every 5 min + 50% every 15 min
    assert syncs_per_device_per_min(resolve_inputs()) == pytest.approx(0.1 + 0.08 + 0.5 / 15)


def test_small_case_by_hand() -> None:
    # Everyone premium (1 sync/min), 100 B push, 200 B pull, 10 B heartbeat.
    inputs = resolve_inputs(overrides={
        "premium_fraction": 1, "active_fraction": 0, "casual_fraction": 0,
        "push_bytes": 100, "pull_bytes": 200, "heartbeat_bytes": 10,
        "connections_per_worker": 300, "shard_concurrent": 500, "lb_connections": 250,
        "price_worker": 10, "price_lb": 1, "price_postgres": 0, "price_redis": 0,
        "price_bandwidth_gb": 1, "price_global_lb_conn": 0, "hub_nodes": 0, "observability": 7,
        "month_hours": 1,
    })
    r = compute(users=10_000, concurrent=1000, inputs=inputs)
    # 1000 devices x 1/min: push 1e5 B, pull 2e5 B, heartbeat 1e4 B per minute
    bw = r["bandwidth_gb_per_min"]
    assert bw["push"] == pytest.approx(1e5 / 1e9)
    assert bw["pull"] == pytest.approx(2e5 / 1e9)
    assert bw["heartbeat"] == pytest.approx(1e4 / 1e9)
    assert bw["total"] == pytest.approx(3.1e5 / 1e9)
    # shards: ceil(1000/500)=2; workers: ceil(1000/300)=4 -> 2 per shard -> 4
    assert r["shards"] == 2
    assert r["workers_detail"]["by_constraint"]["connections"] == 4
    assert r["workers"] == 4
    # LBs: 500 per shard / 250 = 2 per shard -> 4
    assert r["load_balancers"] == 4
    # cost: 4 workers x 10 + 4 LB x 1 + 3.1e-4 GB/min x 60 min x 1 $/GB + 7
    assert r["monthly_cost_usd"] == pytest.approx(40 + 4 + 3.1e-4 * 60 + 7)
    # all-users basis: 10x the syncing devices, same heartbeats
    au = r["bandwidth_by_basis"]["all_users"]
    assert au["push"] == pytest.approx(10 * bw["push"])
    assert au["heartbeat"] == pytest.approx(bw["heartbeat"])


def test_workers_round_up_per_shard() -> None:
    inputs = resolve_inputs(overrides={"connections_per_worker": 300, "shard_concurrent": 400})
    r = compute(users=2000, concurrent=1000, inputs=inputs)
    # 3 shards, ceil(1000/300)=4 needed -> ceil(4/3)=2 per shard -> 6 deployed
    assert r["shards"] == 3
    assert r["workers_detail"]["needed"] == 4
    assert r["workers"] == 6


def test_binding_constraint_throughput_and_memory() -> None:
    # 6000 devices all premium: 100 syncs/s + 100 heartbeats/s (weight 0.5 -> 50) = 150 msgs/s
    base = {"premium_fraction": 1, "active_fraction": 0, "casual_fraction": 0,
            "connections_per_worker": 10_000, "heartbeat_weight": 0.5}
    r = compute(6000, 6000, resolve_inputs(overrides={**base, "syncs_per_s": 20}))
    w = r["workers_detail"]
    assert w["load_per_s"]["weighted_messages"] == pytest.approx(150)
    assert w["by_constraint"] == {"connections": 1, "throughput": 8, "memory": None}
    assert w["binding"] == "throughput"
    # memory: 6000 conns x 1024 KiB = 6000 MiB over 1 GiB x 0.5 usable -> ceil(11.72) = 12 workers
    r = compute(6000, 6000, resolve_inputs(overrides={
        **base, "memory_per_connection_kib": 1024, "worker_memory_gib": 1, "worker_memory_usable": 0.5}))
    assert r["workers_detail"]["by_constraint"]["memory"] == math.ceil(6000 / 512)
    assert r["workers_detail"]["binding"] == "memory"


def test_seed_formulas_reproduce_seed_rows() -> None:
    """The seed's §5.1 figures come out of its own formulas and sizes (push/pull in GB/s, heartbeat in GB/min)."""
    m = SEED["message_bytes"]
    got = seed_method_bandwidth(SEED["users"], SEED["concurrent"], m["push"], m["pull"], m["heartbeat"])
    assert round(got["gb_per_s"]["push"], 1) == SEED["bandwidth_gb_per_min"]["push"]
    assert round(got["gb_per_s"]["pull"], 1) == SEED["bandwidth_gb_per_min"]["pull"]
    assert got["gb_per_min"]["heartbeat"] == pytest.approx(SEED["bandwidth_gb_per_min"]["heartbeat"])
    seed_total = got["gb_per_s"]["push"] + got["gb_per_s"]["pull"] + got["gb_per_min"]["heartbeat"]
    assert round(seed_total) == SEED["bandwidth_gb_per_min"]["total"]
    assert got["gb_per_min"]["push"] == pytest.approx(80.0)  # what 400M x 1KB / 5 min really is


def test_seed_defaults_reproduce_seed_servers_and_fixed_costs() -> None:
    r = compute(SEED["users"], SEED["concurrent"], resolve_inputs())
    assert (r["workers"], r["shards"], r["load_balancers"]) == (1000, 100, 1000)
    assert (r["postgres_nodes"], r["redis_nodes"]) == (300, 600)
    for row in ("load_balancers", "sync_workers", "postgres", "redis", "global_lb", "hub", "observability"):
        assert r["cost_breakdown"][row] == pytest.approx(SEED["cost_breakdown"][row]), row
    # heartbeat row is the one the seed computes in the right unit
    assert r["bandwidth_gb_per_min"]["heartbeat"] == pytest.approx(0.64)
    assert r["monthly_cost_usd"] == pytest.approx(sum(r["cost_breakdown"].values()))
    d = r["differences"]
    assert d["seed_per_user_cost"]["from_seed_total"] == pytest.approx(530_000 / 400e6)
    assert d["seed_monthly_bandwidth"]["from_seed_hourly_tb_per_month"] == pytest.approx(240 * 730 / 1000)


def test_bandwidth_scales_linearly() -> None:
    inputs = resolve_inputs()
    a, b = bandwidth(1000, 1000, inputs), bandwidth(3000, 3000, inputs)
    for k in a:
        assert b[k] == pytest.approx(3 * a[k])


def _write(tmp_path: Path, name: str, content: str) -> Path:
    p = tmp_path / name
    p.write_text(content)
    return p


def test_bench_files_are_measured_and_later_wins(tmp_path: Path) -> None:
    sync = _write(tmp_path, "sync.json", json.dumps({
        "push_bytes_p50": 700, "pull_bytes_p50": 1200, "heartbeat_bytes": 40, "syncs_per_s": 900,
        "p99_ms": 12.5, "connections_held": 500, "extra": "ignored"}))
    load = _write(tmp_path, "load.json", json.dumps({"connections_held": 5000, "memory_per_connection_kib": 30}))
    inputs = resolve_inputs([sync, load], {"pull_bytes": 1500})
    f = inputs.figures
    assert f["push_bytes"].value == 700 and f["push_bytes"].source == f"measured:{sync}"
    assert f["connections_per_worker"].value == 5000 and f["connections_per_worker"].source == f"measured:{load}"
    assert inputs.also_measured["connections_per_worker"][0].value == 500
    assert f["pull_bytes"].value == 1500 and f["pull_bytes"].source == "flag"
    assert f["price_worker"].source == "assumed:seed"
    assert inputs.informational["p99_ms"].value == 12.5
    r = compute(1_000_000, 100_000, inputs)
    assert r["inputs"]["syncs_per_s"]["source"].startswith("measured:")
    assert r["not_measured"] == []
    assert r["bandwidth_gb_per_min"]["heartbeat"] == pytest.approx(100_000 * 40 / 1e9)


@pytest.mark.parametrize(
    ("content", "message"),
    [("{not json", "not JSON"), ("[1, 2]", "JSON object"), ('{"push_bytes_p50": "big"}', "push_bytes_p50"),
     ('{"syncs_per_s": true}', "syncs_per_s"), ('{"heartbeat_bytes": -1}', "heartbeat_bytes"),
     ('{"connections_held": 0}', "connections_held"), ('{"nothing": 1}', "none of the known figures")],
)
def test_bad_bench_file(tmp_path: Path, content: str, message: str) -> None:
    path = _write(tmp_path, "bad.json", content)
    with pytest.raises(OmegaError, match=message):
        read_bench(path)


def test_missing_bench_file(tmp_path: Path) -> None:
    with pytest.raises(OmegaError, match="not found"):
        resolve_inputs([tmp_path / "absent.json"])


def test_bad_overrides_and_populations() -> None:
    with pytest.raises(OmegaError, match="unknown figure"):
        resolve_inputs(overrides={"warp_factor": 9})
    with pytest.raises(OmegaError, match="sum to 1"):
        resolve_inputs(overrides={"premium_fraction": 0.5})
    with pytest.raises(OmegaError, match="> 0"):
        resolve_inputs(overrides={"syncs_per_s": 0})
    with pytest.raises(OmegaError, match="cannot exceed"):
        compute(10, 20, resolve_inputs())
    with pytest.raises(OmegaError, match="basis"):
        compute(10, 5, resolve_inputs(), basis="everyone")


def test_a_zero_divisor_in_a_bench_file_counts_as_not_measured(tmp_path) -> None:
    """`omega load --heartbeat-only` reports syncs_per_s 0: that run measured connections, not syncs."""
    load = tmp_path / "load.json"
    load.write_text('{"connections_held": 10000, "memory_per_connection_kib": 25.2, "syncs_per_s": 0}')
    inputs = resolve_inputs([load])
    assert inputs.figures["connections_per_worker"].value == 10000
    syncs = inputs.figures.get("syncs_per_s")
    assert syncs is None or not syncs.source.startswith("measured:")


def test_memory_per_connection_that_includes_data_growth_is_not_used(tmp_path) -> None:
    """A full-sync `omega load` run divides RSS growth that also holds pushed data: not a per-connection cost."""
    full = tmp_path / "full.json"
    full.write_text('{"connections_held": 1000, "memory_per_connection_kib": 34.5, "syncs_per_s": 300,'
                    ' "memory_per_connection_includes_data": true}')
    idle = tmp_path / "idle.json"
    idle.write_text('{"connections_held": 10000, "memory_per_connection_kib": 10.7, "syncs_per_s": 0,'
                    ' "memory_per_connection_includes_data": false}')
    memory = resolve_inputs([full]).figures.get("memory_per_connection_kib")
    assert memory is None or not memory.source.startswith("measured:")
    assert resolve_inputs([full]).figures["syncs_per_s"].value == 300
    assert resolve_inputs([idle, full]).figures["memory_per_connection_kib"].value == 10.7
    bad = tmp_path / "bad.json"
    bad.write_text('{"memory_per_connection_kib": 10.7, "memory_per_connection_includes_data": "no"}')
    with pytest.raises(OmegaError, match="memory_per_connection_includes_data must be true or false"):
        resolve_inputs([bad])
