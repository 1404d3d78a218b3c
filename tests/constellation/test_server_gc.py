"""The collector of a serving process (runner.tune_gc): tuned by `omega serve` and its workers, not by an embedder."""

from __future__ import annotations

import gc
from pathlib import Path

from omega.constellation.app import create_app
from omega.constellation.runner import GC_THRESHOLD0, EmbeddedServer, tune_gc
from omega.constellation.settings import load_settings

from .server_support import SECRET, small_codebook


def test_tune_gc_collects_young_objects_less_often_and_freezes_start_up() -> None:
    before = gc.get_threshold()
    try:
        gc.unfreeze()
        tune_gc()
        assert gc.get_threshold() == (GC_THRESHOLD0, *before[1:])
        assert GC_THRESHOLD0 > 700  # above CPython's default
        assert gc.get_freeze_count() > 0  # what start-up built is left out of later full collections
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


async def test_an_embedded_server_leaves_the_embedding_process_collector_alone(tmp_path: Path) -> None:
    small_codebook().save(tmp_path / "codebook.npz")
    settings = load_settings(env={"OMEGA_SECRET": SECRET}, overrides={
        "store": f"sqlite:{tmp_path / 'c.db'}", "codebook": str(tmp_path / "codebook.npz"), "port": 0,
        "log_level": "warning"})  # fmt: skip
    before, frozen = gc.get_threshold(), gc.get_freeze_count()
    server = await EmbeddedServer.start(settings, create_app(settings))
    try:
        assert gc.get_threshold() == before and gc.get_freeze_count() == frozen
    finally:
        await server.stop()
