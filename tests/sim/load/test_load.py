"""`omega load`: a real run against a real server subprocess, and the refusals of bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from omega.errors import OmegaError
from omega.sim.load.histogram import LatencyHistogram
from omega.sim.load.config import loopback_target, parse_mix, split_mix
from omega.sim.load.server_process import start_server
from omega.sim.load.worker import devices_per_worker, interleave

SECRET = "load-test-secret-0123456789abcdef"
# The root CLI gets `load` from the lead; until then the tests attach it to the same app and main().
_LAUNCH = (
    "import sys\n"
    "from omega.cli import app, main\n"
    "from omega.cli.load import register\n"
    "if __name__ == '__main__':\n"
    "    if not any(c.name == 'load' for c in app.registered_commands):\n"
    "        register(app)\n"
    "    sys.exit(main(sys.argv[1:]))\n"
)


def omega_load(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("OMEGA_")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-c", _LAUNCH, "load", *args], capture_output=True, text=True,
                          env=full_env, timeout=timeout)  # fmt: skip


def test_a_small_mixed_run_holds_its_premium_sockets_without_errors() -> None:
    out = omega_load("--spawn-server", "--connections", "40", "--mix", "2:1:1", "--duration", "5",
                     "--time-scale", "0.05", "--ramp-rate", "200", "--json")  # fmt: skip
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)  # stdout holds exactly one JSON object
    for key in ("connections_target", "connections_held", "connections_held_at_end", "connections_held_server",
                "syncs_per_s", "p50_ms", "p99_ms", "bytes_in", "bytes_out", "errors", "duration_s",
                "client_processes", "server_rss_before_kib", "server_rss_after_kib", "memory_per_connection_kib"):  # fmt: skip
        assert key in report, key
    assert report["errors"] == {} and report["errors_total"] == 0, report["errors"]
    assert report["devices"] == {"premium": 20, "active": 10, "casual": 10}
    # premium TVs hold their WebSockets, seen from both ends
    assert report["connections_held"] == report["connections_held_at_end"] == 20
    # the server's peak also counts an active TV whose session WebSocket happened to be open at a sample
    assert 20 <= report["connections_held_server"] <= 20 + 10
    # every tier synced: active TVs reconnect, casual TVs poll over HTTP, premium TVs sync every 3 s. Every TV
    # has its first session; how many more fit in 5 s depends on how busy the machine is (56 seen at load 18).
    assert report["ws_connects"] >= 30 and report["sessions"] >= 40
    assert report["syncs_per_s"] > 0 and report["bytes_in"] > 0 and report["bytes_out"] > 0
    assert 0 < report["p50_ms"] <= report["p99_ms"]
    assert report["patterns_accepted"] > 0
    # Pull traffic at the seed's schedule: something per TV per day, each reply within the 5 KB page budget.
    assert report["pull_bytes_per_tv_day"] > 0 and 0 < report["pull_reply_bytes_max"] <= 5000
    assert report["client_processes"] == 2 and report["source_addresses"] == 2
    assert report["client_nofile_limit"] >= 1024
    assert report["server_rss_after_kib"] >= report["server_rss_before_kib"] > 0
    assert report["memory_per_connection_kib"] is not None
    # memory per connection counts every connection the server holds (HTTP and WebSocket), and says when the RSS
    # growth it divides also holds data (pushes were accepted: the store and aggregator grew)
    assert report["connections_open_server"] >= 20 and report["connections_open_at_memory_sample"] >= 20
    assert report["server_rss_growth_kib"] == report["server_rss_after_kib"] - report["server_rss_before_kib"]
    assert report["memory_per_connection_includes_data"] is True
    # what each side used on the shared cores, how late the clients' loops ran, and how busy the machine was
    assert report["server_cpu_s"] > 0 and report["client_cpu_s"] > 0
    assert report["client_loop_lag_ms"]["p50"] is not None
    lag = report["client_loop_lag_ms"]
    assert lag["p50"] <= lag["p99"] <= lag["max"]
    # steady-phase latency by tier and kind, and every answered frame in a 10 s window of the run. Which tiers
    # sync inside a 5 s steady phase depends on how busy the machine is (casual TVs had none at load ~12): only
    # the premium tier, syncing every 3 s on its held socket, is sure to.
    by_tier = report["latency_ms_by_tier"]
    assert set(by_tier) == {"premium", "active", "casual"}, by_tier
    assert all(set(kinds) == {"heartbeat", "push", "pull"} for kinds in by_tier.values()), by_tier
    assert sum(v["n"] for v in by_tier["premium"].values()) > 0, by_tier
    windows = report["latency_windows"]
    assert [w["from_s"] for w in windows] == [10.0 * i for i in range(len(windows))]
    assert sum(w["n"] for w in windows) == report["frames"]
    assert len(report["loadavg_1m"]) == 2 and all(x >= 0 for x in report["loadavg_1m"])
    assert "omega load:" in out.stderr


def test_a_heartbeat_only_run_says_its_memory_per_connection_holds_no_data() -> None:
    out = omega_load("--spawn-server", "--connections", "30", "--mix", "1:0:0", "--duration", "4",
                     "--ramp-rate", "200", "--heartbeat-only", "--json")  # fmt: skip
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["errors_total"] == 0 and report["traffic"] == "heartbeat", report["errors"]
    assert report["patterns_accepted"] == 0 and report["memory_per_connection_includes_data"] is False
    assert 0 < report["connections_open_at_memory_sample"] <= 30 and report["memory_per_connection_kib"] is not None


def test_a_running_server_with_another_secret_is_one_clear_error(tmp_path: Path) -> None:
    with start_server(tmp_path, f"sqlite:{tmp_path / 'c.db'}", SECRET) as server:
        wrong = omega_load("--url", server.url, "--connections", "5", "--duration", "2", "--secret", "not-the-server-secret-at-all")
        missing = omega_load("--url", server.url, "--connections", "5", "--duration", "2")
    for out, message in ((wrong, "secret"), (missing, "OMEGA_SECRET")):
        assert out.returncode == 2, out.stderr
        assert out.stderr.strip().splitlines()[-1].startswith("omega: error:") and message in out.stderr


def test_its_tvs_name_their_device_so_a_pinned_server_answers_every_tier(tmp_path: Path) -> None:
    # A pinned server (OMEGA_PINNED) refuses any request or WebSocket without X-Omega-Device: before the load
    # generator sent it as TVs do, every frame of this run was an error.
    with start_server(tmp_path, f"sqlite:{tmp_path / 'c.db'}", SECRET, env={"OMEGA_PINNED": "1"}) as server:
        out = omega_load("--url", server.url, "--secret", SECRET, "--connections", "12", "--mix", "1:1:1",
                         "--duration", "4", "--time-scale", "0.1", "--json")  # fmt: skip
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["errors_total"] == 0, report["errors"]
    assert report["sessions"] >= 12 and report["patterns_accepted"] > 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--url", "http://10.0.0.1:8700"), "loopback"),
        (("--url", "http://example.com:8700"), "loopback"),
        (("--url", "http://[2001:db8::1]:8700"), "loopback"),
        (("--url", "ftp://127.0.0.1:21"), "--url"),
        (("--url", "http://127.0.0.1:8700/v1/sync"), "--url"),
        (("--spawn-server", "--mix", "1:2"), "--mix"),
        (("--spawn-server", "--mix", "a:b:c"), "--mix"),
        (("--spawn-server", "--mix", "0:0:0"), "--mix"),
        (("--spawn-server", "--mix", "1:-1:1"), "--mix"),
        (("--spawn-server", "--duration", "0"), "--duration"),
        (("--spawn-server", "--duration", "100000"), "--duration"),
        (("--spawn-server", "--duration", "soon"), "--duration"),
        (("--spawn-server", "--connections", "0"), "--connections"),
        (("--spawn-server", "--connections", "many"), "--connections"),
        (("--spawn-server", "--connections", "10000000"), "--connections"),
        (("--spawn-server", "--time-scale", "2"), "--time-scale"),
        (("--connections", "10"), "--url"),
        (("--spawn-server", "--url", "http://127.0.0.1:1"), "--url"),
        (("--spawn-server", "--secret", "short"), "secret"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: tuple[str, ...], message: str, capsys: pytest.CaptureFixture) -> None:
    from omega.cli import app, main
    from omega.cli.load import register

    if not any(c.name == "load" for c in app.registered_commands):
        register(app)
    code = main(["load", *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("omega: error:") and message in err[0], err


def test_loopback_targets_and_mix_arithmetic() -> None:
    assert loopback_target("http://localhost:9000") == loopback_target("ws://127.0.0.1:9000")
    assert loopback_target("http://127.9.8.7").port == 8700
    assert loopback_target("http://[::1]:8701").host == "::1"
    with pytest.raises(OmegaError, match="loopback"):
        loopback_target("http://192.168.1.10:8700")
    assert parse_mix("1:4:5") == {"premium": 1.0, "active": 4.0, "casual": 5.0}
    counts = split_mix(7, parse_mix("1:1:1"))
    assert sum(counts.values()) == 7 and max(counts.values()) - min(counts.values()) <= 1
    assert split_mix(10_000, parse_mix("1:0:0")) == {"premium": 10_000, "active": 0, "casual": 0}
    shares = devices_per_worker({"premium": 5, "active": 3, "casual": 0}, 2)
    assert shares == [{"premium": 3, "active": 2, "casual": 0}, {"premium": 2, "active": 1, "casual": 0}]
    order = interleave({"premium": 2, "active": 2, "casual": 4})
    assert sorted(order) == sorted(["premium"] * 2 + ["active"] * 2 + ["casual"] * 4)
    assert order[:4].count("casual") == 2  # evenly mixed from the start


def test_histogram_quantiles_are_within_a_percent_and_merge() -> None:
    a, b = LatencyHistogram(), LatencyHistogram()
    for i in range(1, 1001):
        (a if i % 2 else b).add(i / 1000.0)  # 1 ms .. 1000 ms
    a.merge(b)
    assert a.total == 1000
    assert a.quantile_ms(0.5) == pytest.approx(500.0, rel=0.011)
    assert a.quantile_ms(0.99) == pytest.approx(990.0, rel=0.011)
    assert LatencyHistogram().quantile_ms(0.5) is None
