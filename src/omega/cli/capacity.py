"""`omega capacity`: servers, shards, bandwidth and cost beside the seed's own figures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from omega.errors import OmegaError

_FIGURE_FLAGS = {
    "push_bytes": "--push-bytes",
    "pull_bytes": "--pull-bytes",
    "heartbeat_bytes": "--heartbeat-bytes",
    "syncs_per_s": "--syncs-per-s",
    "connections_per_worker": "--connections-per-worker",
    "memory_per_connection_kib": "--memory-per-connection-kib",
    "shard_concurrent": "--shard-concurrent",
}


def _overrides(explicit: dict[str, str | None], settings: list[str]) -> dict[str, float]:
    from omega.sim.capacity import FIGURES, parse_quantity

    out: dict[str, float] = {}
    for item in settings:
        name, sep, raw = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or not name:
            raise OmegaError(f"--set expects NAME=VALUE, got {item!r}")
        if name not in FIGURES:
            raise OmegaError(f"--set: unknown figure {name!r}; known: {', '.join(FIGURES)}")
        out[name] = parse_quantity(raw, f"--set {name}")
    for name, raw in explicit.items():
        if raw is not None:
            out[name] = parse_quantity(raw, _FIGURE_FLAGS[name])
    return out


def _fmt(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "-"
    if abs(value) >= 1000 or float(value).is_integer():
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}"


def _ratio(ours: float, seed: float | None) -> str:
    if not seed:
        return "-"
    ratio = ours / seed
    return f"{ratio:.2f}x" if ratio >= 0.01 else f"{ratio:.2g}x"


def render(report: dict[str, Any]) -> None:
    """Print the readable tables (ours beside the seed's) to stdout."""
    from rich.console import Console
    from rich.table import Table

    console = Console(width=120, soft_wrap=False)
    seed = report["seed"]
    bw, sbw = report["bandwidth_gb_per_min"], seed["bandwidth_gb_per_min"]
    work = report["workers_detail"]
    table = Table(title=f"omega capacity — {report['users']:,} users / {report['concurrent']:,} concurrent "
                        f"(bandwidth basis: {report['basis']})")
    for col in ("figure", "ours", "seed", "ours/seed"):
        table.add_column(col, justify="left" if col == "figure" else "right")
    rows: list[tuple[str, float, float | None]] = [
        (f"sync workers (binding: {work['binding']})", report["workers"], seed["workers"]),
        ("shards", report["shards"], seed["shards"]),
        ("load balancers", report["load_balancers"], seed["load_balancers"]),
        ("PostgreSQL nodes", report["postgres_nodes"], seed["postgres_nodes"]),
        ("Redis nodes", report["redis_nodes"], seed["redis_nodes"]),
        ("push GB/min", bw["push"], sbw["push"]),
        ("pull GB/min", bw["pull"], sbw["pull"]),
        ("heartbeat GB/min", bw["heartbeat"], sbw["heartbeat"]),
        ("total GB/min", bw["total"], sbw["total"]),
        ("bandwidth TB/month", report["bandwidth_tb_per_month"], seed["bandwidth_tb_per_month"]),
        ("monthly cost USD", report["monthly_cost_usd"], seed["monthly_cost_usd"]),
        ("USD per user per month", report["per_user_usd_per_month"], seed["per_user_usd_per_month"]),
    ]
    for name, ours, theirs in rows:
        digits = 5 if "per user" in name else 2
        table.add_row(name, _fmt(ours, digits), _fmt(theirs, digits), _ratio(ours, theirs))
    console.print(table)

    bounds = ", ".join(f"{k}={'not evaluated' if v is None else f'{v:,}'}" for k, v in work["by_constraint"].items())
    console.print(f"workers needed by constraint: {bounds}")

    costs = Table(title="monthly cost breakdown (USD)")
    for col in ("component", "ours", "seed"):
        costs.add_column(col, justify="left" if col == "component" else "right")
    for name, value in report["cost_breakdown"].items():
        costs.add_row(name, _fmt(value), _fmt(seed["cost_breakdown"].get(name)))
    console.print(costs)

    inputs = Table(title="inputs (measured vs assumed)")
    for col in ("figure", "value", "source"):
        inputs.add_column(col, justify="right" if col == "value" else "left")
    for name, fig in report["inputs"].items():
        inputs.add_row(name, _fmt(fig["value"], 3), fig["source"])
    for name in report["not_measured"]:
        inputs.add_row(name, "-", "not measured: constraint skipped")
    for name, fig in report["informational"].items():
        inputs.add_row(f"{name} (info only)", _fmt(fig["value"], 3), fig["source"])
    console.print(inputs)

    measured = sorted(n for n, fig in report["inputs"].items() if fig["source"].startswith("measured:"))
    console.print(f"measured figures: {', '.join(measured) or 'none (all figures are assumptions or flags)'}",
                  highlight=False)
    console.print("notes on the seed's arithmetic:")
    for key, item in report["differences"].items():
        if isinstance(item, dict) and "note" in item:
            console.print(f"  - {key}: {item['note']}", highlight=False)


def capacity(
    users: Annotated[str, typer.Option("--users", help="total users/TVs, e.g. 400M")] = "400M",
    concurrent: Annotated[str, typer.Option("--concurrent", help="concurrent connections, e.g. 10M")] = "10M",
    bench: Annotated[list[Path] | None, typer.Option(
        "--bench", help="JSON from `omega bench sync|brain --json` or `omega load --json` (repeatable; later wins)")] = None,
    basis: Annotated[str, typer.Option("--basis", help="bandwidth basis: concurrent | all_users")] = "concurrent",
    push_bytes: Annotated[str | None, typer.Option("--push-bytes", help="bytes per push")] = None,
    pull_bytes: Annotated[str | None, typer.Option("--pull-bytes", help="bytes per pull")] = None,
    heartbeat_bytes: Annotated[str | None, typer.Option("--heartbeat-bytes", help="bytes per heartbeat")] = None,
    syncs_per_s: Annotated[str | None, typer.Option("--syncs-per-s", help="syncs/s one worker sustains")] = None,
    connections_per_worker: Annotated[str | None, typer.Option(
        "--connections-per-worker", help="connections one worker holds")] = None,
    memory_per_connection_kib: Annotated[str | None, typer.Option(
        "--memory-per-connection-kib", help="worker KiB per held connection")] = None,
    shard_concurrent: Annotated[str | None, typer.Option(
        "--shard-concurrent", help="concurrent connections per shard")] = None,
    settings: Annotated[list[str] | None, typer.Option(
        "--set", help="override any figure: NAME=VALUE (e.g. price_worker=150, casual_interval_min=30); "
                      "names are listed under 'inputs' in --json")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object on stdout")] = False,
) -> None:
    """Capacity and monthly cost for N users / C concurrent, beside the seed's own figures."""
    from omega.sim.capacity import compute, parse_count, resolve_inputs

    explicit = {
        "push_bytes": push_bytes, "pull_bytes": pull_bytes, "heartbeat_bytes": heartbeat_bytes,
        "syncs_per_s": syncs_per_s, "connections_per_worker": connections_per_worker,
        "memory_per_connection_kib": memory_per_connection_kib, "shard_concurrent": shard_concurrent,
    }
    inputs = resolve_inputs(bench or [], _overrides(explicit, settings or []))
    report = compute(parse_count(users, "--users"), parse_count(concurrent, "--concurrent"), inputs, basis)
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        render(report)


def register(root: typer.Typer) -> None:
    """Attach `omega capacity` to the root app."""
    root.command("capacity")(capacity)
