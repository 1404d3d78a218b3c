"""The federation CRDT: merge laws, delta serialisation, consolidation."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from omega.constellation.crdt import (
    CellKey,
    CellState,
    EdgeKey,
    EdgeState,
    FederatedState,
    decode_delta,
)
from omega.errors import OmegaError
from omega.protocol import EMBEDDING_DIM

ORIGINS = ["shard-a", "shard-b", "shard-c"]


@st.composite
def cell_states(draw) -> CellState:
    seed = draw(st.integers(0, 2**16))
    vec = np.random.default_rng(seed).normal(size=EMBEDDING_DIM)
    sum_w = draw(st.floats(0.0, 100.0, allow_nan=False))
    trials = draw(st.floats(0.0, 100.0, allow_nan=False))
    successes = draw(st.floats(0.0, 1.0)) * trials
    return CellState(sum_w, vec * sum_w, draw(st.integers(0, 50)), successes, trials, draw(st.integers(0, 6)))


@st.composite
def edge_states(draw) -> EdgeState:
    return EdgeState(draw(st.floats(0.0, 100.0, allow_nan=False)), draw(st.integers(0, 50)), draw(st.integers(0, 6)))


@st.composite
def messages(draw) -> FederatedState:
    """A federation message: a handful of entries with deliberately colliding keys and versions."""
    state = FederatedState(codebook_version=1)
    for _ in range(draw(st.integers(0, 4))):
        state.put_cell(draw(st.sampled_from(ORIGINS)), CellKey(draw(st.integers(0, 1)), draw(st.integers(0, 2))),
                       draw(cell_states()))
    for _ in range(draw(st.integers(0, 4))):
        state.put_edge(draw(st.sampled_from(ORIGINS)), EdgeKey(0, draw(st.integers(0, 2)), draw(st.integers(0, 2))),
                       draw(edge_states()))
    return state


def merged(*states: FederatedState) -> FederatedState:
    return functools.reduce(lambda acc, s: acc.merge(s), states, FederatedState(codebook_version=1))


@settings(max_examples=60, deadline=None)
@given(messages(), messages())
def test_merge_is_commutative(a: FederatedState, b: FederatedState) -> None:
    assert merged(a, b) == merged(b, a)


@settings(max_examples=60, deadline=None)
@given(messages(), messages(), messages())
def test_merge_is_associative(a: FederatedState, b: FederatedState, c: FederatedState) -> None:
    left = merged(a, b).merge(c)
    right = a.copy().merge(merged(b, c))
    assert left == right


@settings(max_examples=60, deadline=None)
@given(messages())
def test_merge_is_idempotent(a: FederatedState) -> None:
    assert merged(a, a) == merged(a)
    assert a.copy().merge(a) == a


@settings(max_examples=40, deadline=None)
@given(st.lists(messages(), max_size=6), st.randoms(use_true_random=False), st.data())
def test_shuffled_duplicated_split_sequences_agree(msgs, rnd, data) -> None:
    reference = merged(*msgs)
    # Replica 2 sees a shuffled sequence with duplicates, each message re-encoded on the wire.
    replayed = list(msgs) + [m for m in msgs if rnd.random() < 0.5]
    rnd.shuffle(replayed)
    replica = FederatedState(codebook_version=1)
    for m in replayed:
        replica.merge(decode_delta(m.to_bytes()))
    assert replica == reference
    # Replica 3 sees each message split into one message per entry, in another order.
    pieces = []
    for m in msgs:
        for k, v in m.cells.items():
            pieces.append(FederatedState(1, {k: v}, {}))
        for k, v in m.edges.items():
            pieces.append(FederatedState(1, {}, {k: v}))
    rnd.shuffle(pieces)
    assert merged(*pieces) == reference
    # And the derived global views agree bit for bit.
    a = reference.consolidated(k_min=0)
    b = replica.consolidated(k_min=0)
    assert [(p.key, p.embedding.tobytes(), p.success_rate, p.support) for p in a] == [
        (p.key, p.embedding.tobytes(), p.success_rate, p.support) for p in b
    ]
    assert reference.consolidated_edges(0) == replica.consolidated_edges(0)


def test_highest_version_wins_and_conflicting_equal_versions_resolve_the_same_way() -> None:
    key = CellKey(0, 1)
    old = CellState(1.0, np.ones(EMBEDDING_DIM), 1, 1.0, 1.0, version=1)
    new = CellState(2.0, np.ones(EMBEDDING_DIM) * 2, 2, 1.0, 2.0, version=2)
    s = FederatedState(1)
    s.put_cell("a", key, new)
    assert not s.put_cell("a", key, old)
    assert s.cells[("a", key)] == new
    twin = CellState(9.0, np.ones(EMBEDDING_DIM) * 9, 9, 1.0, 9.0, version=2)
    x = FederatedState(1, {("a", key): new}, {})
    y = FederatedState(1, {("a", key): twin}, {})
    assert merged(x, y) == merged(y, x)


def test_global_value_is_sum_over_origins_and_consolidated_is_the_weighted_mean() -> None:
    rng = np.random.default_rng(0)
    key = CellKey(2, 5)
    s = FederatedState(1)
    vectors = []
    for i, origin in enumerate(ORIGINS):
        x = rng.normal(size=EMBEDDING_DIM)
        x /= np.linalg.norm(x)
        w = float(i + 1)
        vectors.append((w, x))
        s.put_cell(origin, key, CellState(w, w * x, 1 + i, 0.5 * (i + 1), 1.0 + i, version=i + 1))
    total = s.global_cell(key)
    assert total is not None
    assert total.sum_w == pytest.approx(6.0)
    assert total.support == 6
    published = s.consolidated(k_min=6)
    assert len(published) == 1
    expected = sum(w * x for w, x in vectors) / 6.0
    expected /= np.linalg.norm(expected)
    np.testing.assert_allclose(published[0].embedding, expected, atol=1e-6)
    assert published[0].success_rate == pytest.approx(3.0 / 6.0)
    assert published[0].task_type == 2 and published[0].cluster_id == 5
    assert s.consolidated(k_min=7) == []


def test_delta_since_watermark_holds_only_newer_entries() -> None:
    s = FederatedState(1)
    for v in range(1, 6):
        s.put_edge("a", EdgeKey(0, v, v), EdgeState(1.0, 1, v))
    s.put_edge("b", EdgeKey(0, 9, 9), EdgeState(1.0, 1, 2))
    assert {k[1].src for k in s.delta(3).edges} == {4, 5}
    assert {(k[0], k[1].src) for k in s.delta({"a": 4}).edges} == {("a", 5), ("b", 9)}
    assert s.max_version("a") == 5
    back = decode_delta(s.encode_delta(3))
    assert back == s.delta(3)


def test_malformed_bytes_are_rejected() -> None:
    s = FederatedState(1)
    s.put_cell("a", CellKey(0, 0), CellState(1.0, np.ones(EMBEDDING_DIM), 1, 1.0, 1.0, 1))
    s.put_edge("a", EdgeKey(0, 1, 2), EdgeState(1.0, 1, 1))
    good = s.to_bytes()
    assert decode_delta(good) == s
    nan_vec = bytearray(good)
    nan_vec[-16:-8] = np.array([np.nan]).tobytes()  # the edge's weight
    nan_cell = bytearray(good)
    first_vec_component = 13 + 2 + 1 + 48  # header, entry head, origin "a", cell fields
    nan_cell[first_vec_component : first_vec_component + 8] = np.array([np.inf]).tobytes()
    bad_inputs = [
        b"",
        b"XXXX" + good[4:],
        good[:-1],
        good + b"\x00",
        good[:4] + b"\x09" + good[5:],
        bytes(nan_vec),
        bytes(nan_cell),
        "not bytes",
    ]
    for bad in bad_inputs:
        with pytest.raises(OmegaError):
            decode_delta(bad)  # type: ignore[arg-type]


def test_merging_different_codebook_versions_is_refused() -> None:
    a = FederatedState(1)
    a.put_edge("a", EdgeKey(0, 1, 2), EdgeState(1.0, 1, 1))
    b = FederatedState(2)
    b.put_edge("b", EdgeKey(0, 1, 2), EdgeState(1.0, 1, 1))
    with pytest.raises(OmegaError):
        a.merge(b)
