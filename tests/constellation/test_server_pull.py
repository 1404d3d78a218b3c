"""Delta pulls over real HTTP: pages ≤ 5,000 bytes, a cursor that never skips a change, durable acks."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from omega.protocol import Keyspace, PullReply, PushAck, TaskType, Transition, TransitionBatch

from .server_support import Device, ServerProcess, near, pattern, small_codebook

CODEBOOK = small_codebook()
TASKS = (TaskType.CONTENT_MATCH, TaskType.CONTEXT_MATCH, TaskType.GENRE_AFFINITY)


@pytest.fixture
def server(tmp_path) -> Iterator[ServerProcess]:  # noqa: ANN001
    CODEBOOK.save(tmp_path / "codebook.npz")
    proc = ServerProcess(tmp_path, codebook=tmp_path / "codebook.npz", OMEGA_RATE_BURST="1000").start()
    yield proc
    proc.kill()


def _push_round(server: ServerProcess, client: httpx.Client, devices: list[Device], round_: int, cells: range) -> None:
    """Every device pushes the same cells (so they reach k_min) and a run of item transitions."""
    for d, dev in enumerate(devices):
        for start in range(cells.start, cells.stop, 10):
            chunk = [c for c in range(start, min(start + 10, cells.stop))]
            pats = [pattern(near(CODEBOOK, c % 16, 1000 * round_ + 100 * d + c), task=TASKS[c // 16], seed=c) for c in chunk]
            edges = TransitionBatch(Keyspace.ITEM, tuple(Transition(round_ * 1000 + i, i + 1, 1.0) for i in range(60)))
            ack = dev.decode(server.post(dev.push(pats, transitions=edges)[1], client).content).body
            assert isinstance(ack, PushAck)


def _record(reply: PullReply, seen: dict) -> None:
    for p in reply.patterns:
        seen[("cell", int(p.task_type), p.cluster_id)] = (p.version, p.support)
    for e in reply.transitions.edges if reply.transitions else ():
        seen[("edge", e.src, e.dst)] = (e.weight, e.support)


def _drain(server: ServerProcess, client: httpx.Client, dev: Device, cursor: int, max_bytes: int, sizes: list[int],
           seen: dict) -> int:  # fmt: skip
    more = True
    while more:
        resp = server.post(dev.pull(cursor, max_bytes), client)
        sizes.append(len(resp.content))
        reply = dev.decode(resp.content).body
        assert isinstance(reply, PullReply)
        assert reply.cursor >= cursor
        _record(reply, seen)
        cursor, more = reply.cursor, reply.more
    return cursor


def test_pages_fit_5000_bytes_and_the_cursor_never_skips(server: ServerProcess) -> None:
    devices = [Device(n) for n in range(3)]
    reader = Device(99)
    with httpx.Client(timeout=10) as client:
        _push_round(server, client, devices, 1, range(0, 30))
        sizes: list[int] = []
        seen: dict = {}
        # Pull one page, then let more changes land before pulling on.
        resp = server.post(reader.pull(0), client)
        first = reader.decode(resp.content).body
        assert first.more and len(resp.content) <= 5000
        _record(first, seen)
        _push_round(server, client, [Device(n) for n in range(3, 5)], 2, range(0, 48))
        cursor = _drain(server, client, reader, first.cursor, 5000, sizes, seen)
        assert max(sizes) <= 5000 and len(sizes) >= 3
        # A fresh reader from 0 ends with exactly what the incremental reader holds.
        fresh: dict = {}
        _drain(server, client, Device(98), 0, 5000, [], fresh)
        assert fresh == seen
        assert len([k for k in seen if k[0] == "cell"]) == 30  # cells 30..47 have 2 TVs only: unpublished
        assert all(s == 5 for k, (_, s) in seen.items() if k[0] == "cell" and k[2] < 30 and k[1] == int(TaskType.CONTENT_MATCH))
        # Tiny budgets still make progress one item at a time and stay within budget.
        small: list[int] = []
        tiny: dict = {}
        _drain(server, client, Device(97), 0, 600, small, tiny)
        assert max(small) <= 600 and tiny == fresh
        # Nothing new: the cursor stays and the page is empty.
        reply = reader.decode(server.post(reader.pull(cursor), client).content).body
        assert (reply.cursor, reply.more, reply.patterns) == (cursor, False, ())


def test_an_acked_push_survives_sigkill(server: ServerProcess) -> None:
    devices = [Device(n) for n in range(10, 13)]
    with httpx.Client(timeout=10) as client:
        batches = []
        for dev in devices:
            batch, data = dev.push([pattern(near(CODEBOOK, 9, dev.n), task=TaskType.TIME_OF_DAY)])
            ack = dev.decode(server.post(data, client).content).body
            assert ack.accepted == 1
            batches.append(batch)
    server.kill()  # SIGKILL right after the last ack
    server.start()
    with httpx.Client(timeout=10) as client:
        reader = Device(50)
        seen: dict = {}
        _drain(server, client, reader, 0, 5000, [], seen)
        assert seen[("cell", int(TaskType.TIME_OF_DAY), 9)][1] == 3
        # The batches are remembered too: a retry is a duplicate, not a second contribution.
        dev = devices[-1]
        dev.seq += 1000  # a restarted TV continues its persisted counter
        again = dev.decode(server.post(dev.push([pattern(near(CODEBOOK, 9, dev.n), task=TaskType.TIME_OF_DAY)],
                                                batch_id=batches[-1])[1], client).content).body  # fmt: skip
        assert again.duplicate


# Long enough that a busy machine answers the pushes and pulls between two refreshes within one interval (at
# 1.5 s a slow push round let the snapshot expire before the readers at its head asked).
SNAPSHOT_S = 4.0


def test_pulls_are_served_from_a_snapshot_of_the_head(tmp_path) -> None:  # noqa: ANN001
    """With pull_snapshot_s, a TV at the served head costs no store read and every TV from one cursor gets one
    page; newer pushes show up once the snapshot is older than the interval (a delay, never a skip)."""
    CODEBOOK.save(tmp_path / "codebook.npz")
    server = ServerProcess(tmp_path, codebook=tmp_path / "codebook.npz", OMEGA_RATE_BURST="1000",
                           OMEGA_PULL_SNAPSHOT_S=str(SNAPSHOT_S)).start()  # fmt: skip
    try:
        devices = [Device(n) for n in range(3)]
        readers = [Device(90 + n) for n in range(4)]
        with httpx.Client() as client:
            _push_round(server, client, devices, 0, range(0, 10))
            time.sleep(SNAPSHOT_S + 0.1)
            seen: dict = {}
            cursor = _drain(server, client, readers[0], 0, 5000, [], seen)
            assert cursor > 0 and seen
            _push_round(server, client, devices, 1, range(10, 20))  # the live head moves on
            reads = server.metric("omega_store_latency_seconds_count", op="changes")
            for r in readers:  # at the served head: an empty page at their cursor, no store read
                reply = r.decode(server.post(r.pull(cursor), client).content).body
                assert reply.cursor == cursor and not reply.patterns and not reply.more
            assert server.metric("omega_store_latency_seconds_count", op="changes") == reads
            time.sleep(SNAPSHOT_S + 0.1)
            pages = [r.decode(server.post(r.pull(cursor), client).content).body for r in readers]
            assert pages[0].cursor > cursor and pages[0].patterns
            assert all(p == pages[0] for p in pages)  # one page, shared by every TV at that cursor
            assert server.metric("omega_store_latency_seconds_count", op="changes") == reads + 1
    finally:
        server.kill()
