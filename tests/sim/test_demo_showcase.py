"""The demo's example viewer: the list that shows the most distinct reasons, not the heaviest viewer's."""

from __future__ import annotations

from types import SimpleNamespace

from omega.brain import Recommendation
from omega.sim.demo import _showcase


def _tv(user: int, episodes: int) -> SimpleNamespace:
    store = SimpleNamespace(episode_count=lambda: episodes)
    return SimpleNamespace(user=user, brain=SimpleNamespace(store=store))


def _list(*reasons: tuple[str, ...]) -> list[Recommendation]:
    return [Recommendation(content_id=i + 1, score=1.0 - i / 10, reasons=r) for i, r in enumerate(reasons)]


def test_the_example_is_the_list_with_the_most_distinct_reasons():
    heavy, varied, plain = _tv(1, 900), _tv(2, 40), _tv(3, 60)
    lists = {
        1: _list(*[("popular with viewers of your taste",)] * 5),
        2: _list(("viewers who watched A also watched it",), ("viewers who watched B watched it next",),
                 ("popular with viewers of your taste",)),
        3: _list(("viewers who watched A also watched it",), ("viewers who watched A also watched it",)),
    }  # fmt: skip
    assert _showcase([heavy, varied, plain], lists) is varied


def test_ties_go_to_the_viewing_count_nearest_the_median_then_the_lowest_id():
    tvs = [_tv(1, 10), _tv(2, 50), _tv(3, 500), _tv(4, 50)]
    same = _list(("similar to A",), ("popular with viewers right now",))
    lists = {tv.user: same for tv in tvs}
    assert _showcase(tvs, lists).user == 2  # median 50: users 2 and 4 tie, the lower id wins
