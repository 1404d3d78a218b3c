"""Random and mutated bytes POSTed to a real server never get a 500 and never change the store."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from omega.protocol import Heartbeat, Keyspace, Tier, Transition, TransitionBatch

from .server_support import Device, ServerProcess, near, pattern, small_codebook

CODEBOOK = small_codebook()
DEV = Device(500)
VALID = [
    DEV.push([pattern(near(CODEBOOK, 3, 1))], transitions=TransitionBatch(Keyspace.ITEM, (Transition(1, 2, 1.0),)))[1],
    DEV.pull(0),
    DEV.frame(Heartbeat(Tier.ACTIVE)),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    folder = tmp_path_factory.mktemp("server-fuzz")
    CODEBOOK.save(folder / "codebook.npz")
    proc = ServerProcess(folder, codebook=folder / "codebook.npz").start()
    yield proc
    proc.kill()


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "cut", "insert"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[at] ^= draw(st.integers(1, 255))
        elif op == "cut":
            del data[at : at + draw(st.integers(1, 8))]
        else:
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
    return bytes(data)


def test_fuzzed_frames_never_500_nor_change_the_store(server: ServerProcess) -> None:
    head = server.stats()["head"]
    statuses: set[int] = set()
    with httpx.Client(timeout=10) as client:

        @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(st.one_of(st.binary(max_size=600), mutated()))
        def run(data: bytes) -> None:
            assume(data not in VALID)  # a cut + insert can restore an original frame
            resp = server.post(data, client)
            statuses.add(resp.status_code)
            assert resp.status_code != 500
            assert resp.content, "every answer carries an error frame"

        run()
    assert statuses <= {400, 401, 413}, statuses
    assert server.stats()["head"] == head
    assert server.metric("omega_syncs_total", kind="push") == 0
