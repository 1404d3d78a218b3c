"""recommend(): local, excludes what was watched, diverse, explained, uses transitions and priors."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from omega.brain.brain import Brain
from omega.brain.catalog import Catalog
from omega.brain.config import BrainConfig
from omega.brain.recommender import ConsolidatedPrior, _mmr, context_text
from omega.brain.records import CatalogItem, ConsolidatedRecord, TaskType, TransitionStat, ViewingContext
from omega.errors import OmegaError

GENRES = {
    "Animation": ["Toy Story", "Finding Nemo", "Shrek", "Up", "Monsters Inc", "Ratatouille"],
    "Horror": ["Alien", "The Shining", "Halloween", "The Exorcist", "Scream", "It Follows"],
    "Romance": ["Notting Hill", "Pride and Prejudice", "The Notebook", "Titanic", "Before Sunrise", "Amelie"],
    "Crime": ["Heat", "The Godfather", "Goodfellas", "Casino", "Reservoir Dogs", "Fargo"],
}
ITEMS = [
    CatalogItem(10 * g + i, title, (genre,), 1990 + i)
    for g, (genre, titles) in enumerate(GENRES.items(), start=1)
    for i, title in enumerate(titles)
]
BY_TITLE = {it.title: it.content_id for it in ITEMS}
CTX = ViewingContext(20, 4)


@pytest.fixture(scope="module")
def catalog(embedder) -> Catalog:
    return Catalog.build(ITEMS, embedder)


def make_brain(tmp_path: Path, embedder, catalog, **config) -> Brain:
    return Brain(tmp_path / f"tv{len(list(tmp_path.iterdir()))}.db", embedder=embedder, catalog=catalog,
                 config=BrainConfig(**config))  # fmt: skip


def test_returns_k_items_with_reasons_and_titles(tmp_path, embedder, catalog):
    with make_brain(tmp_path, embedder, catalog) as b:
        b.on_user_action(BY_TITLE["Alien"], watch_fraction=0.95, started_at=1.0)
        recs = b.recommend(CTX, k=8)
    assert len(recs) == 8 and len({r.content_id for r in recs}) == 8
    assert all(r.reasons and r.title == catalog.item(r.content_id).title for r in recs)
    assert "similar to Alien" in recs[0].reasons
    assert all(1 <= len(r.reasons) <= 2 for r in recs)  # the parts that carried the score, not a list of all
    # the nearest items to a horror film are horror films
    horror = {BY_TITLE[t] for t in GENRES["Horror"]}
    assert sum(r.content_id in horror for r in recs[:3]) >= 2


def test_excludes_finished_and_by_default_everything_watched(tmp_path, embedder, catalog):
    finished, abandoned = BY_TITLE["Heat"], BY_TITLE["Casino"]
    with make_brain(tmp_path, embedder, catalog) as b:
        b.on_user_action(finished, watch_fraction=0.9, started_at=1.0)
        b.on_user_action(abandoned, watch_fraction=0.3, started_at=2.0)
        ids = {r.content_id for r in b.recommend(CTX, k=len(ITEMS))}
    assert finished not in ids and abandoned not in ids and len(ids) == len(ITEMS) - 2
    with make_brain(tmp_path, embedder, catalog, exclude_watched=False) as b:
        b.on_user_action(finished, watch_fraction=0.9, started_at=1.0)
        b.on_user_action(abandoned, watch_fraction=0.3, started_at=2.0)
        ids = {r.content_id for r in b.recommend(CTX, k=len(ITEMS))}
    assert finished not in ids and abandoned in ids


def test_global_transitions_pull_the_follow_up_to_the_top(tmp_path, embedder, catalog):
    a, b_item = BY_TITLE["Alien"], BY_TITLE["Notting Hill"]  # content-wise far apart
    with make_brain(tmp_path, embedder, catalog) as brain:
        brain.on_user_action(a, watch_fraction=0.9, started_at=1.0)
        before = [r.content_id for r in brain.recommend(CTX, k=10)]
        brain.apply_consolidated([], [TransitionStat(a, b_item, 40.0, 25), TransitionStat(a, BY_TITLE["Up"], 2.0, 2)])
        after = brain.recommend(CTX, k=10)
    assert b_item not in before[:3]
    assert after[0].content_id == b_item
    assert after[0].reasons[0] == "viewers who watched Alien watched it next"


def test_local_transitions_are_learned_and_used(tmp_path, embedder, catalog):
    a, b_item = BY_TITLE["Fargo"], BY_TITLE["Amelie"]
    with make_brain(tmp_path, embedder, catalog, exclude_watched=False) as brain:
        t = 0.0
        for _ in range(3):  # the viewer's habit: after Fargo, Amelie
            for cid in (a, b_item):
                t += 1
                brain.on_user_action(cid, watch_fraction=0.6 if cid == a else 1.0, started_at=t)
        brain.on_user_action(a, watch_fraction=0.6, started_at=t + 1)  # Fargo again, not finished
        recs = brain.recommend(CTX, k=5)
    # Amelie was finished, so it is excluded; ask again about an unfinished follow-up instead
    assert b_item not in [r.content_id for r in recs]
    with make_brain(tmp_path, embedder, catalog) as brain:
        brain.store.bump_transition(a, b_item, 3.0)
        brain.store.bump_transition(a, b_item, 3.0)
        brain.on_user_action(a, watch_fraction=0.9, started_at=1.0)
        recs = brain.recommend(CTX, k=5)
    assert recs[0].content_id == b_item and "you often watch it after Fargo" in recs[0].reasons


def test_pairs_and_the_popular_pool(tmp_path, embedder, catalog):
    """Pairs count in either direction; the most-followed items join the pool even far from the viewer's taste."""
    alien, amelie, heat, up = BY_TITLE["Alien"], BY_TITLE["Amelie"], BY_TITLE["Heat"], BY_TITLE["Up"]
    with make_brain(tmp_path, embedder, catalog, candidates_k=3, diversity_lambda=1.0, w_pattern=0.0,
                    w_global_pair=3.0) as brain:  # fmt: skip
        brain.on_user_action(alien, watch_fraction=0.9, started_at=1.0)
        assert up not in brain.rank(CTX, k=3).pool
        # Published pair (Amelie, Alien): read from Alien's side too. Up: everyone's next watch, elsewhere.
        brain.apply_consolidated([], [TransitionStat(heat, up, 50.0, 30)], pairs=[TransitionStat(amelie, alien, 9.0, 5)])
        ranking = brain.rank(CTX, k=3)
    assert ranking.recommendations[0].content_id == amelie
    assert ranking.recommendations[0].reasons[0] == "viewers who watched Alien also watched it"
    assert up in ranking.pool and {r.content_id for r in ranking.recommendations} <= ranking.pool


def test_refined_neighbours_propose_score_and_explain(tmp_path, embedder, catalog):
    """The cloud's refined neighbours of the recent items join the pool and add up linearly (decayed by recency);
    a new release replaces the old one whole."""
    alien, fargo, amelie, up, shrek = (BY_TITLE[t] for t in ("Alien", "Fargo", "Amelie", "Up", "Shrek"))
    with make_brain(tmp_path, embedder, catalog, candidates_k=3, diversity_lambda=1.0, w_pattern=0.0,
                    popular_k=0, w_refined=1.0, w_global_pair=0.0) as brain:  # fmt: skip
        brain.on_user_action(fargo, watch_fraction=0.9, started_at=1.0)
        brain.on_user_action(alien, watch_fraction=0.9, started_at=2.0)
        assert amelie not in brain.rank(CTX, k=3).pool
        # Amelie: a neighbour of both recent items; Up: Alien's best neighbour alone; Shrek: Fargo's alone.
        brain.store.put_refined([TransitionStat(alien, up, 1.0, 0), TransitionStat(alien, amelie, 0.75, 0),
                                 TransitionStat(fargo, amelie, 0.75, 0), TransitionStat(fargo, shrek, 1.0, 0)])  # fmt: skip
        ranking = brain.rank(CTX, k=3)
        ids = [r.content_id for r in ranking.recommendations]
        assert ids[0] == amelie and ids[1] == up and shrek in ranking.pool
        assert ranking.recommendations[0].reasons[0] == "viewers who liked Alien also liked it"
        assert brain.after(alien, 2) == [up, amelie]
        brain.store.put_refined([TransitionStat(alien, shrek, 1.0, 0)], fresh=True)
        assert [t.dst for t in brain.store.refined_from(fargo)] == []
        assert brain.recommend(CTX, k=1)[0].content_id == shrek
        # Switched off, the part neither proposes nor scores.
        off = BrainConfig(w_refined=0.0, candidates_k=3, popular_k=0, w_pattern=0.0)
        assert shrek not in brain.rank(CTX, k=3, config=off).pool


def test_a_rare_source_speaks_louder_than_a_hub(tmp_path, embedder, catalog):
    """x = Σ s^0.5 / (Σ_row s^0.5)^0.5: the one successor of a niche film outranks one of a hub's many."""
    heat, fargo, up, shrek = BY_TITLE["Heat"], BY_TITLE["Fargo"], BY_TITLE["Up"], BY_TITLE["Shrek"]
    hub = [TransitionStat(heat, cid, 4.0, 4) for cid in (up, *(BY_TITLE[t] for t in GENRES["Romance"]))]
    with make_brain(tmp_path, embedder, catalog, w_content=0.0, diversity_lambda=1.0) as brain:
        brain.on_user_action(fargo, watch_fraction=0.9, started_at=1.0)
        brain.on_user_action(heat, watch_fraction=0.9, started_at=2.0)  # the latest: recency favours the hub
        brain.apply_consolidated([], [*hub, TransitionStat(fargo, shrek, 4.0, 4)])
        recs = brain.recommend(CTX, k=2)
    assert recs[0].content_id == shrek


def test_cold_start_uses_the_consolidated_prior(tmp_path, embedder, catalog):
    nemo = BY_TITLE["Finding Nemo"]
    with make_brain(tmp_path, embedder, catalog) as b:
        plain = b.recommend(CTX, k=5)  # works with no history and no prior: context only
        assert len(plain) == 5 and all(r.reasons for r in plain)
        b.apply_consolidated([ConsolidatedRecord(1, catalog.vector(nemo), TaskType.CONTENT_MATCH, 0.95, 200, 2.0, 1)], [])
        recs = b.recommend(CTX, k=5)
        # The what-if of the eval's DP rows: the same TV ranked as if it had pulled no patterns.
        without = b.rank(CTX, k=5, prior=ConsolidatedPrior.of([])).recommendations
    assert recs[0].content_id == nemo
    assert "trending with viewers of your taste" in recs[0].reasons
    assert [r.content_id for r in without] == [r.content_id for r in plain]


def test_diversity_lambda_trades_relevance_for_variety(tmp_path, embedder, catalog):
    def spread(lam: float) -> float:
        with make_brain(tmp_path, embedder, catalog, diversity_lambda=lam) as b:
            b.on_user_action(BY_TITLE["Shrek"], watch_fraction=0.9, started_at=1.0)
            recs = b.recommend(CTX, k=6)
        vectors = np.stack([catalog.vector(r.content_id) for r in recs])
        return float(np.mean([vectors[i] @ vectors[j] for i, j in itertools.combinations(range(len(recs)), 2)]))

    assert spread(0.2) < spread(1.0)


def test_learned_patterns_shape_the_ranking(tmp_path, embedder, catalog):
    romance = {BY_TITLE[t] for t in GENRES["Romance"]}
    with make_brain(tmp_path, embedder, catalog, w_content=0.0, w_pattern=1.0, diversity_lambda=1.0) as b:
        for i, title in enumerate(["Titanic", "The Notebook"]):
            b.on_user_action(BY_TITLE[title], watch_fraction=1.0, engagement=1.0, started_at=float(i))
        recs = b.recommend(CTX, k=3)
    assert all(r.content_id in romance for r in recs)
    assert all("close to what you usually enjoy" in r.reasons for r in recs)


def test_bad_k_and_context_text(tmp_path, embedder, catalog):
    with make_brain(tmp_path, embedder, catalog) as b:
        with pytest.raises(OmegaError, match="k must be"):
            b.recommend(CTX, k=0)
    assert context_text(ViewingContext(21, 4, "kids"), ["Up"]) == "Late night on a Friday, viewer profile kids. Recently watched: Up"


def test_after_lists_what_viewers_did_next(tmp_path, embedder, catalog):
    alien, amelie, up, heat = BY_TITLE["Alien"], BY_TITLE["Amelie"], BY_TITLE["Up"], BY_TITLE["Heat"]
    with make_brain(tmp_path, embedder, catalog, w_global_pair=3.0) as brain:
        assert brain.after(alien) == []  # nothing learned or pulled: no claim
        brain.apply_consolidated([], [TransitionStat(alien, up, 3.0, 3)], pairs=[TransitionStat(amelie, alien, 9.0, 9)])
        assert brain.after(alien) == [amelie, up]  # pairs weigh 3x an ordered edge of similar support
        assert brain.after(heat) == []


def test_sorted_unique_is_np_unique():
    """The ranker's stand-in for np.unique (which imports numpy.ma, 1.1 MB of a TV's RSS, for one check)."""
    from omega.brain.recommender import _sorted_unique

    rng = np.random.default_rng(4)
    for n in (0, 1, 2, 7, 32, 500):
        values = rng.integers(0, max(1, n // 2), size=n).astype(np.int64)
        found = _sorted_unique(values)
        assert found.dtype == values.dtype and found.tolist() == np.unique(values).tolist()


def test_mmr_uses_up_the_highest_tier_before_the_next():
    """Issue 14: variety alone never lifts an unscored item over a scored one, and among the unscored the
    held-back support orders (tier 3 before tier 0), MMR choosing inside a tier only."""
    X = np.array([[1.0, 0.0, 0.0], [0.9, 0.436, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [-0.6, 0.8, 0.0]], np.float32)
    score = np.array([1.0, 1e-6, 0.0, 0.0, 0.0], np.float32)
    # One pass: after item 0, items far from it (2, 4, 3) beat the barely scored, near item 1.
    assert _mmr(X, score, 5, 0.9)[:2] == [0, 2]
    tier = np.array([np.inf, np.inf, 0.0, 3.0, 0.0])
    assert _mmr(X, score, 5, 0.9, tier) == [0, 1, 3, 2, 4]
    assert _mmr(X, score, 2, 0.9, tier) == [0, 1]
