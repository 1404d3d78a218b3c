"""`omega brain …` commands."""

from __future__ import annotations

import typer

app = typer.Typer(help="brain commands", no_args_is_help=True)
