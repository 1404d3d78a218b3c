"""Simulation commands: `omega demo` and `omega eval movielens` (capacity lives in cli/capacity.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from omega.cli.progress import bars
from omega.constellation.privacy import DEFAULT_K_MIN

eval_app = typer.Typer(help="Evaluate recommendation quality on real data.", no_args_is_help=True)


def _positive(value: int | None, flag: str) -> int | None:
    from omega.errors import OmegaError

    if value is not None and value < 1:
        raise OmegaError(f"{flag} must be a positive integer, got {value}")
    return value


@eval_app.command("movielens")
def eval_movielens(
    data: Annotated[Path, typer.Option("--data", help="MovieLens folder (ml-latest(-small), ml-100k or ml-1m layout)")],
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object on stdout")] = False,
    users: Annotated[int | None, typer.Option("--users", help="evaluate a seeded sample of this many viewers")] = None,
    k_min: Annotated[int, typer.Option("--k-min", help="distinct TVs before an edge/pattern is published")] = DEFAULT_K_MIN,
    cold_users: Annotated[int, typer.Option("--cold-users", help="cold-start TVs to evaluate")] = 100,
    no_tables: Annotated[bool, typer.Option("--no-tables", help="skip the privacy and ablation tables")] = False,
    seed: Annotated[int, typer.Option("--seed", help="seed for sampling, tiers and device ids")] = 0,
    seeds: Annotated[
        int, typer.Option("--seeds", help="run seeds SEED..SEED+N-1 (a fleet each): per-seed NDCG@10, mean, paired interval")
    ] = 1,
    validation: Annotated[
        bool, typer.Option("--validation", help="the validation split (test targets left out) plus the tuning grid")
    ] = False,
    config: Annotated[
        Path | None, typer.Option("--config", help="the TVs' brain config (.json/.toml; default: the shipped one)")
    ] = None,
) -> None:
    """Edge-only, edge + federation and cold-start TVs against centralised baselines, on one split."""
    from omega.brain.config import BrainConfig
    from omega.sim.evaluation.evaluate import evaluate_movielens

    brain_config = BrainConfig.load(config) if config is not None else None
    _positive(users, "--users")
    _positive(cold_users, "--cold-users")
    with bars() as stage:
        result = evaluate_movielens(
            data, users=users, k_min=k_min, cold_users=cold_users, seed=seed, stage=stage, tables=not no_tables,
            validation=validation, config=brain_config, seeds=seeds,
        )  # fmt: skip
    if as_json:
        json.dump(result, sys.stdout, default=float)
        sys.stdout.write("\n")
        return
    from omega.sim.demo import render

    render(result)


def demo(
    data: Annotated[
        Path | None, typer.Option("--data", help="MovieLens folder (default: $OMEGA_DATA, else ml-latest-small in ../shared/data or ./data)")
    ] = None,
    quick: Annotated[bool, typer.Option("--quick", help="a one-minute version on 60 viewers")] = False,
    users: Annotated[int | None, typer.Option("--users", help="viewers (TVs) to simulate (default 300; all: omega eval)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="the result as one JSON object instead of the summary")] = False,
) -> None:
    """The whole system: a constellation and a fleet of TV brains on a real catalog, with a readable summary."""
    from omega.sim.demo import render, run_demo

    _positive(users, "--users")
    with bars() as stage:
        result = run_demo(data, quick=quick, stage=stage, users=users)
    if as_json:
        json.dump(result, sys.stdout, default=float)
        sys.stdout.write("\n")
    else:
        render(result)


def register(root: typer.Typer) -> None:
    """Attach this module's commands to the root app."""
    root.command("demo")(demo)
    root.add_typer(eval_app, name="eval")
