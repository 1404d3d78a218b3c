"""Fixtures shared by the whole suite."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as the omega CLI does; see omega/cli/__init__.py

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("OMEGA_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow test: set OMEGA_SLOW=1 to run it")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def ml_latest_small() -> Path:
    """The real MovieLens latest-small folder from ../shared/data, or skip."""
    path = Path(os.environ.get("OMEGA_DATA", SHARED / "data")) / "ml-latest-small"
    if not (path / "ratings.csv").exists():
        pytest.skip(f"MovieLens latest-small not found at {path}")
    return path


@pytest.fixture(scope="session")
def embedder():
    """The real INT8 MiniLM embedder (built into the model cache on first use)."""
    from omega.brain.embedder import Embedder
    from omega.modelbuild import ensure_model

    return Embedder(ensure_model(), threads=1)
