"""The fleet simulator: real brains syncing with the real server over loopback sockets, and the wire audit."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest

from omega.brain.catalog import Catalog
from omega.brain.sync import HttpTransport, TransportKind, WebSocketTransport, policy_for
from omega.brain.sync import state
from omega.constellation.codebook import build_codebook
from omega.datasets.movielens import load_movielens
from omega.errors import OmegaError
from omega.protocol import Keyspace, Tier, compute_tag, decode_frame, derive_device_key, peek_frame, refined_cursor
from omega.protocol import omega_pb2 as pb
from omega.sim.evaluation.scoring import published_edges
from omega.sim.evaluation.wire_audit import audit_uplink
from omega.brain.config import BrainConfig
from omega.sim.fleet.simulator import Fleet, FleetConfig, ViewingEvent
from movielens_fixtures import write_fixture


def _catalog(items, seed: int = 0) -> tuple[Catalog, np.ndarray]:
    """Random unit vectors stand in for MiniLM here: the fleet's sync path never embeds."""
    rng = np.random.default_rng(seed)
    matrix = rng.standard_normal((len(items), 384)).astype(np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    return Catalog.from_vectors(items, matrix, BrainConfig()), matrix


def _events(data) -> list[ViewingEvent]:
    r = data.ratings
    return [ViewingEvent(int(u), int(i), float(s), float(t)) for u, i, s, t in zip(r.user, r.item, r.rating, r.timestamp)]


async def _simulate(tmp_path: Path, k_min: int = 2, transport: str = "loopback", brain: BrainConfig | None = None):
    data = load_movielens(write_fixture("ml-latest", tmp_path / "data", n_users=20, n_items=30))
    catalog, matrix = _catalog(data.items)
    config = FleetConfig(k_min=k_min, transport=transport, brain=brain or BrainConfig())  # type: ignore[arg-type]
    fleet = await Fleet.open(tmp_path / f"fleet-{transport}", catalog, build_codebook(matrix, k=8), config=config)
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
    from omega.sim.evaluation.wire_audit import _walk

    violations: list[str] = []
    _walk(msg, "frame", violations)  # ... and the field-level audit names it
    assert any("support" in v for v in violations)
    # A field the schema does not know (number 1023, a varint) is carried as unknown bytes: named too.
    hidden = pb.Frame()
    hidden.ParseFromString(pb.Frame(device_id=device, seq=2).SerializeToString() + bytes([0xF8, 0x3F, 0x05]))
    violations = []
    _walk(hidden, "frame", violations)
    assert violations == ["frame: unknown protobuf field 1023"]


def test_published_edges_have_k_min_tvs_and_reach_every_tv(tmp_path: Path):
    async def main():
        fleet, _ = await _simulate(tmp_path, k_min=3)
        try:
            await fleet.catch_up()
            published = await published_edges(fleet, 3)
            assert published and all(e.support >= 3 for e in published)
            expected = {(e.src, e.dst): (e.weight, e.support) for e in published if e.keyspace == Keyspace.ITEM}
            pairs = {(e.src, e.dst): (e.weight, e.support) for e in published if e.keyspace == Keyspace.PAIR}
            assert expected and pairs and all(src < dst for src, dst in pairs)
            pairs |= {(d, s): v for (s, d), v in pairs.items()}  # the TV keeps both orientations
            for tv in fleet.tvs.values():
                held = {(t.src, t.dst): (t.weight, t.count) for t in tv.brain.store.all_global_transitions()}
                held_pairs = {(t.src, t.dst): (t.weight, t.count) for t in tv.brain.store.all_global_pairs()}
                assert held == expected and held_pairs == pairs
            # A TV is the only one that knows its episodes; the constellation holds sums and supports only.
            assert all(tv.brain.store.episode_count() > 0 for tv in fleet.tvs.values())
            assert sum(1 for _, d in fleet.tap.uplink if peek_frame(d).kind == "push") > 0
        finally:
            await fleet.aclose()

    asyncio.run(main())


def test_the_refined_release_reaches_every_tv_once(tmp_path: Path):
    async def main():
        # the release refined from the pairs derived from edges (the co-watch upload's release: its own test)
        fleet, _ = await _simulate(tmp_path, k_min=3, brain=BrainConfig(pull_refined=True, cowatch_window=0))
        try:
            await fleet.catch_up()
            release = fleet.service.refined
            assert release.release and release.items, "the published pairs give refined neighbours"
            expected = {(n.src, n.dst): n.steps / 16 for n in release.items}
            published = {(e.src, e.dst) for e in await published_edges(fleet, 3) if e.keyspace == Keyspace.PAIR}
            items = {x for pair in published for x in pair}
            assert {x for key in expected for x in key} <= items  # nothing but published items
            for tv in fleet.tvs.values():
                held = {}
                for src in {s for s, _ in expected}:
                    held |= {(t.src, t.dst): t.weight for t in tv.brain.store.refined_from(src)}
                assert held == expected
            # Each TV's cursor stands at the release's end: its next pull is sent no refined page again.
            end = refined_cursor(release.release, len(release.items))
            for tv in fleet.tvs.values():
                assert state.refined_cursor(tv.brain.store) == end
            assert release.page(end, 5000) is None
            assert release.page(0, 5000) is None  # a client that does not take them is never sent them
        finally:
            await fleet.aclose()

    asyncio.run(main())


def test_the_cowatch_upload_reaches_the_cloud_once_per_tv_and_the_release_is_refined_from_it(tmp_path: Path):
    async def main():
        fleet, _ = await _simulate(tmp_path, k_min=2, brain=BrainConfig(pull_refined=True, cowatch_window=50))
        try:
            key_for = lambda dev: derive_device_key(fleet.config.secret, dev, 1)  # noqa: E731
            report = audit_uplink(fleet.tap.uplink, key_for)
            assert report.clean, report.violations
            # Every pair each TV queued went out, once: the cloud's distinct-TV count of a pair is the number of
            # TVs that queued it (each TV's queue is its own rows; the pushes carried nothing else).
            queued: dict[tuple[int, int], int] = {}
            for tv in fleet.tvs.values():
                assert not fleet._queued(tv)
                for a, b in tv.brain.store._query("SELECT a, b FROM cowatch WHERE sealed = 1"):
                    queued[(a, b)] = queued.get((a, b), 0) + 1
            assert report.cowatch == sum(queued.values()) > 0
            expected = sorted((a, b, n) for (a, b), n in queued.items() if n >= 2)
            assert expected and await fleet.aggregator.published_cowatch() == expected
            # ... and never pulled: the TVs hold the pairs derived from edges only
            await fleet.catch_up()
            derived = {(e.src, e.dst) for e in await published_edges(fleet, 2) if e.keyspace == Keyspace.PAIR}
            for tv in fleet.tvs.values():
                assert {(t.src, t.dst) for t in tv.brain.store.all_global_pairs() if t.src < t.dst} == derived
            # The release is refined from them: its items are co-watched titles
            release = fleet.service.refined
            assert release.items and {x for n in release.items for x in (n.src, n.dst)} <= {
                x for a, b, _ in expected for x in (a, b)}
        finally:
            await fleet.aclose()

    asyncio.run(main())


def _metric(text: str, name: str, labels: str = "") -> float:
    match = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.MULTILINE)
    assert match is not None, f"{name}{labels} not in /metrics"
    return float(match.group(1))


def test_frames_cross_a_real_socket_to_the_real_server_on_loopback(tmp_path: Path):
    async def main():
        fleet, _ = await _simulate(tmp_path)
        try:
            assert fleet.server is not None and fleet.url is not None
            assert urlsplit(fleet.url).hostname == "127.0.0.1" and fleet.server.bound_port() > 0
            # Each TV syncs over its tier's real transport, tapped on the way.
            for tv in fleet.tvs.values():
                kind = policy_for(tv.tier).transport
                expected = HttpTransport if kind is TransportKind.HTTP else WebSocketTransport
                assert isinstance(tv.agent.transport.inner, expected)
            # The server's own counters, read over the socket, saw exactly the bytes the TVs sent and received.
            async with httpx.AsyncClient() as client:
                text = (await client.get(fleet.url + "/metrics")).text
            assert _metric(text, "omega_bytes_total", '{direction="in"}') == sum(len(d) for _, d in fleet.tap.uplink)
            assert _metric(text, "omega_bytes_total", '{direction="out"}') == fleet.tap.downlink_bytes
            # uvicorn parsed an HTTP request per polled frame (and per WebSocket handshake) ...
            polled = sum(1 for dev, _ in fleet.tap.uplink
                         if policy_for(next(t.tier for t in fleet.tvs.values() if t.device_id == dev)).transport
                         is TransportKind.HTTP)  # fmt: skip
            assert polled > 0 and fleet.server.server_state.total_requests >= polled
            # ... and premium TVs hold their WebSocket open between syncs.
            premium = sum(1 for tv in fleet.tvs.values() if tv.tier is Tier.PREMIUM and tv.syncs)
            assert fleet.app.state.omega.connections_by_tier().get("premium", 0) == premium
            url = fleet.url
        finally:
            await fleet.aclose()
        with pytest.raises(httpx.ConnectError):  # shut down: the port is closed
            httpx.get(url + "/healthz", timeout=2)

    asyncio.run(main())


def test_direct_mode_calls_the_same_service_and_publishes_the_same(tmp_path: Path):
    async def published(transport: str):
        fleet, _ = await _simulate(tmp_path, k_min=2, transport=transport)
        try:
            assert (fleet.server is None) == (transport == "direct")
            kinds = sorted(peek_frame(d).kind for _, d in fleet.tap.uplink)
            edges = {(e.keyspace, e.src, e.dst): (e.weight, e.support) for e in await published_edges(fleet, 2)}
            return kinds, edges
        finally:
            await fleet.aclose()

    async def main():
        loopback, direct = await published("loopback"), await published("direct")
        assert loopback[1] and loopback == direct

    asyncio.run(main())


def test_a_fleet_config_with_an_unknown_transport_is_one_clear_error():
    with pytest.raises(OmegaError, match="fleet transport must be 'loopback' or 'direct', got 'udp'"):
        FleetConfig(transport="udp")  # type: ignore[arg-type]
    with pytest.raises(OmegaError, match="tier_mix"):
        FleetConfig(tier_mix=(1.0, -1.0, 1.0))


def test_catch_up_by_copy_leaves_every_tv_as_pulling_every_page_would(tmp_path: Path):
    """`FleetConfig.copy_catch_up`: a TV that would pull the same pages from cursor 0 holds the same tables
    and ranks the same lists as one that decoded them; only the first TV's pulls cross the wire."""
    from omega.brain.brain import context_at
    from omega.brain.sync import state

    async def caught_up(copy: bool):
        data = load_movielens(write_fixture("ml-latest", tmp_path / "data", n_users=20, n_items=30))
        catalog, matrix = _catalog(data.items)
        config = FleetConfig(k_min=2, transport="direct", copy_catch_up=copy)
        fleet = await Fleet.open(tmp_path / f"fleet-{copy}", catalog, build_codebook(matrix, k=8), config=config)
        try:
            await fleet.replay(_events(data))
            before = len(fleet.tap.uplink)
            await fleet.catch_up()
            pullers = {dev for dev, d in fleet.tap.uplink[before:] if peek_frame(d).kind == "pull"}
            held = {}
            for user, tv in sorted(fleet.tvs.items()):
                store = tv.brain.store
                ranked = [r.content_id for r in tv.brain.rank(context_at(2e9), 10).recommendations]
                held[user] = (store.all_global_transitions(), store.all_global_pairs(), store.consolidated(),
                              state.cursor(store), ranked)  # fmt: skip
            return held, pullers
        finally:
            await fleet.aclose()

    async def main():
        (copied, copy_pullers), (pulled, all_pullers) = await caught_up(True), await caught_up(False)
        assert copied == pulled
        assert any(edges for edges, *_ in pulled.values())  # something was published and held
        assert len(all_pullers) == 20 and len(copy_pullers) == 1

    asyncio.run(main())


def test_a_held_tv_stays_offline_until_its_time_and_probes_run_at_theirs(tmp_path: Path):
    """The cold-start hooks of the replay: `hold` keeps a TV from syncing before a time (nothing of its
    viewer is published before then); a probe runs when the clock reaches its time, before later viewings."""

    async def main():
        data = load_movielens(write_fixture("ml-latest", tmp_path / "data", n_users=20, n_items=30))
        catalog, matrix = _catalog(data.items)
        fleet = await Fleet.open(tmp_path / "fleet", catalog, build_codebook(matrix, k=8),
                                 config=FleetConfig(k_min=2, transport="direct"))  # fmt: skip
        events = _events(data)
        user = events[0].user
        own = [ev.timestamp for ev in events if ev.user == user]
        until = own[len(own) // 2]
        seen: list[tuple[float, int]] = []

        async def probe() -> None:
            # the clock is at the probe's time; no viewing after it was fed yet
            fed = sum(tv.brain.store.episode_count() for tv in fleet.tvs.values())
            seen.append((fleet.now, fed))

        try:
            await fleet.replay(events, probes=[(until, probe)], hold={user: until})
            device = fleet.tvs[user].device_id
            key = derive_device_key(fleet.config.secret, device, 1)
            stamps = [decode_frame(d, key).timestamp_ms / 1000 for dev, d in fleet.tap.uplink if dev == device]
            assert stamps and min(stamps) > until  # offline until then, syncing after
            assert seen == [(until, sum(1 for ev in events if ev.timestamp < until))]
        finally:
            await fleet.aclose()

    asyncio.run(main())


def test_a_tv_that_opted_out_of_refined_neighbours_is_never_sent_them(tmp_path: Path):
    async def main():
        fleet, events = await _simulate(tmp_path, k_min=3, brain=BrainConfig(w_refined=0.0, pull_refined=False))
        try:
            # Simulation only: the contribution window spans the replayed viewings (nothing replayed expired).
            span_days = (max(e.timestamp for e in events) - min(e.timestamp for e in events)) / 86_400
            assert fleet.config.window_epochs is None and fleet.aggregator.policy.window_epochs > span_days + 1
            # A replay spread over 22 years: the widened window keeps every contribution through a prune at
            # its end (the served 30 days would have expired them all).
            first = min(e.timestamp for e in events)
            published = len(await published_edges(fleet, 3))
            assert fleet.span_window(first, first + 22 * 365 * 86_400) > 22 * 365 and published > 0
            assert fleet.span_window(first, first + 86_400) > 22 * 365  # never narrowed
            await fleet.aggregator.prune(int((first + 22 * 365 * 86_400) * 1000))
            assert len(await published_edges(fleet, 3)) == published
            await fleet.catch_up()
            assert fleet.service.refined.items, "the release exists; the TVs did not take it"
            for tv in fleet.tvs.values():
                assert state.refined_cursor(tv.brain.store) == 0
                assert tv.brain.store.stats().get("refined_neighbours", 0) == 0
            key_for = lambda dev: derive_device_key(fleet.config.secret, dev, 1)  # noqa: E731
            pulls = [decode_frame(d, key_for(dev)).body for dev, d in fleet.tap.uplink if peek_frame(d).kind == "pull"]
            assert pulls and all(p.refined_since == 0 for p in pulls)
        finally:
            await fleet.aclose()

    asyncio.run(main())
