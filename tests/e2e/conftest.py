"""Fixtures of the end-to-end tests: real `omega serve` processes, a shared catalog, TVs (see support.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from omega.brain.catalog import Catalog

from .support import ServerProcess, shared_catalog


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """make(**env) -> a not-yet-started ServerProcess with its own store in tmp_path; all are killed at the end."""
    made: list[ServerProcess] = []

    def make(**env: str) -> ServerProcess:
        folder = tmp_path / f"server{len(made)}"
        folder.mkdir()
        server = ServerProcess(folder, **env)
        made.append(server)
        return server

    yield make
    for server in made:
        server.kill()


@pytest.fixture
def server(server_factory: Callable[..., ServerProcess]) -> ServerProcess:
    """A started server that publishes at k_min=1, so a single TV's pushes come back in its pulls."""
    return server_factory(OMEGA_K_MIN="1").start()


@pytest.fixture(scope="session")
def catalog() -> Catalog:
    return shared_catalog(48)
