"""The shard aggregator: validation, cells, weights, flood limits, k_min, federation."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from omega.constellation.aggregation import (
    BAD_COUNTS,
    BAD_EMBEDDING,
    BAD_SUCCESS_RATE,
    BAD_TASK_TYPE,
    BAD_TRANSITION,
    DUPLICATE_FLOOD,
    ZERO_WEIGHT,
    AggregationPolicy,
    Aggregator,
    Contribution,
)
from omega.constellation.codebook import Codebook, build_codebook
from omega.constellation.crdt import CellKey, CellState, ConsolidatedCell, ConsolidatedEdge, FederatedState
from omega.constellation.store import open_store
from omega.errors import OmegaError
from omega.protocol import EMBEDDING_DIM, Keyspace

from .conftest import SALT, device, near, pattern

NOW = 1_700_000_000_000
DAY = 86_400_000


async def cells_of(agg: Aggregator) -> dict[tuple[int, int], ConsolidatedCell]:
    return {(p.task_type, p.cluster_id): p for p in await agg.published() if isinstance(p, ConsolidatedCell)}


async def test_patterns_map_to_nearest_cell_and_wrong_hints_are_ignored(aggregator, codebook) -> None:
    for d in range(3):
        res = await aggregator.apply(device(d), b"b1", [pattern(near(codebook, 5, d), hint=9)], [], NOW)
        assert res.accepted == 1 and res.rejections == [] and res.hints_ignored == 1
    published = await cells_of(aggregator)
    assert set(published) == {(0, 5)}
    assert published[(0, 5)].support == 3


async def test_invalid_items_are_rejected_individually(aggregator, codebook) -> None:
    good = near(codebook, 1, 0)
    nan = good.copy()
    nan[3] = np.nan
    items = [
        pattern(good),  # 0 ok
        Contribution(np.zeros(10, np.float32), 0.9, 10, 9, 0),  # 1 shape
        Contribution(nan, 0.9, 10, 9, 0),  # 2 NaN
        Contribution(good * 3, 0.9, 10, 9, 0),  # 3 norm
        Contribution(good, 1.5, 10, 9, 0),  # 4 rate
        Contribution(good, float("nan"), 10, 9, 0),  # 5 rate NaN
        Contribution(good, 0.9, 0, 0, 0),  # 6 no uses
        Contribution(good, 0.9, 10, 11, 0),  # 7 successes > uses
        Contribution(good, 0.9, 10, 9, -1),  # 8 task type
        Contribution(good, 0.0, 10, 0, 0),  # 9 zero weight
    ]
    transitions = [(0, 1, 2, 1.0), (0, -1, 2, 1.0), (0, 1, 2, float("inf")), (0, 1, 3, 0.0), ("x",)]
    res = await aggregator.apply(device(1), b"b", items, transitions, NOW)
    reasons = {(r.kind, r.index): r.reason for r in res.rejections}
    assert reasons == {
        ("pattern", 1): BAD_EMBEDDING,
        ("pattern", 2): BAD_EMBEDDING,
        ("pattern", 3): BAD_EMBEDDING,
        ("pattern", 4): BAD_SUCCESS_RATE,
        ("pattern", 5): BAD_SUCCESS_RATE,
        ("pattern", 6): BAD_COUNTS,
        ("pattern", 7): BAD_COUNTS,
        ("pattern", 8): BAD_TASK_TYPE,
        ("pattern", 9): ZERO_WEIGHT,
        ("transition", 1): BAD_TRANSITION,
        ("transition", 2): BAD_TRANSITION,
        ("transition", 3): BAD_TRANSITION,
        ("transition", 4): BAD_TRANSITION,
    }
    assert res.accepted == 2


async def test_bad_arguments_raise(aggregator) -> None:
    with pytest.raises(OmegaError):
        await aggregator.apply(b"short", b"b", [], [], NOW)
    with pytest.raises(OmegaError):
        await aggregator.apply(device(1), b"", [], [], NOW)
    with pytest.raises(OmegaError):
        await aggregator.apply(device(1), b"b", [], [], -5)
    with pytest.raises(OmegaError):
        await aggregator.changes_since(-1)
    with pytest.raises(OmegaError):
        Aggregator(aggregator.store, aggregator.codebook, b"short salt")


async def test_one_contribution_per_device_per_cell_per_epoch(aggregator, codebook) -> None:
    first = await aggregator.apply(device(7), b"a", [pattern(near(codebook, 2, 1)), pattern(near(codebook, 2, 2))],
                                   [(0, 1, 2, 1.0), (0, 1, 2, 1.0)], NOW)
    assert first.accepted == 2
    assert {(r.kind, r.index, r.reason) for r in first.rejections} == {
        ("pattern", 1, DUPLICATE_FLOOD), ("transition", 1, DUPLICATE_FLOOD)}
    again = await aggregator.apply(device(7), b"b", [pattern(near(codebook, 2, 3))], [(0, 1, 2, 1.0)], NOW + 1000)
    assert again.accepted == 0 and {r.reason for r in again.rejections} == {DUPLICATE_FLOOD}
    # Another task type is another cell; the next epoch is a new window.
    other = await aggregator.apply(device(7), b"c", [pattern(near(codebook, 2, 3), task_type=1)], [], NOW + 2000)
    assert other.accepted == 1
    tomorrow = await aggregator.apply(device(7), b"d", [pattern(near(codebook, 2, 4))], [(0, 1, 2, 1.0)], NOW + DAY)
    assert tomorrow.accepted == 2


async def test_attacker_moves_a_consolidated_pattern_by_a_bounded_amount(aggregator, codebook) -> None:
    policy = aggregator.policy
    honest = [near(codebook, 3, 100 + d) for d in range(5)]
    weights = []
    for d, v in enumerate(honest):
        await aggregator.apply(device(d), b"h", [pattern(v, rate=0.9, uses=30)], [], NOW)
        weights.append(min(0.9 * 30, policy.w_max))
    before = (await cells_of(aggregator))[(0, 3)]
    honest_sum = sum(w * v.astype(np.float64) for w, v in zip(weights, honest))
    w_honest = sum(weights)
    honest_trials = 5 * min(30.0, policy.w_max)  # trials are clipped as weights are

    # The attacker aims at the far side of the cell (still assigned to it) with absurd counts,
    # and retries with fresh batch ids all day.
    target = codebook.centroids[3].astype(np.float64)
    # A direction orthogonal to every centroid keeps the vector in cell 3 while far from its centre.
    cents = codebook.centroids.astype(np.float64)
    away = np.random.default_rng(0).normal(size=EMBEDDING_DIM)
    away -= cents.T @ np.linalg.lstsq(cents.T, away, rcond=None)[0]
    adversarial = target * 0.35 + away / np.linalg.norm(away) * np.sqrt(1 - 0.35**2)
    adversarial = adversarial.astype(np.float32)
    assert codebook.assign(adversarial)[0] == 3
    attacker = device(666)
    accepted = 0
    for i in range(20):
        res = await aggregator.apply(attacker, f"evil-{i}".encode(), [Contribution(adversarial, 1.0, 10**12, 0, 0)],
                                     [], NOW + i)
        accepted += res.accepted
    assert accepted == 1
    after = (await cells_of(aggregator))[(0, 3)]

    # Bound: the unnormalised mean moves by at most w_max/(W+w_max)·‖a − u‖, u the honest mean.
    u = honest_sum / w_honest
    bound = policy.w_max / (w_honest + policy.w_max) * np.linalg.norm(adversarial - u)
    sin_max = bound / np.linalg.norm(u)
    cos_after = float(np.dot(before.embedding, after.embedding))
    assert cos_after >= np.sqrt(1 - sin_max**2) - 1e-6
    assert cos_after < 0.9999  # the attacker did move it a little (the test can fail)
    # Its absurd counts are clipped too: success rate moves by at most w_max/(T + w_max).
    assert abs(after.success_rate - before.success_rate) <= policy.w_max / (honest_trials + policy.w_max) + 1e-9
    assert after.support == before.support + 1


async def test_k_min_gates_publication(aggregator, codebook) -> None:
    for d in range(2):
        await aggregator.apply(device(d), b"x", [pattern(near(codebook, 4, d))], [(0, 10, 11, 1.0)], NOW)
    assert await aggregator.published() == []
    # The same device twice does not count as two.
    await aggregator.apply(device(1), b"y", [pattern(near(codebook, 4, 9))], [(0, 10, 11, 1.0)], NOW + DAY)
    assert await aggregator.published() == []
    await aggregator.apply(device(2), b"x", [pattern(near(codebook, 4, 2))], [(0, 10, 11, 2.5)], NOW)
    items = await aggregator.published()
    assert {type(i) for i in items} == {ConsolidatedCell, ConsolidatedEdge}
    edge = next(i for i in items if isinstance(i, ConsolidatedEdge))
    assert (edge.keyspace, edge.src, edge.dst, edge.support) == (0, 10, 11, 3)
    assert edge.weight == 3.0  # published weight is the distinct support, not the summed weight


async def test_edge_weight_is_clipped_and_published_as_support(aggregator) -> None:
    for d in range(3):
        await aggregator.apply(device(d), b"e", [], [(1, 5, 6, 1e9)], NOW)
    edges = {e.keyspace: e for e in await aggregator.published()}
    assert set(edges) == {Keyspace.ITEM, Keyspace.PAIR}
    for edge in edges.values():
        assert edge.weight == 3.0 and edge.support == 3
    state = await aggregator.export_state()
    assert {e.weight for e in state.edges.values()} == {3 * aggregator.policy.edge_w_max}


async def test_repeat_pushes_of_few_ids_do_not_grow_a_published_edge(aggregator) -> None:
    """Issue 14: three ids pushing one edge at the cap on five days stay at weight 3 (was 30 -> 150)."""
    for day in range(5):
        for d in range(3):
            await aggregator.apply(device(d), f"s{day}".encode(), [], [(1, 7, 8, 10.0)], NOW + day * DAY)
        edge = next(e for e in await aggregator.published() if e.keyspace == Keyspace.ITEM)
        assert (edge.weight, edge.support) == (3.0, 3)


async def test_item_edges_also_publish_unordered_pairs_that_reach_k_min_sooner(aggregator) -> None:
    # Two TVs watched 5 then 6, one watched 6 then 5: no ordered edge has 3 TVs, the pair {5, 6} has.
    pushes = [[(1, 5, 6, 1.0)], [(1, 5, 6, 0.5)], [(1, 6, 5, 2.0)]]
    for d, edges in enumerate(pushes):
        res = await aggregator.apply(device(d), b"e", [], edges, NOW)
        assert res.accepted == len(edges) and res.rejections == []  # derived pairs are not the TV's business
    (pair,) = await aggregator.published()
    assert (pair.keyspace, pair.src, pair.dst, pair.support) == (Keyspace.PAIR, 5, 6, 3)
    assert pair.weight == 3.0
    # Both orders in one push: one pair contribution of their sum.
    res = await aggregator.apply(device(3), b"e", [], [(1, 5, 6, 1.0), (1, 6, 5, 0.25)], NOW)
    assert res.accepted == 2
    published = {(e.keyspace, e.src, e.dst): (e.support, e.weight) for e in await aggregator.published()}
    assert published == {(Keyspace.ITEM, 5, 6): (3, 3.0), (Keyspace.PAIR, 5, 6): (4, 4.0)}


@pytest.mark.parametrize("keyspace", [Keyspace.PAIR, Keyspace.REFINED])
async def test_a_pushed_pair_or_refined_neighbour_is_refused(aggregator, keyspace) -> None:
    res = await aggregator.apply(device(0), b"e", [], [(int(keyspace), 1, 2, 1.0), (1, 1, 2, 1.0)], NOW)
    assert [(r.index, r.reason) for r in res.rejections] == [(0, BAD_TRANSITION)]
    assert res.accepted == 1


async def test_an_item_self_loop_is_refused(aggregator) -> None:
    res = await aggregator.apply(device(0), b"e", [], [(1, 1, 1, 1.0), (1, 1, 2, 1.0)], NOW)
    assert [(r.index, r.reason) for r in res.rejections] == [(0, BAD_TRANSITION)]
    assert res.accepted == 1


async def test_store_refuses_another_codebook_or_salt(store_url, codebook) -> None:
    store = await open_store(store_url, origin="s1")
    try:
        await Aggregator.open(store, codebook, SALT)
        other_book = build_codebook(np.random.default_rng(1).normal(size=(40, EMBEDDING_DIM)), k=4)
        with pytest.raises(OmegaError, match="codebook"):
            await Aggregator.open(store, other_book, SALT)
        with pytest.raises(OmegaError, match="salt"):
            await Aggregator.open(store, codebook, b"another-salt-0123456789")
    finally:
        await store.close()


async def test_federation_export_and_merge_build_the_global_view(tmp_path, codebook) -> None:
    shards = []
    for name in ("east", "west"):
        s = await open_store(f"sqlite:{tmp_path / name}.db", origin=name)
        shards.append(await Aggregator.open(s, codebook, SALT))
    east, west = shards
    hub_store = await open_store(f"sqlite:{tmp_path / 'hub'}.db", origin="hub")
    hub = await Aggregator.open(hub_store, codebook, SALT)
    try:
        # Two devices on each shard: neither shard alone reaches k_min = 3.
        for d in range(2):
            await east.apply(device(d), b"p", [pattern(near(codebook, 6, d), uses=10)], [], NOW)
            await west.apply(device(10 + d), b"p", [pattern(near(codebook, 6, 10 + d), uses=40)], [], NOW)
        assert await east.published() == [] and await west.published() == []

        east_delta = (await east.export_state(0, ["east"])).to_bytes()
        west_delta = (await west.export_state(0, ["west"])).to_bytes()
        # Replayed and reordered federation messages change nothing.
        for blob in (west_delta, east_delta, west_delta):
            await hub.merge_remote(FederatedState.from_bytes(blob))
        (glob,) = await hub.published()
        assert glob.support == 4

        offline = FederatedState.from_bytes(east_delta).merge(FederatedState.from_bytes(west_delta))
        (expected,) = offline.consolidated(k_min=3)
        np.testing.assert_allclose(glob.embedding, expected.embedding, atol=1e-6)
        assert glob.success_rate == pytest.approx(expected.success_rate)

        # The east shard also merges west's entries and serves the same global pattern.
        assert await east.merge_remote(FederatedState.from_bytes(west_delta)) == 1
        assert await east.merge_remote(FederatedState.from_bytes(west_delta)) == 0
        (east_view,) = await east.published()
        np.testing.assert_allclose(east_view.embedding, glob.embedding, atol=1e-6)
        # A remote message cannot overwrite the shard's own accumulators.
        forged = FederatedState(codebook.version)
        forged.put_cell("east", CellKey(0, 6), CellState(1e9, np.ones(EMBEDDING_DIM), 1000, 0.0, 1.0, 10**9))
        assert await east.merge_remote(forged) == 0
        # Entries for another codebook version are refused.
        with pytest.raises(OmegaError):
            await hub.merge_remote(FederatedState(codebook.version + 1, dict(forged.cells), {}))
    finally:
        for agg in (east, west, hub):
            await agg.store.close()


async def test_policy_validation() -> None:
    with pytest.raises(OmegaError):
        AggregationPolicy(k_min=0)
    with pytest.raises(OmegaError):
        AggregationPolicy(w_max=float("inf"))


@pytest.mark.parametrize("size", [16, 32, 63, 64, 65, 200])
def test_keyed_hashes_are_hmac_sha256_of_the_salt(codebook, size) -> None:
    """Member hashes, push keys and the salt check are HMAC-SHA256(salt, message), whatever the salt's length
    (a key longer than SHA-256's block is hashed first): a store built before keeps matching."""
    import hashlib
    import hmac

    salt = bytes(range(256))[:size]
    agg = Aggregator(None, codebook, salt)  # type: ignore[arg-type] - hashing needs no store
    for message in (b"", b"omega/salt-check", b"omega/edge" + bytes(28), bytes(range(200))):
        assert agg._keyed(message, 32) == hmac.new(salt, message, hashlib.sha256).digest()  # noqa: SLF001
        assert agg._keyed(message, 8) == hmac.new(salt, message, hashlib.sha256).digest()[:8]  # noqa: SLF001


def test_edge_and_pair_members_are_the_keyed_hash_of_their_key_and_device(codebook) -> None:
    """What a push's transitions become (the writer stores these member hashes, so a store built before
    keeps matching): each valid edge HMAC(salt, "omega/edge" <III keyspace, src, dst> device)[:8], its
    weight capped, numpy ids as plain ints; refused ones by their index; one pair per unordered item pair
    (both directions summed), numbered after the pushed edges, in (lo, hi) order."""
    import hashlib
    import hmac
    import struct

    salt = bytes(range(32))
    agg = Aggregator(None, codebook, salt)  # type: ignore[arg-type] - hashing needs no store
    dev = device(3)
    pushed = [(int(Keyspace.ITEM), 7, 3, 0.5), (np.int64(1), np.uint32(3), 7, 2.0), (int(Keyspace.CELL), 4, 4, 1.0),
              (int(Keyspace.ITEM), 5, 5, 1.0), (int(Keyspace.PAIR), 1, 2, 1.0), (1, 2**32, 1, 1.0), (1, 1, 2, 0.0),
              (1, True, 2, 1.0), (1, 9, 2, float("nan")), (1, 2)]  # fmt: skip
    rejections: list = []
    edges = agg._prepare_edges(dev, pushed, rejections)  # noqa: SLF001
    pairs = agg._derive_pairs(dev, edges, first_index=len(pushed))  # noqa: SLF001

    def member(keyspace: int, src: int, dst: int) -> bytes:
        message = b"omega/edge" + struct.pack("<III", keyspace, src, dst) + dev
        return hmac.new(salt, message, hashlib.sha256).digest()[:8]

    assert [tuple(e) for e in edges] == [(0, 1, 7, 3, member(1, 7, 3), 0.5), (1, 1, 3, 7, member(1, 3, 7), 1.0),
                                         (2, 2, 4, 4, member(2, 4, 4), 1.0)]  # fmt: skip
    assert all(type(v) is int for e in edges for v in (e.keyspace, e.src, e.dst))
    assert [(r.index, r.reason) for r in rejections] == [(i, BAD_TRANSITION) for i in range(3, 10)]
    assert [tuple(p) for p in pairs] == [(10, int(Keyspace.PAIR), 3, 7, member(int(Keyspace.PAIR), 3, 7), 1.0)]


def _mixed_pushes(codebook: Codebook, n: int) -> list[tuple[bytes, list[Contribution]]]:
    """Pushes of 0-4 patterns: random directions (assignment not decided by a near centroid), wrong
    hints, and in some pushes a refused pattern (NaN, wrong shape, norm, rate)."""
    rng = np.random.default_rng(11)
    pushes = []
    for k in range(n):
        patterns = []
        for j in range(k % 5):
            v = rng.standard_normal(EMBEDDING_DIM)
            patterns.append(pattern((v / np.linalg.norm(v)).astype(np.float32), uses=5 + k, task_type=j % 2,
                                    hint=(k * 7 + j) % codebook.k if j % 2 else None))  # fmt: skip
        if k % 3 == 1:
            bad = [np.full(EMBEDDING_DIM, np.nan, np.float32), np.zeros(7, np.float32), near(codebook, 2, k) * 2]
            patterns.insert(k % len(patterns or [0]), pattern(bad[(k // 3) % 3]))
        if k % 4 == 2:
            patterns.append(Contribution(near(codebook, 3, k), 1.5, 10, 9, 0))
        pushes.append((device(k % 6), patterns))
    return pushes


async def test_patterns_of_many_pushes_prepared_together_are_what_each_push_gets_alone(codebook) -> None:
    """One preparation pass for many pushes (Aggregator._prepare_cells): for each push the same cells,
    member hashes, weights, float16-rounded embeddings, ignored hints and refused patterns as its own pass."""
    agg = Aggregator(None, codebook, SALT)  # type: ignore[arg-type]  # preparation only: no store call
    pushes = _mixed_pushes(codebook, 24)
    together = agg._prepare_cells(pushes)  # noqa: SLF001
    alone = [agg._prepare_cells([p])[0] for p in pushes]  # noqa: SLF001

    def plain(prepared: tuple) -> tuple:
        cells, hints, refused = prepared
        return ([(c.index, c.task_type, c.cell, c.member, c.weight, c.embedding.tobytes(), c.successes, c.trials)
                 for c in cells], hints, refused)  # fmt: skip

    assert [plain(p) for p in together] == [plain(p) for p in alone]
    assert sum(len(p[0]) for p in together) > 20 and sum(len(p[2]) for p in together) >= 10
    assert len({c.cell for p in together for c in p[0]}) > 10  # spread over the codebook, not one cell
    assert any(p[1] for p in together)


async def test_pushes_arriving_together_are_prepared_in_one_pass_with_one_push_at_a_time_results(
    tmp_path, codebook
) -> None:
    """Concurrent `apply`s share one preparation pass, and answer (accepted, refusals, ignored hints, cursor)
    and publish exactly what the same pushes applied one after the other do: the pushes without patterns
    among them wait for the pass too, so every push reaches the store in the order it came."""
    pushes = [(dev, b"batch-%d" % k, patterns, [(0, k, k + 1, 1.0)], NOW + k)
              for k, (dev, patterns) in enumerate(_mixed_pushes(codebook, 24))]  # fmt: skip
    results = {}
    for name in ("together", "one by one"):
        store = await open_store(f"sqlite:{tmp_path / name}.db", origin="shard-test")
        try:
            agg = await Aggregator.open(store, codebook, SALT, AggregationPolicy(k_min=1))
            if name == "together":
                out = await asyncio.gather(*(agg.apply(*p) for p in pushes))
                assert agg.cell_batches == 1  # every push with patterns, in one pass
            else:
                out = [await agg.apply(*p) for p in pushes]
                assert agg.cell_batches == sum(1 for p in pushes if p[2])
            answers = [(r.accepted, r.rejections, r.hints_ignored, r.duplicate, r.cursor) for r in out]
            results[name] = (answers, sorted(repr(i) for i in await agg.published()))
        finally:
            await store.close()
    assert results["together"] == results["one by one"]
    assert any(a[1] for a in results["together"][0]) and any(a[2] for a in results["together"][0])


async def test_a_push_numpy_cannot_read_fails_alone_when_prepared_with_others(aggregator, codebook) -> None:
    """An embedding numpy refuses to make an array of (ragged) raises in its own push's apply; the pushes
    prepared in the same pass are applied."""
    ragged = Contribution([[0.1, 0.2], [0.3]], 0.9, 10, 9, 0)  # type: ignore[arg-type]
    jobs = [aggregator.apply(device(d), b"b", [ragged] if d == 2 else [pattern(near(codebook, d, d))], [], NOW)
            for d in range(5)]  # fmt: skip
    out = await asyncio.gather(*jobs, return_exceptions=True)
    assert isinstance(out[2], ValueError)
    assert [r.accepted for i, r in enumerate(out) if i != 2] == [1, 1, 1, 1]
