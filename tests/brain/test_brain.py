"""Brain: recording viewings learns patterns and transitions atomically; feedback; sync merge; persistence."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from omega.brain.brain import Brain
from omega.brain.catalog import Catalog, index_path_for
from omega.brain.records import CatalogItem, ConsolidatedRecord, TaskType, TransitionStat, ViewingContext
from omega.errors import OmegaError

ITEMS = [
    CatalogItem(1, "Toy Story", ("Animation", "Children", "Comedy"), 1995),
    CatalogItem(2, "Toy Story 2", ("Animation", "Children", "Comedy"), 1999),
    CatalogItem(3, "Finding Nemo", ("Animation", "Children"), 2003),
    CatalogItem(4, "Alien", ("Horror", "Sci-Fi"), 1979),
    CatalogItem(5, "Aliens", ("Action", "Horror", "Sci-Fi"), 1986),
    CatalogItem(6, "The Shining", ("Horror",), 1980),
    CatalogItem(7, "Pride and Prejudice", ("Drama", "Romance"), 2005),
    CatalogItem(8, "Notting Hill", ("Comedy", "Romance"), 1999),
    CatalogItem(9, "Heat", ("Action", "Crime", "Thriller"), 1995),
    CatalogItem(10, "The Godfather", ("Crime", "Drama"), 1972),
]
CTX = ViewingContext(20, 4)


@pytest.fixture(scope="module")
def catalog(embedder) -> Catalog:
    return Catalog.build(ITEMS, embedder)


@pytest.fixture
def brain(tmp_path: Path, embedder, catalog):
    with Brain(tmp_path / "tv.db", embedder=embedder, catalog=catalog) as b:
        yield b


def test_watch_records_episode_and_founds_then_updates_a_pattern(brain: Brain):
    ep = brain.on_user_action(1, watch_fraction=0.9, engagement=0.5, context=CTX, started_at=1000.0, duration_s=6000)
    assert ep.id is not None and ep.outcome == "finished" and ep.watched_s == pytest.approx(5400)
    assert ep.reward == pytest.approx(0.7 * 0.9 + 0.3 * 0.5)
    assert brain.store.episodes()[0] == ep
    [p] = brain.store.patterns()
    assert (p.uses, p.successes, p.task_type) == (1, 1, TaskType.CONTENT_MATCH)
    # watching the same item again updates that pattern (no new one) and bumps its version
    again = brain.on_user_action(1, watch_fraction=0.3, context=CTX, started_at=2000.0)
    assert again.outcome == "abandoned"
    [q] = brain.store.patterns()
    assert q.id == p.id and (q.uses, q.successes, q.version) == (2, 1, 2)
    assert q.success_rate == pytest.approx(0.5)
    # a very different item founds its own pattern
    brain.on_user_action(6, watch_fraction=0.9, context=CTX, started_at=3000.0)
    assert brain.store.pattern_count() == 2


def test_transitions_come_only_from_happy_viewings_with_decay(brain: Brain):
    brain.on_user_action(1, watch_fraction=0.9, started_at=1.0)
    brain.on_user_action(2, watch_fraction=0.9, started_at=2.0)
    brain.on_user_action(4, watch_fraction=0.2, started_at=3.0)  # abandoned: teaches nothing
    assert {(t.src, t.dst) for t in brain.store.all_transitions()} == {(1, 2)}
    ep = brain.on_user_action(3, watch_fraction=1.0, started_at=4.0)
    weights = {(t.src, t.dst): t.weight for t in brain.store.all_transitions()}
    decay = brain.config.transition_decay
    # most recent source (4) gets the full reward, older ones decay by step
    assert weights[(4, 3)] == pytest.approx(ep.reward)
    assert weights[(2, 3)] == pytest.approx(ep.reward * decay)
    assert weights[(1, 3)] == pytest.approx(ep.reward * decay**2)


def test_the_cowatch_upload_queues_each_pair_once_and_seals_it_once(tmp_path: Path, embedder, catalog):
    from omega.brain.config import BrainConfig
    from omega.brain.sync import Outbox

    off = Brain(tmp_path / "off.db", embedder=embedder, catalog=catalog, config=BrainConfig(cowatch_window=0))
    with off:  # the upload off: nothing queued
        for t, item in enumerate((1, 2, 3)):
            off.on_user_action(item, watch_fraction=0.9, started_at=float(t))
        assert off.store.outbox.unsent_cowatch(100) == []
    with Brain(tmp_path / "tv.db", embedder=embedder, catalog=catalog, config=BrainConfig(cowatch_window=2)) as b:
        b.on_user_action(1, watch_fraction=0.9, started_at=1.0)
        b.on_user_action(2, watch_fraction=0.9, started_at=2.0)
        b.on_user_action(4, watch_fraction=0.2, started_at=3.0)  # abandoned: pairs nothing, but is in the window
        b.on_user_action(3, watch_fraction=1.0, started_at=4.0)  # with its last 2 distinct titles: 4 and 2, not 1
        assert b.store.outbox.unsent_cowatch(100) == [(1, 2), (2, 3), (3, 4)]
        batch = Outbox(b.store, clock=lambda: 10.0).seal()
        assert batch is not None and batch.push.cowatch is not None
        assert [(e.src, e.dst, e.weight) for e in batch.push.cowatch.edges] == [(1, 2, 1.0), (2, 3, 1.0), (3, 4, 1.0)]
        assert b.store.outbox.unsent_cowatch(100) == [] and not b.store.outbox.has_unsent_cowatch()
        # The same pairs again (a rewatch of 2 after 3, then 3 after 2): each pair goes out once in the TV's life.
        b.on_user_action(2, watch_fraction=1.0, started_at=5.0)
        b.on_user_action(3, watch_fraction=1.0, started_at=6.0)
        assert b.store.outbox.unsent_cowatch(100) == [(2, 4)]


def test_rewatch_is_marked_and_rewarded(brain: Brain):
    brain.on_user_action(9, watch_fraction=1.0, started_at=1.0)
    again = brain.on_user_action(9, watch_fraction=1.0, started_at=2.0)
    assert again.outcome == "rewatched" and again.reward == pytest.approx(0.7 + 0.3 * 0.5)


def test_bad_input_raises_and_stores_nothing(brain: Brain):
    with pytest.raises(OmegaError, match="unknown content id 999"):
        brain.on_user_action(999, watch_fraction=0.5)
    with pytest.raises(OmegaError, match="watch_fraction"):
        brain.on_user_action(1, watch_fraction=1.5)
    with pytest.raises(OmegaError, match="engagement"):
        brain.on_user_action(1, watch_fraction=0.5, engagement=2)
    assert brain.store.episode_count() == 0 and brain.store.pattern_count() == 0


def test_a_failure_mid_way_leaves_nothing_half_written(brain: Brain, monkeypatch):
    brain.on_user_action(1, watch_fraction=0.9, started_at=1.0)
    before = (brain.store.episodes(), brain.store.patterns(), brain.store.all_transitions())

    def disk_full(*args, **kwargs):
        raise OmegaError("simulated failure while writing a transition")

    monkeypatch.setattr(brain.store, "bump_transition", disk_full)
    with pytest.raises(OmegaError, match="simulated failure"):
        brain.on_user_action(2, watch_fraction=0.9, started_at=2.0)  # episode + pattern written, then the failure
    assert (brain.store.episodes(), brain.store.patterns(), brain.store.all_transitions()) == before
    monkeypatch.undo()
    # the in-memory working set did not learn either: the next viewing of 2 founds/updates exactly as if fresh
    brain.on_user_action(2, watch_fraction=0.9, started_at=3.0)
    assert brain.store.episode_count() == 2
    assert [(t.src, t.dst) for t in brain.store.all_transitions()] == [(1, 2)]
    assert sum(p.uses for p in brain.store.patterns()) == 2


def test_pattern_eviction_keeps_the_store_and_memory_in_step(tmp_path, embedder, catalog):
    from omega.brain.config import BrainConfig

    config = BrainConfig(max_patterns=3, pattern_match_threshold=0.99)
    with Brain(tmp_path / "small.db", embedder=embedder, catalog=catalog, config=config) as b:
        for i, cid in enumerate([1, 4, 7, 9, 10, 6]):
            b.on_user_action(cid, watch_fraction=0.9, started_at=float(i))
        assert b.store.pattern_count() == 3
        assert b.stats()["pattern_memory"] == 3
        assert {p.id for p in b.store.patterns()} == {p.id for p in b._memory().patterns}


def test_a_reopened_brain_sizes_its_pattern_memory_to_what_the_store_holds(tmp_path, embedder, catalog):
    with Brain(tmp_path / "few.db", embedder=embedder, catalog=catalog) as b:
        for i, cid in enumerate([1, 4, 7]):
            b.on_user_action(cid, watch_fraction=0.9, started_at=float(i))
        held = b.store.pattern_count()
    with Brain(tmp_path / "few.db", embedder=embedder, catalog=catalog) as b:
        memory = b._memory()
        # not preallocated to max_patterns (10,000 rows: ~1 MB of small arrays a brain, resident when reused heap)
        assert len(memory) == held and memory.capacity == held
        b.on_user_action(9, watch_fraction=0.9, started_at=5.0)
        assert b.store.pattern_count() == len(memory) and memory.capacity <= 64
        assert {p.id for p in b.store.patterns()} == {p.id for p in memory.patterns}


def test_feedback_changes_reward_of_latest_viewing_and_its_pattern(brain: Brain):
    ep = brain.on_user_action(7, watch_fraction=0.8, started_at=1.0)
    [p] = brain.store.patterns()
    updated = brain.feedback(7, liked=False)
    assert updated.id == ep.id and updated.reward == pytest.approx(0.7 * 0.8 - 0.3)
    assert updated.critique == "disliked"
    assert brain.store.episodes()[-1].reward == pytest.approx(updated.reward)
    [q] = brain.store.patterns()
    assert q.reward_sum == pytest.approx(p.reward_sum + updated.reward - ep.reward)
    assert q.version == p.version + 1
    with pytest.raises(OmegaError, match="no viewing of content 8"):
        brain.feedback(8, rating=4)
    with pytest.raises(OmegaError, match="feedback needs"):
        brain.feedback(7)


def test_apply_consolidated_stores_and_newer_versions_win(brain: Brain, catalog: Catalog):
    c1 = ConsolidatedRecord(7, catalog.vector(4), TaskType.CONTENT_MATCH, 0.9, 12, 1.0, 2)
    changed, stored = brain.apply_consolidated([c1], [TransitionStat(1, 2, 5.0, 4)])
    assert (changed, stored) == (1, 1)
    stale = ConsolidatedRecord(7, catalog.vector(1), TaskType.CONTENT_MATCH, 0.1, 1, 0.0, 1)
    assert brain.apply_consolidated([stale], [])[0] == 0
    assert brain.store.consolidated() == [c1]
    assert brain.store.global_transitions_from(1) == [TransitionStat(1, 2, 5.0, 4)]
    stats = brain.stats()
    assert stats["consolidated"] == 1 and stats["consolidated_memory"] == 1 and stats["global_transitions"] == 1


def test_released_caches_are_read_again_and_rank_the_same(brain: Brain):
    for i, item in enumerate((1, 2, 4, 5)):
        brain.on_user_action(item, watch_fraction=0.9, context=CTX, started_at=1000.0 * (i + 1))
    pulled = [TransitionStat(5, 6, 5.0, 4), TransitionStat(5, 9, 3.0, 4), TransitionStat(2, 3, 4.0, 4)]
    brain.apply_consolidated([], pulled, pairs=[TransitionStat(5, 10, 2.0, 4)])
    before = brain.rank(CTX, 5)
    assert brain.store.edges._volumes and brain.store.edges._kept  # what ranking kept in memory
    brain.release_caches()
    assert brain.store.edges._volumes is None and not brain.store.edges._kept and brain._recommender is None
    after = brain.rank(CTX, 5)
    assert [r.content_id for r in after.recommendations] == [r.content_id for r in before.recommendations]
    assert after.pool == before.pool and 6 in after.pool  # the pulled edge is read again from the store


def test_ingest_persists_catalog_and_index_and_reopens_without_rebuilding(tmp_path: Path, embedder):
    db = tmp_path / "tv.db"
    with Brain(db, embedder=embedder) as b:
        assert b.ingest_catalog(ITEMS[:6]) == 6
        assert b.ingest_catalog(ITEMS[6:]) == 4  # adds to what is there
        assert len(b.catalog) == 10 and b.stats()["catalog_index_vectors"] == 10
    index_file = index_path_for(db)
    assert index_file.is_file()
    stamp = index_file.stat().st_mtime_ns
    with Brain(db, embedder=embedder) as b:
        assert len(b.catalog) == 10 and b.catalog.item(4).title == "Alien"
        assert index_file.stat().st_mtime_ns == stamp  # loaded, not rebuilt
        ids, _ = b.catalog.search(b.catalog.vector(4), 1)
        assert ids[0] == 4
    index_file.write_bytes(b"garbage")  # a corrupt index is rebuilt from the store
    with Brain(db, embedder=embedder) as b:
        assert len(b.catalog.index) == 10
    assert index_file.read_bytes() != b"garbage"


def test_empty_catalog_gives_a_clear_error(tmp_path: Path, embedder):
    with Brain(tmp_path / "empty.db", embedder=embedder) as b:
        with pytest.raises(OmegaError, match="catalog is empty: run omega brain ingest"):
            b.recommend(CTX)
        with pytest.raises(OmegaError, match="unknown content id"):
            b.on_user_action(1, watch_fraction=0.5)
        assert b.stats()["catalog"] == 0


def test_catalog_neighbours_are_the_index_search_remembered():
    """`neighbours` answers as `search` does (an HNSW catalog, above the exact-search size), and a repeat
    is the remembered, read-only answer."""
    rng = np.random.default_rng(3)
    matrix = rng.normal(size=(600, 384)).astype(np.float32)
    catalog = Catalog.from_vectors([CatalogItem(i + 1, f"T{i}", ("Drama",)) for i in range(600)], matrix)
    for row in (0, 17, 599):
        query = matrix[row] / np.linalg.norm(matrix[row])
        found = catalog.neighbours(query, 20)
        assert found.tolist() == catalog.search(query, 20)[0].tolist() and found[0] == row + 1
        assert catalog.neighbours(query.copy(), 20) is found and not found.flags.writeable
    assert catalog.neighbours(matrix[5], 7).tolist() == catalog.search(matrix[5], 7)[0].tolist()


def test_a_store_load_builds_the_float16_matrix_by_blocks_exactly_as_from_the_whole_matrix(tmp_path: Path):
    """`Catalog.from_store` reads the embeddings block by block (no whole float32 matrix at load): the float16
    rows and the fingerprint (which decides whether the saved index is reused) are the whole-matrix path's,
    bit for bit, over several blocks and a short last one; the second load reuses the saved index."""
    from omega.brain import catalog as catalog_module
    from omega.brain.store import BrainStore

    rng = np.random.default_rng(5)
    n = 2 * catalog_module._NORM_ROWS + 37
    items = [CatalogItem(i * 3 + 1, f"T{i}", ("Drama",)) for i in range(n)]
    raw = (rng.normal(size=(n, 384)) * rng.uniform(0.1, 9.0, size=(n, 1))).astype(np.float32)
    db = tmp_path / "tv.db"
    with BrainStore(db) as store:
        store.upsert_catalog(items, raw)
        ids, matrix = store.catalog_embeddings()
        with store.catalog_embedding_blocks(catalog_module._NORM_ROWS) as (block_ids, blocks):
            sizes = [len(b) for b in blocks]
        assert block_ids.tolist() == ids.tolist() and sizes == [1024, 1024, 37]
        unit = catalog_module._normalised(matrix)
        expected = catalog_module._normalised(unit).astype(np.float16)  # the rows a TV ranked with before
        config = catalog_module.BrainConfig()
        fingerprint = catalog_module.fingerprint(ids, unit, config)
        first = Catalog.from_store(store, config)  # no index yet: built from the float32 rows and saved
        stamp = index_path_for(db).stat().st_mtime_ns
        second = Catalog.from_store(store, config)  # the saved index, the matrix from the blocks
        assert index_path_for(db).stat().st_mtime_ns == stamp
    for loaded in (first, second):
        assert loaded.matrix.dtype == np.float16
        assert np.array_equal(loaded.matrix.view(np.uint16), expected.view(np.uint16))
        assert catalog_module._with_params(loaded._content, config) == fingerprint


def test_the_store_page_cache_is_the_configs_and_a_bad_size_is_a_config_error(tmp_path: Path):
    """A TV's SQLite page cache is `BrainConfig.store_cache_kib` (256 KiB, not SQLite's 2 MiB: the catalog's load
    filled that with embedding pages no ranking reads again); a size SQLite cannot take is one clear config error."""
    from omega.brain.config import BrainConfig

    with Brain(tmp_path / "tv.db") as brain:
        assert brain.store._query("PRAGMA cache_size")[0][0] == -BrainConfig().store_cache_kib == -256
    with Brain(tmp_path / "tv.db", config=BrainConfig(store_cache_kib=1024)) as brain:
        assert brain.store._query("PRAGMA cache_size")[0][0] == -1024
    for bad in (0, 15, 1 << 21):
        with pytest.raises(OmegaError, match="store_cache_kib must be in 16..1048576"):
            BrainConfig(store_cache_kib=bad)


def test_a_viewing_keeps_the_pulled_rows_and_ranks_as_a_fresh_read(brain: Brain):
    """After a viewing the first ranking reads again only the TV's own transitions and the new item's pulled
    rows (the other recent items' stay kept): it ranks exactly as a brain that reads everything again."""
    pulled = [TransitionStat(1, 6, 5.0, 4), TransitionStat(4, 9, 3.0, 4), TransitionStat(5, 3, 4.0, 4)]
    brain.apply_consolidated([], pulled, pairs=[TransitionStat(4, 10, 2.0, 4), TransitionStat(5, 8, 6.0, 5)])
    for i, item in enumerate((1, 4)):
        brain.on_user_action(item, watch_fraction=0.9, context=CTX, started_at=1000.0 * (i + 1))
    brain.rank(CTX, 5)
    kept = brain.store.edges.successors("global_transitions", [1, 4])
    brain.on_user_action(5, watch_fraction=0.9, context=CTX, started_at=3000.0)  # the viewing writes own tables only
    after_viewing = brain.rank(CTX, 5)
    assert brain.store.edges.successors("global_transitions", [1])[1] is kept[1]  # not read again
    assert [dst for dst, _ in brain.store.edges.successors("transitions", [1, 4])[4]] == [5]  # read again
    brain.release_caches()
    fresh = brain.rank(CTX, 5)
    assert after_viewing == fresh and 3 in fresh.pool and 8 in fresh.pool  # the new item's pulled rows count

