"""Capacity and cost model: servers, shards, bandwidth and money for N users / C concurrent.

Inputs are *figures* (message sizes, per-worker throughput, unit prices, the tier
mix). Each figure carries its source: ``measured:<file>`` (from the JSON of
``omega bench sync`` / ``omega load``), ``flag`` (given on the command line),
``assumed:seed`` (the seed specification's own number) or ``assumed:model`` (an
assumption of this model that the seed does not state). The output never
presents an assumption as a measurement.

Units: decimal bytes (1 KB = 1000 B, 1 GB = 1e9 B), as the seed's arithmetic
uses them; memory in KiB/GiB as the load generator reports it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from collections.abc import Sequence
from typing import Any

from omega.errors import OmegaError
from omega.protocol import SYNC_TIERS

GB = 1e9
BASES = ("concurrent", "all_users")
TIERS = tuple(tier.label for tier in SYNC_TIERS)


@dataclass(frozen=True)
class Figure:
    """One input figure and where it came from."""

    value: float
    source: str


#: name -> (default or None when there is no honest default, source of the default, meaning)
FIGURES: dict[str, tuple[float | None, str, str]] = {
    "push_bytes": (1000, "assumed:seed", "bytes per pattern push (seed §5.1: 1KB)"),
    "pull_bytes": (5000, "assumed:seed", "bytes per pull reply (seed §5.1: 5KB)"),
    "heartbeat_bytes": (64, "assumed:seed", "bytes per heartbeat (seed §5.1: 64B)"),
    "connections_per_worker": (10_000, "assumed:seed", "connections one sync worker holds (seed §4.1: 10K)"),
    "syncs_per_s": (None, "assumed:none", "syncs/s one worker sustains (not in the seed; throughput bound skipped without it)"),
    "memory_per_connection_kib": (None, "assumed:none", "worker RSS per held connection, KiB (memory bound skipped without it)"),
    "heartbeat_weight": (1.0, "assumed:model", "cost of a heartbeat relative to a sync in the throughput bound"),
    "worker_memory_gib": (8.0, "assumed:seed", "memory of a sync worker, GiB (seed's c6g.xlarge)"),
    "worker_memory_usable": (0.8, "assumed:model", "fraction of worker memory usable for connections"),
    "shard_concurrent": (100_000, "assumed:seed", "concurrent connections per shard (seed §4.1: 100K)"),
    "lb_connections": (10_000, "assumed:seed", "connections per load balancer (seed §4.3: 10K)"),
    "postgres_per_shard": (3, "assumed:seed", "PostgreSQL nodes per shard (seed §4.3)"),
    "redis_per_shard": (6, "assumed:seed", "Redis nodes per shard (seed §4.3)"),
    "premium_fraction": (0.10, "assumed:seed", "share of devices in the premium tier (seed §5.3)"),
    "active_fraction": (0.40, "assumed:seed", "share of devices in the active tier (seed §5.3)"),
    "casual_fraction": (0.50, "assumed:seed", "share of devices in the casual tier (seed §5.3)"),
    "premium_interval_min": (1, "assumed:seed", "premium sync interval, minutes"),
    "active_interval_min": (5, "assumed:seed", "active sync interval, minutes"),
    "casual_interval_min": (15, "assumed:seed", "casual polling interval, minutes"),
    "push_per_sync": (1.0, "assumed:model", "pushes per sync (1 = every sync pushes)"),
    "pull_per_sync": (1.0, "assumed:model", "pulls per sync (1 = every sync pulls)"),
    "heartbeats_per_min": (1.0, "assumed:seed", "heartbeats per connected device per minute (seed §5.1)"),
    "month_hours": (730, "assumed:model", "hours in a billing month"),
    "price_lb": (100, "assumed:seed", "USD/month per load balancer (seed §7.1)"),
    "price_worker": (100, "assumed:seed", "USD/month per sync worker (seed §7.1)"),
    "price_postgres": (200, "assumed:seed", "USD/month per PostgreSQL node (seed §7.1)"),
    "price_redis": (50, "assumed:seed", "USD/month per Redis node (seed §7.1)"),
    "price_bandwidth_gb": (0.02, "assumed:seed", "USD per GB transferred (seed §7.1)"),
    "price_global_lb_conn": (0.01, "assumed:seed", "USD/month per concurrent connection, global LB (seed §7.1)"),
    "hub_nodes": (10, "assumed:seed", "global pattern hub nodes (seed §7.1)"),
    "price_hub_node": (500, "assumed:seed", "USD/month per hub node (seed §7.1)"),
    "observability": (20_000, "assumed:seed", "USD/month for monitoring & ops (seed §7.1)"),
}

#: bench/load JSON key -> figure name
BENCH_KEYS: dict[str, str] = {
    "push_bytes_p50": "push_bytes",
    "pull_bytes_p50": "pull_bytes",
    "heartbeat_bytes": "heartbeat_bytes",
    "syncs_per_s": "syncs_per_s",
    "connections_held": "connections_per_worker",
    "memory_per_connection_kib": "memory_per_connection_kib",
}
#: keys recorded from bench files but not used in the arithmetic
INFO_KEYS = ("p50_ms", "p99_ms", "embed_ms_p50", "search_us_p50", "recommend_ms_p50", "rss_mb", "recall_at_50")
#: figures that divide something, so they must be > 0
_POSITIVE = {
    "connections_per_worker", "syncs_per_s", "memory_per_connection_kib", "worker_memory_gib",
    "worker_memory_usable", "shard_concurrent", "lb_connections", "premium_interval_min",
    "active_interval_min", "casual_interval_min", "month_hours",
}

#: The seed's own figures, transcribed from SEED-SPEC.md §4.1, §4.3, §5.1 and §7.1 (not computed).
SEED: dict[str, Any] = {
    "users": 400_000_000,
    "concurrent": 10_000_000,
    "workers": 1000,
    "shards": 100,
    "load_balancers": 1000,
    "postgres_nodes": 300,
    "redis_nodes": 600,
    "bandwidth_gb_per_min": {"push": 1.3, "pull": 2.2, "heartbeat": 0.64, "total": 4.0},
    "bandwidth_gb_per_hour": 240,
    "bandwidth_tb_per_month": 5700,
    "monthly_cost_usd": 530_000,
    "per_user_usd_per_month": 1.33,
    "message_bytes": {"push": 1000, "pull": 5000, "heartbeat": 64},
    "intervals_min": {"push": 5, "pull": 15, "heartbeat": 1},
    "cost_breakdown": {
        "load_balancers": 100_000,
        "sync_workers": 100_000,
        "postgres": 60_000,
        "redis": 30_000,
        "bandwidth": 114_000,
        "global_lb": 100_000,
        "hub": 5_000,
        "observability": 20_000,
    },
}

_SUFFIX = {"K": Decimal(10**3), "M": Decimal(10**6), "B": Decimal(10**9), "G": Decimal(10**9), "T": Decimal(10**12)}


def parse_quantity(text: str | float | int, what: str = "value") -> float:
    """Parse ``400M``, ``2.5K``, ``1e6``, ``10_000``, ``1,000`` or ``0.02`` into a finite number >= 0."""
    if isinstance(text, bool):
        raise OmegaError(f"{what}: expected a number, got {text!r}")
    if isinstance(text, (int, float)):
        number = Decimal(str(text))
    else:
        raw = text.strip().replace("_", "").replace(",", "")
        mult = Decimal(1)
        if raw and raw[-1].upper() in _SUFFIX:
            mult, raw = _SUFFIX[raw[-1].upper()], raw[:-1]
        try:
            number = Decimal(raw) * mult
        except InvalidOperation:
            raise OmegaError(f"{what}: cannot read {text!r} as a number (e.g. 400M, 2.5K, 1e6)") from None
    if not number.is_finite() or number < 0:
        raise OmegaError(f"{what}: {text!r} must be a finite number >= 0")
    return float(number)


def parse_count(text: str | int, what: str = "count") -> int:
    """Parse a positive whole count such as ``400M``, ``10M``, ``2.5K`` or ``1e6``."""
    value = parse_quantity(text, what)
    if value < 1 or value != int(value):
        raise OmegaError(f"{what}: {text!r} must be a whole number >= 1")
    return int(value)


def _number(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise OmegaError(f"{where}: expected a number, got {type(value).__name__} {value!r}")
    if not math.isfinite(value) or value < 0:
        raise OmegaError(f"{where}: expected a finite number >= 0, got {value!r}")
    return float(value)


def read_bench(path: Path) -> tuple[dict[str, float], dict[str, float]]:
    """Read one bench/load JSON file: (capacity figures, informational figures).

    Keys that are absent or null are simply not measured; unknown keys are ignored.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise OmegaError(f"bench file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise OmegaError(f"cannot read bench file {path}: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise OmegaError(f"bench file {path} is not JSON: {exc.msg} at line {exc.lineno}") from None
    if not isinstance(data, dict):
        raise OmegaError(f"bench file {path}: expected a JSON object, got {type(data).__name__}")
    includes_data = data.get("memory_per_connection_includes_data")
    if includes_data is not None and not isinstance(includes_data, bool):
        raise OmegaError(f"bench file {path}: memory_per_connection_includes_data must be true or false")
    figures: dict[str, float] = {}
    for key, name in BENCH_KEYS.items():
        value = _number(data.get(key), f"bench file {path}: {key}")
        if value is not None:
            if name in _POSITIVE and value == 0:
                # A run that did not exercise this figure (e.g. `omega load --heartbeat-only` reports
                # syncs_per_s 0): it measured nothing here, so leave the figure to other inputs.
                continue
            if key == "memory_per_connection_kib" and includes_data:
                # The run's RSS growth also holds what its pushes added to the store (`omega load` with
                # full syncs): not a per-connection figure, so leave it to a heartbeat-only run.
                continue
            figures[name] = value
    info = {k: v for k in INFO_KEYS if (v := _number(data.get(k), f"bench file {path}: {k}")) is not None}
    if not figures and not info:
        known = ", ".join([*BENCH_KEYS, *INFO_KEYS])
        raise OmegaError(f"bench file {path} has none of the known figures ({known})")
    return figures, info


@dataclass
class Inputs:
    """Resolved figures with their sources, plus informational bench figures."""

    figures: dict[str, Figure]
    informational: dict[str, Figure] = field(default_factory=dict)
    also_measured: dict[str, list[Figure]] = field(default_factory=dict)

    def value(self, name: str) -> float | None:
        fig = self.figures.get(name)
        return None if fig is None else fig.value


def resolve_inputs(bench_files: Sequence[Path] = (), overrides: dict[str, float] | None = None) -> Inputs:
    """Defaults, then bench files in order (a later file wins), then flags."""
    figures = {n: Figure(float(d), src) for n, (d, src, _) in FIGURES.items() if d is not None}
    inputs = Inputs(figures)
    for path in bench_files:
        measured, info = read_bench(Path(path))
        for name, value in measured.items():
            old = figures.get(name)
            if old is not None and old.source.startswith("measured:"):
                inputs.also_measured.setdefault(name, []).append(old)
            figures[name] = Figure(value, f"measured:{path}")
        for name, value in info.items():
            inputs.informational[name] = Figure(value, f"measured:{path}")
    for name, value in (overrides or {}).items():
        if name not in FIGURES:
            raise OmegaError(f"unknown figure {name!r}; known: {', '.join(FIGURES)}")
        value = _number(value, name)
        if value is None:
            continue
        if name in _POSITIVE and value == 0:
            raise OmegaError(f"{name} must be > 0")
        figures[name] = Figure(value, "flag")
    fractions = [figures[f"{t}_fraction"].value for t in TIERS]
    if abs(sum(fractions) - 1.0) > 1e-6:
        raise OmegaError(f"tier fractions must sum to 1, got {' + '.join(f'{f:g}' for f in fractions)} = {sum(fractions):g}")
    return inputs


def syncs_per_device_per_min(inputs: Inputs) -> float:
    """Syncs per minute of one device, averaged over the tier mix (docs/architecture.md §4 Tiers)."""
    return sum(inputs.figures[f"{t}_fraction"].value / inputs.figures[f"{t}_interval_min"].value for t in TIERS)


def bandwidth(devices: float, connected: float, inputs: Inputs) -> dict[str, float]:
    """GB/min of push, pull and heartbeat when ``devices`` sync on the tier mix and ``connected`` heartbeat."""
    f = inputs.figures
    syncs = devices * syncs_per_device_per_min(inputs)
    push = syncs * f["push_per_sync"].value * f["push_bytes"].value / GB
    pull = syncs * f["pull_per_sync"].value * f["pull_bytes"].value / GB
    heartbeat = connected * f["heartbeats_per_min"].value * f["heartbeat_bytes"].value / GB
    return {"push": push, "pull": pull, "heartbeat": heartbeat, "total": push + pull + heartbeat}


def seed_method_bandwidth(users: float, concurrent: float, push_bytes: float, pull_bytes: float,
                          heartbeat_bytes: float) -> dict[str, dict[str, float]]:
    """The seed §5.1 formulas as written (all users push every 5 min, pull every 15 min;
    concurrent devices heartbeat every minute), in GB/min and in GB/s."""
    iv = SEED["intervals_min"]
    per_min = {
        "push": users * push_bytes / iv["push"] / GB,
        "pull": users * pull_bytes / iv["pull"] / GB,
        "heartbeat": concurrent * heartbeat_bytes / iv["heartbeat"] / GB,
    }
    per_min["total"] = sum(per_min.values())
    return {"gb_per_min": per_min, "gb_per_s": {k: v / 60 for k, v in per_min.items()}}


def _ceil(x: float) -> int:
    # guard against 999.9999999 style float noise before rounding up
    return math.ceil(round(x, 9))


def workers_needed(concurrent: float, syncs_per_min: float, inputs: Inputs) -> dict[str, Any]:
    """Workers required by each constraint; the largest (binding) one wins."""
    f = inputs.figures
    bounds: dict[str, int | None] = {"connections": _ceil(concurrent / f["connections_per_worker"].value)}
    sps = inputs.value("syncs_per_s")
    msgs_per_s = (syncs_per_min + concurrent * f["heartbeats_per_min"].value * f["heartbeat_weight"].value) / 60
    bounds["throughput"] = None if sps is None else _ceil(msgs_per_s / sps)
    kib = inputs.value("memory_per_connection_kib")
    usable_kib = f["worker_memory_gib"].value * 1024 * 1024 * f["worker_memory_usable"].value
    bounds["memory"] = None if kib is None else _ceil(concurrent * kib / usable_kib)
    binding = max((k for k, v in bounds.items() if v is not None), key=lambda k: bounds[k])
    return {"needed": bounds[binding], "binding": binding, "by_constraint": bounds,
            "load_per_s": {"syncs": syncs_per_min / 60, "weighted_messages": msgs_per_s}}


def compute(users: int, concurrent: int, inputs: Inputs, basis: str = "concurrent") -> dict[str, Any]:
    """The whole capacity report (the ``omega capacity --json`` object)."""
    if basis not in BASES:
        raise OmegaError(f"basis must be one of {', '.join(BASES)}, got {basis!r}")
    if users < 1 or concurrent < 1:
        raise OmegaError("users and concurrent must be >= 1")
    if concurrent > users:
        raise OmegaError(f"concurrent ({concurrent:,}) cannot exceed users ({users:,})")
    f = inputs.figures
    bases = {
        "concurrent": bandwidth(concurrent, concurrent, inputs),
        "all_users": bandwidth(users, concurrent, inputs),
    }
    syncing = concurrent if basis == "concurrent" else users
    syncs_per_min = syncing * syncs_per_device_per_min(inputs)
    work = workers_needed(concurrent, syncs_per_min, inputs)

    shards = _ceil(concurrent / f["shard_concurrent"].value)
    workers_per_shard = _ceil(work["needed"] / shards)
    per_shard_conn = _ceil(concurrent / shards)
    lbs_per_shard = _ceil(per_shard_conn / f["lb_connections"].value)
    postgres = shards * _ceil(f["postgres_per_shard"].value)
    redis = shards * _ceil(f["redis_per_shard"].value)
    workers = workers_per_shard * shards
    lbs = lbs_per_shard * shards

    bw = bases[basis]
    gb_per_month = bw["total"] * 60 * f["month_hours"].value
    costs = {
        "load_balancers": lbs * f["price_lb"].value,
        "sync_workers": workers * f["price_worker"].value,
        "postgres": postgres * f["price_postgres"].value,
        "redis": redis * f["price_redis"].value,
        "bandwidth": gb_per_month * f["price_bandwidth_gb"].value,
        "global_lb": concurrent * f["price_global_lb_conn"].value,
        "hub": f["hub_nodes"].value * f["price_hub_node"].value,
        "observability": f["observability"].value,
    }
    total_cost = sum(costs.values())
    seed_method = seed_method_bandwidth(users, concurrent, f["push_bytes"].value, f["pull_bytes"].value,
                                        f["heartbeat_bytes"].value)
    report: dict[str, Any] = {
        "users": users,
        "concurrent": concurrent,
        "workers": workers,
        "shards": shards,
        "bandwidth_gb_per_min": bw,
        "monthly_cost_usd": total_cost,
        "basis": basis,
        "workers_detail": {**work, "per_shard": workers_per_shard},
        "load_balancers": lbs,
        "postgres_nodes": postgres,
        "redis_nodes": redis,
        "bandwidth_tb_per_month": gb_per_month / 1000,
        "per_user_usd_per_month": total_cost / users,
        "syncs_per_device_per_min": syncs_per_device_per_min(inputs),
        "bandwidth_by_basis": bases,
        "seed_method_bandwidth": seed_method,
        "cost_breakdown": costs,
        "seed": SEED,
        "inputs": {n: {"value": fig.value, "source": fig.source, "meaning": FIGURES[n][2]} for n, fig in f.items()},
        "not_measured": sorted(n for n, (d, _, _) in FIGURES.items() if d is None and n not in f),
        "informational": {n: {"value": fig.value, "source": fig.source} for n, fig in inputs.informational.items()},
        "also_measured": {n: [{"value": x.value, "source": x.source} for x in xs] for n, xs in inputs.also_measured.items()},
    }
    report["differences"] = differences(report)
    return report


def _ratio(ours: float, seed: float) -> float | None:
    return None if seed == 0 else ours / seed


def differences(report: dict[str, Any]) -> dict[str, Any]:
    """Our figures against the seed's, and the seed's arithmetic quirks, recomputed from its own inputs."""
    seed = SEED
    sb = seed["message_bytes"]
    seed_formula = seed_method_bandwidth(seed["users"], seed["concurrent"], sb["push"], sb["pull"], sb["heartbeat"])
    sm, ss = seed_formula["gb_per_min"], seed_formula["gb_per_s"]
    label = seed["bandwidth_gb_per_min"]
    tb_from_hourly = seed["bandwidth_gb_per_hour"] * report["inputs"]["month_hours"]["value"] / 1000
    seed_rows_sum = sum(seed["cost_breakdown"].values())
    ours_bw = report["bandwidth_gb_per_min"]
    out: dict[str, Any] = {
        "ratios": {
            "workers": _ratio(report["workers"], seed["workers"]),
            "shards": _ratio(report["shards"], seed["shards"]),
            **{f"bandwidth_{k}": _ratio(ours_bw[k], label[k]) for k in ("push", "pull", "heartbeat", "total")},
            "monthly_cost_usd": _ratio(report["monthly_cost_usd"], seed["monthly_cost_usd"]),
        },
        "seed_push_pull_units": {
            "seed_label_gb_per_min": {"push": label["push"], "pull": label["pull"]},
            "seed_formula_gb_per_min": {"push": sm["push"], "pull": sm["pull"]},
            "seed_formula_gb_per_s": {"push": ss["push"], "pull": ss["pull"]},
            "note": (f"seed §5.1: {seed['users']:,} x {sb['push']} B / {seed['intervals_min']['push']} min is "
                     f"{sm['push']:.1f} GB/min = {ss['push']:.2f} GB/s; its '{label['push']} GB/min' (and "
                     f"'{label['pull']}' for pull = {ss['pull']:.2f} GB/s) is the per-second figure labelled per minute"),
        },
        "seed_total_mixes_units": {
            "seed_label_total": label["total"],
            "formula_total_gb_per_min": sm["total"],
            "note": (f"the seed adds push/pull in GB/s to heartbeat in GB/min (~{label['total']:g}); "
                     f"its own formulas give {sm['total']:.1f} GB/min"),
        },
        "seed_population": {
            "push_pull_devices": seed["users"],
            "concurrent": seed["concurrent"],
            "note": (f"seed §5.1 counts all {seed['users']:,} users pushing/pulling though only "
                     f"{seed['concurrent']:,} are concurrent (x{seed['users'] / seed['concurrent']:g}); and its flat "
                     "5/15-min intervals differ from its own §5.3 tiers (1/5/15 min)"),
        },
        "seed_monthly_bandwidth": {
            "seed_tb_per_month": seed["bandwidth_tb_per_month"],
            "from_seed_hourly_tb_per_month": tb_from_hourly,
            "note": (f"{seed['bandwidth_gb_per_hour']} GB/h x {report['inputs']['month_hours']['value']:g} h = "
                     f"{tb_from_hourly:.0f} TB/month, not {seed['bandwidth_tb_per_month'] / 1000:g} PB "
                     f"(x{seed['bandwidth_tb_per_month'] / tb_from_hourly:.0f}); the $"
                     f"{seed['cost_breakdown']['bandwidth']:,} bandwidth row follows the larger figure"),
        },
        "seed_per_user_cost": {
            "seed_claim": seed["per_user_usd_per_month"],
            "from_seed_total": seed["monthly_cost_usd"] / seed["users"],
            "note": (f"${seed['monthly_cost_usd']:,} / {seed['users']:,} users = "
                     f"${seed['monthly_cost_usd'] / seed['users']:.5f}/user/month, not ${seed['per_user_usd_per_month']}"),
        },
        "seed_cost_rows_sum": {"rows": seed_rows_sum, "stated": seed["monthly_cost_usd"]},
        "basis": {
            "used": report["basis"],
            "concurrent_total_gb_per_min": report["bandwidth_by_basis"]["concurrent"]["total"],
            "all_users_total_gb_per_min": report["bandwidth_by_basis"]["all_users"]["total"],
            "note": ("'concurrent': only the concurrent devices sync, on the §4 tier mix; 'all_users': every user "
                     "syncs on that mix (the seed's population). Heartbeats come from connected devices in both."),
        },
    }
    return out
