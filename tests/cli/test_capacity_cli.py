"""`omega capacity` through the CLI entry point (`omega.cli.main`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer

import omega.cli as cli
from omega.cli import main
from omega.cli.capacity import register

DESIGN_KEYS = {"users", "concurrent", "workers", "shards", "bandwidth_gb_per_min", "monthly_cost_usd", "seed"}


@pytest.fixture(autouse=True)
def capacity_wired(monkeypatch: pytest.MonkeyPatch) -> None:
    """Until the lead wires register() into the root app, run main() over a local app that has it."""
    names = {c.name for c in cli.app.registered_commands}
    if "capacity" in names:
        return
    app = typer.Typer(pretty_exceptions_enable=False, add_completion=False, no_args_is_help=True)
    register(app)

    @app.command("noop", hidden=True)
    def _noop() -> None:  # a second command keeps `capacity` a sub-command
        """placeholder"""

    monkeypatch.setattr(cli, "app", app)


def test_json_has_design_keys(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["capacity", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert DESIGN_KEYS <= set(report)
    assert set(report["bandwidth_gb_per_min"]) == {"push", "pull", "heartbeat", "total"}
    assert report["users"] == 400_000_000 and report["concurrent"] == 10_000_000
    assert report["seed"]["workers"] == 1000
    assert all(v["source"] in {"assumed:seed", "assumed:model"} for v in report["inputs"].values())
    assert "cost_breakdown" in report and "differences" in report


def test_json_with_bench_and_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bench = tmp_path / "sync.json"
    bench.write_text(json.dumps({"push_bytes_p50": 600, "pull_bytes_p50": 900, "heartbeat_bytes": 30,
                                 "syncs_per_s": 50, "connections_held": 5000}))
    code = main(["capacity", "--users", "2.5M", "--concurrent", "100K", "--bench", str(bench),
                 "--heartbeat-bytes", "20", "--set", "price_worker=150", "--json"])
    assert code == 0
    r = json.loads(capsys.readouterr().out)
    assert r["users"] == 2_500_000 and r["concurrent"] == 100_000
    assert r["inputs"]["push_bytes"] == {"value": 600, "source": f"measured:{bench}",
                                         "meaning": r["inputs"]["push_bytes"]["meaning"]}
    assert r["inputs"]["heartbeat_bytes"]["source"] == "flag"
    assert r["inputs"]["price_worker"]["value"] == 150
    # 100K concurrent on the tier mix: 355.6 syncs/s + 1666.7 heartbeats/s over 50/s per worker -> 41 (connections: 20)
    assert r["workers_detail"]["binding"] == "throughput"
    assert r["workers_detail"]["by_constraint"]["throughput"] == 41
    assert r["workers"] == 41 and r["shards"] == 1
    assert r["cost_breakdown"]["sync_workers"] == pytest.approx(41 * 150)


def test_table_shows_ours_beside_seed(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["capacity"]) == 0
    out = capsys.readouterr().out
    for text in ("ours", "seed", "ours/seed", "binding: connections", "assumed:seed", "530,000", "basis: concurrent"):
        assert text in out


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--users", "lots"], "--users"), (["--users", "10", "--concurrent", "20"], "cannot exceed"),
     (["--set", "nope=1"], "unknown figure"), (["--set", "price_worker"], "NAME=VALUE"),
     (["--basis", "galaxy"], "basis")],
)
def test_bad_arguments_are_one_line(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["capacity", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_bad_bench_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("not json")
    assert main(["capacity", "--bench", str(bad)]) == 2
    assert "not JSON" in capsys.readouterr().err
    assert main(["capacity", "--bench", str(tmp_path / "missing.json")]) == 2
    assert "not found" in capsys.readouterr().err
