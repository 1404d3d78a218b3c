"""SyncAgent against a real socket peer (HTTP polling, on-demand and persistent WebSocket)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import numpy as np
import pytest
from sync_peer import Peer, RunningPeer
from sync_support import TIERS, consolidated, make_agent, unit, with_patterns_and_an_edge

from omega.brain.store import BrainStore
from omega.brain.sync import SyncAgent, SyncFailed, policy_for
from omega.brain.sync import state
from omega.protocol import Tier, Transition

@pytest.fixture
def store(store: BrainStore) -> BrainStore:
    return with_patterns_and_an_edge(store)


@pytest.fixture
def peer():
    p = Peer(changes=[consolidated(i) for i in range(5)], edges=[Transition(7, 8, 2.5, support=4)])
    with RunningPeer(p) as running:
        yield running


@pytest.mark.parametrize("tier", TIERS)
async def test_one_sync_pushes_pulls_pages_and_heartbeats(store, peer, tier):
    agent = make_agent(store, peer.url, tier)
    try:
        report = await agent.sync_once()
        assert (report.pushed_patterns, report.pushed_edges, report.batches_acked) == (3, 1, 1)
        assert report.pulled_patterns == 5 and report.pull_pages == 3 and report.cursor == 5
        assert report.pulled_edges == 1 and report.errors == []
        assert 0 < report.push_bytes <= 1024 and 0 < report.heartbeat_bytes <= 64
        assert report.outbox_pending == 0
        assert len(peer.peer.accepted) == 3 and peer.peer.edge_weight == {(1, 2): 1.0}
        # merged into the ReasoningBank with the cursor, in the same commits
        assert [c.cluster_id for c in store.consolidated()] == [0, 1, 2, 3, 4]
        back = store.consolidated()[2].embedding
        assert float(np.dot(back, unit(102)) / np.linalg.norm(back)) > 0.99
        assert [(t.dst, t.weight, t.count) for t in store.global_transitions_from(7)] == [(8, 2.5, 4)]
        assert state.cursor(store) == 5
        # a second sync pushes nothing new and pulls nothing new
        again = await agent.sync_once()
        assert (again.pushed_patterns, again.pushed_edges, again.pulled_patterns) == (0, 0, 0)
        assert len(peer.peer.accepted) == 3 and peer.peer.kinds.count("push") == 1
    finally:
        await agent.close()
    if tier is Tier.PREMIUM:
        assert peer.peer.ws_connections == 1  # one persistent connection for both syncs
    elif tier is Tier.ACTIVE:
        assert peer.peer.ws_connections == 2  # connect, sync, close each time


@pytest.mark.parametrize("tier", TIERS)
async def test_a_lost_ack_is_retried_with_the_same_batch_and_applied_once(store, peer, tier):
    agent = make_agent(store, peer.url, tier)
    peer.peer.faults.extend(["drop"])  # the server applies the push, the reply dies mid-frame
    try:
        with pytest.raises(SyncFailed) as failed:
            await agent.sync_once()
        assert failed.value.code in ("transport", "bad_reply")
        [batch] = agent.outbox.pending()
        assert batch.attempts == 1 and peer.peer.received_batches == [batch.batch_id]
        report = await agent.sync_once()
        assert report.duplicates == 1 and report.batches_acked == 1 and report.outbox_pending == 0
        assert peer.peer.received_batches == [batch.batch_id, batch.batch_id]
        assert all(n == 1 for n in peer.peer.accepted.values()) and len(peer.peer.accepted) == 3
        assert peer.peer.edge_weight == {(1, 2): 1.0}  # not applied twice
    finally:
        await agent.close()


@pytest.mark.parametrize("tier", [Tier.CASUAL, Tier.ACTIVE])
async def test_a_slow_reply_times_out_and_keeps_the_outbox(store, peer, tier):
    agent = make_agent(store, peer.url, tier, timeout=0.3)
    peer.peer.faults.append("slow")
    try:
        with pytest.raises(SyncFailed, match="no reply"):
            await agent.sync_once()
        assert agent.outbox.pending_count() == 1 and state.cursor(store) == 0
    finally:
        await agent.close()


@pytest.mark.parametrize("fault,code,retry", [("429", "rate_limited", 3.0), ("503", "unavailable", 3.0), ("unsigned", "malformed", 0.0)])
async def test_refusals_back_off_and_change_nothing(store, peer, fault, code, retry):
    agent = make_agent(store, peer.url, Tier.CASUAL)
    peer.peer.faults.append(fault)
    try:
        with pytest.raises(SyncFailed) as failed:
            await agent.sync_once()
        assert failed.value.code == code and failed.value.retry_after_s == retry
        assert agent.outbox.pending_count() == 1 and state.cursor(store) == 0 and store.consolidated() == []
    finally:
        await agent.close()


async def test_daemon_honours_retry_after(store, peer):
    agent = make_agent(store, peer.url, Tier.CASUAL)
    agent.policy = policy_for(Tier.CASUAL)  # its real interval: the signed hint is under its limit
    peer.peer.faults.append("429")
    stop = asyncio.Event()
    seen: list[tuple] = []

    def on_sync(report, error, delay):
        seen.append((error.code if error else None, delay))
        stop.set()  # the test checks the delay the daemon chose; it need not sit through it

    await asyncio.wait_for(agent.run(stop, on_sync=on_sync, start_jitter=False), 20)
    [(code, delay)] = seen
    # Retry-After (3 s) is the server's wait for one frame; the retried sync sends three (the pending push,
    # a pull, the heartbeat), so the daemon waits for all three before it tries again, plus jitter.
    assert agent.outbox.pending_count() == 1
    assert code == "rate_limited" and 3 * 3.0 <= delay <= 3 * 3.0 + policy_for(Tier.CASUAL).backoff_base_s
    assert peer.peer.kinds.count("push") <= 1 and "pull" not in peer.peer.kinds  # nothing sent during the pause


async def test_a_rate_limited_daemon_does_not_retry_before_the_retry_after_elapses(store, peer):
    agent = make_agent(store, peer.url, Tier.CASUAL)
    peer.peer.faults.append("429")  # Retry-After: 3 (one frame); the retried sync sends push, pull, heartbeat
    # (almost) no jitter on top; an interval whose hint limit (10 intervals) is above the 9 s asked for
    agent.policy = replace(agent.policy, interval_s=60.0, backoff_base_s=0.01, backoff_cap_s=0.01)
    stop = asyncio.Event()
    seen: list[tuple[float, str | None, float]] = []

    def on_sync(report, error, delay):
        seen.append((time.monotonic(), error.code if error else None, delay))
        if error is None:
            stop.set()

    started = time.monotonic()
    await asyncio.wait_for(agent.run(stop, on_sync=on_sync, start_jitter=False), 30)
    (failed_at, code, delay), (done_at, ok, _) = seen
    assert code == "rate_limited" and ok is None and delay >= 9.0
    assert done_at - failed_at >= 9.0 * 0.95 and failed_at - started < 2.0
    assert agent.outbox.pending_count() == 0 and state.cursor(store) == 5


async def test_daemon_syncs_on_schedule_until_stopped(store, peer):
    agent = make_agent(store, peer.url, Tier.ACTIVE)
    stop = asyncio.Event()
    reports = []

    def on_sync(report, error, delay):
        assert error is None and 0.045 <= delay <= 0.055
        reports.append(report)
        if len(reports) == 3:
            stop.set()

    await asyncio.wait_for(agent.run(stop, on_sync=on_sync, start_jitter=False), 20)
    assert [r.pushed_patterns for r in reports] == [3, 0, 0] and peer.peer.kinds.count("heartbeat") == 3


async def test_persistent_connection_reconnects_after_the_server_goes_away(store, peer):
    agent = make_agent(store, peer.url, Tier.PREMIUM)
    peer.peer.next_sync_s = 0
    stop = asyncio.Event()
    results = []

    def on_sync(report, error, delay):
        results.append(error)
        if len(results) == 1:
            # the server closes with 1001 after the next reply it sends
            peer.peer.faults.extend([None, None, "going_away"])
        if len(results) == 3:
            stop.set()

    await asyncio.wait_for(agent.run(stop, on_sync=on_sync, start_jitter=False), 20)
    assert results == [None, None, None] and peer.peer.ws_connections == 2


async def test_a_signed_invalid_pattern_refusal_drops_that_batch_only(store, peer):
    agent = make_agent(store, peer.url, Tier.CASUAL)
    peer.peer.faults.append("invalid")
    try:
        report = await agent.sync_once()
        assert report.rejected_patterns == 3 and report.pushed_patterns == 0 and report.errors
        assert agent.outbox.pending_count() == 0 and report.pulled_patterns == 5
    finally:
        await agent.close()


async def test_a_reset_page_the_tv_cannot_store_still_drops_what_it_held(store, peer):
    """A reset page says the server cannot name what left since the TV's cursor. When the TV cannot store the
    page, it skips it as any other (the cursor moves on) but still drops what it held: else the keys that
    left stayed for ever, since no removal will name them after that cursor."""
    peer.peer.changes = [consolidated(1), consolidated(2), consolidated(3)]
    peer.peer.page_size = 3
    agent = make_agent(store, peer.url, Tier.CASUAL)
    real = store.merge_pulled

    def refusing(patterns, *args, **kwargs):  # the wire bounds every value: the store's refusal is injected
        if any(p.cluster_id == 5 for p in patterns):
            raise OverflowError("a value this store refuses")
        return real(patterns, *args, **kwargs)

    store.merge_pulled = refusing
    try:
        await agent.sync_once()
        assert [c.cluster_id for c in store.consolidated()] == [1, 2, 3] and state.cursor(store) == 3
        # The server starts a snapshot (reset) whose first page this TV cannot store.
        peer.peer.changes = [consolidated(5), consolidated(7)]
        peer.peer.page_size = 1
        peer.peer.reset_since = 3
        report = await agent.sync_once()
        assert report.skipped_items == 1 + len(peer.peer.edges)  # the whole page: its pattern and edges
        assert [e for e in report.errors if "cannot store" in e]
        assert [c.cluster_id for c in store.consolidated()] == [7] and state.cursor(store) == 2
    finally:
        await agent.close()


async def test_a_pulled_id_the_tv_cannot_store_is_skipped_in_one_line_and_never_blocks_later_pulls(store, peer):
    peer.peer.changes = [consolidated(1), consolidated(2**63), consolidated(3)]  # 2^63: beyond SQLite's int64
    peer.peer.page_size = 2
    agent = make_agent(store, peer.url, Tier.CASUAL)
    try:
        report = await agent.sync_once()
        assert [c.cluster_id for c in store.consolidated()] == [1, 3] and state.cursor(store) == 3
        assert report.skipped_items == 1 and report.pulled_patterns == 2
        [line] = [e for e in report.errors if "cannot store" in e]
        assert str(2**63) in line and "\n" not in line
        peer.peer.changes.append(consolidated(4))
        again = await agent.sync_once()  # the next page is pulled as usual
        assert again.pulled_patterns == 1 and state.cursor(store) == 4 and again.skipped_items == 0
    finally:
        await agent.close()


def _fill_disk(store: BrainStore) -> None:
    """Cap the database at its current size (SQLite's own SQLITE_FULL) and use up the slack in it."""
    from omega.errors import OmegaError

    with store.transaction() as db:
        db.execute("CREATE TABLE IF NOT EXISTS ballast (b BLOB)")
    pages = store._conn().execute("PRAGMA page_count").fetchone()[0]
    store._conn().execute(f"PRAGMA max_page_count = {pages}")
    for size in (4000, 500, 50, 5):
        while True:
            try:
                with store.transaction() as db:
                    db.execute("INSERT INTO ballast VALUES (randomblob(?))", (size,))
            except OmegaError as exc:
                assert "full" in str(exc)
                break


async def test_a_full_disk_while_merging_a_pulled_page_is_a_local_store_failure(store, peer):
    changes, peer.peer.changes = peer.peer.changes, []
    peer.peer.page_size = 5  # one page of ~8 KB: more than the free room in the ReasoningBank's empty root page
    agent = make_agent(store, peer.url, Tier.CASUAL)
    try:
        first = await agent.sync_once()  # the push goes out while there is room
        assert first.batches_acked == 1 and first.pulled_patterns == 0
        peer.peer.changes = changes
        bank, cursor = store.consolidated(), state.cursor(store)
        _fill_disk(store)
        with pytest.raises(SyncFailed, match="full") as failed:
            await agent.sync_once()
        assert failed.value.code == "local_store"  # the TV's own disk, not a malformed page
        assert state.cursor(store) == cursor == 0 and store.consolidated() == bank == []
        with store.transaction() as db:  # room again: the same pages merge
            db.execute("DELETE FROM ballast")
        store._conn().execute("PRAGMA max_page_count = 1073741823")
        report = await agent.sync_once()
        assert report.pulled_patterns == 5 and state.cursor(store) == 5
    finally:
        await agent.close()


async def test_seq_survives_a_restart_so_the_server_never_sees_a_replay(tmp_path, peer):
    path = tmp_path / "tv.db"
    for _ in range(2):
        with BrainStore(path) as s:
            agent = make_agent(s, peer.url, Tier.CASUAL)
            await agent.sync_once()
            await agent.close()
    assert "replay" not in str(peer.peer.kinds) and peer.peer.kinds.count("heartbeat") == 2


async def test_unreachable_server_raises_and_keeps_everything(store):
    agent = make_agent(store, "http://127.0.0.1:9", Tier.CASUAL)
    with pytest.raises(SyncFailed, match="cannot reach"):
        await agent.sync_once()
    assert agent.outbox.pending_count() == 1 and state.last_seq(store) == 1


@pytest.mark.parametrize("tier", TIERS)
async def test_every_request_and_upgrade_names_the_device_in_its_header(store, peer, tier):
    """A proxy pins a device to one worker by X-Omega-Device (omega.protocol.routing): the TV sends it, always."""
    device = bytes(range(16))
    agent = make_agent(store, peer.url, tier, device=device)
    try:
        await agent.sync_once()
        await agent.sync_once()
    finally:
        await agent.close()
    seen = peer.peer.device_headers
    kind = "http" if tier is Tier.CASUAL else "websocket"
    assert seen and {k for k, _ in seen} == {kind}
    assert all(values == [device.hex().encode()] for _, values in seen), seen
