"""Store guarantees, run against every backend behind the `store` / `store_url` fixtures."""

from __future__ import annotations

import asyncio
import glob
import sqlite3

import numpy as np
import pytest

from omega.constellation.aggregation import AggregationPolicy, Aggregator
from omega.constellation.crdt import ConsolidatedCell, ConsolidatedEdge
from omega.constellation.store import (
    EDGE_WIRE_BYTES,
    PATTERN_WIRE_BYTES,
    CellContribution,
    EdgeContribution,
    PreparedPush,
    open_store,
)
from omega.errors import OmegaError
from omega.protocol import EMBEDDING_DIM

from .conftest import SALT, device, near, pattern

NOW = 1_700_000_000_000
DAY = 86_400_000


def ident(item) -> tuple:
    if isinstance(item, ConsolidatedCell):
        return ("p", item.task_type, item.cluster_id)
    return ("e", item.keyspace, item.src, item.dst)


async def test_retry_of_a_push_is_idempotent(aggregator, codebook) -> None:
    push = ([pattern(near(codebook, 1, 0)), pattern(near(codebook, 2, 0))], [(0, 1, 2, 1.0)])
    first = await aggregator.apply(device(1), b"batch-1", *push, NOW)
    assert first.accepted == 3 and not first.duplicate
    before = await aggregator.store.stats()
    again = await aggregator.apply(device(1), b"batch-1", *push, NOW + 5)
    assert again.duplicate and again.accepted == 0 and again.rejections == []
    assert await aggregator.store.stats() == before
    # The same batch id from another device is a different push.
    other = await aggregator.apply(device(2), b"batch-1", *push, NOW)
    assert other.accepted == 3 and not other.duplicate


async def test_k_min_gating_counts_distinct_devices(store, codebook) -> None:
    agg = await Aggregator.open(store, codebook, SALT, AggregationPolicy(k_min=4))
    for d in range(3):
        await agg.apply(device(d), b"a", [pattern(near(codebook, 0, d))], [(2, 3, 4, 1.0)], NOW)
        await agg.apply(device(d), b"b", [pattern(near(codebook, 0, d))], [(2, 3, 4, 1.0)], NOW + DAY)
    items, cursor, more = await agg.changes_since(0)
    assert items == [] and not more
    await agg.apply(device(3), b"a", [pattern(near(codebook, 0, 3))], [(2, 3, 4, 1.0)], NOW)
    items, cursor2, _ = await agg.changes_since(cursor)
    assert sorted(ident(i) for i in items) == [("e", 2, 3, 4), ("p", 0, 0)]
    assert all(i.support == 4 for i in items)


async def test_cursor_pagination_never_misses_a_change(aggregator, codebook) -> None:
    rng = np.random.default_rng(5)
    received: dict[tuple, int] = {}
    cursor = 0
    batch = 0

    async def push_some(n: int) -> None:
        nonlocal batch
        for _ in range(n):
            batch += 1
            d = int(rng.integers(0, 6))
            cells = [pattern(near(codebook, int(c), batch)) for c in rng.choice(16, size=3, replace=False)]
            edges = [(0, int(rng.integers(0, 5)), int(rng.integers(0, 5)), 1.0) for _ in range(4)]
            await aggregator.apply(device(d), str(batch).encode(), cells, edges, NOW + batch * DAY // 4)

    pages = 0
    for round_ in range(4):
        await push_some(30)
        more = True
        interleaved = 0
        while more:
            items, new_cursor, more = await aggregator.changes_since(cursor, max_bytes=1000)
            pages += 1
            size = sum(PATTERN_WIRE_BYTES if isinstance(i, ConsolidatedCell) else EDGE_WIRE_BYTES for i in items)
            assert size <= 1000 or len(items) == 1
            versions = [i.version for i in items]
            assert versions == sorted(versions) and all(cursor < v <= new_cursor for v in versions)
            for i in items:
                received[ident(i)] = i.version
            cursor = new_cursor
            if more and interleaved < 4:
                interleaved += 1
                await push_some(1)  # changes land between pages
        # Caught up: every published item was received, at its newest version.
        latest = {ident(i): i.version for i in await aggregator.published()}
        assert received == latest
    assert pages > 12


async def test_tiny_budget_still_makes_progress(aggregator, codebook) -> None:
    for d in range(3):
        await aggregator.apply(device(d), b"a", [pattern(near(codebook, 3, d))], [(0, 1, 1, 1.0)], NOW)
    seen = []
    cursor, more = 0, True
    while more:
        items, cursor, more = await aggregator.changes_since(cursor, max_bytes=1)
        assert len(items) <= 1
        seen += items
    assert sorted(ident(i) for i in seen) == [("e", 0, 1, 1), ("p", 0, 3)]


async def test_state_is_durable_across_reopen(store_url, codebook) -> None:
    store = await open_store(store_url, origin="shard-test")
    agg = await Aggregator.open(store, codebook, SALT)
    for d in range(4):
        await agg.apply(device(d), b"k", [pattern(near(codebook, 8, d))], [(0, 4, 5, 2.0)], NOW)
    before = [(ident(i), i.support, i.version) for i in await agg.published()]
    await store.close()

    store = await open_store(store_url)
    try:
        assert store.origin == "shard-test"
        agg = await Aggregator.open(store, codebook, SALT)
        assert [(ident(i), i.support, i.version) for i in await agg.published()] == before
        again = await agg.apply(device(0), b"k", [pattern(near(codebook, 8, 0))], [], NOW + 10)
        assert again.duplicate
        with pytest.raises(OmegaError):
            await open_store(store_url, origin="someone-else")
    finally:
        await store.close()


async def test_pruning_forgets_pseudonyms_but_keeps_distinct_support(store_url, aggregator, codebook) -> None:
    for d in range(3):
        await aggregator.apply(device(d), b"a", [pattern(near(codebook, 9, d))], [(0, 7, 8, 1.0)], NOW)
    stats = await aggregator.store.stats()
    assert stats.push_keys == 3

    pruned = await aggregator.prune(NOW + 2 * DAY)
    # Idempotency keys go after the replay window; members and the log stay for the contribution window.
    assert (pruned.push_keys, pruned.members, pruned.contributions, pruned.keys) == (3, 0, 0, 0)
    assert (await aggregator.store.stats()).push_keys == 0
    assert (await aggregator.prune(NOW + 2 * DAY)).push_keys == 0

    # A device seen before adds weight again in a new epoch but not support; a new one adds support.
    await aggregator.apply(device(0), b"b", [pattern(near(codebook, 9, 0))], [(0, 7, 8, 1.0)], NOW + 2 * DAY)
    await aggregator.apply(device(5), b"b", [pattern(near(codebook, 9, 5))], [(0, 7, 8, 1.0)], NOW + 2 * DAY)
    by_id = {ident(i): i for i in await aggregator.published()}
    assert by_id[("p", 0, 9)].support == 4
    assert by_id[("e", 0, 7, 8)].support == 4
    assert by_id[("e", 0, 7, 8)].weight == 4.0  # published weight = distinct support

    if store_url.startswith("sqlite:"):
        # Nothing stored next to contributions identifies a device: no raw id anywhere in the file.
        await aggregator.prune(NOW + 10 * DAY)
        path = store_url[len("sqlite:"):]
        con = sqlite3.connect(path)
        try:
            con.execute("PRAGMA wal_checkpoint(FULL)")
            blobs = b"".join(
                bytes(r[0]) for t in ("push_keys", "members") for r in con.execute(f"SELECT * FROM {t}")
                if isinstance(r[0], bytes)
            )
            epochs = {r[0] for r in con.execute("SELECT DISTINCT epoch FROM members")}
            cols = [r[1] for r in con.execute("PRAGMA table_info(contributions)")]
        finally:
            con.close()
        raw = b"".join(open(f, "rb").read() for f in glob.glob(path + "*"))
        for d in (0, 1, 2, 5):
            assert device(d) not in raw and device(d) not in blobs
        assert epochs == {NOW // DAY, NOW // DAY + 2}  # a member's last day, never a finer time
        assert not any("device" in c or "member" in c for c in cols)


async def test_consolidated_equals_offline_weighted_mean(aggregator, codebook) -> None:
    rng = np.random.default_rng(11)
    offline: dict[tuple[int, int], list] = {}
    for d in range(12):
        pats = []
        for cell in rng.choice(4, size=2, replace=False):
            v = near(codebook, int(cell), 1000 + d * 7 + int(cell), spread=0.3)
            rate = float(rng.uniform(0.5, 1.0))
            uses = int(rng.integers(5, 200))
            p = pattern(v, rate=rate, uses=uses, task_type=d % 2)
            pats.append(p)
            w = min(rate * uses, aggregator.policy.w_max)
            t = min(uses, aggregator.policy.w_max)
            # The aggregator keeps a contribution's direction in float16, as its log does (store/window.py).
            v64 = v.astype(np.float64)
            logged = (v64 / np.linalg.norm(v64)).astype(np.float32).astype(np.float16).astype(np.float64)
            offline.setdefault((d % 2, int(codebook.assign(v)[0])), []).append(
                (w, logged, t * p.successes / uses, t))
        res = await aggregator.apply(device(d), b"x", pats, [], NOW)
        assert res.accepted == 2
    published = {(i.task_type, i.cluster_id): i for i in await aggregator.published()}
    expected_keys = {k for k, rows in offline.items() if len(rows) >= 3}
    assert set(published) == expected_keys and expected_keys
    for key in expected_keys:
        rows = offline[key]
        mean = sum(w * v for w, v, _, _ in rows) / sum(w for w, _, _, _ in rows)
        mean /= np.linalg.norm(mean)
        got = published[key]
        np.testing.assert_allclose(got.embedding, mean, atol=1e-5)
        assert got.success_rate == pytest.approx(sum(s for *_, s, _ in rows) / sum(t for *_, t in rows))
        assert got.support == len(rows)


async def test_concurrent_pushes_are_each_atomic(aggregator, codebook) -> None:
    async def one(d: int, b: int):
        return await aggregator.apply(device(d), f"b{b}".encode(), [pattern(near(codebook, d % 16, b))],
                                      [(0, d, b, 1.0)], NOW)

    # 40 devices × 3 batches, every push sent twice, all at once.
    results = await asyncio.gather(*(one(d, b) for d in range(40) for b in range(3) for _ in range(2)))
    assert sum(r.duplicate for r in results) == 120
    assert sum(r.accepted for r in results) == 40 * 1 + 40 * 3  # one cell per device per epoch, 3 edges each
    stats = await aggregator.store.stats()
    assert stats.contributions == 40  # the log holds patterns (the DP release's input); edges' weights sit on members


async def test_a_failing_push_in_a_group_rolls_back_alone(store, aggregator, codebook) -> None:
    good = [
        PreparedPush(bytes([i]) * 16, 0, NOW, [CellContribution(0, 0, 1, bytes([i]) * 8, 1.0,
                                                                near(codebook, 1, i), 1.0, 1.0)])
        for i in range(5)
    ]
    bad = PreparedPush(b"\xff" * 16, 0, NOW, [CellContribution(0, 0, 1, b"\xff" * 8, 1.0,
                                                               np.ones(3, np.float32), 1.0, 1.0)])
    results = await asyncio.gather(*(store.apply_push(p) for p in [*good[:2], bad, *good[2:]]),
                                   return_exceptions=True)
    assert isinstance(results[2], Exception)
    assert all(not isinstance(r, Exception) and r.accepted_cells == [0] for i, r in enumerate(results) if i != 2)
    stats = await store.stats()
    assert stats.push_keys == 5 and stats.contributions == 5
    # The failed push left nothing behind, so it can be retried.
    assert not (await store.apply_push(PreparedPush(b"\xff" * 16, 0, NOW, []))).duplicate


def _cell(codebook, **change) -> CellContribution:
    fields = dict(index=0, task_type=0, cell=1, member=b"m" * 8, weight=1.0,
                  embedding=near(codebook, 1, 0), successes=1.0, trials=1.0) | change  # fmt: skip
    return CellContribution(**fields)


def _edge(**change) -> EdgeContribution:
    return EdgeContribution(**(dict(index=0, keyspace=0, src=1, dst=2, member=b"e" * 8, weight=1.0) | change))


async def test_every_backend_refuses_the_same_malformed_pushes(store, codebook) -> None:
    """What one backend cannot store faithfully, none accepts: one clear error, nothing left behind."""
    bad = {
        "short embedding": [_cell(codebook, embedding=np.ones(3, np.float32))],
        "nan embedding": [_cell(codebook, embedding=np.full(EMBEDDING_DIM, np.nan, np.float32))],
        "infinite weight": [_cell(codebook, weight=float("inf"))],
        "nan successes": [_cell(codebook, successes=float("nan"))],
        "infinite trials": [_cell(codebook, trials=float("-inf"))],
        "task type beyond int32": [_cell(codebook, task_type=2**31)],
        "cell beyond int64": [_cell(codebook, cell=2**63)],
        "member not bytes": [_cell(codebook, member="m" * 8)],
    }
    bad_edges = {
        "edge id beyond int64": [_edge(src=2**63)],
        "nan edge weight": [_edge(weight=float("nan"))],
        "edge member not bytes": [_edge(member=7)],
    }
    pushes = [PreparedPush(f"k{i}".encode(), 0, NOW, cells) for i, cells in enumerate(bad.values())]
    pushes += [PreparedPush(f"e{i}".encode(), 0, NOW, [], edges) for i, edges in enumerate(bad_edges.values())]
    empty = await store.stats()
    for push in pushes:
        with pytest.raises(OmegaError):
            await store.apply_push(push)
    assert await store.stats() == empty
    # Refused before anything was written: the same keys are fresh, and the cell takes good pushes.
    for push in pushes:
        good = PreparedPush(push.push_key, 0, NOW, [_cell(codebook, member=push.push_key)], [])
        assert (await store.apply_push(good)).accepted_cells == [0]
    stats = await store.stats()
    assert (stats.push_keys, stats.contributions, stats.cells) == (len(pushes), len(pushes), 1)


async def test_a_key_twice_in_one_push_counts_both_members(store, codebook) -> None:
    """The aggregator never sends this (one device is one member per key), but a store must not lose one."""
    push = PreparedPush(b"twice" * 4, 0, NOW,
                        [_cell(codebook, index=0, member=b"a" * 8, weight=1.0),
                         _cell(codebook, index=1, member=b"b" * 8, weight=3.0)],
                        [_edge(index=0, member=b"a" * 8, weight=0.5), _edge(index=1, member=b"b" * 8, weight=2.0)])  # fmt: skip
    outcome = await store.apply_push(push)
    assert (outcome.accepted_cells, outcome.accepted_edges) == ([0, 1], [0, 1])
    page = await store.changes_since(0, 1, 1 << 20)
    cell = next(i for i in page.items if isinstance(i, ConsolidatedCell))
    edge = next(i for i in page.items if isinstance(i, ConsolidatedEdge))
    assert (cell.support, edge.support, edge.weight) == (2, 2, 2.0)  # published weight = support
    assert page.cursor == outcome.head == 4 and {cell.version, edge.version} == {2, 4}


async def test_bad_store_urls_and_files(tmp_path) -> None:
    with pytest.raises(OmegaError, match="unsupported store URL"):
        await open_store("mysql://localhost/db")
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a database" * 100)
    with pytest.raises(OmegaError):
        await open_store(f"sqlite:{garbage}")
    assert garbage.read_bytes() == b"this is not a database" * 100
    foreign = tmp_path / "foreign.db"
    con = sqlite3.connect(foreign)
    con.execute("CREATE TABLE users (id INTEGER)")
    con.commit()
    con.close()
    with pytest.raises(OmegaError, match="foreign"):
        await open_store(f"sqlite:{foreign}")
    with pytest.raises(OmegaError):
        await open_store(f"sqlite:{tmp_path / 'missing-dir' / 'x.db'}")
    newer = tmp_path / "newer.db"
    s = await open_store(f"sqlite:{newer}")
    await s.close()
    con = sqlite3.connect(newer)
    con.execute("PRAGMA user_version=99")
    con.commit()
    con.close()
    with pytest.raises(OmegaError, match="newer"):
        await open_store(f"sqlite:{newer}")


async def test_cowatch_pairs_count_distinct_tvs_feed_the_release_and_are_never_pulled(store, codebook) -> None:
    from omega.constellation.aggregation import BAD_TRANSITION, DUPLICATE_FLOOD
    from omega.constellation.item_graph import RefinedRelease
    from omega.protocol import Keyspace

    agg = await Aggregator.open(store, codebook, SALT, AggregationPolicy(k_min=3))
    cw, item = int(Keyspace.COWATCH), int(Keyspace.ITEM)
    # two communities of titles, each pair co-watched by its own TVs; one ordered edge, as TVs push beside them
    pairs = [(a, b) for group in ((1, 2, 3, 4), (11, 12, 13, 14)) for a in group for b in group if a < b]
    for d in range(2):
        r = await agg.apply(device(d), b"a", [], [(item, 1, 2, 1.0), *[(cw, a, b, 1.0) for a, b in pairs]], NOW)
        assert r.accepted == 1 + len(pairs) and r.rejections == []
    release = RefinedRelease(agg.published, cowatch=agg.published_cowatch)
    assert await agg.published_cowatch() == [] and await release.refresh() == 0  # under k_min: nothing is used
    # the same TV again in the same epoch is a flood, not a third TV; a forged order is refused
    again = await agg.apply(device(0), b"b", [], [(cw, 1, 2, 1.0), (cw, 9, 5, 1.0)], NOW)
    assert [(r.index, r.reason) for r in again.rejections] == [(0, DUPLICATE_FLOOD), (1, BAD_TRANSITION)]
    assert await agg.published_cowatch() == []
    await agg.apply(device(2), b"a", [], [(item, 1, 2, 1.0), *[(cw, a, b, 1.0) for a, b in pairs]], NOW)
    assert await agg.published_cowatch() == [(a, b, 3) for a, b in pairs]
    # pulls carry the item edge and its pair, never a co-watched pair (at any budget, from any cursor)
    items, cursor, more = await agg.changes_since(0, max_bytes=1 << 20)
    assert sorted(ident(i) for i in items) == [("e", item, 1, 2), ("e", int(Keyspace.PAIR), 1, 2)] and not more
    assert await agg.published() == items
    # the release is refined from the co-watched pairs: each title's neighbours are its own community
    assert await release.refresh() != 0
    assert {(n.src, n.dst) for n in release.items} == {(a, b) for a, b in pairs} | {(b, a) for a, b in pairs}
