"""A server with the settings of `omega serve --nats … --shard-id … --region …` federates over the real
NATS JetStream (skipped without one).

The test plays the rest of the federation itself: it reads what the server
publishes on its shard subject, runs the region aggregators and the global hub
(real roles on the real bus), and adds another shard's entry, so the server must
both publish its state and merge the broadcast into what its devices pull.
Every run uses its own subject prefix and stream names and deletes them after.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from omega.constellation.crdt import CellKey, CellState, FederatedState, decode_delta
from omega.constellation.federation import BusMessage, GlobalHub, JetStreamBus, RegionAggregator, Topology
from omega.constellation.federation.messages import encode_chunks, message_id
from omega.constellation.settings import load_settings
from omega.errors import OmegaError
from omega.protocol import PullReply, TaskType

from .server_support import Device, ServerProcess, near, pattern, small_codebook

NATS_URL = os.environ.get("OMEGA_NATS_URL", "nats://127.0.0.1:4222")
CODEBOOK = small_codebook()
TASK = int(TaskType.CONTENT_MATCH)
CELL = 5


@pytest.fixture
async def jetstream() -> AsyncIterator[tuple[JetStreamBus, Topology, dict[str, str]]]:
    """(bus, topology, server env): a private subject prefix and stream names on the real JetStream."""
    try:
        bus = await JetStreamBus.connect(NATS_URL, connect_timeout_s=1.0)
    except OmegaError as exc:
        pytest.skip(f"no NATS server: {exc}")
    try:
        await bus._js.account_info()
    except Exception as exc:
        await bus.close()
        pytest.skip(f"NATS at {NATS_URL} has no JetStream: {exc}")
    tag = uuid.uuid4().hex[:10]
    topology = Topology(prefix=f"t{tag}.fed", stream_prefix=f"T{tag}", replicas=1, max_age_s=600)
    bus.fetch_timeout_s = 0.3
    env = {"OMEGA_FEDERATION_PREFIX": topology.prefix, "OMEGA_FEDERATION_STREAM_PREFIX": topology.stream_prefix,
           "OMEGA_FEDERATION_INTERVAL_S": "0.2"}  # fmt: skip
    try:
        yield bus, topology, env
    finally:
        await bus.delete_streams(topology)
        await bus.close()


@pytest.fixture
def folder(tmp_path: Path) -> Iterator[Path]:
    CODEBOOK.save(tmp_path / "codebook.npz")
    yield tmp_path


async def _until(check, timeout_s: float = 20.0, what: str = "condition"):  # noqa: ANN001, ANN202
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = await check()
        if result:
            return result
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _foreign_delta(origin: str, support: int) -> FederatedState:
    """Another shard's entry for CELL: `support` devices around the same centroid."""
    w = 18.0 * support
    state = FederatedState(codebook_version=CODEBOOK.version)
    centroid = CODEBOOK.centroids[CELL].astype(np.float64)
    state.put_cell(origin, CellKey(TASK, CELL), CellState(w, w * centroid, support, 0.9 * 20 * support, 20.0 * support, 1))
    return state


def _pull_patterns(server: ServerProcess, dev: Device) -> dict[tuple[int, int], int]:
    """(task_type, cell) → support of every consolidated pattern a full pull returns."""
    out: dict[tuple[int, int], int] = {}
    cursor, more = 0, True
    while more:
        reply = dev.decode(server.post(dev.pull(cursor)).content).body
        assert isinstance(reply, PullReply)
        out.update({(int(p.task_type), p.cluster_id): p.support for p in reply.patterns})
        cursor, more = reply.cursor, reply.more
    return out


async def test_server_publishes_its_state_and_merges_the_broadcast(jetstream, folder: Path) -> None:
    bus, topology, env = jetstream
    server = ServerProcess(folder, codebook=folder / "codebook.npz", OMEGA_NATS=NATS_URL, OMEGA_SHARD_ID="s1",
                           OMEGA_REGION="r1", **env).start()  # fmt: skip
    try:
        # Two devices on CELL: below k_min=3 on this shard alone, so nothing is served yet.
        for n in (1, 2):
            dev = Device(8000 + n)
            server.post(dev.push([pattern(near(CODEBOOK, CELL, n), seed=n)])[1])
        reader = Device(8100)
        assert _pull_patterns(server, reader) == {}

        # 1) The server publishes its own CRDT entry on its shard subject.
        sub = await bus.subscribe(topology.shard_stream, topology.shard_subject("r1", "s1"))
        entries: dict = {}

        async def published() -> bool:
            async def take(msg: BusMessage) -> None:
                entries.update(decode_delta(msg.data).cells)

            await sub.pull(take)
            entry = entries.get(("s1", CellKey(TASK, CELL)))
            return entry is not None and entry.support == 2

        await _until(published, what="the server's entry on its shard subject")
        await sub.close()
        assert {origin for origin, _ in entries} == {"s1"}  # only its own entries: it is their single writer

        # 2) Another shard (region r2) has one more device on CELL; regions and hub merge and broadcast.
        subject = topology.shard_subject("r2", "s2")
        for payload in encode_chunks(_foreign_delta("s2", 1)):
            assert await bus.publish(subject, payload, message_id(subject, payload))
        relays = [RegionAggregator(bus, "r1", topology=topology), RegionAggregator(bus, "r2", topology=topology),
                  GlobalHub(bus, topology=topology)]  # fmt: skip
        try:
            for relay in relays:
                await relay.step()
            assert relays[2].state.global_cell(CellKey(TASK, CELL)).support == 3
        finally:
            for relay in relays:
                await relay.close()

        # 3) The server merges the broadcast: the union clears k_min and its devices pull it.
        readers = itertools.count(8200)

        async def served() -> dict | None:
            got = await asyncio.to_thread(_pull_patterns, server, Device(next(readers)))  # fresh: no rate limit
            return got if got.get((TASK, CELL)) == 3 else None

        assert await _until(served, what="the merged pattern in a pull") == {(TASK, CELL): 3}
        state = httpx.get(server.url + "/v1/dashboard.json", timeout=5).json()["health"]["federation"]
        assert state["mode"] == "nats" and state["rounds"] >= 1 and state["merged"] >= 1 and state["failures"] == 0
        metrics = httpx.get(server.url + "/metrics", timeout=5).text
        lag = [line for line in metrics.splitlines() if line.startswith("omega_federation_lag_seconds ")]
        assert lag and float(lag[0].split()[1]) >= 0.0
        assert server.metric("omega_consolidated_patterns") >= 1
    finally:
        server.kill()


def test_unreachable_nats_stops_the_server_with_one_clear_error(folder: Path) -> None:
    server = ServerProcess(folder, codebook=folder / "codebook.npz", OMEGA_NATS="nats://127.0.0.1:1", OMEGA_SHARD_ID="s1")
    with pytest.raises(OmegaError, match=r"server exited \(2\)") as failed:
        server.start(timeout_s=20)
    # The server's one line, after uvicorn's own log of the failed start-up.
    assert "omega: error: cannot connect to NATS at nats://127.0.0.1:1" in str(failed.value)


def test_federation_settings_come_from_env_and_are_checked() -> None:
    env = {"OMEGA_FEDERATION_INTERVAL_S": "2.5", "OMEGA_TREND_WINDOW_S": "600",
           "OMEGA_FEDERATION_PREFIX": "t1.fed", "OMEGA_FEDERATION_STREAM_PREFIX": "T1"}  # fmt: skip
    s = load_settings(env=env, overrides={"shard_id": "s1", "region": "eu-west_1"})
    assert (s.federation_interval_s, s.trend_window_s, s.federation_prefix, s.federation_stream_prefix) == (
        2.5, 600.0, "t1.fed", "T1")  # fmt: skip
    # Shard and region names become NATS subject tokens: dots, wildcards and spaces are refused up front.
    for bad in ({"shard_id": "s.1"}, {"shard_id": "s 1"}, {"region": "eu.*"}, {"federation_prefix": "a..b"},
                {"federation_prefix": "a.>"}, {"federation_stream_prefix": "T.1"}, {"federation_interval_s": 0},
                {"trend_window_s": -1}, {"federation_replicas": 0}):  # fmt: skip
        with pytest.raises(OmegaError):
            load_settings(env={}, overrides=bad)
