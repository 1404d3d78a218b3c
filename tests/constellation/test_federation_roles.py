"""Federation roles on both buses: the in-process one and the real NATS JetStream at 127.0.0.1:4222.

Every JetStream test uses its own subject prefix and stream names (uuid) with R=1
and deletes its streams afterwards; without a reachable JetStream those cases skip.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import numpy as np
import pytest

from omega.constellation.crdt import CellKey, CellState, EdgeKey, EdgeState, FederatedState
from omega.constellation.federation import (
    Bus,
    GlobalHub,
    InProcessBus,
    JetStreamBus,
    RegionAggregator,
    Topology,
)
from omega.constellation.federation.messages import encode_chunks, message_id
from omega.errors import OmegaError
from omega.protocol import EMBEDDING_DIM

NATS_URL = os.environ.get("OMEGA_NATS_URL", "nats://127.0.0.1:4222")

BusFactory = Callable[[], Awaitable[Bus]]


@pytest.fixture(params=["memory", "jetstream"])
async def fed(request: pytest.FixtureRequest) -> AsyncIterator[tuple[BusFactory, Topology]]:
    """(make_bus, topology): every bus from make_bus() sees the same streams (one server or one process)."""
    tag = uuid.uuid4().hex[:10]
    topology = Topology(prefix=f"t{tag}.fed", stream_prefix=f"T{tag}", replicas=1, max_age_s=600)
    if request.param == "memory":
        shared = InProcessBus()

        async def make_memory() -> Bus:
            return shared

        yield make_memory, topology
        return
    try:
        admin = await JetStreamBus.connect(NATS_URL, connect_timeout_s=1.0)
    except OmegaError as exc:
        pytest.skip(f"no NATS server: {exc}")
    try:
        await admin._js.account_info()
    except Exception as exc:
        await admin.close()
        pytest.skip(f"NATS at {NATS_URL} has no JetStream: {exc}")
    buses: list[JetStreamBus] = [admin]

    async def make_jetstream() -> Bus:
        bus = await JetStreamBus.connect(NATS_URL, connect_timeout_s=1.0)
        bus.fetch_timeout_s = 0.3
        buses.append(bus)
        return bus

    try:
        yield make_jetstream, topology
    finally:
        await admin.delete_streams(topology)
        for bus in buses:
            if not bus._nc.is_closed:
                await bus.close()


def cell_state(version: int, seed: int, support: int = 1) -> CellState:
    rng = np.random.default_rng(seed)
    w = 1.0 + seed % 5
    return CellState(w, w * rng.normal(size=EMBEDDING_DIM), support, 0.8 * w, w, version)


def shard_delta(origin: str, version: int, cells: list[int], support: int = 1) -> FederatedState:
    """A delta as shard `origin` would publish it: its entries of `cells` at `version`, plus one edge."""
    state = FederatedState(codebook_version=1)
    for c in cells:
        state.put_cell(origin, CellKey(0, c), cell_state(version, seed=version * 1000 + c, support=support))
    state.put_edge(origin, EdgeKey(0, cells[0], version), EdgeState(1.5, support, version))
    return state


async def publish_delta(bus: Bus, topology: Topology, region: str, shard: str, delta: FederatedState, tag: str = "") -> int:
    stored = 0
    subject = topology.shard_subject(region, shard)
    for payload in encode_chunks(delta):
        stored += await bus.publish(subject, payload, message_id(subject + tag, payload))
    return stored


def merged(*deltas: FederatedState) -> FederatedState:
    out = FederatedState(codebook_version=1)
    for d in deltas:
        out.merge(d)
    return out


async def test_duplicated_reordered_and_replayed_messages_change_nothing(fed) -> None:
    make_bus, topology = fed
    bus = await make_bus()
    await bus.ensure_streams(topology)
    d1 = shard_delta("s1", 1, [1, 2])
    d2 = shard_delta("s1", 2, [2, 3])  # cell 2 again, newer
    d3 = shard_delta("s2", 1, [2])
    # Region "a" sees them in order; region "b" reordered, duplicated and replayed.
    for d in (d1, d2, d3):
        await publish_delta(bus, topology, "a", d is d3 and "s2" or "s1", d)
    # (each delta is two messages: cells and edges travel separately)
    assert await publish_delta(bus, topology, "b", "s1", d2) == 2
    assert await publish_delta(bus, topology, "b", "s2", d3) == 2
    assert await publish_delta(bus, topology, "b", "s1", d1) == 2
    region_a = RegionAggregator(bus, "a", topology=topology)
    region_b = RegionAggregator(bus, "b", topology=topology)
    assert (await region_a.step()).received == 6
    assert (await region_b.step()).received == 6

    assert await publish_delta(bus, topology, "b", "s1", d2) == 0  # same Nats-Msg-Id: dropped by the bus
    assert await publish_delta(bus, topology, "b", "s1", d1, tag="replay") == 2  # replays the bus keeps...
    assert await publish_delta(bus, topology, "b", "s1", d2, tag="replay") == 2
    replayed = await region_b.step()
    assert replayed.received == 4 and replayed.merged == 0 and replayed.published == 0  # ...change nothing
    expected = merged(d1, d2, d3)
    assert region_a.state == expected and region_b.state == expected
    assert region_a.state.to_bytes() == region_b.state.to_bytes()
    # Stepping again (nothing new) changes nothing and publishes nothing.
    again = await region_b.step()
    assert again.received == 0 and again.published == 0 and region_b.state == expected
    await region_a.close()
    await region_b.close()


async def test_hub_restarted_from_its_stream_converges(fed) -> None:
    make_bus, topology = fed
    bus = await make_bus()
    await bus.ensure_streams(topology)
    regions = {r: RegionAggregator(bus, r, topology=topology) for r in ("eu", "us")}
    hub = GlobalHub(bus, topology=topology)
    deltas = [shard_delta("s1", 1, [1, 2]), shard_delta("s2", 1, [2, 4]), shard_delta("s1", 2, [1])]
    await publish_delta(bus, topology, "eu", "s1", deltas[0])
    await publish_delta(bus, topology, "us", "s2", deltas[1])
    for r in regions.values():
        await r.step()
    await hub.step()
    before = hub.state.copy()
    await hub.close()  # the hub goes down; federation goes on without it
    await publish_delta(bus, topology, "eu", "s1", deltas[2])
    await regions["eu"].step()

    restarted = GlobalHub(await make_bus(), topology=topology)  # a new process: state only from its stream
    report = await restarted.step()
    assert report.received >= 3
    assert restarted.state == merged(*deltas)
    assert restarted.state != before  # it did pick up what happened while it was down
    await restarted.close()
    for r in regions.values():
        await r.close()


async def test_two_hubs_fed_the_same_messages_agree(fed) -> None:
    make_bus, topology = fed
    bus = await make_bus()
    await bus.ensure_streams(topology)
    eager = GlobalHub(bus, topology=topology, name="hub-a")  # steps after every region publish
    lazy = GlobalHub(await make_bus(), topology=topology, name="hub-b")  # steps once at the end
    region = {r: RegionAggregator(bus, r, topology=topology) for r in ("eu", "us", "ap")}
    all_deltas = []
    for i, (r, shard) in enumerate([("eu", "s1"), ("us", "s2"), ("ap", "s3"), ("eu", "s4"), ("us", "s2")]):
        delta = shard_delta(shard, i + 1, [i % 3, 5], support=2)
        all_deltas.append(delta)
        await publish_delta(bus, topology, r, shard, delta)
        await region[r].step()
        await eager.step()
    await lazy.step()
    assert eager.state.to_bytes() == lazy.state.to_bytes()
    assert eager.state == merged(*all_deltas)
    assert eager.state.consolidated(k_min=3) and [p.key for p in eager.state.consolidated(3)] == [
        p.key for p in lazy.state.consolidated(3)
    ]
    for svc in (eager, lazy, *region.values()):
        await svc.close()


async def test_region_cut_off_and_reconnected_converges(fed) -> None:
    make_bus, topology = fed
    bus = await make_bus()
    await bus.ensure_streams(topology)
    eu, us = RegionAggregator(bus, "eu", topology=topology), RegionAggregator(bus, "us", topology=topology)
    hub = GlobalHub(bus, topology=topology)
    first = [shard_delta("s1", 1, [1]), shard_delta("s2", 1, [1])]
    await publish_delta(bus, topology, "eu", "s1", first[0])
    await publish_delta(bus, topology, "us", "s2", first[1])
    for svc in (eu, us, hub):
        await svc.step()
    assert hub.state == merged(*first)

    await us.close()  # region "us" is cut off: its consumer stops
    later = [shard_delta("s2", 2, [1, 7]), shard_delta("s1", 2, [3])]
    await publish_delta(bus, topology, "us", "s2", later[0])
    await publish_delta(bus, topology, "eu", "s1", later[1])
    await eu.step()
    await hub.step()
    assert hub.state == merged(first[0], first[1], later[1])  # s2's update is stuck behind the cut

    reconnected = RegionAggregator(await make_bus(), "us", topology=topology)
    await reconnected.step()
    await hub.step()
    assert hub.state == merged(*first, *later)
    for svc in (eu, reconnected, hub):
        await svc.close()


async def test_malformed_message_is_skipped_and_the_stream_goes_on(fed) -> None:
    make_bus, topology = fed
    bus = await make_bus()
    await bus.ensure_streams(topology)
    await bus.publish(topology.shard_subject("eu", "s1"), b"OCRD\x01garbage", "junk-1")
    good = shard_delta("s1", 1, [2])
    await publish_delta(bus, topology, "eu", "s1", good)
    region = RegionAggregator(bus, "eu", topology=topology)
    report = await region.step()
    assert report.rejected == 1 and report.received == 3  # junk + cells + edges
    assert region.state == good
    await region.close()


async def test_a_delta_of_another_codebook_version_is_refused(fed) -> None:
    make_bus, topology = fed
    bus = await make_bus()
    await bus.ensure_streams(topology)
    good = shard_delta("s1", 1, [2])
    foreign = shard_delta("s2", 1, [3])
    foreign.codebook_version = 2
    await publish_delta(bus, topology, "eu", "s1", good)
    await publish_delta(bus, topology, "eu", "s2", foreign)
    region = RegionAggregator(bus, "eu", topology=topology)
    report = await region.step()
    assert report.rejected == 2 and region.state == good  # both of its messages
    await region.close()


def test_large_states_are_split_into_independent_messages() -> None:
    state = merged(*(shard_delta(f"s{i}", 3, list(range(20))) for i in range(4)))
    chunks = encode_chunks(state, max_bytes=20_000)
    assert len(chunks) > 4 and all(len(c) <= 20_000 + 3_200 for c in chunks)
    rebuilt = FederatedState(codebook_version=1)
    for c in reversed(chunks):  # any order
        rebuilt.merge(FederatedState.from_bytes(c))
    assert rebuilt == state


def test_names_that_would_break_subjects_are_refused() -> None:
    topology = Topology()
    assert topology.shard_subject("eu-west", "shard_1") == "omega.fed.shard.eu-west.shard_1"
    for bad in ("a.b", "*", ">", "", "x y"):
        with pytest.raises(OmegaError):
            topology.shard_subject("eu", bad)
    with pytest.raises(OmegaError):
        Topology(replicas=0)


async def test_unreachable_nats_is_one_clear_error() -> None:
    with pytest.raises(OmegaError, match="cannot connect to NATS"):
        await JetStreamBus.connect("nats://127.0.0.1:1", connect_timeout_s=0.5)
    with pytest.raises(OmegaError, match="NATS URL"):
        await JetStreamBus.connect("http://127.0.0.1:4222")


async def test_a_bare_fetch_timeout_ends_the_pull_as_nats_own_does() -> None:
    """nats-py 2.16 raises a bare asyncio.TimeoutError, not nats.errors.TimeoutError, when its deadline runs out
    between the no-wait probe and the lingering request: a race under load that ended a region's step with a
    traceback. NATS cannot produce that race on demand, so the subscription here is a double."""
    import asyncio

    import nats.errors

    from omega.constellation.federation.bus import _JetStreamSubscription

    class Info:
        num_pending, num_ack_pending = 0, 1  # an ack still in flight: pull() has to fetch

    class PSub:
        def __init__(self, exc: BaseException) -> None:
            self.exc, self.fetches = exc, 0

        async def consumer_info(self) -> Info:
            return Info()

        async def fetch(self, batch: int, timeout: float) -> list:
            self.fetches += 1
            raise self.exc

    class Conn:
        def jetstream(self) -> None:
            return None

        async def flush(self) -> None:
            return None

    async def handler(message: object) -> None:
        raise AssertionError("no message was fetched")

    for exc in (asyncio.TimeoutError(), nats.errors.TimeoutError()):
        psub = PSub(exc)
        assert await _JetStreamSubscription(JetStreamBus(Conn()), psub, "S", None).pull(handler) == 0
        assert psub.fetches == 1
