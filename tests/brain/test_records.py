from __future__ import annotations

import math
import uuid

import numpy as np
import pytest

from omega.brain.records import (
    CatalogItem,
    ConsolidatedRecord,
    Episode,
    Pattern,
    Recommendation,
    TaskType,
    TransitionStat,
    ViewingContext,
)
from omega.errors import OmegaError


def episode(**changes) -> Episode:
    fields = dict(
        id=None, content_id=1, started_at=1_700_000_000.0, watched_s=5400.0, duration_s=6000.0,
        completion=0.9, reward=0.63, context=ViewingContext(21, 4, "alice"), outcome="finished", critique=None,
    )  # fmt: skip
    fields.update(changes)
    return Episode(**fields)


def pattern(**changes) -> Pattern:
    fields = dict(
        id=uuid.uuid4(), embedding=np.full(384, 0.05), task_type=TaskType.CONTEXT_MATCH, success_rate=0.8,
        uses=10, successes=8, created_at=1.0, updated_at=2.0, last_used_at=3.0,
    )  # fmt: skip
    fields.update(changes)
    return Pattern(**fields)


def test_catalog_item_text_is_what_gets_embedded():
    item = CatalogItem(1, "Toy Story", ("Adventure", "Animation", "Children"), 1995, ("pixar", "fun"))
    assert item.text() == "Toy Story (1995). Genres: Adventure, Animation, Children. Tags: pixar, fun"
    assert CatalogItem(2, "Heat", ()).text() == "Heat"
    assert CatalogItem(3, "Heat", ["Action"]).genres == ("Action",)  # lists are stored as tuples
    assert hash(item) == hash(CatalogItem(1, "Toy Story", ("Adventure", "Animation", "Children"), 1995, ("pixar", "fun")))


@pytest.mark.parametrize(
    "args",
    [(-1, "x", ()), (1, "  ", ()), (1, "x", "Action"), (1, "x", (), 99), (1, "x", (), None, (3,))],
)
def test_catalog_item_rejects_bad_fields(args):
    with pytest.raises(OmegaError):
        CatalogItem(*args)


def test_task_type_numbers_match_the_wire_enum():
    assert [(t.name, int(t)) for t in TaskType] == [
        ("UNSPECIFIED", 0), ("CONTENT_MATCH", 1), ("CONTEXT_MATCH", 2),
        ("GENRE_AFFINITY", 3), ("TIME_OF_DAY", 4), ("CONTINUATION", 5),
    ]  # fmt: skip


def test_episode_valid_and_success_rule():
    assert episode().success
    assert not episode(completion=0.7).success  # success is strictly more than 70 %


@pytest.mark.parametrize(
    "changes",
    [
        {"completion": 1.01}, {"completion": -0.1}, {"completion": math.nan}, {"reward": 1.5}, {"reward": -1.01},
        {"outcome": "paused"}, {"watched_s": -1.0}, {"content_id": -3}, {"started_at": math.inf},
        {"context": {"hour": 1}}, {"critique": 5},
    ],
)  # fmt: skip
def test_episode_rejects_out_of_range(changes):
    with pytest.raises(OmegaError):
        episode(**changes)


@pytest.mark.parametrize("hour, weekday", [(24, 0), (-1, 0), (0, 7), (0, -1), (1.5, 0)])
def test_viewing_context_ranges(hour, weekday):
    with pytest.raises(OmegaError):
        ViewingContext(hour, weekday)


def test_pattern_normalises_embedding_and_task_type():
    p = pattern(embedding=[0.1] * 384, task_type=3)
    assert p.embedding.dtype == np.float32 and p.embedding.shape == (384,)
    assert p.task_type is TaskType.GENRE_AFFINITY
    with pytest.raises(ValueError):
        p.embedding[0] = 1.0  # frozen record, frozen vector
    assert p == Pattern(p.id, p.embedding.copy(), 3, 0.8, 10, 8, 1.0, 2.0, 3.0)
    assert p != pattern(id=p.id, uses=11)
    assert pattern(uses=4, successes=2, reward_sum=2.0).avg_reward == 0.5
    assert pattern(uses=0, successes=0).avg_reward == 0.0


@pytest.mark.parametrize(
    "changes",
    [
        {"embedding": np.zeros(383)}, {"embedding": np.full(384, np.nan)}, {"embedding": "abc"},
        {"task_type": 9}, {"success_rate": 1.2}, {"uses": 3, "successes": 4}, {"uses": -1},
        {"id": "not-a-uuid"}, {"uses": 2, "successes": 1, "reward_sum": 5.0}, {"version": -1},
    ],
)  # fmt: skip
def test_pattern_rejects_bad_fields(changes):
    with pytest.raises(OmegaError):
        pattern(**changes)


def test_consolidated_transition_recommendation():
    c = ConsolidatedRecord(7, np.ones(384), TaskType.CONTENT_MATCH, 0.9, 5, 1.5, 3)
    assert c == ConsolidatedRecord(7, np.ones(384, np.float32), 1, 0.9, 5, 1.5, 3)
    with pytest.raises(OmegaError):
        ConsolidatedRecord(7, np.ones(384), 1, 0.9, -5, 1.5, 3)
    assert TransitionStat(1, 2, 0.5, 1).dst == 2
    with pytest.raises(OmegaError):
        TransitionStat(1, 2, math.nan, 1)
    rec = Recommendation(5, 0.75, ["similar to Heat"])
    assert rec.reasons == ("similar to Heat",) and rec.title == ""
    with pytest.raises(OmegaError):
        Recommendation(5, math.nan, ())
