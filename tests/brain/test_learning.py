"""The learning signal (docs/architecture.md §2), pattern updates, the rating mapping and BrainConfig."""

from __future__ import annotations

import json
import uuid

import numpy as np
import pytest

from omega.brain import learning
from omega.brain.config import BrainConfig
from omega.brain.learning import PatternMemory
from omega.brain.records import TaskType
from omega.errors import OmegaError


def unit(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=384).astype(np.float32)
    return v / np.linalg.norm(v)


def test_reward_is_weighted_watch_and_engagement_clipped():
    assert learning.reward(1.0, 0.0) == pytest.approx(0.7)
    assert learning.reward(0.5, 1.0) == pytest.approx(0.65)
    assert learning.reward(0.0, -1.0) == pytest.approx(-0.3)
    assert learning.reward(1.0, 1.0) == pytest.approx(1.0)
    with pytest.raises(OmegaError, match="watch_fraction"):
        learning.reward(1.2)
    with pytest.raises(OmegaError, match="engagement"):
        learning.reward(0.5, float("nan"))


def test_success_and_outcome_follow_the_fraction():
    assert not learning.is_success(0.7) and learning.is_success(0.71)
    assert learning.outcome(0.05) == "skipped"
    assert learning.outcome(0.5) == "abandoned"
    assert learning.outcome(0.9) == "finished"
    assert learning.outcome(0.9, rewatch=True) == "rewatched"


def test_episode_from_rating_is_the_documented_mapping():
    assert learning.episode_from_rating(5.0) == (1.0, 1.0)
    assert learning.episode_from_rating(3.0) == pytest.approx((0.8, 0.0))
    assert learning.episode_from_rating(2.0) == pytest.approx((0.6, -0.5))
    assert learning.episode_from_rating(0.5) == pytest.approx((0.3, -1.0))
    # ratings of 3 and above are successful viewings, below are not
    assert learning.is_success(learning.episode_from_rating(3.0).watch_fraction)
    assert not learning.is_success(learning.episode_from_rating(2.5).watch_fraction)
    with pytest.raises(OmegaError, match="rating"):
        learning.episode_from_rating(6)


def test_engagement_from_feedback():
    assert learning.engagement_from_feedback(liked=True) == 1.0
    assert learning.engagement_from_feedback(liked=False) == -1.0
    assert learning.engagement_from_feedback(rating=4.0) == pytest.approx(0.5)
    assert learning.engagement_from_feedback(liked=True, rating=3.0) == pytest.approx(0.5)
    with pytest.raises(OmegaError):
        learning.engagement_from_feedback()


def test_pattern_update_keeps_exact_counts_and_moves_toward_the_item():
    p = learning.new_pattern(unit(1), reward_value=0.8, success=True, now=10.0)
    assert (p.uses, p.successes, p.success_rate, p.version, p.task_type) == (1, 1, 1.0, 1, TaskType.CONTENT_MATCH)
    item = unit(2)
    q = learning.update_pattern(p, item, reward_value=-0.2, success=False, now=20.0)
    assert (q.uses, q.successes, q.version) == (2, 1, 2)
    assert q.success_rate == pytest.approx(0.5)
    assert q.reward_sum == pytest.approx(0.6)
    assert q.last_used_at == 20.0 and q.created_at == 10.0 and q.id == p.id
    assert np.linalg.norm(q.embedding) == pytest.approx(1.0, abs=1e-5)
    assert float(q.embedding @ item) > float(p.embedding @ item)


def test_pattern_scores_is_the_design_formula():
    s = learning.pattern_scores(np.array([0.5]), np.array([0.8]), np.array([2000]), np.array([0.5]))
    assert s[0] == pytest.approx(0.4 * 0.5 + 0.3 * 0.8 + 0.1 * 1.0 + 0.2 * 0.5)


def test_pattern_memory_upsert_remove_nearest():
    patterns = [learning.new_pattern(unit(i), reward_value=0.5, success=True, now=1.0) for i in range(100)]
    memory = PatternMemory(patterns)
    assert len(memory) == 100
    found = memory.nearest(unit(42), 0.9)
    assert found is not None and found[0].id == patterns[42].id
    memory.remove([patterns[42].id, uuid.uuid4()])
    assert len(memory) == 99 and memory.nearest(unit(42), 0.9) is None
    # the moved last row is still found by its own vector
    assert memory.nearest(unit(99), 0.9)[0].id == patterns[99].id
    assert memory.matrix.shape == (99, 384)


def test_pattern_memory_is_sized_to_its_patterns_and_grows_up_to_its_limit():
    patterns = [learning.new_pattern(unit(i), reward_value=0.5, success=True, now=1.0) for i in range(150)]
    memory = PatternMemory(limit=100)
    for p in patterns[:3]:
        memory.upsert(p)
    assert memory.capacity == 64  # a few patterns: one small block, not `limit` rows
    for p in patterns[3:100]:
        memory.upsert(p)
    assert len(memory) == 100 and memory.capacity == 100  # doubling stops at the limit: a full library fits exactly
    memory.upsert(patterns[100])  # past the limit (a store that already held more): it still grows
    assert len(memory) == 101 and memory.capacity == 200
    assert memory.nearest(unit(7), 0.9)[0].id == patterns[7].id


def test_config_defaults_and_validation(tmp_path):
    c = BrainConfig()
    assert (c.index_m, c.index_ef_construction, c.index_ef_search, c.index_dtype) == (16, 200, 96, "f32")
    assert c.index_backend == "hnswlib"
    assert (c.max_patterns, c.high_quality_success, c.high_quality_min_uses, c.threads) == (10_000, 0.8, 10, 1)
    with pytest.raises(OmegaError, match="unknown key"):
        BrainConfig.from_dict({"index_mm": 8})
    with pytest.raises(OmegaError, match="diversity_lambda"):
        BrainConfig.from_dict({"diversity_lambda": 2})
    with pytest.raises(OmegaError, match="index_m"):
        BrainConfig.from_dict({"index_m": "16"})
    (tmp_path / "c.toml").write_text("[brain]\nindex_m = 8\nw_content = 2\n")
    assert BrainConfig.load(tmp_path / "c.toml").index_m == 8
    (tmp_path / "c.json").write_text(json.dumps({"exclude_watched": False}))
    assert BrainConfig.load(tmp_path / "c.json").exclude_watched is False
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(OmegaError, match="not valid JSON"):
        BrainConfig.load(tmp_path / "bad.json")
