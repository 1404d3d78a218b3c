"""Cloud-side commands: `omega serve`, `omega device token`, `omega codebook build`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from omega.errors import OmegaError

device_app = typer.Typer(help="device credentials issued from the server secret", no_args_is_help=True)
codebook_app = typer.Typer(help="the versioned global codebook of pattern cells", no_args_is_help=True)


def _settings(config: Path | None, create_secret: bool, **flags):  # noqa: ANN003, ANN202
    from omega.constellation.settings import load_settings, with_dev_secret

    return with_dev_secret(load_settings(config, overrides=flags), create=create_secret)


def serve(
    host: Annotated[str | None, typer.Option("--host", help="address to listen on (default 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option("--port", help="TCP port (default 8700; 0 picks a free one)")] = None,
    store: Annotated[str | None, typer.Option("--store", help="sqlite:PATH (default) or postgresql://…")] = None,
    redis: Annotated[str | None, typer.Option("--redis", help="redis://HOST:PORT/DB: shared hot cache, rate-limit and replay state (optional)")] = None,
    nats: Annotated[str | None, typer.Option("--nats", help="nats://HOST:PORT[,…]: federate this shard over NATS JetStream (optional)")] = None,
    shard_id: Annotated[str | None, typer.Option("--shard-id", help="this shard's origin id (unique in the fleet)")] = None,
    region: Annotated[str | None, typer.Option("--region", help="region this shard federates into")] = None,
    codebook: Annotated[str | None, typer.Option("--codebook", help=".npz from `omega codebook build`")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="TOML or JSON settings file")] = None,
    log_level: Annotated[str | None, typer.Option("--log-level", help="critical|error|warning|info|debug")] = None,
    tls_cert: Annotated[str | None, typer.Option("--tls-cert", help="PEM certificate chain: serve https:// and wss:// (with --tls-key)")] = None,
    tls_key: Annotated[str | None, typer.Option("--tls-key", help="PEM private key of --tls-cert")] = None,
    admin_token: Annotated[str | None, typer.Option("--admin-token",
        help="bearer token (>= 16 chars) opening /metrics, /dashboard and /v1/stats|trends|dashboard.json to "
             "non-loopback peers; without it they answer 127.0.0.1/::1 only")] = None,  # fmt: skip
    dp_epsilon: Annotated[float | None, typer.Option("--dp-epsilon", help="differential privacy: ε per TV per day of what is published (default 0 = off, k_min only)")] = None,
    dp_delta: Annotated[float | None, typer.Option("--dp-delta", help="δ per TV per day with --dp-epsilon (default 1e-6)")] = None,
    workers: Annotated[int | None, typer.Option("--workers",
        help="worker processes on the port (SO_REUSEPORT; default 1; more need a postgresql:// store, "
             "and --redis or --pinned)")] = None,  # fmt: skip
    pinned: Annotated[bool | None, typer.Option("--pinned/--no-pinned",
        help="devices pinned to workers by a proxy hashing the X-Omega-Device header: the header is "
             "required, worker i listens on --port + i (no Redis needed)")] = None,  # fmt: skip
) -> None:
    """Run the constellation's sync server for one shard (until SIGTERM/SIGINT, which drain first).

    Settings, lowest to highest priority: defaults, --config, OMEGA_* environment, flags.
    The secret comes from OMEGA_SECRET / OMEGA_SECRETS / the config; with none and a
    sqlite store, one is generated into `omega-secret` beside the store.
    With --nats the shard federates (every OMEGA_FEDERATION_INTERVAL_S, default 60) into
    --region; the operator dashboard is at http://HOST:PORT/dashboard.
    With --tls-cert/--tls-key the server speaks only TLS (https://, wss://); TVs refuse
    plain http:// to anything but loopback unless told --insecure.
    Operator endpoints (/metrics, /dashboard, read-only /v1/*) answer loopback peers only,
    unless --admin-token is set (then `Authorization: Bearer TOKEN`, or ?token=TOKEN).
    Connections must send a complete request within OMEGA_REQUEST_TIMEOUT_S (10), a WebSocket
    an authenticated first frame within OMEGA_WS_AUTH_TIMEOUT_S (10); OMEGA_MAX_CONNECTIONS
    (16000, and below the open-file limit) and OMEGA_MAX_CONNECTIONS_PER_IP (512; 0 behind a proxy).
    With --dp-epsilon E (and --dp-delta D) what TVs pull is one release per day: every
    edge's and pair's distinct support plus Gaussian noise, published only when the noised
    support passes a threshold (OpenDP), (E, D)-differentially private per TV per day, with
    at most 64 keys per TV per day; embedding patterns are released in the same budget, as
    the noised direction and success rate of the previous day's contributions. At ε 8 the
    threshold is ~57 TVs, at ε 1 ~370: fine for a fleet of millions, most of the signal at 610.
    A day's viewing stays in the 30 daily releases of the contribution window: over them
    ε 8 → 69, 4 → 30, 2 → 13.5, 1 → 6.3 (δ 1e-6). Each day's release and the keys each
    TV used are kept in the store: a restart or another worker serves the same draw.
    With --workers N, N processes share the port (the kernel spreads connections); they must share
    the store (postgresql://) and the rate-limit and replay state (--redis), else N > 1 is refused.
    With --pinned instead of --redis, worker i listens on --port + i and a proxy pins each device to
    one of them by its X-Omega-Device header (deploy/haproxy/haproxy-pinned.cfg); requests without
    the header are refused.
    """
    settings = _settings(config, True, host=host, port=port, store=store, redis=redis, nats=nats,
                         shard_id=shard_id, region=region, codebook=codebook, log_level=log_level,
                         tls_cert=tls_cert, tls_key=tls_key, admin_token=admin_token,
                         dp_epsilon=dp_epsilon, dp_delta=dp_delta, workers=workers, pinned=pinned)  # fmt: skip
    from omega.constellation.__main__ import run  # the same start-up as `python -m omega.constellation`

    run(settings)


@device_app.command("token")
def device_token(
    device_id: Annotated[str, typer.Option("--device-id", help="the TV's device id (UUID)")],
    key_id: Annotated[int | None, typer.Option("--key-id", help="secret to derive from (default: the active one)")] = None,
    store: Annotated[str | None, typer.Option("--store", help="store URL (finds a generated dev secret beside it)")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="TOML or JSON settings file")] = None,
) -> None:
    """Print the device's token (omega1.<key_id>.<key>) derived from the server secret."""
    from omega.constellation.keyring import Keyring, parse_device_id

    device = parse_device_id(device_id)
    settings = _settings(config, False, store=store)
    print(Keyring(settings.secrets, settings.active_key_id).token(device, key_id))


@codebook_app.command("build")
def codebook_build(
    catalog: Annotated[Path, typer.Option("--catalog", help="MovieLens folder whose items are embedded")],
    out: Annotated[Path, typer.Option("--out", help="codebook file to write (.npz)")],
    k: Annotated[int, typer.Option("--k", help="number of cells")] = 256,
    version: Annotated[int, typer.Option("--version", help="codebook version (bump on every rebuild)")] = 1,
    seed: Annotated[int, typer.Option("--seed", help="k-means seed")] = 0,
) -> None:
    """Embed a catalog with the TV's model and find the cells of a codebook in it (spherical k-means)."""
    from omega.brain.embedder import Embedder
    from omega.constellation.codebook import Codebook, build_codebook
    from omega.datasets.movielens import load_movielens

    if not 1 <= k <= 65_536:
        raise OmegaError(f"--k must be in 1..65536, got {k}")
    if version < 0:
        raise OmegaError(f"--version must be >= 0, got {version}")
    if not out.parent.resolve().is_dir():
        raise OmegaError(f"output folder does not exist: {out.parent}")
    items = load_movielens(catalog).items
    print(f"omega codebook: embedding {len(items)} items", file=sys.stderr, flush=True)
    vectors = Embedder().embed_batch([it.text() for it in items])
    book = build_codebook(vectors, k=k, seed=seed, version=version)
    book.save(out)
    Codebook.load(out)  # what the servers will do: must verify
    print(f"omega codebook: wrote {out} (version {book.version}, k={book.k}, fingerprint {book.fingerprint[:16]})",
          file=sys.stderr)  # fmt: skip


def register(root: typer.Typer) -> None:
    """Attach this module's commands to the root app."""
    root.command("serve")(serve)
    root.add_typer(device_app, name="device")
    root.add_typer(codebook_app, name="codebook")
