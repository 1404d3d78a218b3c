"""Federation between real shards (Aggregators on SQLite stores) on both buses."""

from __future__ import annotations

import asyncio

import pytest

from omega.constellation.aggregation import AggregationPolicy, Aggregator
from omega.constellation.crdt import ConsolidatedCell
from omega.constellation.federation import (
    GlobalHub,
    RegionAggregator,
    ShardFederation,
    start_embedded_federation,
    start_shard_federation,
)
from omega.constellation.store import open_store
from omega.errors import OmegaError

from .conftest import SALT, device, near, pattern
from .test_federation_roles import NATS_URL, fed  # noqa: F401  (fixture)

NOW = 1_700_000_000_000
CELL = (0, 5)


@pytest.fixture
async def shards(tmp_path, codebook):
    """Two shards (s1 in region eu, s2 in us); s1 has devices 0 and 1 on a cell, s2 device 2: only the union reaches k_min=3."""
    opened = []
    for name in ("s1", "s2"):
        store = await open_store(f"sqlite:{tmp_path / name}.db", origin=name)
        opened.append(await Aggregator.open(store, codebook, SALT, AggregationPolicy(k_min=3)))
    s1, s2 = opened
    for d in (0, 1):
        await s1.apply(device(d), b"b1", [pattern(near(codebook, CELL[1], d))], [(0, 1, 2, 1.0)], NOW)
    await s2.apply(device(2), b"b1", [pattern(near(codebook, CELL[1], 2))], [(0, 1, 2, 1.0)], NOW)
    yield s1, s2
    for agg in opened:
        await agg.store.close()


async def served(agg: Aggregator) -> dict[tuple[int, int], ConsolidatedCell]:
    return {(p.task_type, p.cluster_id): p for p in await agg.published() if isinstance(p, ConsolidatedCell)}


async def test_only_the_federated_union_reaches_k_min_and_both_shards_serve_it(fed, shards) -> None:
    make_bus, topology = fed
    s1, s2 = shards
    assert await served(s1) == {} and await served(s2) == {}  # 2 and 1 devices: below k_min alone
    bus = await make_bus()
    fed1 = ShardFederation(s1, bus, "eu", topology=topology)
    fed2 = ShardFederation(s2, await make_bus(), "us", topology=topology)
    regions = [RegionAggregator(bus, r, topology=topology) for r in ("eu", "us")]
    hub = GlobalHub(bus, topology=topology)
    for f in (fed1, fed2):
        await f.start()
        assert (await f.publish()).published == 2  # its cell entry and its edge entry
    for svc in (*regions, hub):
        await svc.step()
    assert (await fed1.receive()).merged > 0 and (await fed2.receive()).merged > 0
    one, two = await served(s1), await served(s2)
    assert set(one) == set(two) == {CELL}
    assert one[CELL].support == two[CELL].support == 3
    assert one[CELL].embedding.tolist() == two[CELL].embedding.tolist()  # same sums, same order → same floats
    for agg in (s1, s2):
        edges = [(e.key, e.weight, e.support) for e in await agg.published() if not isinstance(e, ConsolidatedCell)]
        assert edges == [((0, 1, 2), 3.0, 3)]  # the transition, too, only clears k_min as a union
    for svc in (fed1, fed2, *regions, hub):
        await svc.close()


async def test_a_shard_offline_for_a_while_catches_up(fed, shards, codebook) -> None:
    make_bus, topology = fed
    s1, s2 = shards
    bus = await make_bus()
    fed1 = ShardFederation(s1, bus, "eu", topology=topology)
    fed2 = ShardFederation(s2, await make_bus(), "us", topology=topology)
    regions = [RegionAggregator(bus, r, topology=topology) for r in ("eu", "us")]
    hub = GlobalHub(bus, topology=topology)
    await fed1.step()
    await fed2.step()
    await fed2.close()  # s2 goes offline; its durable consumer stays on the stream
    for svc in (*regions, hub):
        await svc.step()
    # More happens at s1 while s2 is away: a fourth device on another cell, with two more.
    for d in (3, 4, 5):
        await s1.apply(device(d), b"b2", [pattern(near(codebook, 9, d))], [], NOW)
    await fed1.step()
    for svc in (*regions, hub):
        await svc.step()
    await fed1.receive()
    assert await served(s2) == {}  # nothing reached it while offline

    back = ShardFederation(s2, await make_bus(), "us", topology=topology)  # restarted process
    report = await back.step()
    assert report.received >= 2
    assert set(await served(s2)) == {CELL, (0, 9)} == set(await served(s1))
    for svc in (fed1, back, *regions, hub):
        await svc.close()


async def test_embedded_federation_runs_on_its_own(shards) -> None:
    s1, s2 = shards
    handle = await start_embedded_federation([(s1, "eu"), (s2, "us")], interval_s=0.02)
    try:
        async with asyncio.timeout(10):
            while not (CELL in await served(s1) and CELL in await served(s2)):
                await asyncio.sleep(0.02)
    finally:
        await handle.stop()
    assert (await served(s2))[CELL].support == 3


@pytest.mark.parametrize("fed", ["jetstream"], indirect=True)
async def test_shard_federation_over_nats_runs_on_its_schedule(fed, shards) -> None:
    make_bus, topology = fed
    s1, s2 = shards
    h1 = await start_shard_federation(s1, NATS_URL, "s1", "eu", interval_s=0.05, topology=topology)
    h2 = await start_shard_federation(s2, NATS_URL, None, "us", interval_s=0.05, topology=topology)
    stop = asyncio.Event()
    relays = [RegionAggregator(await make_bus(), r, topology=topology, interval_s=0.05) for r in ("eu", "us")]
    relays.append(GlobalHub(await make_bus(), topology=topology, interval_s=0.05))
    tasks = [asyncio.create_task(r.run(stop)) for r in relays]
    try:
        async with asyncio.timeout(15):
            while not (CELL in await served(s1) and CELL in await served(s2)):
                await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        await h1.stop()
        await h2.stop()


async def test_shard_id_must_match_the_store_origin(shards) -> None:
    s1, _ = shards
    with pytest.raises(OmegaError, match="does not match"):
        await start_shard_federation(s1, None, "other", "eu")
