"""Crash safety: a TV killed (SIGKILL) between sealing a push and its ack loses nothing and applies nothing twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

from sync_support import NOW, pattern
from sync_peer import Peer, RunningPeer, token_for

from omega.brain.store import BrainStore
from omega.brain.sync import SyncAgent, SyncConfig, policy_for
from omega.protocol import Tier

CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from omega.brain.store import BrainStore
    from omega.brain.sync import SyncAgent, SyncConfig
    from omega.protocol import Tier

    path, url, device, token = sys.argv[1:5]
    store = BrainStore(path)
    agent = SyncAgent(store, server_url=url, device_id=bytes.fromhex(device), token=token,
                      tier=Tier.CASUAL, config=SyncConfig(request_timeout_s=120, contribution_period_s=0))
    asyncio.run(agent.sync_once())
    """
)


async def test_sigkill_between_seal_and_ack_resends_the_same_batch(tmp_path: Path):
    path = tmp_path / "tv.db"
    with BrainStore(path, clock=lambda: NOW) as s:
        for i in range(3):
            s.put_pattern(pattern(i))
        s.bump_transition(1, 2, 1.0)
    device = uuid.uuid4().bytes
    peer = Peer()
    peer.faults.append("hang")  # the cloud applies the push; the TV dies waiting for the ack
    with RunningPeer(peer) as running:
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(path), running.url, device.hex(), token_for(device)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 60
            while not peer.received_batches:
                assert child.poll() is None, child.stderr.read().decode()
                assert time.monotonic() < deadline, "the child never pushed"
                time.sleep(0.05)
        finally:
            os.kill(child.pid, signal.SIGKILL)
            child.wait()
        [sent] = peer.received_batches

        with BrainStore(path) as s:
            agent = SyncAgent(
                s, server_url=running.url, device_id=device, token=token_for(device), tier=Tier.CASUAL,
                config=SyncConfig(request_timeout_s=5, contribution_period_s=0), policy=policy_for(Tier.CASUAL),
            )  # fmt: skip
            [batch] = agent.outbox.pending()  # the sealed batch survived the kill
            assert batch.batch_id == sent and batch.patterns == 3 and batch.edges == 1
            assert agent.outbox.seal() is None  # and its contents were not queued again
            report = await agent.sync_once()
            await agent.close()
            assert report.duplicates == 1 and report.outbox_pending == 0
            assert s.integrity_check() == []
    assert peer.received_batches == [sent, sent]
    assert len(peer.accepted) == 3 and set(peer.accepted.values()) == {1}
    assert peer.edge_weight == {(1, 2): 1.0}
