"""The sync server embedded in a running event loop (as the fleet simulator runs it): start, serve, stop."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from omega.constellation.app import create_app
from omega.constellation.runner import EmbeddedServer
from omega.constellation.settings import load_settings
from omega.errors import OmegaError
from omega.protocol import Heartbeat, HeartbeatAck, Tier

from .server_support import SECRET, Device, small_codebook


def _settings(tmp_path: Path, codebook: Path):  # noqa: ANN202
    return load_settings(env={"OMEGA_SECRET": SECRET}, overrides={
        "store": f"sqlite:{tmp_path / 'c.db'}", "codebook": str(codebook), "port": 0, "log_level": "warning"})  # fmt: skip


async def test_serves_on_a_free_loopback_port_and_stops_cleanly(tmp_path: Path) -> None:
    small_codebook().save(tmp_path / "codebook.npz")
    settings = _settings(tmp_path, tmp_path / "codebook.npz")
    app = create_app(settings)
    server = await EmbeddedServer.start(settings, app)
    url = server.url
    try:
        assert url.startswith("http://127.0.0.1:") and server.bound_port() > 0
        dev = Device(51)
        async with httpx.AsyncClient() as client:
            assert (await client.get(url + "/readyz")).status_code == 200
            resp = await client.post(url + "/v1/sync", content=dev.frame(Heartbeat(Tier.CASUAL)))
        assert isinstance(dev.decode(resp.content).body, HeartbeatAck)
    finally:
        await server.stop()
    assert not app.state.omega.ready  # the lifespan ran its shutdown (store closed)
    async with httpx.AsyncClient() as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(url + "/healthz")


async def test_a_lifespan_that_fails_to_start_raises_its_reason(tmp_path: Path) -> None:
    settings = _settings(tmp_path, tmp_path / "missing-codebook.npz")
    with pytest.raises(OmegaError, match="codebook"):
        await EmbeddedServer.start(settings, create_app(settings))
