"""The contribution window (store/window.py), on every backend: support and sums follow the fleet."""

from __future__ import annotations

import numpy as np
import pytest

from omega.constellation.aggregation import AggregationPolicy, Aggregator
from omega.constellation.crdt import CellKey, ConsolidatedCell, EdgeKey, FederatedState
from omega.constellation.store import open_store
from omega.errors import OmegaError

from .conftest import SALT, device, near, pattern

NOW = 1_700_000_000_000 // 86_400_000 * 86_400_000  # midnight: day d is NOW + d * DAY
DAY = 86_400_000
WINDOW = 30


def ident(item) -> tuple:
    if isinstance(item, ConsolidatedCell):
        return ("p", item.task_type, item.cluster_id)
    return ("e", item.keyspace, item.src, item.dst)


async def _published(agg: Aggregator) -> dict[tuple, object]:
    return {ident(i): i for i in await agg.published()}


async def test_a_device_pushing_every_day_holds_support_one_and_one_contribution(aggregator, codebook) -> None:
    assert aggregator.policy.window_epochs == WINDOW
    honest = [device(d) for d in range(2)]
    for d in honest:
        await aggregator.apply(d, b"h", [pattern(near(codebook, 4, 1))], [(0, 5, 6, 1.0)], NOW)
    for day in range(3 * WINDOW):
        res = await aggregator.apply(device(99), b"s%d" % day, [pattern(near(codebook, 4, 2), uses=500)],
                                     [(0, 5, 6, 10.0)], NOW + day * DAY)  # fmt: skip
        assert res.accepted == 2
        await aggregator.prune(NOW + day * DAY)
        state = await aggregator.export_state()
        edge = state.global_edge(EdgeKey(0, 5, 6))
        cell = state.global_cell(CellKey(0, 4))
        honest_left = 2 if day < WINDOW else 0
        # The sybil is one member however often it pushes, and holds one capped contribution: each day's
        # replaces the day before's (latest wins), so repetition does not add up, inside the window or not.
        assert edge.support == cell.support == honest_left + 1
        assert edge.weight == pytest.approx(honest_left * 1.0 + aggregator.policy.edge_w_max)
        w_max = aggregator.policy.w_max
        assert cell.sum_w == pytest.approx(honest_left * min(0.9 * 20, w_max) + w_max)
        assert cell.trials == pytest.approx(honest_left * min(20, w_max) + w_max)
    assert await _published(aggregator) == {}  # support 1 < k_min: never published


async def test_a_key_leaves_the_published_state_when_its_supporters_go_silent(aggregator, codebook) -> None:
    for d in range(3):
        await aggregator.apply(device(d), b"a", [pattern(near(codebook, 2, d))], [(0, 1, 2, 1.0)], NOW)
    await aggregator.apply(device(3), b"a", [], [(0, 1, 2, 1.0)], NOW + 10 * DAY)
    assert set(await _published(aggregator)) == {("p", 0, 2), ("e", 0, 1, 2)}

    stats = await aggregator.prune(NOW + (WINDOW - 1) * DAY)  # day 0 is still inside the window
    assert (stats.members, stats.contributions, stats.keys) == (0, 0, 0)
    assert (await _published(aggregator))[("e", 0, 1, 2)].support == 4

    stats = await aggregator.prune(NOW + WINDOW * DAY)  # day 0 has left it
    assert stats.members == 3 * 2 and stats.keys == 2
    published = await _published(aggregator)
    assert published == {}  # the edge keeps 1 supporter (day 10), below k_min; the cell is empty
    edge = (await aggregator.export_state()).global_edge(EdgeKey(0, 1, 2))
    assert (edge.support, edge.weight) == (1, 1.0)
    assert (await aggregator.store.stats()).contributions == 0  # the day-0 patterns left (edges are not logged)

    # Returning supporters count again, from scratch.
    for d in range(2):
        await aggregator.apply(device(d), b"b", [], [(0, 1, 2, 1.0)], NOW + (WINDOW + 1) * DAY)
    assert (await _published(aggregator))[("e", 0, 1, 2)].support == 3


async def test_what_leaves_the_window_is_subtracted_exactly(store_url, tmp_path, codebook) -> None:
    """After expiry a cell equals the cell of a store that only ever saw the contributions still inside."""
    rng = np.random.default_rng(3)
    pushes = [(d, int(day), float(rng.uniform(0.5, 1.0)), int(rng.integers(3, 80)))
              for d, day in enumerate(rng.choice([0, 0, 5, 12, 20], size=14))]  # fmt: skip
    late = [p for p in pushes if p[1] > 0]
    assert 3 <= len(late) < len(pushes)

    async def run(url: str, which: list) -> dict:
        store = await open_store(url, origin="shard-test")
        try:
            agg = await Aggregator.open(store, codebook, SALT, AggregationPolicy(window_epochs=WINDOW))
            for d, day, rate, uses in which:
                v = near(codebook, 6, 100 + d, spread=0.4)
                await agg.apply(device(d), b"x", [pattern(v, rate=rate, uses=uses)], [], NOW + day * DAY)
            await agg.prune(NOW + WINDOW * DAY)  # day 0 leaves, days 5.. stay
            return await _published(agg)
        finally:
            await store.close()

    got = await run(store_url, pushes)
    want = await run(f"sqlite:{tmp_path / 'only-late.db'}", late)
    assert set(got) == set(want) == {("p", 0, 6)}
    a, b = got[("p", 0, 6)], want[("p", 0, 6)]
    assert a.support == b.support == len(late)
    assert a.success_rate == pytest.approx(b.success_rate, abs=1e-12)
    np.testing.assert_allclose(a.embedding, b.embedding, atol=1e-6)


async def test_a_later_contribution_replaces_the_device_s_earlier_one(store_url, tmp_path, codebook) -> None:
    """Latest wins per member per key: the state equals a store that only saw each device's last push, and
    when the window drops a member, exactly what it still counts leaves with it."""
    rng = np.random.default_rng(5)

    def push(d: int, day: int) -> tuple:
        v = near(codebook, 6, 1000 * day + d, spread=0.4)
        return d, day, v, float(rng.uniform(0.5, 1.0)), int(rng.integers(3, 80)), float(rng.uniform(0.25, 1.0))

    first = [push(d, 0) for d in range(6)]
    second = [push(d, 2) for d in range(3)] + [push(d, 4) for d in range(2)]  # devices 0, 1 push three times
    latest = {p[0]: p for p in first + second}

    async def run(url: str, which: list) -> tuple[tuple, tuple]:
        """(published, global edge) after the pushes, and again once day 0 left the window."""
        store = await open_store(url, origin="shard-test")
        try:
            agg = await Aggregator.open(store, codebook, SALT, AggregationPolicy(window_epochs=WINDOW, k_min=1))
            for d, day, v, rate, uses, w in which:
                res = await agg.apply(device(d), b"x%d" % day, [pattern(v, rate=rate, uses=uses)], [(0, 5, 6, w)],
                                      NOW + day * DAY)  # fmt: skip
                assert res.accepted == 2 and not res.rejections
            states = []
            for prune in (False, True):
                if prune:
                    await agg.prune(NOW + WINDOW * DAY)  # day 0 leaves: devices 3-5, whose last push it was
                states.append((await _published(agg), (await agg.export_state()).global_edge(EdgeKey(0, 5, 6))))
            return states[0], states[1]
        finally:
            await store.close()

    def same(got: tuple, want: tuple, n: int) -> None:
        (cells, edge), (want_cells, want_edge) = got, want
        assert set(cells) == set(want_cells) == {("p", 0, 6), ("e", 0, 5, 6)}
        a, b = cells[("p", 0, 6)], want_cells[("p", 0, 6)]
        assert a.support == b.support == n
        assert a.success_rate == pytest.approx(b.success_rate, abs=1e-9)
        np.testing.assert_allclose(a.embedding, b.embedding, atol=1e-6)
        assert (edge.support, edge.weight) == (want_edge.support, pytest.approx(want_edge.weight, abs=1e-12))

    once = sorted(latest.values(), key=lambda p: (p[1], p[0]))
    got_all, got_kept = await run(store_url, first + second)
    want_all, _ = await run(f"sqlite:{tmp_path / 'last.db'}", once)
    want_kept, _ = await run(f"sqlite:{tmp_path / 'kept.db'}", [p for p in once if p[1] > 0])
    same(got_all, want_all, 6)
    same(got_kept, want_kept, 3)


async def test_a_v5_store_keeps_subtracting_its_legacy_contributions(tmp_path, codebook) -> None:
    """A file from before the replace rule: its log rows are what its members counted. After the migration a
    returning member's new contribution is added (nothing of it held to replace) and its legacy rows still
    leave with the window, so the key ends up holding only the new one."""
    import sqlite3

    path = tmp_path / "v5.db"
    store = await open_store(f"sqlite:{path}", origin="shard-a")
    agg = await Aggregator.open(store, codebook, SALT, AggregationPolicy(k_min=1, w_max=50.0))
    for d in range(2):
        await agg.apply(device(d), b"a", [pattern(near(codebook, 2, d), uses=30)], [], NOW)
    await store.close()
    conn = sqlite3.connect(path)  # as v5 left it: members hold nothing, the log holds the contributions
    for column in ("weight", "successes", "trials", "embedding"):
        conn.execute(f"ALTER TABLE members DROP COLUMN {column}")
    conn.execute("ALTER TABLE contributions DROP COLUMN legacy")
    conn.execute("PRAGMA user_version=5")
    conn.commit()
    conn.close()
    store = await open_store(f"sqlite:{path}", origin="shard-a")
    try:
        agg = await Aggregator.open(store, codebook, SALT, AggregationPolicy(k_min=1, w_max=50.0))
        await agg.apply(device(0), b"b", [pattern(near(codebook, 2, 7), uses=10)], [], NOW + 5 * DAY)
        cell = (await agg.export_state()).global_cell(CellKey(0, 2))
        assert (cell.support, cell.sum_w) == (2, pytest.approx(2 * 0.9 * 30 + 0.9 * 10))
        await agg.prune(NOW + WINDOW * DAY)  # day 0 leaves: device 1, and device 0's legacy contribution
        cell = (await agg.export_state()).global_cell(CellKey(0, 2))
        assert (cell.support, cell.sum_w, cell.trials) == (1, pytest.approx(0.9 * 10), pytest.approx(10.0))
    finally:
        await store.close()


async def test_expiry_reaches_other_shards_as_a_newer_crdt_entry(shard_and_hub, codebook) -> None:
    """The shard writes its shrunken accumulator at a new version: a hub takes it, in any merge order."""
    agg, hub_agg = shard_and_hub
    for d in range(3):
        await agg.apply(device(d), b"a", [pattern(near(codebook, 1, d))], [(0, 8, 9, 1.0)], NOW)
    before = await agg.export_state()
    await hub_agg.merge_remote(before)
    assert set(await _published(hub_agg)) == {("p", 0, 1), ("e", 0, 8, 9)}
    await agg.prune(NOW + WINDOW * DAY)
    after = await agg.export_state()
    assert after.max_version("shard-a") > before.max_version("shard-a")
    for order in ((before, after), (after, before), (after, after, before)):
        merged = FederatedState(before.codebook_version)
        for s in order:
            merged.merge(s.copy())
        assert merged == after
    await hub_agg.merge_remote(before)  # a replayed old delta changes nothing
    await hub_agg.merge_remote(after)
    await hub_agg.merge_remote(before)
    assert await _published(hub_agg) == {}
    assert (await hub_agg.export_state()).global_edge(EdgeKey(0, 8, 9)).support == 0


def test_the_window_is_validated() -> None:
    for bad in (0, -1, 36_501, 1.5, True, None):
        with pytest.raises(OmegaError, match="window_epochs"):
            AggregationPolicy(window_epochs=bad)  # type: ignore[arg-type]


async def test_the_sqlite_prune_finds_expired_members_by_their_epoch_index(tmp_path) -> None:
    """A prune runs every minute: it must not read every member of every key to find the few that expired."""
    import sqlite3

    from omega.constellation.store.sqlite import EXPIRED_MEMBERS_SQL

    store = await open_store(f"sqlite:{tmp_path / 'plan.db'}", origin="shard-test")
    await store.close()
    conn = sqlite3.connect(tmp_path / "plan.db")
    try:
        plan = " | ".join(row[-1] for row in conn.execute("EXPLAIN QUERY PLAN " + EXPIRED_MEMBERS_SQL, (5,)))
    finally:
        conn.close()
    assert "INDEX members_epoch" in plan and "SCAN members" not in plan, plan
