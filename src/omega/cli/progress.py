"""How the `omega` command shows progress: on stderr, so stdout stays clean for `--json`.

The work reports through the callbacks of `omega.progress`; these are the CLI's ends of them.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from omega.progress import Notes, Stage


def notes(command: str) -> Notes:
    """A `Notes` callback printing "omega COMMAND: message" lines on stderr."""

    def say(message: str) -> None:
        print(f"omega {command}: {message}", file=sys.stderr, flush=True)

    return say


@contextmanager
def bars() -> Iterator[Stage]:
    """A stage callback `stage(name, done, total)` drawing one rich progress bar per stage on stderr.

    The display starts with the first stage, so an early error stays the single line it should be.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(
        TextColumn("{task.description:<26}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=Console(stderr=True),
    )  # fmt: skip
    tasks: dict[str, Any] = {}

    def stage(name: str, done: int, total: int) -> None:
        if not tasks:
            progress.start()
        if name not in tasks:
            tasks[name] = progress.add_task(name, total=max(total, 1))
        progress.update(tasks[name], completed=done, total=max(total, 1))

    try:
        yield stage
    finally:
        if tasks:
            progress.stop()
