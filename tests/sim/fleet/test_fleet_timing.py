"""The wire audit's timing check (issue 14): nothing a TV learned leaves it in the sync right after a viewing.

On synthetic frames it flags exactly the contributions that follow a viewing without a sync between; on a
real fleet it passes with the TVs' daily contribution schedule and fails with the schedule turned off
(a push at every sync, the old behaviour)."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from pathlib import Path

from omega.brain.sync import SyncConfig
from omega.constellation.codebook import build_codebook
from omega.datasets.movielens import load_movielens
from omega.protocol import Frame, Heartbeat, Pull, Push, Tier, derive_device_key
from omega.sim.evaluation.wire_audit import AuditReport, TappedFrame, audit_timing, audit_uplink
from omega.sim.fleet.simulator import Fleet, FleetConfig
from movielens_fixtures import write_fixture

from .test_fleet import _catalog, _events

DEV = bytes(range(16))


def _frames(*spec: tuple[int, object]) -> list[TappedFrame]:
    return [TappedFrame(DEV, b"", Frame(DEV, seq, t, body, key_id=1)) for seq, (t, body) in enumerate(spec, 1)]


def _hb(outbox: int = 0, patterns: int = 0) -> Heartbeat:
    return Heartbeat(Tier.ACTIVE, outbox, patterns)


def _violations(frames: list[TappedFrame], viewings_s: list[float]) -> list[str]:
    report = AuditReport()
    audit_timing(frames, {DEV: viewings_s}, report)
    return report.violations


def test_a_push_or_a_moving_heartbeat_right_after_a_viewing_is_flagged():
    a, b = Push(b"a" * 16), Push(b"b" * 16)
    # viewing at 1 s; a sync at 2 s (pull, heartbeat); the contribution at 3 s: clean
    ok = _frames((2000, Pull(0)), (2000, _hb()), (3000, a), (3000, Pull(0)), (3000, _hb(1, 4)))
    assert _violations(ok, [1.0]) == []
    # the same push at 1.5 s, in the first sync after the viewing: flagged, once
    early = _frames((500, _hb()), (1500, a), (1500, _hb(0, 0)))
    assert len(_violations(early, [1.0])) == 1
    # a retry of a batch seen before carries nothing new: not flagged
    retry = _frames((500, a), (500, _hb()), (1500, a), (1500, _hb()))
    assert _violations(retry, [1.0]) == []
    # a heartbeat whose pattern count moves (or whose outbox grows) right after a viewing: flagged
    moving = _frames((500, _hb(0, 3)), (1500, _hb(0, 4)))
    assert len(_violations(moving, [1.0])) == 1
    grows = _frames((500, _hb(0, 3)), (1500, _hb(2, 3)))
    assert len(_violations(grows, [1.0])) == 1
    shrinks = _frames((500, _hb(2, 3)), (1500, _hb(0, 3)))  # an ack: nothing learned
    assert _violations(shrinks, [1.0]) == []
    assert _violations(_frames((1500, b)), []) == []  # no viewing at all


async def _run(tmp_path: Path, sync: SyncConfig) -> tuple[AuditReport, bool]:
    """Replay a small fleet; (the audit with viewings, whether every TV's queue went out in the end)."""
    data = load_movielens(write_fixture("ml-latest", tmp_path / "data", n_users=12, n_items=30))
    catalog, matrix = _catalog(data.items)
    fleet = await Fleet.open(tmp_path / "fleet", catalog, build_codebook(matrix, k=8), config=FleetConfig(k_min=2, sync=sync))
    try:
        events = _events(data)
        await fleet.replay(events)
        viewings: dict[bytes, list[float]] = defaultdict(list)
        for ev in events:
            viewings[fleet.tvs[ev.user].device_id].append(ev.timestamp)
        key_for = lambda dev: derive_device_key(fleet.config.secret, dev, 1)  # noqa: E731
        drained = all(not fleet._queued(tv) for tv in fleet.tvs.values())
        return audit_uplink(fleet.tap.uplink, key_for, viewings), drained
    finally:
        await fleet.aclose()


def test_a_fleet_on_the_daily_schedule_passes_and_one_pushing_at_every_sync_does_not(tmp_path: Path):
    scheduled, drained = asyncio.run(_run(tmp_path / "daily", SyncConfig()))
    assert scheduled.clean, scheduled.violations[:5]
    assert scheduled.kinds["push"] > 0 and scheduled.contributions > 0
    assert drained  # everything learned went out in the end
    eager, _ = asyncio.run(_run(tmp_path / "eager", SyncConfig(contribution_period_s=0)))
    assert any("right after" in v for v in eager.violations)
