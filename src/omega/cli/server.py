"""Cloud-side commands: `omega serve`, `omega device`, `omega codebook`, `omega aggregator`, `omega hub`."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Attach this module's commands to the root app."""
