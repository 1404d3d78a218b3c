"""A TV loads only its own tier's transport library (issue 13, the synced TV's RSS): the polling tier never imports
websockets, a WebSocket tier never imports httpx, and the polling tier's httpx comes without its command-line
client (rich, pygments, click: ~5 MB a TV never uses)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
from sync_peer import Peer, RunningPeer, token_for
from sync_support import NOW, consolidated, pattern

from omega.brain.store import BrainStore
from omega.protocol import Tier

#: a fresh interpreter, as a TV's process: one real sync over its tier's shipped transport, then what it imported
CHILD = textwrap.dedent(
    """
    import asyncio, json, sys
    from omega.brain.store import BrainStore
    from omega.brain.sync import SyncAgent, SyncConfig, parse_tier

    path, url, device, token, tier = sys.argv[1:6]

    async def once():
        with BrainStore(path) as store:
            agent = SyncAgent(store, server_url=url, device_id=bytes.fromhex(device), token=token,
                              tier=parse_tier(tier), config=SyncConfig(contribution_period_s=0))
            try:
                report = await agent.sync_once()
            finally:
                await agent.close()
            return report, type(agent.transport).__name__

    report, transport = asyncio.run(once())
    print(json.dumps({"pushed": report.pushed_patterns, "pulled": report.pulled_patterns, "transport": transport,
                      "loaded": sorted(m for m in ("httpx", "httpcore", "websockets", "rich", "pygments", "click")
                                if m in sys.modules)}))
    """
)

EXPECTED = {
    Tier.CASUAL: ("HttpTransport", ["httpcore", "httpx"]),
    Tier.ACTIVE: ("WebSocketTransport", ["websockets"]),
    Tier.PREMIUM: ("WebSocketTransport", ["websockets"]),
}


@pytest.mark.parametrize("tier", list(EXPECTED), ids=lambda t: t.label)
def test_a_tv_syncing_on_its_tier_imports_only_that_transports_library(tmp_path: Path, tier: Tier):
    path = tmp_path / "tv.db"
    with BrainStore(path, clock=lambda: NOW) as s:
        for i in range(3):
            s.put_pattern(pattern(i))
    device = uuid.uuid4().bytes
    with RunningPeer(Peer(changes=[consolidated(i) for i in range(3)])) as running:
        out = subprocess.run(
            [sys.executable, "-c", CHILD, str(path), running.url, device.hex(), token_for(device), tier.label],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert out.returncode == 0, out.stderr
    found = json.loads(out.stdout)
    transport, loaded = EXPECTED[tier]
    assert found == {"pushed": 3, "pulled": 3, "transport": transport, "loaded": loaded}


def test_the_transports_are_still_reachable_from_the_package():
    """`omega.brain.sync.HttpTransport` / `.WebSocketTransport` load their module on first use."""
    from omega.brain.sync import HttpTransport, WebSocketTransport
    from omega.brain.sync.http_transport import HttpTransport as Http
    from omega.brain.sync.ws_transport import WebSocketTransport as Ws

    assert (HttpTransport, WebSocketTransport) == (Http, Ws)
    with pytest.raises(AttributeError):
        import omega.brain.sync as package

        package.NoSuchTransport  # noqa: B018


def test_httpx_loses_only_its_command_line_client():
    """The polling transport's httpx has its stub `main`; `httpx._main` itself can still be imported afterwards."""
    probe = textwrap.dedent(
        """
        import json, sys
        from omega.brain.sync.http_transport import HttpTransport
        import httpx
        before = sorted(m for m in ("rich", "pygments", "click", "httpx._main") if m in sys.modules)
        stub = httpx.main.__module__ == "httpx"
        import httpx._main
        print(json.dumps([before, stub, callable(httpx._main.main), "rich" in sys.modules]))
        """
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [[], True, True, True]
