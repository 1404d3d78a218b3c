from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
import uuid
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from sync_support import NOW

from omega.brain.records import (
    CatalogItem,
    ConsolidatedRecord,
    Episode,
    Pattern,
    TaskType,
    TransitionStat,
    ViewingContext,
)
from omega.brain.store import BrainStore, latest_version, migrations, pattern_utility
from omega.errors import OmegaError



def unit(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=384).astype(np.float32)
    return v / np.linalg.norm(v)


def episode(content_id: int, started_at: float, completion: float = 0.9) -> Episode:
    return Episode(
        None, content_id, started_at, completion * 100, 100.0, completion, 0.7 * completion,
        ViewingContext(20, 5), "finished" if completion > 0.7 else "abandoned",
    )  # fmt: skip


def pattern(success_rate=0.9, uses=20, reward_sum=10.0, last_used_at=NOW, version=1, seed=0) -> Pattern:
    return Pattern(
        uuid.uuid4(), unit(seed), TaskType.CONTEXT_MATCH, success_rate, uses, round(success_rate * uses),
        NOW - 100, NOW - 50, last_used_at, reward_sum, version,
    )  # fmt: skip


# ---------------------------------------------------------------- opening and safety


def test_new_file_is_an_omega_brain_in_wal_mode(tmp_path: Path):
    path = tmp_path / "tv.db"
    with BrainStore(path) as s:
        assert s.schema_version() == latest_version()
        assert s.stats()["episodes"] == 0
    db = sqlite3.connect(path)
    assert dict(db.execute("SELECT key, value FROM meta")) == {"format": "omega-brain", "schema_version": str(latest_version())}
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA application_id").fetchone()[0] == migrations.APPLICATION_ID
    db.close()


def test_data_survives_reopen(tmp_path: Path):
    path = tmp_path / "tv.db"
    with BrainStore(path) as s:
        s.add_episode(episode(1, NOW))
        s.set_state("pull_cursor", "42")
    with BrainStore(path) as s:
        assert [e.content_id for e in s.episodes()] == [1]
        assert s.get_state("pull_cursor") == "42"
        assert s.get_state("missing", "dflt") == "dflt"


def _refused_untouched(path: Path, match: str) -> None:
    before = path.read_bytes()
    with pytest.raises(OmegaError, match=match):
        BrainStore(path)
    assert path.read_bytes() == before


def test_garbage_file_is_refused_and_untouched(tmp_path: Path):
    path = tmp_path / "tv.db"
    path.write_bytes(os.urandom(8192))
    _refused_untouched(path, "not a SQLite database")
    path.write_bytes(b"SQLite")  # shorter than a header
    _refused_untouched(path, "not a SQLite database")


def test_truncated_file_is_refused_and_untouched(tmp_path: Path):
    path = tmp_path / "tv.db"
    with BrainStore(path) as s:
        s.upsert_catalog([CatalogItem(i, f"t{i}", ("Drama",)) for i in range(200)], np.ones((200, 384)))
    data = path.read_bytes()
    assert not (tmp_path / "tv.db-wal").exists() or (tmp_path / "tv.db-wal").stat().st_size == 0
    path.write_bytes(data[: len(data) // 2])
    _refused_untouched(path, "truncated")


def test_foreign_sqlite_database_is_refused_and_untouched(tmp_path: Path):
    path = tmp_path / "other.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
    db.execute("INSERT INTO invoices (total) VALUES (9.5)")
    db.commit()
    db.close()
    _refused_untouched(path, "another application")
    # A table called meta is not enough: the format marker must be ours.
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
    db.execute("INSERT INTO meta VALUES ('format', 'someone-else')")
    db.commit()
    db.close()
    _refused_untouched(path, "not an omega-brain")


def test_newer_schema_is_refused(tmp_path: Path):
    path = tmp_path / "tv.db"
    BrainStore(path).close()
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(latest_version() + 1),))
    db.commit()
    db.close()
    with pytest.raises(OmegaError, match="newer than this omega"):
        BrainStore(path)


def test_missing_directory_and_directory_path(tmp_path: Path):
    with pytest.raises(OmegaError, match="does not exist"):
        BrainStore(tmp_path / "nope" / "tv.db")
    with pytest.raises(OmegaError, match="not a regular file"):
        BrainStore(tmp_path)


def test_adding_a_migration_upgrades_old_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / "tv.db"
    with BrainStore(path) as s:
        s.add_episode(episode(1, NOW))
    old = latest_version()

    def broken(db: sqlite3.Connection) -> None:
        db.execute("CREATE TABLE outbox (seq INTEGER PRIMARY KEY, body BLOB NOT NULL)")
        raise sqlite3.OperationalError("simulated failure half-way")

    monkeypatch.setitem(migrations._MIGRATIONS, old + 1, broken)
    with pytest.raises(OmegaError, match="simulated failure"):
        BrainStore(path)
    monkeypatch.undo()
    with BrainStore(path) as s:  # the failed upgrade left nothing behind
        assert s.schema_version() == old and "outbox" not in s.stats()

    def outbox(db: sqlite3.Connection) -> None:
        db.execute("CREATE TABLE outbox (seq INTEGER PRIMARY KEY, body BLOB NOT NULL)")

    monkeypatch.setitem(migrations._MIGRATIONS, old + 1, outbox)
    with BrainStore(path) as s:
        assert s.schema_version() == old + 1
        assert s.stats()["outbox"] == 0 and s.stats()["episodes"] == 1


# ---------------------------------------------------------------- catalog


def test_catalog_round_trip_and_update(store: BrainStore):
    items = [CatalogItem(10, "Heat", ("Action", "Crime"), 1995, ("heist",)), CatalogItem(3, "Up", ("Animation",))]
    vectors = np.stack([unit(1), unit(2)])
    assert store.upsert_catalog(items, vectors) == 2
    ids, matrix = store.catalog_embeddings()
    assert ids.dtype == np.int64 and ids.tolist() == [3, 10]
    assert matrix.dtype == np.float32 and np.array_equal(matrix, vectors[[1, 0]])
    assert store.catalog_items() == [items[1], items[0]]
    store.upsert_catalog([replace(items[0], title="Heat (remaster)")], unit(5)[None, :])
    assert store.catalog_items() == [items[1], replace(items[0], title="Heat (remaster)")]
    ids, matrix = store.catalog_embeddings()
    assert ids.tolist() == [3, 10] and np.array_equal(matrix[1], unit(5))
    assert store.stats()["catalog"] == 2


def test_catalog_items_read_together_share_their_genre_tuples(store: BrainStore):
    """A 10K catalog repeats ~20 genres in ~1K combinations: one tuple per combination, not per item."""
    items = [CatalogItem(i, f"T{i}", ("Crime", "Drama") if i % 2 else ("Drama",), None, ()) for i in range(1, 7)]
    store.upsert_catalog(items, np.stack([unit(i) for i in range(6)]))
    found = store.catalog_items()
    assert found == items
    assert found[0].genres is found[2].genres and found[1].genres is found[3].genres
    assert found[0].genres[1] is found[1].genres[0]  # "Drama", interned


def test_catalog_items_read_together_share_one_int_per_year(store: BrainStore):
    """SQLite makes a new int object for every row's year (above 256, Python keeps no shared one): 32 bytes an
    item for nothing in a 10K catalog of ~100 distinct years."""
    items = [CatalogItem(i, f"T{i}", ("Drama",), 1995 if i % 2 else 2003, ()) for i in range(1, 7)]
    items.append(CatalogItem(7, "Undated", ("Drama",)))
    store.upsert_catalog(items, np.stack([unit(i) for i in range(7)]))
    found = store.catalog_items()
    assert found == items
    assert found[0].year is found[2].year is found[4].year and found[1].year is found[3].year
    assert found[6].year is None


def test_catalog_rejects_mismatched_embeddings(store: BrainStore):
    with pytest.raises(OmegaError, match="shape"):
        store.upsert_catalog([CatalogItem(1, "A", ())], np.ones((2, 384)))
    with pytest.raises(OmegaError, match="NaN"):
        store.upsert_catalog([CatalogItem(1, "A", ())], np.full((1, 384), np.nan))
    assert store.stats()["catalog"] == 0


# ---------------------------------------------------------------- episodes


def test_episodes_order_limit_since_and_recent(store: BrainStore):
    ids = [store.add_episode(episode(cid, NOW + t)) for t, cid in enumerate([5, 6, 5, 7])]
    assert ids == sorted(ids) and len(set(ids)) == 4
    assert [e.content_id for e in store.episodes()] == [5, 6, 5, 7]
    assert [e.content_id for e in store.episodes(limit=2)] == [5, 7]
    assert [e.content_id for e in store.episodes(since=NOW + 1)] == [6, 5, 7]
    assert store.episodes()[0].id == ids[0] and store.episodes()[0].context == ViewingContext(20, 5)
    assert store.recent_content_ids(2) == [7, 5]
    assert store.latest_episode(5).id == ids[2] and store.latest_episode(99) is None
    with pytest.raises(OmegaError, match="already exists"):
        store.add_episode(replace(episode(1, NOW), id=ids[0]))


# ---------------------------------------------------------------- patterns


def test_episode_feedback_replaces_reward_and_critique(store: BrainStore):
    first, second = store.add_episode(episode(5, NOW)), store.add_episode(episode(5, NOW + 1))
    store.set_episode_feedback(second, reward=-0.5, critique="disliked")
    assert [(e.id, e.reward, e.critique) for e in store.episodes()] == [(first, 0.63, None), (second, -0.5, "disliked")]
    with pytest.raises(OmegaError):
        store.set_episode_feedback(first, reward=2.0, critique=None)  # outside [-1, 1]
    assert store.latest_episode(5).reward == -0.5


def test_pattern_put_get_update(store: BrainStore):
    p = pattern()
    store.put_pattern(p)
    assert store.patterns() == [p]
    updated = replace(p, uses=21, successes=19, success_rate=19 / 21, version=2)
    store.put_pattern(updated)
    assert store.patterns() == [updated] and store.pattern_count() == 1
    with store.pattern_rows() as found:
        [(id_, blob, *_)] = list(found)
    assert id_ == p.id.bytes and np.array_equal(np.frombuffer(blob, "<f4"), p.embedding)



def test_streamed_reads_do_not_take_the_write_lock(store: BrainStore):
    """Loading a brain (catalog vectors, patterns) reads while another process (the sync daemon) writes."""
    store.upsert_catalog([CatalogItem(3, "Up", ("Animation",))], unit(1)[None, :])
    store.put_pattern(pattern())
    other = sqlite3.connect(str(store.path), isolation_level=None, timeout=0.1)
    try:
        other.execute("BEGIN IMMEDIATE")  # the daemon's write transaction, held
        other.execute("DELETE FROM catalog")
        ids, matrix = store.catalog_embeddings()  # the committed state, at once
        assert ids.tolist() == [3] and np.array_equal(matrix[0], unit(1))
        with store.pattern_rows() as found:
            assert len(list(found)) == 1
        other.execute("ROLLBACK")
    finally:
        other.close()
    with store.transaction():  # and the store can still write afterwards
        store.put_pattern(pattern())
    assert store.pattern_count() == 2

def test_outbox_queue_holds_high_quality_unsealed_versions(store: BrainStore):
    good, weak, young = pattern(0.9, 20), pattern(0.5, 20), pattern(1.0, 3, reward_sum=2.0)
    for p in (good, weak, young):
        store.put_pattern(p)
    queue = store.outbox
    assert [q.id for q in queue.queued_patterns(0.8, 10, 10)] == [good.id] and queue.queued_pattern_count(0.8, 10) == 1
    assert [q.id for q in queue.queued_patterns(0.8, 1, 10)] == [young.id, good.id]
    [q] = queue.queued_patterns(0.8, 10, 10)
    assert q.version == 1 and q.pushed_embedding is None and np.array_equal(q.embedding, good.embedding)
    queue.add_batch(b"b" * 16, b"frame", patterns=[good.id], edges=[], created_at=NOW)
    assert queue.queued_patterns(0.8, 10, 10) == [] and queue.count() == 1
    assert queue.batches() == [(b"b" * 16, b"frame", 1, 0, NOW, 0, NOW, None)]
    store.put_pattern(replace(good, version=2))  # changed again: due for another push
    [q] = queue.queued_patterns(0.8, 10, 10)
    assert q.version == 2 and np.array_equal(q.pushed_embedding, good.embedding) and q.pushed_uses == 20
    queue.absorb([(q.id, q.version)])  # not changed enough: leaves the queue unsent
    assert queue.queued_patterns(0.8, 10, 10) == [] and store.stats()["unpushed_patterns"] == 2  # weak, young
    assert queue.delete(b"b" * 16) and not queue.delete(b"b" * 16) and queue.batches() == []


def test_outbox_queue_of_transition_deltas(store: BrainStore):
    store.bump_transition(1, 2, 0.9)
    store.bump_transition(3, 4, 0.3)
    assert store.outbox.unsent_edges(0.1, 2**32 - 1, 10) == [(1, 2, 0.9), (3, 4, pytest.approx(0.3))]
    assert store.outbox.unsent_edges(0.1, 2, 10) == [(1, 2, 0.9)]  # ids beyond what the wire carries stay out
    store.outbox.add_batch(b"e" * 16, b"frame", patterns=[], edges=[(1, 2, 0.875)], created_at=NOW)
    assert store.outbox.sent_edge_weights() == {(1, 2): 0.875}
    assert store.outbox.unsent_edges(0.1, 2**32 - 1, 10) == [(3, 4, pytest.approx(0.3))]
    assert store.outbox.has_unsent_edges(0.2) and not store.outbox.has_unsent_edges(0.5)


def test_eviction_removes_lowest_utility(tmp_path: Path):
    with BrainStore(tmp_path / "tv.db", max_patterns=4, clock=lambda: NOW) as s:
        pats = [
            pattern(0.9, 500, 400.0),
            pattern(0.1, 20, 1.0),
            pattern(0.5, 20, 5.0, last_used_at=NOW - 300 * 86400),
            pattern(0.5, 20, 5.0),
            pattern(0.95, 900, 800.0),
            pattern(0.0, 0, 0.0),
        ]
        for p in pats:
            s.put_pattern(p)
        assert s.pattern_count() == 4
        ranked = sorted(pats, key=lambda p: pattern_utility(p, NOW))
        assert {p.id for p in s.patterns()} == {p.id for p in ranked[2:]}
        # The stale twin of an otherwise equal pattern goes first.
        assert pattern_utility(pats[2], NOW) < pattern_utility(pats[3], NOW)
        assert s.evict_patterns(max_patterns=1) == [p.id for p in ranked[2:5]]
        assert [p.id for p in s.patterns()] == [ranked[5].id]


# ---------------------------------------------------------------- transitions, consolidated, global


def test_transitions(store: BrainStore):
    store.bump_transition(1, 2, 0.9)
    store.bump_transition(1, 2, 0.5)
    store.bump_transition(1, 3, 0.2)
    store.bump_transition(4, 1)
    found = store.transitions_from(1)
    assert [(t.src, t.dst, t.count) for t in found] == [(1, 2, 2), (1, 3, 1)]
    assert [t.weight for t in found] == pytest.approx([1.4, 0.2])
    assert len(store.all_transitions()) == 3 and store.all_transitions()[0] == found[0]
    with pytest.raises(OmegaError):
        store.bump_transition(-1, 2, 1.0)


def test_consolidated_keeps_newest_version(store: BrainStore):
    c = ConsolidatedRecord(7, unit(1), TaskType.CONTENT_MATCH, 0.9, 5, 1.5, 3)
    assert store.put_consolidated([c, ConsolidatedRecord(2, unit(2), 1, 0.8, 3, 0.0, 1)]) == 2
    assert store.put_consolidated([replace(c, version=2, support=1)]) == 0  # stale delta ignored
    assert store.put_consolidated([replace(c, version=4, support=9)]) == 1
    assert [(x.cluster_id, x.support) for x in store.consolidated()] == [(2, 3), (7, 9)]
    assert np.array_equal(store.consolidated()[1].embedding, unit(1))


def test_global_transitions_merge_and_replace(store: BrainStore):
    store.merge_global_transitions([TransitionStat(1, 2, 3.0, 4), TransitionStat(1, 3, 5.0, 6)])
    store.merge_global_transitions([TransitionStat(1, 2, 8.0, 9)])  # totals replace, not add
    assert store.global_transitions_from(1) == [TransitionStat(1, 2, 8.0, 9), TransitionStat(1, 3, 5.0, 6)]
    store.merge_global_transitions([TransitionStat(5, 6, 1.0, 3), TransitionStat(7, 6, 2.5, 3)], replace=True)
    assert store.global_transitions_from(1) == [] and store.stats()["global_transitions"] == 2
    assert store.all_global_transitions() == [TransitionStat(5, 6, 1.0, 3), TransitionStat(7, 6, 2.5, 3)]
    assert store.global_in_weights() == [(6, 3.5)]


# ---------------------------------------------------------------- transactions


def test_transaction_is_atomic(store: BrainStore):
    p = pattern()
    with pytest.raises(RuntimeError):
        with store.transaction():
            store.add_episode(episode(1, NOW))
            store.put_pattern(p)
            raise RuntimeError("crash before commit")
    assert store.stats()["episodes"] == 0 and store.patterns() == []
    with store.transaction() as db:
        store.add_episode(episode(1, NOW))
        db.execute("INSERT INTO sync_state (key, value) VALUES ('raw', 'sql')")
    assert store.stats()["episodes"] == 1 and store.get_state("raw") == "sql"


def test_nested_transaction_failure_rolls_back_only_inner(store: BrainStore):
    with store.transaction():
        store.add_episode(episode(1, NOW))
        with pytest.raises(OmegaError):
            with store.transaction():
                store.add_episode(episode(2, NOW + 1))
                store.upsert_catalog([CatalogItem(1, "A", ())], np.ones((2, 384)))  # fails
        store.add_episode(episode(3, NOW + 2))
    assert [e.content_id for e in store.episodes()] == [1, 3]


def test_sqlite_errors_surface_as_omega_errors(store: BrainStore):
    with pytest.raises(OmegaError):
        with store.transaction() as db:
            db.execute("INSERT INTO no_such_table VALUES (1)")
    store.close()
    with pytest.raises(OmegaError, match="closed"):
        store.stats()


# ---------------------------------------------------------------- durability

WRITER = textwrap.dedent(
    """
    import sys, time
    from omega.brain.store import BrainStore
    from omega.brain.records import Episode, ViewingContext
    store = BrainStore(sys.argv[1])
    i = 0
    while True:
        with store.transaction():
            eid = store.add_episode(Episode(None, i, time.time(), 10.0, 100.0, 0.1, 0.07, ViewingContext(1, 2), "abandoned"))
            store.bump_transition(i, i + 1, 0.5)
        print(eid, flush=True)  # only after COMMIT returned
        i += 1
    """
)


def test_sigkill_mid_stream_loses_nothing_committed(tmp_path: Path):
    path = tmp_path / "tv.db"
    BrainStore(path).close()
    child = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    committed: list[int] = []
    deadline = time.monotonic() + 60
    try:
        while len(committed) < 150 and time.monotonic() < deadline:
            line = child.stdout.readline()
            if not line:
                break
            committed.append(int(line))
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
    assert len(committed) >= 150, "writer died early"
    with BrainStore(path) as s:
        assert s.integrity_check() == []
        stored = {e.id for e in s.episodes()}
        assert set(committed) <= stored
        # Each transaction wrote an episode and a transition together, or neither.
        assert s.stats()["episodes"] == s.stats()["transitions"]


def test_held_back_rows_are_read_as_distinct_support_not_summed_weight(store: BrainStore):
    """Issue 14: TVs rank by how many TVs stand behind an edge, not by its summed weight; the rows the floor holds
    back (the ranker's last tier) too. V(1) = 30 + 5 = 35, floor 0.6·√35 = 3.5: both rows below are held back."""
    store.support_floor_c = 0.6
    honest = [TransitionStat(1, 10 + i, float(n), n) for i, n in enumerate((12, 8, 6, 4))]
    heavy_few, light_more = TransitionStat(1, 20, 9.0, 2), TransitionStat(1, 21, 1.0, 3)
    store.merge_global_transitions([*honest, heavy_few, light_more])
    assert 20 not in [t.dst for t in store.global_transitions_from(1)]
    assert store.edges.successors("global_transitions", [1], under_floor=True) == {1: [(20, 2.0), (21, 3.0)]}


def test_global_edges_beside_a_popular_source_need_the_support_floor(store: BrainStore):
    store.support_floor_c = 0.6
    """Issue 14: 3 ids reach k_min, but beside 30+ TVs' edges out of the source they are under
    0.6·√V(source) (here V = 33 + 3 → 3.6): the edge and the pair are not read; 4 TVs are enough."""
    honest = [TransitionStat(1, 10 + i, float(n), n) for i, n in enumerate((12, 8, 6, 4, 3))]
    store.merge_global_transitions([*honest, TransitionStat(1, 99, 3.0, 3), TransitionStat(99, 5, 3.0, 3)])
    store.merge_global_pairs([TransitionStat(1, 99, 3.0, 3), TransitionStat(1, 10, 12.0, 12), TransitionStat(5, 99, 3.0, 3)])
    assert [t.dst for t in store.global_transitions_from(1)] == [10, 11, 12, 13]  # 3 < 3.6: 14 and 99 out
    assert store.global_transitions_from(99) == [TransitionStat(99, 5, 3.0, 3)]  # V(99) = 3: floor 1.04
    assert [t.dst for t in store.global_pairs_from(1)] == [10]
    # From 99's side the pair {1, 99} is judged by the larger volume, V(1): still out.
    assert [t.dst for t in store.global_pairs_from(99)] == [5]
    # What the floor holds back, for the ranker's last tier: exactly the published rows it does not read.
    assert store.edges.successors("global_transitions", [1, 99], under_floor=True) == {1: [(14, 3.0), (99, 3.0)]}
    assert store.edges.successors("global_pairs", [1, 99], under_floor=True) == {1: [(99, 3.0)], 99: [(1, 3.0)]}
    assert store.edges.successors("transitions", [1, 99], under_floor=True) == {}  # not a published table
    store.merge_global_transitions([TransitionStat(1, 99, 4.0, 4)])
    assert 99 in [t.dst for t in store.global_transitions_from(1)]
    store.support_floor_c = 0.0  # off: everything published is read
    assert [t.dst for t in store.global_transitions_from(1)] == [10, 11, 12, 13, 99, 14]


def test_successors_of_many_sources_in_one_read_match_the_reads_by_source(store: BrainStore):
    store.merge_global_transitions([TransitionStat(1, 10 + i, float(n), n) for i, n in enumerate((12, 8, 6, 3))])
    store.merge_global_transitions([TransitionStat(2, 5, 4.0, 4), TransitionStat(2, 6, 4.0, 4)])
    store.merge_global_pairs([TransitionStat(1, 2, 5.0, 5), TransitionStat(2, 9, 2.0, 2)])
    store.bump_transition(2, 1, 0.5)
    store.bump_transition(2, 3, 0.9)
    for table, by_source in (
        ("global_transitions", store.global_transitions_from),
        ("global_pairs", store.global_pairs_from),
        ("transitions", store.transitions_from),
    ):
        found = store.edges.successors(table, [2, 1, 77])
        assert set(found) == {s for s in (2, 1) if by_source(s)}  # the sources with edges only
        for src, edges in found.items():
            assert edges == [(t.dst, t.weight) for t in by_source(src)]
    assert store.edges.successors("global_transitions", []) == {}


def test_successors_answer_every_source_when_the_kept_ones_overflow(store: BrainStore):
    """More sources than are kept, in one call or beside a full cache: every source asked is still answered
    (the oldest kept ones used to be evicted before the answer was built: KeyError)."""
    store.merge_global_transitions([TransitionStat(s, 1000 + s, 5.0, 5) for s in range(1, 201)])
    everything = store.edges.successors("global_transitions", range(1, 201))
    assert set(everything) == set(range(1, 201))
    assert all(everything[s] == [(1000 + s, 5.0)] for s in everything)
    store.edges.successors("global_transitions", range(1, 65))  # the cache full of 1..64
    assert set(store.edges.successors("global_transitions", [1, 2, 150])) == {1, 2, 150}


def test_the_support_floor_follows_every_write_to_the_published_edges(tmp_path: Path):
    """The floor's volumes are kept between reads; a write by this store, by another connection to the same
    file, or one rolled back must never leave a stale floor behind."""
    path = tmp_path / "tv.db"
    with BrainStore(path) as store, BrainStore(path) as other:
        store.merge_global_transitions([TransitionStat(1, 10, 4.0, 4), TransitionStat(1, 11, 3.0, 3)])
        assert [d for d, _ in store.edges.successors("global_transitions", [1])[1]] == [10, 11]  # V = 7
        other.merge_global_transitions([TransitionStat(1, 12, 40.0, 40)])  # V = 47: 3 < 0.45·√47 ≈ 3.09
        assert [d for d, _ in store.edges.successors("global_transitions", [1])[1]] == [12, 10]
        store.merge_global_transitions([TransitionStat(1, 12, 2.0, 2)])  # V = 9: 2 >= 0.45·√9
        assert [d for d, _ in store.edges.successors("global_transitions", [1])[1]] == [10, 11, 12]
        with pytest.raises(RuntimeError), store.transaction():
            store.merge_global_transitions([TransitionStat(1, 13, 90.0, 90)])
            assert [d for d, _ in store.edges.successors("global_transitions", [1])[1]] == [13]  # V = 99
            raise RuntimeError("roll back")
        assert [d for d, _ in store.edges.successors("global_transitions", [1])[1]] == [10, 11, 12]
        kept = store.edges.volumes()
        store.bump_transition(1, 2, 0.9)  # a viewing writes only the TV's own tables: the volumes stay
        assert store.edges.volumes() is kept and kept == {1: 9}


def test_kept_successors_follow_every_write(tmp_path: Path):
    """`successors` keeps what it read for the next call until the database changes: a viewing, a pulled page
    (by this store or another connection), a refined release, a rolled-back write or a new support floor must
    never leave stale rows behind."""
    path = tmp_path / "tv.db"
    with BrainStore(path) as store, BrainStore(path) as other:

        def read(table: str) -> list[int]:
            return [dst for dst, _ in store.edges.successors(table, [1]).get(1, [])]

        store.merge_global_transitions([TransitionStat(1, 9, 50.0, 50)])  # V(1) = 50: pairs need 0.45·√50 ≈ 3.2
        store.bump_transition(1, 2, 0.9)
        first = store.edges.successors("transitions", [1, 2])
        assert store.edges.successors("transitions", [2, 1])[1] is first[1]  # kept: not read again
        store.bump_transition(1, 3, 2.0)  # a viewing
        assert read("transitions") == [3, 2]
        assert read("global_pairs") == []
        other.merge_global_pairs([TransitionStat(1, 5, 4.0, 4)])  # another connection's commit
        assert read("global_pairs") == [5]
        store.put_refined([TransitionStat(1, 8, 0.5, 0)], fresh=True)
        assert read("refined_neighbours") == [8]
        with pytest.raises(RuntimeError), store.transaction():
            store.merge_global_pairs([TransitionStat(1, 6, 9.0, 9)])
            assert read("global_pairs") == [6, 5]
            raise RuntimeError("roll back")
        assert read("global_pairs") == [5]
        store.support_floor_c = 1.0  # 4 < 1.0·√50
        assert read("global_pairs") == []


def test_a_viewing_keeps_the_published_rows_and_drops_the_own_ones(tmp_path: Path):
    """A viewing writes only the TV's own tables: the first call after it reads the own transitions again, but
    the published rows (edges, pairs, what the floor holds back, refined neighbours) of the recent items stay
    kept; a pulled page drops them."""
    with BrainStore(tmp_path / "tv.db") as store:
        store.merge_global_transitions([TransitionStat(1, 9, 50.0, 50), TransitionStat(1, 7, 2.0, 2)])
        store.merge_global_pairs([TransitionStat(1, 5, 4.0, 4), TransitionStat(1, 6, 3.0, 3)])
        store.put_refined([TransitionStat(1, 8, 0.5, 0)], fresh=True)
        store.bump_transition(1, 2, 0.9)
        tables = ("global_transitions", "global_pairs", "refined_neighbours")
        kept = {table: store.edges.successors(table, [1])[1] for table in tables}
        held = store.edges.successors("global_pairs", [1], under_floor=True)[1]
        own = store.edges.successors("transitions", [1])[1]
        store.bump_transition(1, 3, 2.0)  # a viewing
        assert all(store.edges.successors(table, [1])[1] is kept[table] for table in tables)
        assert store.edges.successors("global_pairs", [1], under_floor=True)[1] is held
        assert [dst for dst, _ in store.edges.successors("transitions", [1])[1]] == [3, 2]
        assert store.edges.successors("transitions", [1])[1] is not own
        store.merge_global_pairs([TransitionStat(1, 4, 9.0, 9)])  # a pulled page
        assert [dst for dst, _ in store.edges.successors("global_pairs", [1])[1]] == [4, 5]
        assert store.edges.successors("global_transitions", [1])[1] is not kept["global_transitions"]


def test_global_pairs_are_kept_in_both_orientations_and_totals_replace(store: BrainStore):
    store.merge_global_pairs([TransitionStat(1, 2, 3.0, 4), TransitionStat(2, 7, 1.0, 3)])
    store.merge_global_pairs([TransitionStat(1, 2, 8.0, 9)])
    assert store.global_pairs_from(1) == [TransitionStat(1, 2, 8.0, 9)]
    assert store.global_pairs_from(2) == [TransitionStat(2, 1, 8.0, 9), TransitionStat(2, 7, 1.0, 3)]
    assert store.global_pairs_from(7) == [TransitionStat(7, 2, 1.0, 3)]
    assert store.global_transitions_from(1) == []  # pairs are not ordered edges
    assert [(t.src, t.dst) for t in store.all_global_pairs()] == [(1, 2), (2, 1), (2, 7), (7, 2)]


def test_the_page_cache_can_be_bounded_and_nonsense_sizes_are_one_clear_error(tmp_path: Path):
    store = BrainStore(tmp_path / "tv.db")
    try:
        assert store._query("PRAGMA cache_size")[0][0] == -2000  # SQLite's default: a Brain sets its config's
        store.limit_cache(256)
        assert store._query("PRAGMA cache_size")[0][0] == -256
        for bad in (0, 15, -5, True, 2.5, "256"):
            with pytest.raises(OmegaError, match="cache size must be an integer of at least 16 KiB"):
                store.limit_cache(bad)  # type: ignore[arg-type]
        assert store._query("PRAGMA cache_size")[0][0] == -256
    finally:
        store.close()
