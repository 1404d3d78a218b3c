"""Shared by the sync tests: a fixed clock, the TV's patterns, consolidated patterns from the cloud, an agent."""

from __future__ import annotations

import random
import uuid

import numpy as np
from sync_peer import token_for

from omega.brain.records import Pattern
from omega.brain.store import BrainStore
from omega.brain.sync import SyncAgent, SyncConfig, policy_for
from omega.protocol import EMBEDDING_DIM, ConsolidatedPattern, TaskType, Tier, quantize

NOW = 1_700_000_000.0
#: every tier, the transport that is easiest to get right first
TIERS = [Tier.CASUAL, Tier.ACTIVE, Tier.PREMIUM]


def unit(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=EMBEDDING_DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def pattern(seed: int, success_rate: float = 0.9, uses: int = 20, version: int = 1) -> Pattern:
    return Pattern(
        uuid.UUID(int=seed + 1), unit(seed), TaskType.CONTENT_MATCH, success_rate, uses, round(success_rate * uses),
        NOW - 100, NOW - 50, NOW, 0.5 * uses, version,
    )  # fmt: skip


def with_patterns_and_an_edge(store: BrainStore) -> BrainStore:
    """`store` holding three high-quality patterns and one transition: one push's worth of changes."""
    for i in range(3):
        store.put_pattern(pattern(i))
    store.bump_transition(1, 2, 1.0)
    return store


def consolidated(cluster_id: int, version: int = 1) -> ConsolidatedPattern:
    return ConsolidatedPattern(
        cluster_id=cluster_id, version=version, embedding=quantize(unit(100 + cluster_id), 8),
        task_type=TaskType.CONTENT_MATCH, success_rate=0.85, support=5, trend_score=0.5,
    )  # fmt: skip


def make_agent(store, url: str, tier: Tier, device: bytes | None = None, **cfg) -> SyncAgent:  # noqa: ANN001
    device = device or uuid.UUID(int=42).bytes
    cfg.setdefault("contribution_period_s", 0)  # push at every sync (the schedule has its own tests)
    config = SyncConfig(request_timeout_s=cfg.pop("timeout", 0.5), **cfg)
    policy = policy_for(tier).with_interval(0.05)
    return SyncAgent(store, server_url=url, device_id=device, token=token_for(device), tier=tier,
                     config=config, policy=policy, rng=random.Random(1))  # fmt: skip
