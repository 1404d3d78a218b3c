"""`python -m omega.constellation`: run one sync-server shard, configured by its settings alone.

This is what `omega serve` runs once it has parsed its flags, without the CLI: the
settings come from OMEGA_* environment variables and the OMEGA_CONFIG file (the
same merge as `omega serve`, see `omega.constellation.settings`); with no secret
and a sqlite store, a development secret is generated beside the store. It prints
`listening on http://HOST:PORT` on stderr once ready and drains on SIGTERM/SIGINT.
A bad setting or a failed start is one line on stderr and exit code 2.
"""

from __future__ import annotations

import os
import sys

# As the omega CLI does (see omega/cli/__init__.py): NumPy's BLAS threads busy-wait between small
# operations and cost the server most of its throughput. Must be set before numpy loads.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import logging  # noqa: E402

from omega.constellation.settings import ServerSettings, load_settings, with_dev_secret  # noqa: E402
from omega.errors import OmegaError  # noqa: E402


def run(settings: ServerSettings) -> None:
    """Serve one shard with these settings until SIGTERM/SIGINT."""
    logging.basicConfig(level=settings.log_level.upper(), stream=sys.stderr, format="omega serve: %(message)s")
    if settings.codebook:  # fail fast, as one line, before anything listens
        from omega.constellation.codebook import Codebook

        Codebook.load(settings.codebook)
    from omega.constellation.runner import serve

    serve(settings)


def main(argv: list[str] | None = None) -> int:
    """Entry point: settings from the environment, then `run`; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m omega.constellation",
        description="Run one sync-server shard. Settings: OMEGA_* environment variables and OMEGA_CONFIG "
        "(OMEGA_HOST, OMEGA_PORT, OMEGA_STORE, OMEGA_SECRET, OMEGA_REDIS, OMEGA_NATS, OMEGA_SHARD_ID, ...; "
        "the names of `omega serve --help`'s flags).",
    )
    parser.parse_args(argv)
    try:
        run(with_dev_secret(load_settings(), create=True))
    except OmegaError as exc:
        print(f"omega: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
