"""logic.GroupWrites with its own accumulators given late (`settle`), as the PostgreSQL store uses it."""

from __future__ import annotations

import numpy as np
import pytest

from omega.constellation.store import logic
from omega.constellation.store.base import CellContribution, EdgeContribution, PreparedPush
from omega.protocol import EMBEDDING_DIM

DAY_MS = 86_400_000


def _pushes() -> list[PreparedPush]:
    """Pushes on 3 cells from 5 members over 2 epochs: fresh keys, held keys, replaced and flooded marks."""
    rng = np.random.default_rng(11)
    out = []
    for n in range(24):
        epoch = n // 12
        cells = []
        for j, cell in enumerate(rng.choice(3, size=2, replace=False)):
            v = rng.normal(size=EMBEDDING_DIM)
            member = b"m%d-%d" % (int(rng.integers(0, 5)), cell)
            cells.append(CellContribution(j, 0, int(cell), member.ljust(8, b"."), float(rng.uniform(0.5, 8)),
                                          (v / np.linalg.norm(v)).astype(np.float32), 3.0, 4.0))  # fmt: skip
        edges = [EdgeContribution(0, 0, n % 4, 9, b"e%d" % (n % 3), 1.5)]
        out.append(PreparedPush(b"k%d" % n, epoch, epoch * DAY_MS, cells, edges))
    return out


def _own_rows() -> dict[tuple[int, int], tuple]:
    """Cell 1 held already (cells 0 and 2 start fresh in the group)."""
    sum_wx = np.arange(EMBEDDING_DIM, dtype="<f8") / 7.0
    return {(0, 1): ("shard", 0, 1, 5.5, sum_wx.tobytes(), 2, 3.0, 4.0, 9)}


def _run(late: bool) -> tuple[list, logic.GroupRows]:
    group = logic.GroupWrites("shard")
    known: dict = {}
    own = _own_rows()
    outcomes, head = [], 0
    for push in _pushes():
        outcome = group.push(push, logic.member_rows(push), known, None if late else own, head)
        head = outcome.head
        outcomes.append(outcome)
    if late:
        assert group.unsettled_keys() == [(0, 0), (0, 1), (0, 2)]
        group.settle(own)
        assert group.unsettled_keys() == []
    return outcomes, group.rows(100)


def test_accumulators_settled_late_give_the_same_rows_bit_for_bit() -> None:
    early_outcomes, early = _run(late=False)
    late_outcomes, late = _run(late=True)
    assert late_outcomes == early_outcomes
    assert any(o.flooded_cells for o in early_outcomes)  # the workload has flooded marks too
    assert late == early  # same floats: the same additions in the same order


def test_rows_refuse_a_group_whose_cells_are_not_settled() -> None:
    group = logic.GroupWrites("shard")
    push = _pushes()[0]
    group.push(push, logic.member_rows(push), {}, None, 0)
    with pytest.raises(ValueError, match="settle"):
        group.rows(0)
