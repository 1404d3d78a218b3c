"""Publication under differential privacy (`AggregationPolicy.dp_epsilon`, `omega serve --dp-epsilon`)."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from omega.cli import app
from omega.constellation import privacy
from omega.constellation.aggregation import OVER_DAILY_KEYS, AggregationPolicy, Aggregator
from omega.constellation.dp_release import DP_CURSOR_BASE
from omega.constellation.crdt import ConsolidatedCell
from omega.constellation.settings import load_settings
from omega.constellation.store import open_store
from omega.errors import OmegaError
from omega.protocol import Keyspace

from .conftest import SALT, device, near, pattern

NOW = 1_700_000_000_000
DAY = 86_400_000


@pytest.fixture
async def dp_aggregator(store, codebook) -> Aggregator:
    agg = await Aggregator.open(store, codebook, SALT, AggregationPolicy(dp_epsilon=8.0))
    agg._clock_ms = lambda: NOW  # noqa: SLF001 — the release day follows this clock
    return agg


async def test_a_day_is_released_once_noised_and_weak_keys_stay_out(dp_aggregator, codebook) -> None:
    agg = dp_aggregator
    vectors = [near(codebook, 3, d) for d in range(300)]
    for d, v in enumerate(vectors):
        await agg.apply(device(d), b"a", [pattern(v)], [(1, 5, 6, 1.0)], NOW)
    for d in range(300, 305):  # 5 TVs: far under the threshold (~57 at ε 8)
        await agg.apply(device(d), b"a", [pattern(near(codebook, 9, d))], [(1, 7, 8, 1.0)], NOW)
    # Today's release was drawn at the day's first push: tomorrow's holds what was pushed today.
    agg._clock_ms = lambda: NOW + DAY  # noqa: SLF001
    items = await agg.published()
    keys = {(i.task_type, i.cluster_id) if isinstance(i, ConsolidatedCell) else (i.keyspace, i.src, i.dst): i
            for i in items}  # fmt: skip
    assert set(keys) == {(Keyspace.ITEM, 5, 6), (Keyspace.PAIR, 5, 6), (0, 3)}
    edge = keys[(Keyspace.ITEM, 5, 6)]
    assert edge.weight == edge.support and abs(edge.support - 300) < 60
    # The pattern: the direction of a noised sum of the day's unit vectors, a noised mean success rate.
    cell = keys[(0, 3)]
    truth = np.sum(vectors, axis=0)
    truth /= np.linalg.norm(truth)
    assert abs(cell.support - 300) < 60 and abs(cell.success_rate - 0.9) < 0.2
    assert 0.6 < float(cell.embedding @ truth) < 0.9999  # noised (σ·√384 ≈ 190 against a sum of ~300)
    assert await agg.published() == items  # fixed for the day: pulling again averages nothing out

async def test_release_pages_and_cursors(dp_aggregator) -> None:
    agg = dp_aggregator
    for d in range(120):
        await agg.apply(device(d), b"a", [], [(1, 1, 2, 1.0), (1, 3, 4, 1.0)], NOW)
    agg._clock_ms = lambda: NOW + DAY  # noqa: SLF001
    first, cursor, more = await agg.changes_since(0, max_bytes=8)  # one edge per page
    assert len(first) == 1 and more and cursor > DP_CURSOR_BASE
    seen = list(first)
    while more:
        page, cursor, more = await agg.changes_since(cursor, max_bytes=8)
        seen += page
    assert len(seen) == 4  # two edges, two pairs
    # Each item's version is the cursor right after it (the server cuts an oversized page there).
    for before, after in zip(seen, seen[1:]):
        assert (await agg.changes_since(before.version, max_bytes=8))[0] == [after]
    assert await agg.changes_since(cursor, max_bytes=5000) == ([], cursor, False)
    # A push answers with the release's end cursor: a TV there has nothing new until tomorrow.
    res = await agg.apply(device(500), b"b", [], [(1, 1, 2, 1.0)], NOW + DAY)
    assert res.cursor == cursor
    agg._clock_ms = lambda: NOW + 2 * DAY  # noqa: SLF001
    again, later, _ = await agg.changes_since(cursor, max_bytes=5000)
    assert later > cursor and len(again) == 4


async def test_a_device_adds_to_at_most_max_keys_keys_a_day(store, codebook) -> None:
    agg = await Aggregator.open(store, codebook, SALT, AggregationPolicy(dp_epsilon=8.0, dp_max_keys=4))
    agg._clock_ms = lambda: NOW  # noqa: SLF001
    # Three edges derive three pairs: six keys; the budget keeps the first four (edges first).
    res = await agg.apply(device(1), b"a", [], [(1, 1, 2, 1.0), (1, 2, 3, 1.0), (1, 3, 4, 1.0)], NOW)
    assert res.accepted == 3 and res.rejections == []
    res = await agg.apply(device(1), b"b", [], [(1, 7, 8, 1.0)], NOW)
    assert [(r.index, r.reason) for r in res.rejections] == [(0, OVER_DAILY_KEYS)]
    res = await agg.apply(device(1), b"c", [], [(1, 7, 8, 1.0)], NOW + DAY)  # a new day, a new budget
    assert res.rejections == []


async def test_a_retried_batch_uses_no_more_of_the_days_keys(store, codebook) -> None:
    """A TV that lost the ack resends the same batch: applied once, and counted once against the L0 bound."""
    agg = await Aggregator.open(store, codebook, SALT, AggregationPolicy(dp_epsilon=8.0, dp_max_keys=4))
    agg._clock_ms = lambda: NOW  # noqa: SLF001
    first = await agg.apply(device(1), b"a", [], [(1, 1, 2, 1.0)], NOW)  # an edge and its pair: 2 keys
    assert first.accepted == 1 and not first.duplicate
    for _ in range(3):
        again = await agg.apply(device(1), b"a", [], [(1, 1, 2, 1.0)], NOW)
        assert again.duplicate and again.accepted == 0
    res = await agg.apply(device(1), b"b", [], [(1, 3, 4, 1.0)], NOW)  # 2 more: exactly the 4 of the day
    assert res.accepted == 1 and res.rejections == []
    res = await agg.apply(device(1), b"c", [], [(1, 5, 6, 1.0)], NOW)
    assert [(r.index, r.reason) for r in res.rejections] == [(0, OVER_DAILY_KEYS)]
    # The grants are forgotten with the window, as the day's key counts are.
    await agg.prune(NOW + 40 * DAY)
    res = await agg.apply(device(1), b"a", [], [(1, 1, 2, 1.0)], NOW + 40 * DAY)
    assert res.accepted == 1 and res.rejections == []


def test_serve_settings_and_help_state_the_budget() -> None:
    settings = load_settings(env={"OMEGA_SECRET": "x" * 32, "OMEGA_DP_EPSILON": "2", "OMEGA_DP_DELTA": "1e-7"})
    assert (settings.dp_epsilon, settings.dp_delta) == (2.0, 1e-7)
    with pytest.raises(OmegaError, match="dp_epsilon"):
        load_settings(env={"OMEGA_SECRET": "x" * 32, "OMEGA_DP_EPSILON": "-1"})
    with pytest.raises(OmegaError):
        AggregationPolicy(dp_epsilon=float("nan"))
    text = CliRunner().invoke(app, ["serve", "--help"], terminal_width=200).stdout
    assert "--dp-epsilon" in text and "--dp-delta" in text and "per TV per day" in text


def test_omega_serve_with_dp_answers_from_the_days_release(tmp_path) -> None:
    """The server process wires --dp-epsilon through: a push is acked with a release cursor, a pull
    from 0 pages through the day's release (here empty: it was drawn at the day's first push)."""
    from omega.protocol import Transition, TransitionBatch

    from .server_support import Device, ServerProcess, small_codebook

    small_codebook().save(tmp_path / "codebook.npz")
    server = ServerProcess(tmp_path, codebook=tmp_path / "codebook.npz", OMEGA_DP_EPSILON="4").start()
    try:
        dev = Device(4242)
        _, frame = dev.push(transitions=TransitionBatch(Keyspace.ITEM, (Transition(1, 2, 1.0),)))
        ack = dev.decode(server.post(frame).content).body
        assert ack.accepted == 1
        reply = dev.decode(server.post(dev.pull(0)).content).body
        assert reply.cursor >= DP_CURSOR_BASE and not reply.more and not reply.patterns
    finally:
        server.kill()


async def test_the_days_release_and_key_counts_survive_a_restart(store_url, codebook) -> None:
    """A restart or a second worker serves the stored draw (a fresh one would average the noise out),
    and a device's keys of the day stay counted."""
    policy = AggregationPolicy(dp_epsilon=8.0, dp_max_keys=4)

    async def open_aggregator(day: int) -> tuple:
        store = await open_store(store_url, origin="shard-test")
        agg = await Aggregator.open(store, codebook, SALT, policy)
        agg._clock_ms = lambda: NOW + day * DAY  # noqa: SLF001
        return store, agg

    store, agg = await open_aggregator(0)
    try:
        edges = [(1, 10 * k, 10 * k + 1, 1.0) for k in range(1, 5)]
        for d in range(100):  # 2 pushes of 2 edges (+ 2 pairs each): 4 keys, the whole budget
            await agg.apply(device(d), b"a", [], edges[:2], NOW)
            await agg.apply(device(d), b"b", [], edges[2:], NOW + 1)
        refused = await agg.apply(device(0), b"c", [], [(1, 7, 8, 1.0)], NOW + 2)
        assert [r.reason for r in refused.rejections] == [OVER_DAILY_KEYS]
        agg._clock_ms = lambda: NOW + DAY  # noqa: SLF001
        first = await agg.published()
        assert len(first) == 4  # the first push's 2 edges and 2 pairs (the second ran out of budget)
        spent = await agg._release.budget()  # noqa: SLF001
    finally:
        await store.close()

    store, agg = await open_aggregator(1)
    try:
        assert await agg.published() == first
        other = await Aggregator.open(store, codebook, SALT, policy)  # another worker on the same store
        other._clock_ms = lambda: NOW + DAY  # noqa: SLF001
        assert await other.published() == first
        still = await agg.apply(device(1), b"c", [], [(1, 7, 8, 1.0)], NOW + 3)  # day 0's budget was used
        assert [r.reason for r in still.rejections] == [OVER_DAILY_KEYS]
        # The accountant: the window's stored releases (day 0's, drawn at its first push, and day 1's).
        assert await agg._release.budget() == spent  # noqa: SLF001
        assert spent == pytest.approx(privacy.budget_over(privacy.calibrate(8.0, 1e-6, 4), 2))
    finally:
        await store.close()
