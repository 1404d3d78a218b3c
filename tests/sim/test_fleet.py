"""The fleet simulator: real brains syncing through the real codec into a real Aggregator, and the wire audit."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from omega.brain.catalog import Catalog
from omega.brain.movielens import load_movielens
from omega.constellation.codebook import build_codebook
from omega.protocol import compute_tag, decode_frame, derive_device_key, peek_frame
from omega.protocol import omega_pb2 as pb
from omega.sim.evaluate import published_edges
from omega.sim.fleet import SIM_BRAIN_CONFIG, Fleet, FleetConfig, ViewingEvent
from omega.sim.wire_audit import audit_uplink
from sim.fixtures import write_fixture


def _catalog(items, seed: int = 0) -> tuple[Catalog, np.ndarray]:
    """Random unit vectors stand in for MiniLM here: the fleet's sync path never embeds."""
    rng = np.random.default_rng(seed)
    matrix = rng.standard_normal((len(items), 384)).astype(np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    return Catalog.from_vectors(items, matrix, SIM_BRAIN_CONFIG), matrix


def _events(data) -> list[ViewingEvent]:
    r = data.ratings
    return [ViewingEvent(int(u), int(i), float(s), float(t)) for u, i, s, t in zip(r.user, r.item, r.rating, r.timestamp)]


async def _simulate(tmp_path: Path, k_min: int = 2):
    data = load_movielens(write_fixture("ml-latest", tmp_path / "data", n_users=20, n_items=30))
    catalog, matrix = _catalog(data.items)
    fleet = await Fleet.open(tmp_path / "fleet", catalog, build_codebook(matrix, k=8), config=FleetConfig(k_min=k_min))
    events = _events(data)
    await fleet.replay(events)
    return fleet, events


def test_every_frame_leaving_a_tv_carries_only_patterns_and_statistics(tmp_path: Path):
    async def main():
        fleet, events = await _simulate(tmp_path)
        try:
            key_for = lambda dev: derive_device_key(fleet.config.secret, dev, 1)  # noqa: E731
            report = audit_uplink(fleet.tap.uplink, key_for)
            assert report.clean, report.violations
            assert report.kinds["push"] > 0 and report.edges > 0
            assert set(report.kinds) <= {"push", "pull", "heartbeat"}
            # No frame is stamped with the time of a viewing: TVs send at their tier's ticks.
            viewing_ms = {int(ev.timestamp * 1000) for ev in events}
            assert not {decode_frame(d, key_for(dev)).timestamp_ms for dev, d in fleet.tap.uplink} & viewing_ms
            # Every frame is under one of the fleet's device ids, and each TV only under its own.
            assert {dev for dev, _ in fleet.tap.uplink} <= {tv.device_id for tv in fleet.tvs.values()}
            # What was pushed is each TV's own transition statistics, nothing else: all deltas went out.
            for tv in fleet.tvs.values():
                assert not fleet._queued(tv)
        finally:
            await fleet.aclose()

    asyncio.run(main())


def test_the_audit_catches_a_field_a_tv_must_not_send(tmp_path: Path):
    device = bytes(range(16))
    key = derive_device_key(b"s" * 32, device, 1)
    msg = pb.Frame(device_id=device, seq=1, timestamp_ms=5, key_id=1)
    msg.push.batch_id = bytes(16)
    msg.push.transitions.keyspace = 1
    msg.push.transitions.src_delta.append(3)
    msg.push.transitions.dst.append(4)
    msg.push.transitions.weight.append(16)
    msg.push.transitions.support.append(1)  # support is the cloud's; a TV claiming it is a violation
    data = bytes((0xCE, 1, 0)) + msg.SerializeToString()
    data += compute_tag(key, data)
    with pytest.raises(Exception):
        decode_frame(data, key)  # the typed decoder already refuses it ...
    from omega.sim.wire_audit import _walk

    violations: list[str] = []
    _walk(msg, "frame", violations)  # ... and the field-level audit names it
    assert any("support" in v for v in violations)


def test_published_edges_have_k_min_tvs_and_reach_every_tv(tmp_path: Path):
    async def main():
        fleet, _ = await _simulate(tmp_path, k_min=3)
        try:
            await fleet.catch_up()
            published = await published_edges(fleet, 3)
            assert published and all(e.support >= 3 for e in published)
            expected = {(e.src, e.dst): (e.weight, e.support) for e in published}
            for tv in fleet.tvs.values():
                with tv.brain.store.transaction() as db:
                    held = {(s, d): (w, n) for s, d, w, n in db.execute("SELECT src, dst, weight, support FROM global_transitions")}
                assert held == expected
            # A TV is the only one that knows its episodes; the constellation holds sums and supports only.
            assert all(tv.brain.store.episode_count() > 0 for tv in fleet.tvs.values())
            assert sum(1 for _, d in fleet.tap.uplink if peek_frame(d).kind == "push") > 0
        finally:
            await fleet.aclose()

    asyncio.run(main())
