"""The evaluation's what-if published sets are read as a TV reads what it pulled (issue 14: the privacy
table's k_min and ε rows rank through the shipped path, support floor and held-back tier included)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from omega.brain import Brain
from omega.brain.records import TransitionStat
from omega.constellation.crdt import ConsolidatedEdge
from omega.protocol import Keyspace
from omega.sim.bench.poisoning import SOURCE, TARGET, VICTIM_CONTEXT, poisoning_catalog
from omega.sim.evaluation.scoring import published_state

ITEM, PAIR = int(Keyspace.ITEM), int(Keyspace.PAIR)


def _edges() -> list[ConsolidatedEdge]:
    """Out of the source: 4 titles with 23 / 13 / 10 / 6 TVs and the target with 3 (V = 55: floor 0.45·√55 = 3.3);
    each edge's pair too."""
    supports = {3: 23, 4: 13, 5: 10, 6: 6, TARGET: 3}
    out = [ConsolidatedEdge(ITEM, SOURCE, dst, float(n), n, 0) for dst, n in supports.items()]
    out += [ConsolidatedEdge(PAIR, min(SOURCE, dst), max(SOURCE, dst), float(n), n, 0) for dst, n in supports.items()]
    return out


def test_the_floor_holds_back_what_a_tv_would_not_read() -> None:
    glob, pairs, popular, held = published_state(_edges())
    assert [dst for dst, _ in glob([SOURCE])[SOURCE]] == [3, 4, 5, 6]
    assert [dst for dst, _ in pairs([SOURCE])[SOURCE]] == [3, 4, 5, 6]
    assert sorted(held([SOURCE])[SOURCE]) == [(TARGET, 3.0), (TARGET, 3.0)]  # the edge and the pair
    assert TARGET in popular()  # most-followed counts every published edge, as the TV's does


def test_a_brain_ranks_a_what_if_set_as_it_ranks_the_same_set_pulled(tmp_path: Path) -> None:
    catalog = poisoning_catalog()
    edges = _edges()
    with Brain(tmp_path / "tv.db", catalog=catalog) as brain:
        brain.on_user_action(SOURCE, watch_fraction=1.0, started_at=1.0)
        what_if = brain.rank(VICTIM_CONTEXT, 100, published=published_state(edges)).recommendations
        as_stats = lambda keyspace: [TransitionStat(e.src, e.dst, e.weight, e.support)  # noqa: E731
                                     for e in edges if e.keyspace == keyspace]
        brain.apply_consolidated([], as_stats(ITEM), pairs=as_stats(PAIR))
        pulled = brain.recommend(VICTIM_CONTEXT, 100)
    assert [r.content_id for r in what_if] == [r.content_id for r in pulled]
    assert np.allclose([r.score for r in what_if], [r.score for r in pulled])
