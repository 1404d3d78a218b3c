"""Operator endpoints answer loopback peers only, unless an admin token is set (then a bearer token opens them)."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from omega.constellation.app import create_app
from omega.constellation.settings import ServerSettings
from omega.errors import OmegaError

SECRETS = {1: b"admin-test-secret-0123456789"}
ADMIN = ("/metrics", "/dashboard", "/v1/stats", "/v1/trends", "/v1/dashboard.json")


def _client(client_host: str, **settings: object) -> TestClient:
    app = create_app(ServerSettings(secrets=SECRETS, **settings))  # type: ignore[arg-type]
    return TestClient(app, client=(client_host, 50000))  # no lifespan: the guard answers before any handler


@pytest.mark.parametrize("path", ADMIN)
def test_remote_peers_are_refused_without_a_token(path: str) -> None:
    resp = _client("203.0.113.7").get(path)
    assert resp.status_code == 403 and "admin-token" in resp.json()["error"]


def test_loopback_reads_metrics_and_health_stays_open() -> None:
    assert _client("127.0.0.1").get("/metrics").status_code == 200
    assert _client("::1").get("/metrics").status_code == 200
    assert _client("203.0.113.7").get("/healthz").status_code == 200


@pytest.mark.parametrize("host", ["203.0.113.7", "127.0.0.1"])
def test_with_a_token_every_peer_needs_it(host: str) -> None:
    token = "t0ken-for-the-operators-only"
    client = _client(host, admin_token=token)
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong-token-wrong-token"}).status_code == 401
    assert client.get("/metrics", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert client.get(f"/dashboard?token={token}").status_code == 200


def test_a_short_admin_token_is_one_clear_error() -> None:
    with pytest.raises(OmegaError, match="admin token"):
        ServerSettings(secrets=SECRETS, admin_token="short")
