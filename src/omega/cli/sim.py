"""Simulation commands: `omega demo`, `omega eval`, `omega load`, `omega capacity`."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Attach this module's commands to the root app."""
