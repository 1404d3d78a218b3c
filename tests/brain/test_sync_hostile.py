"""The TV against a hostile or broken server (issue 15, "TV"): every hint is bounded, only the reply to
this very request is believed, batches retire before the cloud forgets them, and an id the TV cannot
store never blocks later pulls (that last one is in test_sync_agent)."""

from __future__ import annotations

import asyncio
import time

import pytest
from sync_peer import Peer, RunningPeer
from sync_support import TIERS, consolidated, make_agent, pattern, with_patterns_and_an_edge

from omega.brain.store import BrainStore
from omega.brain.sync import Outbox, SyncConfig, SyncFailed, policy_for
from omega.brain.sync import state
from omega.brain.sync.tiers import MAX_HINT_S
from omega.constellation.aggregation import AggregationPolicy
from omega.protocol import Tier


@pytest.fixture
def store(store: BrainStore) -> BrainStore:
    return with_patterns_and_an_edge(store)


@pytest.fixture
def peer():
    with RunningPeer(Peer(changes=[consolidated(i) for i in range(5)])) as running:
        yield running


async def first_delay(agent, *, until_ok: bool = False) -> list[tuple[str | None, float]]:
    """Run the daemon until its first attempt (or first success) and return (error code, next delay) per attempt."""
    stop = asyncio.Event()
    seen: list[tuple[str | None, float]] = []

    def on_sync(report, error, delay):
        seen.append((error.code if error else None, delay))
        if not until_ok or error is None:
            stop.set()

    await asyncio.wait_for(agent.run(stop, on_sync=on_sync, start_jitter=False), 30)
    return seen


@pytest.mark.parametrize("tier", TIERS)
async def test_an_unsigned_hint_never_waits_beyond_the_normal_backoff(store, peer, tier):
    agent = make_agent(store, peer.url, tier)
    agent.policy = policy_for(tier)
    peer.peer.faults.append("huge-unsigned")  # 2^32-1 s in the frame, Retry-After: 999999999
    [(code, delay)] = await first_delay(agent)
    assert code == "unavailable"
    assert delay <= agent.policy.backoff().window(0)  # what any failure may wait, hint or not
    assert agent.outbox.pending_count() == 1  # only backed off


@pytest.mark.parametrize("tier", TIERS)
async def test_a_signed_hint_is_clamped_to_the_tiers_limit(store, peer, tier):
    agent = make_agent(store, peer.url, tier)
    agent.policy = policy_for(tier)
    peer.peer.faults.append("huge-signed")
    [(code, delay)] = await first_delay(agent)
    limit = min(MAX_HINT_S, 10 * agent.policy.interval_s)
    assert agent.policy.max_hint_s == limit <= 3600
    assert code == "unavailable" and limit <= delay <= limit + agent.policy.backoff().window(0)


@pytest.mark.parametrize("tier", TIERS)
async def test_heartbeat_hints_are_clamped_to_the_tiers_limit(store, peer, tier):
    agent = make_agent(store, peer.url, tier)
    agent.policy = policy_for(tier)
    peer.peer.next_sync_s = 2**32 - 1
    peer.peer.heartbeat_retry_after_s = 2**32 - 1
    [(code, delay)] = await first_delay(agent)
    assert code is None and delay <= agent.policy.max_hint_s <= 3600


async def test_a_replayed_signed_invalid_pattern_does_not_drop_a_batch(store, peer):
    agent = make_agent(store, peer.url, Tier.CASUAL)
    try:
        peer.peer.faults.append("invalid")  # a real refusal, captured by an attacker
        first = await agent.sync_once()
        assert first.rejected_patterns == 3 and agent.outbox.pending_count() == 0
        for i in range(10, 13):  # new things learned: a new batch
            store.put_pattern(pattern(i))
        peer.peer.faults.append("replay:invalid")  # the captured refusal, replayed as the answer to the new push
        with pytest.raises(SyncFailed, match="replayed") as failed:
            await agent.sync_once()
        assert failed.value.code == "bad_reply"
        [kept] = agent.outbox.pending()
        assert kept.patterns == 3  # not dropped
        again = await agent.sync_once()
        assert again.batches_acked == 1 and again.pushed_patterns == 3 and agent.outbox.pending_count() == 0
    finally:
        await agent.close()


@pytest.mark.parametrize("tier", TIERS)
async def test_a_replayed_pull_reply_does_not_roll_the_cursor_back(store, peer, tier):
    agent = make_agent(store, peer.url, tier)
    try:
        first = await agent.sync_once()
        assert state.cursor(store) == 5 and first.pull_pages == 3
        peer.peer.faults.append("replay:pull")  # the first page (cursor 2), sent again for the next pull
        with pytest.raises(SyncFailed, match="replayed"):
            await agent.sync_once()
        assert state.cursor(store) == 5
    finally:
        await agent.close()


async def test_a_reply_stamped_far_from_its_request_is_refused(store, peer):
    agent = make_agent(store, peer.url, Tier.CASUAL)
    try:
        await agent.sync_once()
        peer.peer.changes.append(consolidated(9))
        peer.peer.faults.append("stale-ts")  # the right seq, but an hour old
        with pytest.raises(SyncFailed, match="stamped") as failed:
            await agent.sync_once()
        assert failed.value.code == "bad_reply" and state.cursor(store) == 5
    finally:
        await agent.close()


def test_batches_retire_before_the_clouds_idempotency_window_ends():
    window_s = AggregationPolicy().replay_window_ms / 1000
    assert SyncConfig().batch_ttl_s < window_s - 3600  # with an hour's margin for clock skew
    with pytest.raises(Exception, match="batch_ttl_s"):
        SyncConfig(batch_ttl_s=window_s)


async def test_a_sent_batch_retried_after_the_window_is_dropped_not_applied_twice(store, peer):
    agent = make_agent(store, peer.url, Tier.CASUAL)
    try:
        peer.peer.faults.append("drop")  # the server applies it; the ack is lost
        with pytest.raises(SyncFailed):
            await agent.sync_once()
        [old] = agent.outbox.pending()
        assert peer.peer.received_batches == [old.batch_id] and old.attempts == 1
        with store.transaction() as db:  # the TV stays off for 20 hours
            db.execute("UPDATE sync_outbox SET created_at = created_at - ?", (SyncConfig().batch_ttl_s + 60,))
        peer.peer.acks.clear()  # the cloud's idempotency window has passed: it no longer knows the id
        report = await agent.sync_once()
        assert report.batches_expired == 1 and agent.outbox.pending_count() == 0
        assert peer.peer.received_batches == [old.batch_id]  # never sent again
        assert all(n == 1 for n in peer.peer.accepted.values())  # applied once
    finally:
        await agent.close()


async def test_a_batch_never_sent_is_renewed_under_a_new_id_and_delivered(store, peer):
    stale = time.time() - SyncConfig().batch_ttl_s - 60
    old = Outbox(store, clock=lambda: stale).seal()  # sealed 20 h ago, the TV was off since
    agent = make_agent(store, peer.url, Tier.CASUAL)
    try:
        report = await agent.sync_once()
        assert report.batches_renewed == 1 and report.batches_acked == 1 and report.pushed_patterns == 3
        [sent] = peer.peer.received_batches
        assert sent != old.batch_id and len(peer.peer.accepted) == 3
    finally:
        await agent.close()
