"""`omega load`: simulated TVs (WebSocket and HTTP) against a sync server on this machine."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Annotated

import typer

from omega.cli.progress import notes
from omega.errors import OmegaError


def _number(option: str, kind: type) -> Callable[[str], float]:
    """A typer parser that turns a malformed number into one OmegaError line (range checks come later)."""

    def parse(text: str) -> float:
        try:
            return kind(text)
        except ValueError:
            raise OmegaError(f"{option} must be {'an integer' if kind is int else 'a number'}, got {text!r}") from None

    return parse


def load(
    url: Annotated[str | None, typer.Option("--url", help="server on loopback, http://127.0.0.1:8700")] = None,
    spawn_server: Annotated[bool, typer.Option("--spawn-server", help="start a sync server (as `omega serve` runs it) as a child on a free port (adds server RSS and memory per connection)")] = False,
    store: Annotated[str | None, typer.Option("--store", help="with --spawn-server: its store (default sqlite in a temp folder)")] = None,
    connections: Annotated[int, typer.Option("--connections", help="simulated TVs", parser=_number("--connections", int))] = 100,
    mix: Annotated[str, typer.Option("--mix", help="premium:active:casual ratios (premium holds a WebSocket, active connects per sync, casual polls HTTP)")] = "1:4:5",
    duration: Annotated[float, typer.Option("--duration", help="seconds of the run, ramp included (max 900)", parser=_number("--duration", float))] = 30.0,
    time_scale: Annotated[float, typer.Option("--time-scale", help="multiplies the tier intervals (60/300/900 s); 0.1 makes premium sync every 6 s", parser=_number("--time-scale", float))] = 1.0,
    ramp_rate: Annotated[float, typer.Option("--ramp-rate", help="TVs brought online per second (all processes)", parser=_number("--ramp-rate", float))] = 1000.0,
    processes: Annotated[int, typer.Option("--processes", help="client processes (0: enough for the fd limit, at least 2)", parser=_number("--processes", int))] = 0,
    secret: Annotated[str | None, typer.Option("--secret", help="the server secret tokens are derived from (default OMEGA_SECRET)")] = None,
    key_id: Annotated[int, typer.Option("--key-id", help="key id of that secret", parser=_number("--key-id", int))] = 1,
    heartbeat_only: Annotated[bool, typer.Option("--heartbeat-only", help="sessions are a heartbeat alone (no pull/push): the cost of holding connections")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object on stdout (progress stays on stderr)")] = False,
) -> None:
    """Hold many device connections against one sync server: connections held, syncs/s, p50/p99, bytes, errors."""
    from omega.protocol.auth import MAX_KEY_ID, MIN_SECRET_BYTES
    from omega.sim.load.config import LoadConfig, check_numbers, loopback_target, parse_mix, split_mix
    from omega.sim.load.runner import new_secret, run_load

    check_numbers(connections, duration, time_scale, ramp_rate, processes)
    devices = split_mix(connections, parse_mix(mix))
    if spawn_server == (url is not None):
        raise OmegaError("give either --url (a running server on loopback) or --spawn-server")
    if store is not None and not spawn_server:
        raise OmegaError("--store only applies with --spawn-server")
    if not 0 <= key_id <= MAX_KEY_ID:
        raise OmegaError(f"--key-id must be in 0..{MAX_KEY_ID}, got {key_id}")
    target = loopback_target(url) if url is not None else None
    text = secret if secret is not None else os.environ.get("OMEGA_SECRET")
    if text is None and target is not None:
        raise OmegaError("the server secret is needed to issue device tokens: give --secret or set OMEGA_SECRET")
    secret_bytes = text.encode("utf-8") if text is not None else new_secret()
    if len(secret_bytes) < MIN_SECRET_BYTES:
        raise OmegaError(f"the server secret must be at least {MIN_SECRET_BYTES} bytes")
    config = LoadConfig(connections=connections, devices=devices, duration_s=duration, secret=secret_bytes,
                        target=target, store=store, key_id=key_id, time_scale=time_scale, ramp_rate=ramp_rate,
                        processes=processes, heartbeat_only=heartbeat_only)  # fmt: skip
    report = run_load(config, notes("load"))
    if as_json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            print(f"{key:<32} {value}")


def register(root: typer.Typer) -> None:
    """Attach `omega load` to the root app."""
    root.command("load")(load)
