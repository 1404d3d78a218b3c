"""EASE refinement over the published pair graph (omega.constellation.item_graph)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from omega.constellation.item_graph import refine
from omega.errors import OmegaError
from omega.protocol import WEIGHT_SCALE


def _two_communities(rng: np.random.Generator) -> list[tuple[int, int, int]]:
    """Items 0..9 co-watched with each other, 10..19 with each other, one weak bridge 0-10."""
    pairs = []
    for block in (range(10), range(10, 20)):
        items = list(block)
        for i, a in enumerate(items):
            for b in items[i + 1 :]:
                pairs.append((a, b, int(rng.integers(3, 30))))
    pairs.append((0, 10, 3))
    return pairs


def test_neighbours_stay_in_their_community() -> None:
    found = refine(_two_communities(np.random.default_rng(0)), neighbours=5, floor_c=0.0)
    assert found, "a connected graph yields neighbours"
    for n in found:
        assert 1 <= n.steps <= WEIGHT_SCALE
        if (n.src < 10) != (n.dst < 10) and {n.src, n.dst} != {0, 10}:
            assert n.steps == 1  # across the weak bridge: the least a neighbour can weigh
        if n.steps == WEIGHT_SCALE:
            assert (n.src < 10) == (n.dst < 10)  # every item's best neighbour is in its own community
    by_src: dict[int, list[int]] = {}
    for n in found:
        by_src.setdefault(n.src, []).append(n.steps)
    assert all(len(v) <= 5 and max(v) == WEIGHT_SCALE for v in by_src.values())  # scaled to the row's best


def test_a_hub_predicts_less_than_a_specific_neighbour() -> None:
    # Item 0 is watched next to everything (a hub); 1 and 2 are watched mostly with each other.
    pairs = [(0, j, 20) for j in range(1, 30)] + [(1, 2, 20)] + [(j, j + 1, 5) for j in range(3, 29)]
    found = {(n.src, n.dst): n.steps for n in refine(pairs, neighbours=3, floor_c=0.0)}
    assert found.get((1, 2), 0) > found.get((1, 0), 0)


def test_the_support_floor_keeps_sybil_pairs_out() -> None:
    # 30 honest TVs link 1 with 2..5; three ids (support 3) link 1 with 99, next to the popular source.
    pairs = [(1, j, 30) for j in range(2, 6)] + [(2, 3, 10), (4, 5, 10), (1, 99, 3), (99, 98, 3)]
    edges = [(1, j, 30) for j in range(2, 6)] + [(1, 99, 3)]
    with_floor = {(n.src, n.dst) for n in refine(pairs, edges, neighbours=10)}
    without = {(n.src, n.dst) for n in refine(pairs, edges, neighbours=10, floor_c=0.0)}
    assert (1, 99) in without
    assert (1, 99) not in with_floor


def test_empty_and_bad_parameters() -> None:
    assert refine([]) == []
    assert refine([(1, 1, 5), (2, 3, 0)]) == []  # self-loops and zero support carry nothing
    with pytest.raises(OmegaError):
        refine([(1, 2, 3)], lam=0.0)
    with pytest.raises(OmegaError):
        refine([(1, 2, 3)], lam=float("nan"))
    with pytest.raises(OmegaError):
        refine([(1, 2, 3)], neighbours=0)


def test_too_many_items_keeps_the_best_supported() -> None:
    pairs = [(i, i + 1, 3 + (i < 10) * 20) for i in range(40)]
    found = refine(pairs, neighbours=2, floor_c=0.0, max_items=12)
    assert {n.src for n in found} <= set(range(12))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 30), st.integers(0, 30), st.integers(0, 500)), max_size=120),
       st.floats(0.01, 100.0), st.integers(1, 8))  # fmt: skip
def test_any_published_graph_gives_valid_neighbours(pairs: list, lam: float, m: int) -> None:
    found = refine(pairs, lam=lam, neighbours=m)
    seen = set()
    for n in found:
        assert n.src != n.dst and 1 <= n.steps <= WEIGHT_SCALE
        assert (n.src, n.dst) not in seen
        seen.add((n.src, n.dst))
    items = {x for a, b, w in pairs if a != b and w > 0 for x in (a, b)}
    assert {x for n in found for x in (n.src, n.dst)} <= items
