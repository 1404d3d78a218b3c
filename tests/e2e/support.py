"""Helpers for the end-to-end fault tests (no tests here).

- `ServerProcess`: a real sync server subprocess (the product's helper) on a fixed
  loopback port with a SQLite store and a known secret, which can be restarted,
  SIGKILLed, SIGSTOPped.
- `TV`: a real Brain (own SQLite file, a shared catalog of random unit vectors)
  with a real SyncAgent; a trigger inside the TV's own database records every
  batch the outbox seals in the same transaction, so the record survives SIGKILL.
- `Reference`: the constellation's aggregation rules applied offline to exactly
  what the TVs sealed, to compare the server's state with.
"""

from __future__ import annotations

import asyncio
import random
import subprocess
import time
import uuid
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from omega.brain.brain import Brain
from omega.brain.catalog import Catalog
from omega.brain.config import BrainConfig
from omega.brain.records import CatalogItem
from omega.brain.sync import SyncAgent, SyncConfig, SyncFailed, SyncReport, TierPolicy, policy_for
from omega.brain.sync.outbox import WIRE_EDGE_WEIGHT, _read_local_frame
from omega.constellation.aggregation import DAY_MS, AggregationPolicy, Aggregator
from omega.constellation.codebook import Codebook, placeholder_codebook
from omega.constellation.crdt import CellKey, CellState, ConsolidatedCell, ConsolidatedEdge, EdgeKey, EdgeState
from omega.constellation.keyring import Keyring
from omega.constellation.privacy import DEFAULT_K_MIN
from omega.constellation.settings import load_settings
from omega.constellation.store import StoreStats, open_store
from omega.protocol import EMBEDDING_DIM, Keyspace, Push, Tier, now_ms
from omega.sim.load.server_process import ServerProcess as BaseServerProcess

SECRET = "e2e-fault-test-secret-0123456789abcdef"
SHARD = "e2e"
KEYRING = Keyring({1: SECRET.encode()}, 1)
#: Settings of the server the tests run (what the offline reference must mirror).
SERVER_DEFAULTS = load_settings(env={"OMEGA_SECRET": SECRET})


def epoch_now() -> int:
    """The aggregation epoch (one contribution per device per cell/edge per epoch) of this moment."""
    return now_ms() // DAY_MS


# ---------------------------------------------------------------------------- the server


class ServerProcess(BaseServerProcess):
    """The product's server process (`omega.sim.load.server_process`) with the e2e secret, shard and drain
    timeout; it keeps its port across restarts so TVs keep their URL. The `a…` methods do not block the
    event loop the TVs and the proxy live on."""

    def __init__(self, folder: Path, **env: str) -> None:
        settings = {"OMEGA_DRAIN_TIMEOUT_S": "5", "OMEGA_LOG_LEVEL": "warning", "OMEGA_SHARD_ID": SHARD,
                    # These tests compare each pull with the pushes acknowledged just before it: the live head.
                    # The shipped 5 s snapshot (a delay, never a skip) has its own tests in test_server_pull.
                    "OMEGA_PULL_SNAPSHOT_S": "0"}  # fmt: skip
        super().__init__(folder, secret=SECRET, env={**settings, **env})
        self.db = folder / "constellation.db"

    async def astart(self) -> ServerProcess:
        self.spawn()
        await asyncio.to_thread(self.wait_ready)
        return self

    async def aterminate(self, timeout_s: float = 30.0) -> int:
        return await asyncio.to_thread(self.terminate, timeout_s)

    async def astop(self, grace_s: float = 12.0) -> None:
        """SIGTERM (drain, close the store); SIGKILL if it has not exited within `grace_s`.

        The store is durable at every ack (synchronous=FULL), so what the tests read
        afterwards does not depend on a graceful exit; a hung shutdown is reported as a warning.
        """
        try:
            code = await self.aterminate(grace_s)
        except subprocess.TimeoutExpired:
            self.kill()
            warnings.warn(f"the server did not exit within {grace_s} s of SIGTERM; killed it", stacklevel=2)
            return
        assert code == 0, f"the server exited {code}:\n{self.log_text()}"


@dataclass
class ServerState:
    """What the constellation holds, read from its store file (the server stopped)."""

    cells: dict[CellKey, CellState]
    edges: dict[EdgeKey, EdgeState]
    published: list[ConsolidatedCell | ConsolidatedEdge]
    stats: StoreStats


async def read_server_state(db: Path, k_min: int) -> ServerState:
    """Open the stopped server's SQLite store with the server's codebook and salt, and read it all."""
    store = await open_store(f"sqlite:{db}", origin=SHARD)
    try:
        policy = AggregationPolicy(k_min=k_min, w_max=SERVER_DEFAULTS.w_max)
        agg = await Aggregator.open(store, placeholder_codebook(), SERVER_DEFAULTS.aggregation_salt(), policy)
        exported = await agg.export_state()
        cells = {key: s for (origin, key), s in exported.cells.items() if origin == SHARD}
        edges = {key: s for (origin, key), s in exported.edges.items() if origin == SHARD}
        assert len(cells) == len(exported.cells) and len(edges) == len(exported.edges), "foreign origins"
        return ServerState(cells, edges, await agg.published(), await store.stats())
    finally:
        await store.close()


# ---------------------------------------------------------------------------- the TVs


def shared_catalog(n_items: int, seed: int = 7) -> Catalog:
    """A catalog of random unit vectors: distinct items (cosine ~0), so each item grows its own pattern."""
    rng = np.random.default_rng(seed)
    matrix = rng.standard_normal((n_items, EMBEDDING_DIM)).astype(np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    items = [CatalogItem(content_id=i + 1, title=f"item {i + 1}", genres=("drama",)) for i in range(n_items)]
    return Catalog.from_vectors(items, matrix)


_RECORD_SEALS = """
CREATE TABLE IF NOT EXISTS e2e_sealed (
    n INTEGER PRIMARY KEY AUTOINCREMENT, batch_id BLOB NOT NULL UNIQUE, push BLOB NOT NULL);
CREATE TRIGGER IF NOT EXISTS e2e_record_seal AFTER INSERT ON sync_outbox
BEGIN INSERT INTO e2e_sealed (batch_id, push) VALUES (NEW.batch_id, NEW.push); END;
"""


def record_seals(db_path: Path) -> None:
    """Install the seal recorder in a TV database (UNIQUE batch_id: re-sealing a batch id would fail loudly)."""
    import sqlite3

    with sqlite3.connect(db_path) as db:
        db.executescript(_RECORD_SEALS)


def fast_policy(tier: Tier, interval_s: float = 1.0) -> TierPolicy:
    """The tier's transport, but a test-sized schedule and backoff."""
    base = policy_for(tier)
    return TierPolicy(tier, base.transport, interval_s, 0.05, 0.5, reconnect_immediately=base.reconnect_immediately)


@dataclass
class TV:
    """One TV: a real Brain on its own SQLite file and its real SyncAgent."""

    path: Path
    brain: Brain
    agent: SyncAgent
    device_id: bytes
    rng: random.Random
    favourites: list[int] = field(default_factory=list)

    @classmethod
    def create(
        cls,
        path: Path,
        catalog: Catalog,
        server_url: str,
        *,
        tier: Tier = Tier.CASUAL,
        config: SyncConfig | None = None,
        policy: TierPolicy | None = None,
        device_id: bytes | None = None,
        seed: int = 0,
    ) -> TV:
        device = device_id or uuid.UUID(int=random.Random(f"tv-{path}-{seed}").getrandbits(128)).bytes
        brain = Brain(path, catalog=catalog, config=BrainConfig(), synchronous="NORMAL")
        record_seals(path)
        agent = SyncAgent(
            brain, server_url=server_url, device_id=device, token=KEYRING.token(device), tier=tier,
            # a push at every sync (contribution_period_s=0): these tests are about the sync path, not the
            # daily contribution schedule (tests/brain/test_sync_schedule.py)
            config=config or SyncConfig(request_timeout_s=5.0, contribution_period_s=0), policy=policy or fast_policy(tier),
            rng=random.Random(seed),
        )  # fmt: skip
        return cls(path, brain, agent, device, random.Random(seed))

    def watch(self, items: Sequence[int], rounds: int = 10, fraction: float = 0.9) -> None:
        """Watch `items` in turn, `rounds` times: each grows a high-quality pattern, consecutive ones transitions."""
        for _ in range(rounds):
            for item in items:
                self.brain.on_user_action(item, watch_fraction=fraction)

    async def sync_until_idle(self, max_syncs: int = 50) -> list[SyncReport]:
        """Clean syncs until nothing is pending or left to seal (faults must be off)."""
        reports = []
        for _ in range(max_syncs):
            try:
                report = await self.agent.sync_once()
            except SyncFailed as exc:
                if exc.code not in ("rate_limited", "unavailable"):
                    raise
                await asyncio.sleep(exc.retry_after_s)  # a busy server asked for a pause: honour it
                continue
            reports.append(report)
            if report.outbox_pending == 0 and report.batches_acked == 0 and not report.pull_more:
                return reports
        raise AssertionError(f"{self.path.name}: still pushing after {max_syncs} syncs")

    def sealed(self) -> list[Push]:
        return sealed_pushes(self.path, self.brain.store)

    def bank(self) -> dict[int, tuple[int, int, float, np.ndarray]]:
        """The ReasoningBank: cluster -> (version, support, success_rate, embedding)."""
        return {c.cluster_id: (c.version, c.support, c.success_rate, c.embedding) for c in self.brain.store.consolidated()}

    def global_edges(self) -> dict[tuple[int, int], tuple[float, int]]:
        return {(t.src, t.dst): (t.weight, t.count) for t in self.brain.store.all_global_transitions()}

    def global_pairs(self) -> dict[tuple[int, int], tuple[float, int]]:
        return {(t.src, t.dst): (t.weight, t.count) for t in self.brain.store.all_global_pairs()}

    async def close(self) -> None:
        await self.agent.close()
        self.brain.close()


def sealed_pushes(path: Path, store=None) -> list[Push]:  # noqa: ANN001
    """Every push the TV's outbox ever sealed, in sealing order (from the recorder table)."""
    import sqlite3

    if store is not None:
        with store.transaction() as db:
            rows = db.execute("SELECT batch_id, push FROM e2e_sealed ORDER BY n").fetchall()
    else:
        with sqlite3.connect(path) as db:
            rows = db.execute("SELECT batch_id, push FROM e2e_sealed ORDER BY n").fetchall()
    return [_read_local_frame(bytes(blob), bytes(batch)) for batch, blob in rows]


async def try_sync(tv: TV) -> SyncReport | SyncFailed:
    try:
        return await tv.agent.sync_once()
    except SyncFailed as exc:
        return exc


# ---------------------------------------------------------------------------- the offline reference


@dataclass
class _Cell:
    sum_w: float = 0.0
    sum_wx: np.ndarray = field(default_factory=lambda: np.zeros(EMBEDDING_DIM))
    support: int = 0
    successes: float = 0.0
    trials: float = 0.0


class Reference:
    """The server's aggregation rules, recomputed from the sealed pushes (all within one epoch).

    Per pattern: rejected if uses < min_samples; cell = the codebook's nearest
    centroid of the normalised dequantised vector; weight = min(success_rate ×
    uses, w_max); trials = min(uses, w_max), successes scaled alike. Per edge:
    weight clipped to edge_w_max. A device counts toward a cell or edge once per
    epoch — later contributions of it (even in the same push) are refused — so
    each device's pushes are replayed in the order it sealed them (= sent them).
    """

    def __init__(self, codebook: Codebook | None = None, *, k_min: int = DEFAULT_K_MIN) -> None:
        self.codebook = codebook or placeholder_codebook()
        self.k_min = k_min
        self.policy = AggregationPolicy(k_min=k_min, w_max=SERVER_DEFAULTS.w_max)
        self.min_samples = SERVER_DEFAULTS.min_samples
        self.cells: dict[CellKey, _Cell] = {}
        self.edges: dict[EdgeKey, list] = {}  # key -> [weight, support]
        self.batches = 0
        self.accepted_cells = 0
        self.accepted_edges = 0  # edges and derived pairs
        self._members: set[tuple] = set()

    def add_device(self, device: bytes, pushes: Iterable[Push]) -> None:
        for push in pushes:
            self.add_push(device, push)

    def add_push(self, device: bytes, push: Push) -> None:
        self.batches += 1
        w_max = self.policy.w_max
        for p in push.patterns:
            if p.uses < self.min_samples:
                continue
            x = p.embedding.dequantize().astype(np.float64)
            emb = (x / np.linalg.norm(x)).astype(np.float32).astype(np.float16).astype(np.float32)  # as logged
            key = CellKey(int(p.task_type), int(self.codebook.assign(emb[None, :])[0]))
            member = ("cell", key, device)
            if member in self._members:
                continue  # duplicate_flood
            self._members.add(member)
            cell = self.cells.setdefault(key, _Cell())
            weight = min(p.success_rate * p.uses, w_max)
            trials = min(float(p.uses), w_max)
            cell.sum_w += weight
            cell.sum_wx = cell.sum_wx + emb.astype(np.float64) * weight
            cell.support += 1
            cell.successes += trials * (p.successes / p.uses)
            cell.trials += trials
            self.accepted_cells += 1
        if push.transitions is not None:
            ks = int(push.transitions.keyspace)
            for e in push.transitions.edges:
                if ks == Keyspace.ITEM and e.src == e.dst:
                    continue  # item self-loops are refused
                key = EdgeKey(ks, int(e.src), int(e.dst))
                member = ("edge", key, device)
                if member in self._members:
                    continue
                self._members.add(member)
                acc = self.edges.setdefault(key, [0.0, 0])
                acc[0] += min(float(e.weight), self.policy.edge_w_max)
                acc[1] += 1
                self.accepted_edges += 1
            # The server derives one unordered pair per item pair of the push (both orders summed).
            pairs: dict[EdgeKey, float] = {}
            if ks == Keyspace.ITEM:
                for e in push.transitions.edges:
                    if e.src != e.dst:
                        key = EdgeKey(int(Keyspace.PAIR), min(e.src, e.dst), max(e.src, e.dst))
                        pairs[key] = pairs.get(key, 0.0) + min(float(e.weight), self.policy.edge_w_max)
            for key, weight in pairs.items():
                member = ("edge", key, device)
                if member in self._members:
                    continue
                self._members.add(member)
                acc = self.edges.setdefault(key, [0.0, 0])
                acc[0] += min(weight, self.policy.edge_w_max)
                acc[1] += 1
                self.accepted_edges += 1

    def published_cells(self) -> dict[CellKey, tuple[np.ndarray, float, int]]:
        """Cells published (support >= k_min): (unit weighted-mean embedding, success rate, support)."""
        out = {}
        for key, c in self.cells.items():
            if c.support >= self.k_min:
                mean = c.sum_wx / c.sum_w
                out[key] = (mean / np.linalg.norm(mean), c.successes / c.trials, c.support)
        return out

    def published_edges(self) -> dict[EdgeKey, tuple[float, int]]:
        """Published (weight, support): the published weight is the distinct support."""
        return {k: (float(n), n) for k, (w, n) in self.edges.items() if n >= self.k_min}


def assert_server_matches(state: ServerState, ref: Reference, *, rel: float = 1e-9) -> None:
    """The server applied exactly what the TVs sealed, once each: accumulators, publication, counts."""
    assert state.stats.push_keys == ref.batches, "every sealed batch applied exactly once (one idempotency key each)"
    assert state.stats.contributions == ref.accepted_cells  # the window's log of patterns (edges: on their members)
    assert set(state.cells) == set(ref.cells)
    for key, c in ref.cells.items():
        s = state.cells[key]
        assert s.support == c.support, key
        assert np.isclose(s.sum_w, c.sum_w, rtol=rel), (key, s.sum_w, c.sum_w)
        assert np.isclose(s.successes, c.successes, rtol=rel) and np.isclose(s.trials, c.trials, rtol=rel), key
        assert np.allclose(s.sum_wx, c.sum_wx, rtol=1e-6, atol=1e-6), key
    assert set(state.edges) == set(ref.edges)
    for key, (w, n) in ref.edges.items():
        assert state.edges[key].support == n, key
        assert np.isclose(state.edges[key].weight, w, rtol=rel), (key, state.edges[key].weight, w)

    cells = {it.key: it for it in state.published if isinstance(it, ConsolidatedCell)}
    edges = {it.key: it for it in state.published if isinstance(it, ConsolidatedEdge)}
    want_cells, want_edges = ref.published_cells(), ref.published_edges()
    assert set(cells) == set(want_cells)
    for key, (emb, rate, support) in want_cells.items():
        got = cells[key]
        assert got.support == support and np.isclose(got.success_rate, rate, rtol=1e-9), key
        assert np.allclose(got.embedding, emb, atol=1e-5), key
    assert set(edges) == set(want_edges)
    for key, (w, n) in want_edges.items():
        assert edges[key].support == n and np.isclose(edges[key].weight, w, rtol=rel), key


def assert_tv_consistent(tv: TV) -> None:
    """TV side: outbox empty, every (pattern, version) sealed once, every sealed edge marked sent, and no
    pushed weight but WIRE_EDGE_WEIGHT (no rating on the wire)."""
    assert tv.agent.outbox.pending_count() == 0
    seen: set[tuple[bytes, int]] = set()
    edge_sent: set[tuple[int, int]] = set()
    for push in tv.sealed():
        for p in push.patterns:
            assert (p.id, p.version) not in seen, "a pattern version was sealed twice"
            seen.add((p.id, p.version))
            assert p.uses >= 10 and p.success_rate >= 0.8
        if push.transitions is not None:
            for e in push.transitions.edges:
                assert e.weight == WIRE_EDGE_WEIGHT
                edge_sent.add((e.src, e.dst))
    assert set(tv.brain.store.outbox.sent_edge_weights()) == edge_sent
    assert tv.brain.store.integrity_check() == []


def assert_bank_matches(tv: TV, fresh: TV) -> None:
    """The TV's incrementally pulled ReasoningBank equals a pull from cursor 0 (the cursor never skipped)."""
    mine, full = tv.bank(), fresh.bank()
    assert set(mine) == set(full)
    for cluster, (version, support, rate, emb) in full.items():
        v, s, r, e = mine[cluster]
        assert (v, s) == (version, support) and r == rate, cluster
        assert np.array_equal(e, emb), cluster
    assert tv.global_edges() == fresh.global_edges()
    assert tv.global_pairs() == fresh.global_pairs()


async def converge_and_verify(
    server: ServerProcess, tvs: Sequence[TV], catalog: Catalog, *, k_min: int, epoch: int
) -> tuple[ServerState, Reference]:
    """Clean final syncs, then every check: TVs consistent, banks = a pull from 0, server = offline reference.

    Faults must be off. Stops the server (SIGTERM) to read its store.
    """
    for tv in tvs:  # push everything
        await tv.sync_until_idle()
    for tv in tvs:  # and pull what the TVs after it pushed
        await tv.sync_until_idle()
    fresh = TV.create(server.folder / f"fresh-{server.starts}.db", catalog, server.url, seed=999_999)
    try:
        await fresh.sync_until_idle()
        assert fresh.sealed() == []
        for tv in tvs:
            assert_tv_consistent(tv)
            assert_bank_matches(tv, fresh)
    finally:
        await fresh.close()
    await server.astop()
    if epoch_now() != epoch:
        pytest.skip("the run crossed a UTC day: the server's per-epoch flood guard reset mid-test")
    state = await read_server_state(server.db, k_min)
    ref = Reference(k_min=k_min)
    for tv in tvs:
        ref.add_device(tv.device_id, tv.sealed())
    assert_server_matches(state, ref)
    return state, ref


async def wait_until(predicate: Callable[[], bool], timeout_s: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)
