"""Transport security: the TV syncs over TLS with a CA it is told to trust, refuses one it is not, and
never sends plain http:// / ws:// beyond loopback unless told --insecure (issue 14, Transport)."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import trustme
from sync_peer import Peer, RunningPeer, token_for
from sync_support import NOW, consolidated, make_agent, pattern

from omega.brain.store import BrainStore
from omega.brain.sync import SyncAgent, SyncFailed, open_transport, policy_for
from omega.brain.sync.transport import check_server_url, is_loopback
from omega.errors import OmegaError
from omega.protocol import Tier

OMEGA = str(Path(sys.executable).parent / "omega")
TIERS = [Tier.CASUAL, Tier.ACTIVE, Tier.PREMIUM]


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, str]:
    """A CA with a server certificate for 127.0.0.1 and localhost, and a second CA that signed nothing here."""
    folder = tmp_path_factory.mktemp("pki")
    ca, stranger = trustme.CA(), trustme.CA()
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    paths = {"ca": folder / "ca.pem", "stranger": folder / "stranger.pem", "cert": folder / "cert.pem", "key": folder / "key.pem"}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    stranger.cert_pem.write_to_path(str(paths["stranger"]))
    leaf.private_key_pem.write_to_path(str(paths["key"]))
    with open(paths["cert"], "wb") as fh:
        for blob in leaf.cert_chain_pems:
            fh.write(blob.bytes())
    return {k: str(v) for k, v in paths.items()}


@pytest.fixture
def store(tmp_path: Path):
    with BrainStore(tmp_path / "tv.db", clock=lambda: NOW) as s:
        for i in range(2):
            s.put_pattern(pattern(i))
        yield s


@pytest.fixture
def tls_peer(pki):
    with RunningPeer(Peer(changes=[consolidated(i) for i in range(3)]), tls_cert=pki["cert"], tls_key=pki["key"]) as running:
        yield running


def tls_agent(store, url: str, tier: Tier, ca_file: str | None) -> SyncAgent:
    agent = make_agent(store, url, tier)
    agent.transport = open_transport(agent.policy, url, timeout_s=2.0, ca_file=ca_file)
    return agent


@pytest.mark.parametrize("tier", TIERS)
async def test_a_tv_syncs_over_tls_with_the_ca_it_trusts(store, tls_peer, pki, tier):
    assert tls_peer.url.startswith("https://")
    agent = tls_agent(store, tls_peer.url, tier, pki["ca"])
    try:
        report = await agent.sync_once()
    finally:
        await agent.close()
    assert report.pushed_patterns == 2 and report.pulled_patterns == 3 and report.errors == []


@pytest.mark.parametrize("tier", TIERS)
@pytest.mark.parametrize("ca", ["stranger", None])  # another CA, and the system's CAs
async def test_a_certificate_from_an_untrusted_ca_is_refused_in_one_line(store, tls_peer, pki, tier, ca):
    agent = tls_agent(store, tls_peer.url, tier, pki[ca] if ca else None)
    try:
        with pytest.raises(SyncFailed) as failed:
            await agent.sync_once()
    finally:
        await agent.close()
    message = str(failed.value)
    assert failed.value.code == "tls" and "not trusted" in message and "\n" not in message, message
    assert tls_peer.peer.kinds == []  # nothing was sent
    assert agent.outbox.pending_count() == 1  # sealed and kept for a later try


@pytest.mark.parametrize("url", ["http://sync.example.com:8700", "ws://10.0.0.5:8700", "http://[2001:db8::1]:80"])
def test_plain_text_beyond_loopback_is_refused_unless_insecure(store, url):
    with pytest.raises(OmegaError, match="refusing plain"):
        check_server_url(url)
    with pytest.raises(OmegaError, match="refusing plain"):
        SyncAgent(store, server_url=url, device_id=bytes(16), token=token_for(bytes(16)))
    with pytest.raises(OmegaError, match="refusing plain"):
        open_transport(policy_for(Tier.CASUAL), url, timeout_s=1.0)
    check_server_url(url, insecure=True)  # told so: allowed
    SyncAgent(store, server_url=url, device_id=bytes(16), token=token_for(bytes(16)), insecure=True)


@pytest.mark.parametrize(
    "host,loop",
    [("127.0.0.1", True), ("127.8.9.10", True), ("localhost", True), ("::1", True), ("[::1]", True),
     ("10.0.0.1", False), ("example.com", False), ("localhost.example.com", False), ("0.0.0.0", False)],
)  # fmt: skip
def test_loopback_is_this_machine_only(host, loop):
    assert is_loopback(host) is loop


def omega(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([OMEGA, *args], capture_output=True, text=True, timeout=60)


def test_cli_refuses_plain_http_and_an_untrusted_certificate_in_one_line(tls_peer, pki, tmp_path):
    db = str(tmp_path / "cli.db")
    with BrainStore(db, clock=lambda: NOW) as s:
        s.put_pattern(pattern(0))
    device = uuid.uuid4()
    ident = ["--device-id", str(device), "--token", token_for(device.bytes)]
    plain = omega("brain", "--db", db, "sync", "--server", "http://sync.example.com:8700", *ident)
    assert plain.returncode == 2 and plain.stderr.count("\n") == 1 and "refusing plain http://" in plain.stderr
    untrusted = omega("brain", "--db", db, "sync", "--server", tls_peer.url, "--ca-file", pki["stranger"], *ident)
    assert untrusted.returncode == 2 and untrusted.stderr.count("\n") == 1, untrusted.stderr
    assert "not trusted" in untrusted.stderr and "Traceback" not in untrusted.stderr
    missing = omega("brain", "--db", db, "sync", "--server", tls_peer.url, "--ca-file", str(tmp_path / "nope.pem"), *ident)
    assert missing.returncode == 2 and "CA file not found" in missing.stderr and missing.stderr.count("\n") == 1
    trusted = omega("brain", "--db", db, "sync", "--server", tls_peer.url, "--ca-file", pki["ca"], "--json", *ident)
    assert trusted.returncode == 0, trusted.stderr
    assert json.loads(trusted.stdout)["pulled_patterns"] == 3


async def test_omega_serve_speaks_tls_and_a_tv_that_trusts_its_ca_syncs(tmp_path, store, pki):
    """`omega serve --tls-cert --tls-key`: the real server over TLS; the TV trusts it via --ca-file only."""
    import httpx

    from omega.sim.load.server_process import ServerProcess

    secret = "tls-test-secret-0123456789abcdef"
    command = (sys.executable, "-c", "from omega.cli import run; run()", "serve", "--tls-cert", pki["cert"], "--tls-key", pki["key"])
    server = ServerProcess(tmp_path, secret=secret, command=command).start()
    try:
        assert server.url.startswith("https://")
        import ssl

        assert httpx.get(server.url + "/healthz", verify=ssl.create_default_context(cafile=pki["ca"]), timeout=10).status_code == 200
        with pytest.raises(httpx.HTTPError):  # plain http to the TLS port gets no answer
            httpx.get(f"http://127.0.0.1:{server.port}/healthz", timeout=5).raise_for_status()
        from omega.constellation.keyring import Keyring

        device = uuid.UUID(int=42).bytes
        token = Keyring({1: secret.encode()}, 1).token(device)
        for tier, ca, ok in ((Tier.CASUAL, pki["ca"], True), (Tier.PREMIUM, pki["ca"], True), (Tier.ACTIVE, pki["stranger"], False)):
            agent = SyncAgent(store, server_url=server.url, device_id=device, token=token, tier=tier, ca_file=ca)
            try:
                if ok:
                    report = await agent.sync_once()
                    assert report.errors == []
                else:
                    with pytest.raises(SyncFailed, match="not trusted"):
                        await agent.sync_once()
            finally:
                await agent.close()
        assert server.terminate() == 0
    finally:
        server.kill()
    assert "Traceback" not in server.log_text()


def test_omega_serve_refuses_a_bad_tls_pair_in_one_line(tmp_path, pki):
    env_cmd = [sys.executable, "-c", "from omega.cli import run; run()", "serve", "--store", f"sqlite:{tmp_path / 'c.db'}"]
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("OMEGA_")} | {"OMEGA_SECRET": "x" * 32}
    for extra, needle in (
        (["--tls-cert", pki["cert"]], "tls_cert and tls_key go together"),
        (["--tls-cert", pki["cert"], "--tls-key", str(tmp_path / "nope.pem")], "TLS file not found"),
        (["--tls-cert", pki["ca"], "--tls-key", pki["key"]], "cannot use TLS certificate"),
    ):
        out = subprocess.run(env_cmd + extra, capture_output=True, text=True, env=env, timeout=60)
        lines = out.stderr.strip().splitlines()
        assert out.returncode == 2 and len(lines) == 1 and needle in lines[0], out.stderr
