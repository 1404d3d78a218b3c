"""Pulls of the same page at the same time share one read of the store (issue 15: the 10k-TV run).

Under load the store's reads queue; before, every pull that arrived while the first read of its page was
still queued started its own, so the longer the queue the more copies of each read were in it.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from omega.constellation.app import create_app
from omega.constellation.settings import load_settings
from omega.protocol import Keyspace, PullReply, PushAck, Transition, TransitionBatch

from .server_support import SECRET, Device, near, pattern, small_codebook

CODEBOOK = small_codebook()
PAGE = 1200  # bytes: a few patterns, so the published state takes several pages


async def _served(tmp_path: Path):  # noqa: ANN202
    CODEBOOK.save(tmp_path / "codebook.npz")
    settings = load_settings(env={"OMEGA_SECRET": SECRET}, overrides={
        "store": f"sqlite:{tmp_path / 'c.db'}", "codebook": str(tmp_path / "codebook.npz"), "rate_burst": 1000,
        "pull_snapshot_s": 0})  # fmt: skip
    return create_app(settings)


async def _publish(service, devices: list[Device]) -> None:  # noqa: ANN001
    """Every device pushes the same cells and edges (so they reach k_min)."""
    for dev in devices:
        pats = [pattern(near(CODEBOOK, c, 100 * dev.n + c), seed=c) for c in range(8)]
        edges = TransitionBatch(Keyspace.ITEM, tuple(Transition(i, i + 1, 1.0) for i in range(1, 40)))
        reply = await service.handle(dev.push(pats, transitions=edges)[1])
        assert isinstance(dev.decode(reply.body).body, PushAck)


async def test_concurrent_pulls_of_one_page_read_the_store_once(tmp_path: Path) -> None:
    app = await _served(tmp_path)
    async with app.router.lifespan_context(app):
        service = app.state.omega.service
        await _publish(service, [Device(n) for n in range(4)])
        store = service.aggregator.store
        reads = 0
        original = store.changes_since

        async def counted(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            nonlocal reads
            reads += 1
            await asyncio.sleep(0.05)  # a read that takes a while, as under load
            return await original(*args, **kwargs)

        store.changes_since = counted
        pullers = [Device(100 + i) for i in range(20)]
        replies = await asyncio.gather(*(service.handle(dev.pull(0, PAGE)) for dev in pullers))
        bodies = [dev.decode(r.body).body for dev, r in zip(pullers, replies, strict=True)]
        assert all(isinstance(b, PullReply) and b.patterns and b.more for b in bodies)
        assert reads == 1
        assert len({(b.cursor, b.more, tuple(p.cluster_id for p in b.patterns)) for b in bodies}) == 1
        # Another page (a cursor of its own) is read by itself; the same page again comes from the cache.
        await service.handle(Device(200).pull(bodies[0].cursor, PAGE))
        await service.handle(Device(201).pull(0, PAGE))
        assert reads == 2


async def test_a_puller_that_goes_away_does_not_cancel_the_read_others_wait_for(tmp_path: Path) -> None:
    app = await _served(tmp_path)
    async with app.router.lifespan_context(app):
        service = app.state.omega.service
        await _publish(service, [Device(n) for n in range(4)])
        store = service.aggregator.store
        original = store.changes_since

        async def slow(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            await asyncio.sleep(0.1)
            return await original(*args, **kwargs)

        store.changes_since = slow
        first, second = Device(300), Device(301)
        gone = asyncio.ensure_future(service.handle(first.pull(0)))
        await asyncio.sleep(0.02)
        waiting = asyncio.ensure_future(service.handle(second.pull(0)))
        await asyncio.sleep(0.02)
        gone.cancel()  # the first TV's connection closed mid-read
        with pytest.raises(asyncio.CancelledError):
            await gone
        body = second.decode((await waiting).body).body
        assert isinstance(body, PullReply) and body.patterns


async def test_a_failed_read_fails_each_waiting_pull_and_the_next_pull_reads_again(tmp_path: Path) -> None:
    app = await _served(tmp_path)
    async with app.router.lifespan_context(app):
        service = app.state.omega.service
        await _publish(service, [Device(n) for n in range(4)])
        store = service.aggregator.store
        original = store.changes_since
        calls = 0

        async def failing_once(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            nonlocal calls
            calls += 1
            await asyncio.sleep(0.05)
            if calls == 1:
                raise RuntimeError("disk went away")
            return await original(*args, **kwargs)

        store.changes_since = failing_once
        replies = await asyncio.gather(*(service.handle(Device(400 + i).pull(0)) for i in range(3)))
        assert [r.code for r in replies] == ["internal"] * 3 and calls == 1
        reply = await service.handle(Device(410).pull(0))
        assert reply.code is None and calls == 2
