"""Retraction (issue 14): a key that leaves the published state reaches the TVs as a removal (support 0).

Without it a TV kept every edge and pattern it ever pulled: a key whose supporters went silent
(window expiry), or that the day's DP release no longer selects, went on steering its rankings.
"""

from __future__ import annotations

import numpy as np

from omega.constellation.aggregation import AggregationPolicy, Aggregator
from omega.constellation.crdt import ConsolidatedCell
from omega.constellation.store import open_store

from .conftest import SALT, SERVED_V7, device, near, pattern

DAY = 86_400_000
NOW = 1_700_000_000_000 // DAY * DAY
WINDOW = 30


def ident(item) -> tuple:
    if isinstance(item, ConsolidatedCell):
        return ("p", item.task_type, item.cluster_id)
    return ("e", item.keyspace, item.src, item.dst)


async def _pull(agg: Aggregator, cursor: int) -> tuple[dict[tuple, object], int]:
    got: dict[tuple, object] = {}
    more = True
    while more:
        items, cursor, more = await agg.changes_since(cursor, max_bytes=300)  # small pages: several scans
        got.update({ident(i): i for i in items})
    return got, cursor


async def test_an_expired_key_is_sent_as_a_removal_and_a_never_published_one_never(aggregator, codebook) -> None:
    for d in range(3):
        await aggregator.apply(device(d), b"a", [pattern(near(codebook, 2, d))], [(1, 1, 2, 1.0)], NOW)
    for d in range(3, 5):  # two supporters: under k_min (3), never published
        await aggregator.apply(device(d), b"a", [], [(1, 7, 8, 1.0)], NOW)
    await aggregator.apply(device(9), b"b", [], [(1, 3, 4, 1.0)], NOW + 5 * DAY)
    for d in range(10, 13):  # published later, and still inside the window at the prune
        await aggregator.apply(device(d), b"b", [], [(1, 5, 6, 1.0)], NOW + 5 * DAY)
    held, cursor = await _pull(aggregator, 0)
    live = {("p", 0, 2), ("e", 1, 1, 2), ("e", 3, 1, 2), ("e", 1, 5, 6), ("e", 3, 5, 6)}
    assert set(held) == live and all(i.support >= 3 for i in held.values())

    await aggregator.prune(NOW + WINDOW * DAY)  # day 0 leaves the window
    changed, after = await _pull(aggregator, cursor)
    gone = {("p", 0, 2), ("e", 1, 1, 2), ("e", 3, 1, 2)}
    assert set(changed) == gone  # not 7→8 (support 2 → 0): it was never published, so it is never named
    for item in changed.values():
        assert item.support == 0
        assert (item.embedding == 0).all() and item.success_rate == 0 if isinstance(item, ConsolidatedCell) \
            else item.weight == 0  # fmt: skip
    # Idempotent: pulling again from the same cursor gives the same removals; from the new one, nothing.
    assert set((await _pull(aggregator, cursor))[0]) == gone
    assert (await _pull(aggregator, after))[0] == {}
    # A TV from cursor 0 holds nothing to remove: it gets the published state only.
    assert set((await _pull(aggregator, 0))[0]) == live - gone
    assert {ident(i) for i in await aggregator.published()} == live - gone

    # The key comes back when supporters return; a removal is not a ban.
    for d in range(20, 23):
        await aggregator.apply(device(d), b"c", [], [(1, 1, 2, 1.0)], NOW + (WINDOW + 1) * DAY)
    back, _ = await _pull(aggregator, after)
    assert back[("e", 1, 1, 2)].support == 3


async def test_a_hub_serves_the_removal_it_merged_from_a_shard(shard_and_hub) -> None:
    """CRDT-safe: the shard's expiry is a newer entry; the hub (which tracks its own peak) serves the removal,
    in any order and however often the deltas are replayed."""
    agg, hub_agg = shard_and_hub
    for d in range(3):
        await agg.apply(device(d), b"a", [], [(0, 8, 9, 1.0)], NOW)
    before = await agg.export_state()
    await hub_agg.merge_remote(before)
    held, cursor = await _pull(hub_agg, 0)
    assert set(held) == {("e", 0, 8, 9)}
    await agg.prune(NOW + WINDOW * DAY)
    after = await agg.export_state()
    for state in (after, before, after):  # a replayed older delta changes nothing
        await hub_agg.merge_remote(state)
    changed, _ = await _pull(hub_agg, cursor)
    assert set(changed) == set(held) and all(i.support == 0 for i in changed.values())


#: v6's columns dropped again (members' held contribution, the log's `legacy` mark).
UNDO_V6 = "".join(f"ALTER TABLE members DROP COLUMN {c}; " for c in ("weight", "successes", "trials", "embedding"))
UNDO_V6 += "ALTER TABLE contributions DROP COLUMN legacy; "


async def test_a_store_of_schema_v4_migrates_keeping_what_it_published(tmp_path, codebook) -> None:
    """v5 adds `served.peak` (and `dp_grants`); rows of an older file start at their current support."""
    import sqlite3

    path = tmp_path / "old.db"
    store = await open_store(f"sqlite:{path}", origin="shard-a")
    agg = await Aggregator.open(store, codebook, SALT)
    for d in range(3):
        await agg.apply(device(d), b"a", [], [(0, 8, 9, 1.0)], NOW)
    await store.close()
    conn = sqlite3.connect(path)  # back to v4: the columns and index as they were
    conn.executescript(SERVED_V7 + "DROP INDEX served_seq_support; ALTER TABLE served DROP COLUMN peak; "
                       "DROP TABLE dp_grants; "
                       "CREATE INDEX served_seq_support ON served (seq, support); "
                       + UNDO_V6 + "PRAGMA user_version=4;")  # fmt: skip
    conn.close()
    store = await open_store(f"sqlite:{path}", origin="shard-a")
    try:
        agg = await Aggregator.open(store, codebook, SALT)
        held, cursor = await _pull(agg, 0)
        await agg.prune(NOW + WINDOW * DAY)
        changed, _ = await _pull(agg, cursor)
        assert set(changed) == set(held) and all(i.support == 0 for i in changed.values())
    finally:
        await store.close()


async def test_dp_a_key_the_day_does_not_reselect_is_removed(store, codebook) -> None:
    agg = await Aggregator.open(store, codebook, SALT, AggregationPolicy(dp_epsilon=8.0))
    agg._clock_ms = lambda: NOW  # noqa: SLF001 — the release day follows this clock
    for d in range(300):
        await agg.apply(device(d), b"a", [pattern(near(codebook, 3, d))], [(1, 5, 6, 1.0)], NOW)
    agg._clock_ms = lambda: NOW + DAY  # noqa: SLF001 — the day's release holds the edge, pair and pattern
    held, cursor = await _pull(agg, 0)
    assert set(held) == {("e", 1, 5, 6), ("e", 3, 5, 6), ("p", 0, 3)}
    # Day 2: the pattern is released from the previous day's contributions only (none): not selected.
    # The edge's 300 supporters are still in the window: selected again.
    agg._clock_ms = lambda: NOW + 2 * DAY  # noqa: SLF001
    changed, _ = await _pull(agg, cursor)
    assert changed[("p", 0, 3)].support == 0
    assert changed[("e", 1, 5, 6)].support > 200
    # A TV starting today gets no removals; the budget is unchanged (removals are post-processing).
    fresh, _ = await _pull(agg, 0)
    assert ("p", 0, 3) not in fresh and all(i.support > 0 for i in fresh.values())
    assert np.isfinite(await agg._release.budget())  # noqa: SLF001


async def test_dp_a_cursor_the_removals_cannot_bring_up_to_date_is_told_to_reset(store, codebook) -> None:
    """Removals name the keys of the window's earlier releases only: a cursor of a release older than the
    window, or of the store, gets the day's release from its start, without removals, flagged reset."""
    agg = await Aggregator.open(store, codebook, SALT, AggregationPolicy(dp_epsilon=8.0))
    agg._clock_ms = lambda: NOW  # noqa: SLF001 — the release day follows this clock
    for d in range(300):
        await agg.apply(device(d), b"a", [], [(1, 5, 6, 1.0)], NOW)
    _, day0 = await _pull(agg, 0)
    assert not agg.resets(0) and not agg.resets(day0)
    agg._clock_ms = lambda: NOW + (WINDOW - 1) * DAY  # noqa: SLF001 — day 0's release is the window's first
    assert not agg.resets(day0)
    agg._clock_ms = lambda: NOW + WINDOW * DAY  # noqa: SLF001 — day 0 has left the window
    assert agg.resets(day0)
    assert agg.resets(1)  # a store cursor: its keys may be in no release at all
    fresh, today = await _pull(agg, day0)
    assert fresh and all(i.support > 0 for i in fresh.values())  # the whole release; nothing to remove
    assert not agg.resets(today)
    plain = await Aggregator.open(store, codebook, SALT, AggregationPolicy())
    assert not plain.resets(1)  # the store's changes name whatever left
    assert plain.resets(day0)  # DP turned off: what the release held is in no store change
