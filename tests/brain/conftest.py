"""Fixtures shared by the brain's tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sync_support import NOW

from omega.brain.store import BrainStore


@pytest.fixture
def store(tmp_path: Path) -> Iterator[BrainStore]:
    """An empty TV store whose clock stands at NOW (tests that need a filled one override this)."""
    with BrainStore(tmp_path / "tv.db", clock=lambda: NOW) as s:
        yield s
