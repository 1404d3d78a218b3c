"""`omega bench …` commands: measured budgets, one JSON object on stdout, progress on stderr.

The benchmarks themselves live in `omega.sim.bench`; this module parses and prints.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from omega.cli.progress import notes
from omega.errors import OmegaError

app = typer.Typer(help="benchmarks of the edge and sync budgets (JSON on stdout)", no_args_is_help=True)
progress = notes("bench")


def _positive(option: str, lo: int, hi: int):  # noqa: ANN202  (a typer parser)
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise OmegaError(f"{option} must be an integer in {lo}..{hi}, got {text!r}") from None
        if not lo <= value <= hi:
            raise OmegaError(f"{option} must be an integer in {lo}..{hi}, got {text!r}")
        return value

    return parse


def _print_report(report: dict, as_json: bool, width: int) -> None:
    if as_json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            print(f"{key:<{width}} {value}")


@app.command("brain")
def brain(
    data: Annotated[Path | None, typer.Option("--data", help="MovieLens folder (default: $OMEGA_DATA, else ml-latest-small in ../shared/data or ./data)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object on stdout")] = False,
    patterns: Annotated[int, typer.Option("--patterns", help="N synthetic patterns in the store (a stress figure) instead of those the shipped learning founds from every title watched once (0)", parser=_positive("--patterns", 0, 10_000))] = 0,
    repeats: Annotated[int, typer.Option("--repeats", help="timed calls per figure", parser=_positive("--repeats", 5, 100_000))] = 300,
    items: Annotated[int, typer.Option("--items", help="use only the first N catalog items (0 = all)", parser=_positive("--items", 0, 10_000_000))] = 0,
) -> None:
    """Edge budgets on a real catalog: embed, search k=50, recommend end to end, RSS, recall@50."""
    from omega.datasets import resolve_data_dir
    from omega.sim.bench import run_brain_bench

    folder = resolve_data_dir(data)
    report = run_brain_bench(
        folder, n_patterns=patterns or None, repeats=repeats, max_items=items or None, progress=progress
    )
    _print_report(report, as_json, 22)


@app.command("sync")
def sync(
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object on stdout")] = False,
    store: Annotated[str | None, typer.Option("--store", help="store URL (default: sqlite in a temp folder)")] = None,
    clients: Annotated[int, typer.Option("--clients", help="concurrent clients (half WebSocket, half HTTP)")] = 64,
    duration: Annotated[float, typer.Option("--duration", help="measured seconds (after a 1 s warm-up)")] = 10.0,
    redis: Annotated[str | None, typer.Option("--redis", help="redis URL for the server's cache")] = None,
    client_processes: Annotated[int, typer.Option("--client-processes", help="processes the clients run in")] = 2,
    ceiling: Annotated[bool, typer.Option("--ceiling/--no-ceiling", help="measure the echo ceiling of the stack first")] = True,
    pull_snapshot: Annotated[float | None, typer.Option("--pull-snapshot", help="the server's OMEGA_PULL_SNAPSHOT_S (0: live head; default: the shipped value, 5 s)")] = None,
    workers: Annotated[int, typer.Option("--workers",
        help="server worker processes (omega serve --workers; > 1 needs a postgresql:// --store and --redis "
             "or --pinned)")] = 1,  # fmt: skip
    pinned: Annotated[bool, typer.Option("--pinned",
        help="omega serve --pinned: worker i on port + i, each client's frames to its device's worker "
             "(no Redis)")] = False,  # fmt: skip
    prefill: Annotated[int, typer.Option("--prefill",
        help="grow the store first: N pushes from N other simulated TVs through the server's push path before "
             "the server starts (a worker's store has taken many; default 0: an empty store; SQLite only)",
        parser=_positive("--prefill", 0, 10_000_000))] = 0,  # fmt: skip
) -> None:
    """Sync throughput and latency of one server worker (syncs/s, p50/p99, bytes per message kind), and in the
    same run the ceiling of its stack: an echo server on the same uvicorn stack, and the ratio service/ceiling."""
    from omega.sim.bench import run_sync_bench

    if not 1 <= clients <= 10_000:
        raise OmegaError(f"--clients must be in 1..10000, got {clients}")
    if not 0.5 <= duration <= 600:
        raise OmegaError(f"--duration must be in 0.5..600 seconds, got {duration}")
    if pull_snapshot is not None and not 0 <= pull_snapshot <= 3600:
        raise OmegaError(f"--pull-snapshot must be in 0..3600 seconds, got {pull_snapshot}")
    if not 1 <= client_processes <= 64:
        raise OmegaError(f"--client-processes must be in 1..64, got {client_processes}")
    if not 1 <= workers <= 64:
        raise OmegaError(f"--workers must be in 1..64, got {workers}")
    if workers > 1 and not ((redis or pinned) and store and store.startswith(("postgresql://", "postgres://"))):
        raise OmegaError("--workers > 1 needs --store postgresql://… and --redis or --pinned (the workers share the "
                         "store, and the replay window through Redis or by pinning devices)")  # fmt: skip
    report = run_sync_bench(store=store, clients=clients, duration_s=duration, redis=redis,
                            client_processes=client_processes, ceiling=ceiling, pull_snapshot_s=pull_snapshot,
                            workers=workers, pinned=pinned, prefill=prefill, progress=progress)  # fmt: skip
    _print_report(report, as_json, 26)


@app.command("poisoning")
def poisoning(
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object on stdout")] = False,
    seed: Annotated[int, typer.Option("--seed", help="seed of the honest TVs' viewing and the device ids", parser=_positive("--seed", 0, 2**31 - 1))] = 0,
) -> None:
    """Sybil ids against honest TVs: the target's rank on a real victim brain and its published weight share."""
    from omega.sim.bench import run_poisoning_bench

    report = run_poisoning_bench(seed=seed, progress=progress)
    if as_json:
        print(json.dumps(report))
        return
    for run in report["runs"]:
        print(f"honest {run['honest']:>3}  sybils {run['sybils']:>2}  target rank {run['target_rank']}  "
              f"weight share {run['target_weight_share']:.3f}  outranks more-supported {run['outranks_item_with_more_support']}")  # fmt: skip
    print(f"bar met: {report['bar_met']}")


def register(root: typer.Typer) -> None:
    """Attach `omega bench …` to the root app."""
    root.add_typer(app, name="bench")
