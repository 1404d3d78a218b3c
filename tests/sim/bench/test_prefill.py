"""`omega.sim.bench.prefill`: a grown store for the sync benches, filled through the server's real push path."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

import pytest

from omega.constellation.keyring import Keyring
from omega.constellation.lifespan import run_shard
from omega.constellation.metrics import ServerMetrics
from omega.constellation.server_state import ServerState
from omega.constellation.settings import ServerSettings
from omega.errors import OmegaError
from omega.sim.bench.prefill import prefill
from omega.sim.load.client import SimDevice, pattern_pool

SECRET = b"prefill-test-secret-0123456789abc"


def _settings(path: Path, **extra: object) -> ServerSettings:
    return ServerSettings(store=f"sqlite:{path}", secrets={1: SECRET}, **extra)  # type: ignore[arg-type]


async def test_prefill_puts_n_pushes_of_n_devices_in_the_store_and_it_reopens(tmp_path: Path) -> None:
    path = tmp_path / "constellation.db"
    facts = await prefill(_settings(path), 130)  # two full groups of 64 and a short one
    rows = facts["store_rows"]
    assert facts["store_pushes_before"] == 130 and rows["push_keys"] == 130
    # ~10 item transitions a push, nearly all new in a 2,000 x 2,000 space, each two edge keys (two keyspaces)
    assert 2_000 < rows["edge_state"] <= 2 * 10 * 130 and rows["served"] >= rows["edge_state"]
    with sqlite3.connect(path) as conn:
        # every edge key has its member row (the device that named it, as a keyed hash of the key and the device)
        assert conn.execute("SELECT count(*) FROM members WHERE kind = 1").fetchone()[0] >= rows["edge_state"]
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    assert facts["store_file_bytes"] == path.stat().st_size + (path.with_name(path.name + "-wal").stat().st_size
                                                               if path.with_name(path.name + "-wal").exists() else 0)
    # the server opens it as it is and the bench's own clients (other device ids) push on
    settings = _settings(path)
    state = ServerState(settings, ServerMetrics(), Keyring(settings.secrets, 1), salt=settings.aggregation_salt(),
                        periodic=False)  # fmt: skip
    async with run_shard(state):
        device = SimDevice(SECRET, pattern_pool(random.Random(7)), random.Random(0))
        reply = await state.service.handle(device.frame(device.push()))  # type: ignore[union-attr]
        assert reply.code is None and reply.kind == "push"


async def test_prefill_stops_on_a_push_the_server_does_not_ack(tmp_path: Path) -> None:
    # frames over the server's size limit are refused: the fill says so instead of reporting a store it did not fill
    with pytest.raises(OmegaError, match="not an ack"):
        await prefill(_settings(tmp_path / "c.db", max_frame_bytes=64), 10)


@pytest.mark.parametrize(("store", "pushes", "message"), [
    ("postgresql://127.0.0.1:1/omega", 10, "needs a SQLite file store"),
    ("sqlite::memory:", 10, "needs a SQLite file store"),
    (None, -1, "--prefill must be in 0.."),
])  # fmt: skip
async def test_prefill_refuses_what_it_cannot_fill(tmp_path: Path, store: str | None, pushes: int,
                                                   message: str) -> None:  # fmt: skip
    settings = ServerSettings(store=store or f"sqlite:{tmp_path / 'c.db'}", secrets={1: SECRET})
    with pytest.raises(OmegaError, match=message):
        await prefill(settings, pushes)
    assert not (tmp_path / "c.db").exists()
