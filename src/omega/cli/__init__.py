"""The `omega` command.

Each area keeps its commands in its own module; this one only wires them
together and turns errors into one clear line and an exit code (2 for bad
input or state, 1 for a bug), never a traceback unless OMEGA_DEBUG=1.
"""

from __future__ import annotations

import os
import sys

# NumPy's BLAS spins extra threads that busy-wait between small operations:
# measured here, it made each constellation push burn ~14 ms of CPU and cut
# throughput 4x. A TV shares its CPU anyway. Must be set before numpy loads.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import typer

from omega.cli import bench, brain, capacity, federation, load, model, server, sim

app = typer.Typer(
    name="omega",
    help="Exogenesis Omega: a recommendation brain on every TV, a constellation that only syncs patterns.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# Every command module attaches itself the same way: `register(app)`.
for _module in (model, brain, bench, server, sim, capacity, federation, load):
    _module.register(app)


def _error_types() -> tuple[type[BaseException], ...]:
    from omega.errors import OmegaError
    from omega.protocol.errors import ProtocolError

    return (OmegaError, ProtocolError)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `omega` console script; returns the exit code."""
    command = typer.main.get_command(app)
    debug = os.environ.get("OMEGA_DEBUG") == "1"
    try:
        # Standalone mode lets the CLI library print usage errors (exit 2) and help.
        command.main(args=argv, prog_name="omega", standalone_mode=True)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except KeyboardInterrupt:
        print("omega: interrupted", file=sys.stderr)
        code = 130
    except _error_types() as exc:
        if debug:
            raise
        print(f"omega: error: {exc}", file=sys.stderr)
        code = 2
    except Exception as exc:  # a bug: still one line, with a way to see more
        if debug:
            raise
        print(
            f"omega: internal error: {type(exc).__name__}: {exc} (run with OMEGA_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        code = 1
    return code


def run() -> None:
    sys.exit(main())
