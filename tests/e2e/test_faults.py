"""The TV ⇄ constellation path under faults, with the real server process and real sockets.

Every case ends with `converge_and_verify`: clean syncs, then the TV's outbox
is empty and each pattern version / edge delta was sealed once; the TV's
incrementally pulled ReasoningBank equals a fresh pull from cursor 0 (the
cursor never skipped a delta); and the server's store holds exactly what the
TVs sealed, each batch applied once (one idempotency key per sealed batch;
accumulators equal the offline reference). The servers here publish at
k_min=1, so one TV's own pushes come back in its pulls.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest

from omega.brain.sync import SyncConfig, SyncFailed, SyncReport, state
from omega.errors import OmegaError
from omega.protocol import Tier

from .proxy import Conn, Fault, FaultProxy
from .support import TV, converge_and_verify, epoch_now, fast_policy, try_sync, wait_until

pytestmark = pytest.mark.timeout(180)

K_MIN = {"OMEGA_K_MIN": "1"}
TIERS = [pytest.param(Tier.CASUAL, id="http"), pytest.param(Tier.ACTIVE, id="websocket")]


class Items:
    """Hands out fresh catalog items, so each round of watching makes new patterns and transitions."""

    def __init__(self, start: int = 1, stop: int = 48) -> None:
        self._ids = iter(range(start, stop + 1))

    def take(self, n: int) -> list[int]:
        return [next(self._ids) for _ in range(n)]


def new_tv(tmp_path: Path, catalog, url: str, name: str = "tv", tier: Tier = Tier.CASUAL, timeout_s: float = 5.0) -> TV:  # noqa: ANN001
    return TV.create(tmp_path / f"{name}.db", catalog, url, tier=tier, config=SyncConfig(request_timeout_s=timeout_s, contribution_period_s=0))


# ---------------------------------------------------------------------------- 1. server down at start


@pytest.mark.parametrize("tier", TIERS)
async def test_server_down_at_start_fails_cleanly_then_syncs(server_factory, catalog, tmp_path, tier):
    epoch = epoch_now()
    server = server_factory(**K_MIN)  # not started yet
    tv = new_tv(tmp_path, catalog, server.url, tier=tier)
    tv.watch([1, 2, 3], rounds=11)

    with pytest.raises(SyncFailed) as refused:
        await tv.agent.sync_once()
    assert refused.value.code == "transport" and not refused.value.auth
    [pending] = tv.agent.outbox.pending()  # sealed, kept for the retry
    assert pending.patterns == 3 and state.cursor(tv.brain.store) == 0

    await server.astart()
    report = await tv.agent.sync_once()
    assert report.batches_acked == 1 and report.duplicates == 0 and report.pushed_patterns == 3
    assert [p.batch_id for p in tv.sealed()] == [pending.batch_id]  # the same batch, not a new one
    assert report.pulled_patterns == 3  # k_min=1: its own patterns come back
    await converge_and_verify(server, [tv], catalog, k_min=1, epoch=epoch)
    await tv.close()


# ---------------------------------------------------------------------------- 2. SIGKILL after a push was applied


async def test_server_sigkilled_before_its_ack_reaches_the_tv(server, catalog, tmp_path):
    epoch = epoch_now()
    async with FaultProxy(server.port) as proxy:
        tv = new_tv(tmp_path, catalog, proxy.url, timeout_s=30)
        tv.watch([1, 2, 3, 4], rounds=11)
        proxy.inject(Fault(hold_down=True))  # the server's reply to the push never reaches the TV
        sync = asyncio.create_task(try_sync(tv))
        await wait_until(lambda: proxy.conns and proxy.conns[0].held > 0, what="the server's ack")
        server.kill()  # the push is committed (acks follow the commit); the TV never hears of it
        failed = await sync
        assert isinstance(failed, SyncFailed) and failed.code == "transport"
        [pending] = tv.agent.outbox.pending()
        assert state.cursor(tv.brain.store) == 0

        await server.astart()  # same port, same store
        report = await tv.agent.sync_once()
        assert report.batches_acked == 1 and report.duplicates == 1  # the retry found it applied
        assert [p.batch_id for p in tv.sealed()] == [pending.batch_id]
        assert report.pulled_patterns == 4
        await converge_and_verify(server, [tv], catalog, k_min=1, epoch=epoch)
        await tv.close()


# ---------------------------------------------------------------------------- 3. connection dropped mid-frame


def _first_message(data: bytes) -> tuple[int, int]:
    """(end of the HTTP head, length of what follows it in the first message) of a recorded stream."""
    head = data.index(b"\r\n\r\n") + 4
    for line in data[:head].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return head, int(line.split(b":")[1])
    return head, 0  # a WebSocket handshake: frames follow the head


def _landed_inside_a_message(conn: Conn, up: bool) -> bool:
    """The cut forwarded a complete head and part (not all) of what followed it."""
    data = bytes(conn.up if up else conn.down)
    if not conn.cut or b"\r\n\r\n" not in data:
        return False
    head, length = _first_message(data)
    return head < len(data) and (length == 0 or len(data) < head + length)


@pytest.mark.parametrize("tier", TIERS)
async def test_connections_cut_mid_frame_lose_nothing(server, catalog, tmp_path, tier):
    epoch = epoch_now()
    items = Items()
    async with FaultProxy(server.port) as proxy:
        tv = new_tv(tmp_path, catalog, proxy.url, tier=tier)
        # A clean sync through the proxy measures where the push and its ack sit in the byte streams.
        tv.watch(items.take(3), rounds=11)
        await tv.agent.sync_once()
        probe = proxy.conns[-1]
        up_head, up_len = _first_message(bytes(probe.up))
        down_head, down_len = _first_message(bytes(probe.down))
        ws = tier is not Tier.CASUAL
        # (fault, whether the server had applied the push when the cut happened)
        cases = [
            (Fault(cut_up_after=up_head // 2), False),  # inside the request head / WebSocket handshake
            (Fault(cut_up_after=up_head + (20 if ws else up_len // 2)), False),  # inside the push frame
            (Fault(cut_down_after=down_head // 2), not ws),  # inside the reply head / handshake reply
            (Fault(cut_down_after=down_head + (8 if ws else down_len // 2)), True),  # inside the ack frame
        ]
        for fault, applied in cases:
            tv.watch(items.take(3), rounds=11)
            proxy.inject(fault)
            failed = await try_sync(tv)
            assert isinstance(failed, SyncFailed) and failed.code == "transport", failed
            cut = proxy.conns[-1]
            assert cut.cut
            assert len(tv.agent.outbox.pending()) == 1  # kept for the retry
            report = await tv.agent.sync_once()  # clean retry of the same batch
            assert report.batches_acked == 1 and report.duplicates == int(applied), (fault, report)
            assert tv.agent.outbox.pending_count() == 0
        mid_frame = [c for c in proxy.conns if c.cut and _landed_inside_a_message(c, c.fault.cut_up_after is not None)]
        assert len(mid_frame) >= 2  # at least the request-body and ack-body cuts really split a message
        await converge_and_verify(server, [tv], catalog, k_min=1, epoch=epoch)
        await tv.close()


# ---------------------------------------------------------------------------- 4. a slow server


async def test_slow_replies_time_out_and_the_retry_is_applied_once(server, catalog, tmp_path):
    epoch = epoch_now()
    async with FaultProxy(server.port) as proxy:
        tv = new_tv(tmp_path, catalog, proxy.url, timeout_s=0.5)
        tv.watch([1, 2, 3], rounds=11)
        proxy.inject(Fault(delay_s=1.5))  # each chunk waits 1.5 s: the TV gives up after 0.5 s
        failed = await try_sync(tv)
        assert isinstance(failed, SyncFailed) and "no reply" in str(failed)
        assert tv.agent.outbox.pending_count() == 1
        # The late request still reaches the server after the TV gave up; give it the time to land.
        await wait_until(lambda: len(proxy.conns[0].up) > 0, what="the delayed request")
        await asyncio.sleep(0.3)
        report = await tv.agent.sync_once()
        assert report.batches_acked == 1 and report.duplicates in (0, 1)
        await converge_and_verify(server, [tv], catalog, k_min=1, epoch=epoch)
        await tv.close()


async def test_a_frozen_server_times_out_then_catches_up_without_double_applying(server, catalog, tmp_path):
    epoch = epoch_now()
    tv = new_tv(tmp_path, catalog, server.url, timeout_s=0.5)
    tv.watch([1, 2, 3], rounds=11)
    server.signal(signal.SIGSTOP)  # a real stall: the kernel accepts, the process answers nothing
    try:
        failed = await try_sync(tv)
    finally:
        server.signal(signal.SIGCONT)  # it wakes up and works through the stale request
    assert isinstance(failed, SyncFailed) and failed.code == "transport"
    assert tv.agent.outbox.pending_count() == 1
    await asyncio.sleep(0.5)
    report = await tv.agent.sync_once()
    assert report.batches_acked == 1 and report.duplicates in (0, 1)
    await converge_and_verify(server, [tv], catalog, k_min=1, epoch=epoch)
    await tv.close()


# ---------------------------------------------------------------------------- 5. error replies


async def test_rate_limited_replies_are_honoured_by_the_backoff(server_factory, catalog, tmp_path):
    epoch = epoch_now()
    server = await server_factory(OMEGA_RATE_PER_S="2", OMEGA_RATE_BURST="3", OMEGA_CASUAL_SYNC_S="1", **K_MIN).astart()
    tv = new_tv(tmp_path, catalog, server.url)
    tv.agent.policy = fast_policy(Tier.CASUAL, interval_s=0.1)
    items = Items()
    tv.watch(items.take(3), rounds=11)
    attempts: list[tuple[float, SyncReport | None, SyncFailed | None, float]] = []
    stop = asyncio.Event()

    def on_sync(report: SyncReport | None, error: SyncFailed | None, delay: float) -> None:
        attempts.append((time.monotonic(), report, error, delay))
        if error is None and len(attempts) < 12:
            tv.watch(items.take(1), rounds=11)  # more to push: keep the bucket under pressure
        limited = [a for a in attempts if a[2] is not None]
        if len(limited) >= 2 and error is None and tv.agent.outbox.pending_count() == 0:
            stop.set()

    await asyncio.wait_for(tv.agent.run(stop, on_sync=on_sync, start_jitter=False), 60)
    limited = [(i, a) for i, a in enumerate(attempts) if a[2] is not None]
    assert limited and all(a[2].code == "rate_limited" and a[2].retry_after_s >= 1 for _, a in limited)
    for i, (at, _, error, delay) in limited:
        assert delay >= error.retry_after_s  # the backoff adds jitter to the server's pause, never less
        if i + 1 < len(attempts):
            assert attempts[i + 1][0] - at >= error.retry_after_s * 0.95  # and the daemon really waited
    await converge_and_verify(server, [tv], catalog, k_min=1, epoch=epoch)
    await tv.close()


async def test_a_draining_server_answers_503_and_nothing_is_lost(server, catalog, tmp_path):
    epoch = epoch_now()
    tv = new_tv(tmp_path, catalog, server.url)
    tv.watch([1, 2, 3], rounds=11)
    # A request whose body never finishes keeps the server draining (in flight) after SIGTERM.
    _, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"POST /v1/sync HTTP/1.1\r\nHost: e2e\r\nContent-Type: application/octet-stream\r\n"
                 b"Content-Length: 1000\r\n\r\n" + b"x" * 10)  # fmt: skip
    await writer.drain()
    await asyncio.sleep(0.2)
    server.signal(signal.SIGTERM)
    async with httpx.AsyncClient(base_url=server.url) as client:
        async def draining() -> bool:
            return (await client.get("/readyz")).status_code == 503

        deadline = time.monotonic() + 10
        while not await draining():
            assert time.monotonic() < deadline, "the server never started draining"
            await asyncio.sleep(0.02)
    failed = await try_sync(tv)
    assert isinstance(failed, SyncFailed) and failed.code == "unavailable" and failed.retry_after_s >= 1, failed
    [pending] = tv.agent.outbox.pending()
    writer.close()  # the last request in flight ends: the drain completes and the server exits by itself
    assert await asyncio.to_thread(server.proc.wait, 30) == 0, server.log_text()
    await server.astart()
    report = await tv.agent.sync_once()
    assert report.batches_acked == 1 and report.duplicates == 0  # it was never applied
    assert [p.batch_id for p in tv.sealed()] == [pending.batch_id]
    await converge_and_verify(server, [tv], catalog, k_min=1, epoch=epoch)
    await tv.close()


# ---------------------------------------------------------------------------- 6. the TV process killed mid-sync

CHILD = textwrap.dedent(
    """
    import asyncio, sys
    sys.path.insert(0, sys.argv[1])
    from e2e.support import TV, shared_catalog, try_sync
    from omega.brain.sync import SyncConfig
    path, url, device, first = sys.argv[2], sys.argv[3], bytes.fromhex(sys.argv[4]), int(sys.argv[5])

    async def main():
        tv = TV.create(path, shared_catalog(48), url, device_id=device, config=SyncConfig(request_timeout_s=30, contribution_period_s=0))
        for n in range(first, 49, 2):  # keep watching and syncing until killed
            tv.watch([n, n + 1 if n < 48 else 1], rounds=11)
            await try_sync(tv)
        await tv.close()

    asyncio.run(main())
    """
)


async def test_tv_process_killed_mid_sync_converges(server, catalog, tmp_path):
    epoch = epoch_now()
    rng = random.Random(6)
    path, device = tmp_path / "tv.db", os.urandom(16)
    tests_dir = str(Path(__file__).resolve().parents[1])
    kills_with_pending = 0
    async with FaultProxy(server.port, policy=lambda: Fault(delay_s=0.1)) as proxy:  # slow exchanges: wide windows
        for kill in range(4):
            seen = len(proxy.conns)
            child = subprocess.Popen(
                [sys.executable, "-c", CHILD, tests_dir, str(path), proxy.url, device.hex(), str(1 + 2 * kill)],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )  # fmt: skip
            try:
                await wait_until(
                    lambda: len(proxy.conns) > seen and proxy.conns[seen].up or child.poll() is not None,
                    timeout_s=60, what="the child's sync",
                )
                assert child.poll() is None, child.stderr.read().decode()
                # Even kills land while the push is in flight; odd ones anywhere later in the sync.
                if kill % 2:
                    await asyncio.sleep(rng.uniform(0.0, 1.0))
            finally:
                child.kill()
                child.wait()
            tv_store = TV.create(path, catalog, proxy.url, device_id=device)
            kills_with_pending += tv_store.agent.outbox.pending_count() > 0
            assert tv_store.brain.store.integrity_check() == []
            await tv_store.close()
        assert kills_with_pending >= 2  # at least the kills during a push left its batch sealed

        proxy.policy = Fault  # the network heals
        tv = TV.create(path, catalog, proxy.url, device_id=device)
        await converge_and_verify(server, [tv], catalog, k_min=1, epoch=epoch)
        await tv.close()


# ---------------------------------------------------------------------------- 7. the TV's disk full


def _fill_disk(tv: TV) -> None:
    """Cap the TV database at its current size (SQLite's own SQLITE_FULL) and use up the slack in it."""
    with tv.brain.store.transaction() as db:
        db.execute("CREATE TABLE IF NOT EXISTS e2e_ballast (b BLOB)")
    pages = tv.brain.store._conn().execute("PRAGMA page_count").fetchone()[0]
    tv.brain.store._conn().execute(f"PRAGMA max_page_count = {pages}")
    for size in (4000, 500, 50, 5):
        while True:
            try:
                with tv.brain.store.transaction() as db:
                    db.execute("INSERT INTO e2e_ballast VALUES (randomblob(?))", (size,))
            except OmegaError as exc:
                assert "full" in str(exc)
                break


def _free_disk(tv: TV) -> None:
    with tv.brain.store.transaction() as db:
        db.execute("DELETE FROM e2e_ballast")
    tv.brain.store._conn().execute("PRAGMA max_page_count = 1073741823")


async def test_tv_disk_full_fails_cleanly_and_recovers(server, catalog, tmp_path):
    epoch = epoch_now()
    tv = new_tv(tmp_path, catalog, server.url)
    other = new_tv(tmp_path, catalog, server.url, name="other")
    tv.watch([1, 2, 3], rounds=11)
    await tv.sync_until_idle()
    cursor = state.cursor(tv.brain.store)

    # Full disk while sealing: nothing is sealed, nothing queued is lost.
    tv.watch([4, 5], rounds=11)
    _fill_disk(tv)
    queued = tv.agent.outbox.queued_patterns()
    with pytest.raises(SyncFailed, match="full") as full:
        await tv.agent.sync_once()
    assert full.value.code == "local_store"
    assert tv.agent.outbox.pending_count() == 0 and tv.agent.outbox.queued_patterns() == queued == 2
    assert state.cursor(tv.brain.store) == cursor and len(tv.sealed()) == 1

    # Full disk while merging a pulled page: the page is dropped whole and the cursor stays.
    _free_disk(tv)
    await tv.sync_until_idle()
    cursor = state.cursor(tv.brain.store)
    other.watch([10, 11, 12, 13], rounds=11)
    await other.sync_until_idle()
    _fill_disk(tv)
    bank = tv.bank()
    with pytest.raises(SyncFailed, match="full"):
        await tv.agent.sync_once()
    assert state.cursor(tv.brain.store) == cursor and tv.bank().keys() == bank.keys()

    _free_disk(tv)
    await tv.sync_until_idle()

    # The daemon rides a full disk out: it backs off, and syncs once there is room again.
    tv.watch([20, 21], rounds=11)
    _fill_disk(tv)
    tv.agent.policy = fast_policy(Tier.CASUAL)
    outcomes: list[str] = []
    stop = asyncio.Event()

    def on_sync(report: SyncReport | None, error: SyncFailed | None, delay: float) -> None:
        outcomes.append("ok" if error is None else error.code)
        if error is not None and outcomes.count(error.code) == 2:
            _free_disk(tv)
        if error is None:
            stop.set()

    await asyncio.wait_for(tv.agent.run(stop, on_sync=on_sync, start_jitter=False), 30)
    assert outcomes[:2] == ["local_store", "local_store"] and outcomes[-1] == "ok", outcomes
    assert tv.agent.outbox.pending_count() == 0 and tv.agent.outbox.queued_patterns() == 0
    await converge_and_verify(server, [tv, other], catalog, k_min=1, epoch=epoch)
    await tv.close()
    await other.close()
