"""`omega serve`, `omega device token`, `omega codebook build`, `omega bench sync` from the command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from omega.protocol import derive_device_key, parse_token

SECRET = "cli-test-secret-0123456789abcdef"
DEVICE = "01234567-89ab-cdef-0123-456789abcdef"


def omega(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("OMEGA_")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-c", "from omega.cli import run; run()", *args], capture_output=True,
                          text=True, env=full_env, timeout=timeout)  # fmt: skip


def test_device_token_is_derived_from_the_secret() -> None:
    out = omega("device", "token", "--device-id", DEVICE, env={"OMEGA_SECRET": SECRET})
    assert out.returncode == 0, out.stderr
    key_id, key = parse_token(out.stdout.strip())
    assert key_id == 1 and key == derive_device_key(SECRET.encode(), bytes.fromhex(DEVICE.replace("-", "")), 1)
    rotated = omega("device", "token", "--device-id", DEVICE, "--key-id", "2",
                    env={"OMEGA_SECRETS": f"1:{'aa' * 32},2:{'bb' * 32}"})  # fmt: skip
    assert parse_token(rotated.stdout.strip())[0] == 2


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (("device", "token", "--device-id", "nope"), {"OMEGA_SECRET": SECRET}, "UUID"),
        (("device", "token", "--device-id", DEVICE, "--store", "postgresql://h/db"), {}, "no server secret"),
        (("device", "token", "--device-id", DEVICE, "--key-id", "4"), {"OMEGA_SECRET": SECRET}, "not configured"),
        (("serve", "--port", "99999"), {"OMEGA_SECRET": SECRET}, "port"),
        (("serve", "--store", "mysql://x"), {"OMEGA_SECRET": SECRET}, "store"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: tuple, env: dict, message: str) -> None:
    out = omega(*args, env=env)
    assert out.returncode == 2, (out.returncode, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("omega: error:") and message in lines[0], out.stderr


def test_serve_refuses_a_corrupt_codebook_and_a_bad_config(tmp_path: Path) -> None:
    book = tmp_path / "book.npz"
    book.write_bytes(b"not a codebook")
    out = omega("serve", "--store", f"sqlite:{tmp_path / 'c.db'}", "--codebook", str(book), env={"OMEGA_SECRET": SECRET})
    assert out.returncode == 2 and "codebook" in out.stderr.strip().splitlines()[-1]
    cfg = tmp_path / "bad.toml"
    cfg.write_text("rate_burst = 'lots'\n")
    out = omega("serve", "--config", str(cfg), env={"OMEGA_SECRET": SECRET})
    assert out.returncode == 2 and "rate_burst" in out.stderr


def test_help_lists_the_commands() -> None:
    out = omega("--help")
    for name in ("serve", "device", "codebook"):
        assert name in out.stdout
    serve_help = omega("serve", "--help").stdout
    for flag in ("--host", "--port", "--store", "--redis", "--nats", "--shard-id", "--region", "--config"):
        assert flag in serve_help


def test_serve_listens_and_drains_on_sigterm(tmp_path: Path) -> None:
    """`omega serve` itself, configured through the environment as `python -m omega.constellation` is."""
    import httpx

    from omega.sim.load.server_process import ServerProcess

    command = (sys.executable, "-c", "from omega.cli import run; run()", "serve")
    server = ServerProcess(tmp_path, secret=SECRET, command=command).start()
    try:
        assert httpx.get(server.url + "/healthz", timeout=10).status_code == 200
        assert server.terminate() == 0
    finally:
        server.kill()
    assert "listening on" in server.log_text() and "Traceback" not in server.log_text()


def _model_available() -> bool:
    try:
        from omega.brain.embedder import default_model_dir

        return default_model_dir().is_dir()
    except Exception:
        return False


@pytest.mark.skipif(not _model_available(), reason="the MiniLM model is not built here (omega model build)")
def test_codebook_build_on_a_small_catalog(tmp_path: Path) -> None:
    from omega.constellation.codebook import Codebook

    folder = tmp_path / "ml"
    folder.mkdir()
    genres = ["Comedy", "Drama", "Horror", "Animation|Children", "Sci-Fi|Action", "Romance"]
    rows = [f'{i},"Movie number {i} ({1990 + i % 30})",{genres[i % len(genres)]}' for i in range(1, 41)]
    (folder / "movies.csv").write_text("movieId,title,genres\n" + "\n".join(rows) + "\n")
    (folder / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,2,3.0,964982704\n")
    out = omega("codebook", "build", "--catalog", str(folder), "--out", str(tmp_path / "book.npz"), "--k", "8")
    assert out.returncode == 0, out.stderr
    book = Codebook.load(tmp_path / "book.npz")
    assert book.k == 8 and book.version == 1


def test_bench_sync_reports_the_design_keys() -> None:
    out = omega("bench", "sync", "--json", "--clients", "4", "--duration", "1", timeout=180)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    for key in ("push_bytes_p50", "pull_bytes_p50", "heartbeat_bytes", "syncs_per_s", "p50_ms", "p99_ms", "connections_held"):
        assert key in report, key
    assert report["syncs_per_s"] > 0 and report["connections_held"] == 2
    assert report["heartbeat_bytes"] <= 64 and report["pull_bytes_max"] <= 5000
    assert report["errors"] == {}
    # both transports answered (the HTTP half on the harness's own keep-alive client), and what each side used
    assert report["frames_by_transport"]["ws"] > 0 and report["frames_by_transport"]["http"] > 0
    assert report["server_cpu_s"] > 0 and report["client_cpu_s"] > 0
    # the same harness against the echo server of the same stack, in the same run
    ceiling = report["ceiling"]
    assert ceiling["frames_per_s"] > 0 and ceiling["errors"] == {} and report["client_processes"] == 2
    assert report["ratio_to_ceiling"] == round(report["frames_per_s"] / ceiling["frames_per_s"], 3)


def test_bench_sync_clients_name_their_device_as_a_tv_does() -> None:
    """--pinned: the server refuses any frame without X-Omega-Device, so no error means every client sent it."""
    out = omega("bench", "sync", "--json", "--no-ceiling", "--pinned", "--clients", "4", "--duration", "1",
                timeout=180)  # fmt: skip
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["pinned"] is True and report["errors"] == {} and report["syncs_per_s"] > 0
    assert report["frames_by_transport"]["ws"] > 0 and report["frames_by_transport"]["http"] > 0
    refused = omega("bench", "sync", "--workers", "2", "--pinned", "--clients", "4", "--duration", "1")
    assert refused.returncode != 0 and "--workers > 1 needs --store postgresql://" in refused.stderr


def test_bench_sync_prefill_starts_the_server_on_a_grown_store() -> None:
    out = omega("bench", "sync", "--json", "--no-ceiling", "--prefill", "150", "--clients", "4", "--duration", "1",
                "--client-processes", "1", timeout=180)  # fmt: skip
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["store_pushes_before"] == 150 and report["store_rows"]["push_keys"] == 150
    assert report["store_rows"]["edge_state"] > 2_000 and report["store_file_bytes"] > 0
    # the bench's own clients push on into it (device ids of their own: no replay refusals)
    assert report["errors"] == {} and report["pushes"] > 0 and report["patterns_accepted"] > 0
    assert "prefill: 150 of 150 pushes" in out.stderr
    for args, message in ((["--prefill", "-1"], "--prefill must be an integer in 0..10000000"),
                          (["--prefill", "5", "--store", "postgresql://127.0.0.1:1/omega"], "needs a SQLite file")):
        refused = omega("bench", "sync", "--no-ceiling", "--clients", "4", "--duration", "1", *args)
        assert refused.returncode != 0 and "Traceback" not in refused.stderr
        assert message in refused.stderr.strip().splitlines()[-1], refused.stderr


def test_codebook_build_refuses_bad_input_with_one_line(tmp_path: Path) -> None:
    existing = tmp_path / "book.npz"
    existing.write_bytes(b"an older codebook")
    cases = [
        (["--catalog", str(tmp_path), "--out", str(existing), "--k", "0"], "--k"),
        (["--catalog", str(tmp_path), "--out", str(existing), "--version", "-1"], "--version"),
        (["--catalog", str(tmp_path), "--out", str(tmp_path / "no" / "book.npz")], "output folder"),
        (["--catalog", str(tmp_path / "absent"), "--out", str(existing)], "not found"),
        (["--catalog", str(tmp_path), "--out", str(existing)], "not a MovieLens folder"),
    ]
    for args, expected in cases:
        out = omega("codebook", "build", *args)
        assert out.returncode == 2, (args, out.stderr)
        assert "Traceback" not in out.stderr
        assert expected in out.stderr.strip().splitlines()[-1], (args, out.stderr)
    assert existing.read_bytes() == b"an older codebook"  # nothing written over on a refusal
