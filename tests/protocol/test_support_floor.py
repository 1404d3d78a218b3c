"""The support floor's one rule (protocol.passes_support_floor), as the TV, the cloud and the evaluation apply it."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from omega.protocol import SUPPORT_FLOOR_C, passes_support_floor


def test_the_documented_examples() -> None:
    # brain/store/edges.py: c = 0.45 asks 4 TVs beside 30 TVs' 60 edges (0.45·√60 = 3.49), 7 beside 200 edges.
    assert not passes_support_floor(3, 60) and passes_support_floor(4, 60)
    assert not passes_support_floor(6, 200) and passes_support_floor(7, 200)
    assert passes_support_floor(1, 0) and passes_support_floor(0, 0)
    assert passes_support_floor(3, 60, 0.0)  # c 0: the floor is off


@settings(max_examples=300, deadline=None)
@given(
    support=st.lists(st.integers(0, 10_000), min_size=1, max_size=40),
    volume=st.lists(st.integers(0, 1_000_000), min_size=1, max_size=40),
    c=st.sampled_from([0.0, 0.3, SUPPORT_FLOOR_C, 0.6]),
)
def test_scalars_and_arrays_agree(support: list[int], volume: list[int], c: float) -> None:
    n = min(len(support), len(volume))
    s, v = support[:n], volume[:n]
    as_array = passes_support_floor(np.asarray(s, np.int64), np.asarray(v, np.int64), c)
    assert as_array.dtype == bool and as_array.tolist() == [passes_support_floor(a, b, c) for a, b in zip(s, v)]
    # away from the boundary it is support ≥ c·√volume
    for a, b, ok in zip(s, v, as_array.tolist()):
        edge = c * math.sqrt(b)
        if abs(a - edge) > 1e-9 * max(1.0, edge):
            assert ok == (a >= edge)
