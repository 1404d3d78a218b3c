"""Outbox: transactional sealing, change thresholds, byte budget, transition deltas, seq/cursor state."""

from __future__ import annotations

import uuid
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from sync_support import NOW, pattern, unit

from omega.brain.store import BrainStore
from omega.brain.sync import Outbox, SyncConfig, push_frame_size
from omega.brain.sync import state
from omega.brain.sync.outbox import WIRE_EDGE_WEIGHT
from omega.errors import OmegaError

def test_seal_takes_only_high_quality_queued_patterns_once(store: BrainStore):
    good = [pattern(i) for i in range(3)]
    for p in good:
        store.put_pattern(p)
    store.put_pattern(pattern(10, success_rate=0.5))  # low success
    store.put_pattern(pattern(11, uses=5))  # too few uses
    outbox = Outbox(store, clock=lambda: NOW)
    assert outbox.queued_patterns() == 3
    batch = outbox.seal()
    assert batch is not None and batch.patterns == 3 and batch.edges == 0
    assert {p.id for p in batch.push.patterns} == {p.id.bytes for p in good}
    assert {p.version for p in batch.push.patterns} == {1}
    assert all(p.embedding.bits == 4 for p in batch.push.patterns)
    # sealed: not queued any more, not sealed twice, and the batch waits in the outbox
    assert outbox.queued_patterns() == 0 and outbox.seal() is None
    [pending] = outbox.pending()
    assert pending.batch_id == batch.batch_id and pending.push == batch.push
    assert outbox.acknowledge(batch.batch_id) and outbox.pending() == []
    assert not outbox.acknowledge(batch.batch_id)


def test_sealing_is_atomic_with_its_outbox_row(store: BrainStore):
    store.put_pattern(pattern(1))
    outbox = Outbox(store, clock=lambda: NOW, new_batch_id=lambda: bytes(16))
    assert outbox.seal() is not None
    store.put_pattern(pattern(2))
    # The same batch id again violates the outbox's UNIQUE key: the whole seal rolls back.
    with pytest.raises(OmegaError):
        outbox.seal()
    assert outbox.pending_count() == 1 and outbox.queued_patterns() == 1


def test_a_changed_pattern_is_pushed_again_only_when_it_moved_enough(store: BrainStore):
    p = pattern(1, uses=20)
    store.put_pattern(p)
    outbox = Outbox(store, SyncConfig(resend_cosine=0.98, resend_success_delta=0.05, resend_uses_growth=0.5))
    assert outbox.seal().patterns == 1
    # one more use, same vector, same rate: version 2 is absorbed, not pushed
    small = replace(p, uses=21, successes=19, success_rate=19 / 21, version=2)
    store.put_pattern(small)
    assert outbox.seal() is None
    assert store.stats()["unpushed_patterns"] == 0
    # drift accumulates against what was really pushed: a moved vector goes out
    moved = unit(1) * 0.7 + unit(99) * 0.7
    store.put_pattern(replace(small, embedding=moved / np.linalg.norm(moved), version=3))
    batch = outbox.seal()
    assert batch is not None and [q.version for q in batch.push.patterns] == [3]
    # a success-rate change counts too
    store.put_pattern(replace(small, embedding=moved / np.linalg.norm(moved), success_rate=0.81, successes=17, version=4))
    assert [q.version for q in outbox.seal().push.patterns] == [4]


def test_a_typical_push_fits_in_one_kilobyte_and_the_rest_stays_queued(store: BrainStore):
    for i in range(12):
        store.put_pattern(pattern(i, success_rate=0.8 + i / 100))
    for src in range(1, 6):
        for dst in range(10, 14):
            store.bump_transition(src, dst, 0.5 + src / 10)
    outbox = Outbox(store)
    batch = outbox.seal()
    size = push_frame_size(batch.push)
    assert size <= 1024
    assert batch.edges == 20 and 1 <= batch.patterns < 10
    # best first
    rates = [p.success_rate for p in batch.push.patterns]
    assert rates == sorted(rates, reverse=True) and rates[0] == pytest.approx(0.91)
    # the rest is still queued and goes out in the next pushes; nothing is lost or sent twice
    seen = {p.id for p in batch.push.patterns}
    while (nxt := outbox.seal()) is not None:
        ids = {p.id for p in nxt.push.patterns}
        assert not ids & seen
        seen |= ids
    assert len(seen) == 12


def test_cowatch_pairs_take_only_the_room_left_in_the_push_budget(store: BrainStore):
    for p in range(3):
        store.put_pattern(pattern(p))
    store.bump_transition(1, 2, 1.0)
    rng = np.random.default_rng(0)
    items = rng.choice(200_000, size=400, replace=False).tolist()
    assert store.outbox.queue_cowatch(7, items) == 400 and store.outbox.queue_cowatch(7, items) == 0
    outbox = Outbox(store, clock=lambda: NOW)
    batch = outbox.seal()
    # the patterns and the edge went in as without the pairs; the pairs filled what was left of the 1 KB
    assert batch.patterns == 3 and batch.edges == 1 and batch.push.cowatch is not None
    assert 0 < len(batch.push.cowatch.edges) < 400 and push_frame_size(batch.push) <= outbox.config.max_push_bytes
    sent = {(e.src, e.dst) for e in batch.push.cowatch.edges}
    rest = store.outbox.unsent_cowatch(1000)
    assert len(rest) == 400 - len(sent) and not sent & set(rest)
    # the rest goes in pushes of their own, each within the budget, until none is left
    total = len(sent)
    while (more := outbox.seal()) is not None:
        assert more.patterns == 0 and push_frame_size(more.push) <= outbox.config.max_push_bytes
        total += len(more.push.cowatch.edges)
    assert total == 400 and not store.outbox.has_unsent_cowatch()


def test_at_most_ten_patterns_per_push_and_eight_bits_when_configured(store: BrainStore):
    for i in range(15):
        store.put_pattern(pattern(i))
    batch = Outbox(store, SyncConfig(embedding_bits=8, max_push_bytes=16384)).seal()
    assert batch.patterns == 10 and all(p.embedding.bits == 8 for p in batch.push.patterns)
    one = Outbox(store, SyncConfig(max_push_bytes=256)).seal()
    assert one.patterns == 1  # a push always carries at least one item


def test_transition_deltas_largest_first_on_the_wire_grid(store: BrainStore):
    store.bump_transition(1, 2, 1.0)
    store.bump_transition(1, 3, 0.1)
    store.bump_transition(4, 5, 0.03)  # below the 1/16 grid: stays queued
    outbox = Outbox(store, SyncConfig(max_edges_per_push=1))
    # On the wire every transition weighs WIRE_EDGE_WEIGHT (no rating); the TV marks its delta as pushed.
    first = outbox.seal()
    assert [(e.src, e.dst, e.weight) for e in first.push.transitions.edges] == [(1, 2, WIRE_EDGE_WEIGHT)]
    second = outbox.seal()
    assert [(e.src, e.dst, e.weight) for e in second.push.transitions.edges] == [(1, 3, WIRE_EDGE_WEIGHT)]
    assert store.outbox.sent_edge_weights() == {(1, 2): 1.0, (1, 3): 0.0625}
    assert outbox.seal() is None  # remainders of 0.0375 and 0.03 are below the grid
    store.bump_transition(1, 3, 0.05)  # 0.0375 + 0.05 = 0.0875 -> 0.0625 more
    third = outbox.seal()
    assert [(e.src, e.dst, e.weight) for e in third.push.transitions.edges] == [(1, 3, WIRE_EDGE_WEIGHT)]
    assert store.outbox.sent_edge_weights() == {(1, 2): 1.0, (1, 3): 0.125}


def test_a_damaged_outbox_row_is_kept_and_reported(store: BrainStore, tmp_path: Path):
    store.put_pattern(pattern(1))
    outbox = Outbox(store)
    batch = outbox.seal()
    [row] = store.outbox.batches()
    with store.transaction() as db:  # one flipped bit in the stored frame (bit rot: no real part does it on demand)
        db.execute("UPDATE sync_outbox SET push = ?", (row.frame[:-1] + bytes([row.frame[-1] ^ 1]),))
    with pytest.raises(OmegaError, match=f"outbox batch {batch.batch_id.hex()} is damaged"):
        outbox.pending()
    assert outbox.pending_count() == 1
    with BrainStore(tmp_path / "tv.db") as other:  # kept on disk, as it was
        assert [row.batch_id for row in other.outbox.batches()] == [batch.batch_id]


def test_seq_is_persisted_and_never_reused_across_reopen(tmp_path: Path):
    with BrainStore(tmp_path / "tv.db") as s:
        assert [state.allocate_seq(s) for _ in range(3)] == [1, 2, 3]
    with BrainStore(tmp_path / "tv.db") as s:
        assert state.allocate_seq(s) == 4 and state.last_seq(s) == 4


def test_identity_and_cursor_state(store: BrainStore):
    from sync_peer import token_for

    device = uuid.uuid4().bytes
    assert state.load_identity(store) is None
    state.save_identity(store, device, token_for(device))
    assert state.load_identity(store) == (device, token_for(device))
    with pytest.raises(OmegaError, match="device id must be a UUID"):
        state.parse_device_id("not-a-uuid")
    with pytest.raises(OmegaError, match="bad device token"):
        state.save_identity(store, device, "omega1.1.short")
    assert state.cursor(store) == 0
    state.set_cursor(store, 42)
    assert state.cursor(store) == 42
