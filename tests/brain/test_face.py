"""The brain's public face: main types importable from `omega.brain`, heavy libraries loaded only on use."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import omega.brain

HEAVY = ("onnxruntime", "hnswlib", "usearch", "tokenizers")

PROBE = """
import json, sys
for name in sys.argv[1:]:
    __import__(name)
print(json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)))
"""


def loaded_after(*modules: str) -> list[str]:
    """Heavy libraries in a fresh interpreter after importing `modules`."""
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(heavy=HEAVY), *modules], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)


@pytest.mark.parametrize("module", ["omega.brain", "omega.brain.records", "omega.brain.store", "omega.brain.sync"])
def test_light_parts_do_not_load_the_model_or_index_libraries(module: str):
    assert loaded_after(module) == []


def test_the_brain_itself_loads_them_on_first_use():
    assert "onnxruntime" in loaded_after("omega.brain.brain")


def test_a_brain_on_the_default_index_backend_never_loads_usearch():
    """usearch (+ its tqdm and numkong imports, ~17 MB of a TV's RSS) is loaded only by the usearch backend."""
    assert "usearch" not in loaded_after("omega.brain.brain", "omega.brain.catalog", "omega.brain.index")


def test_the_brain_bench_child_imports_nothing_a_tv_does_not():
    """The bench measures a TV's RSS in a process that imports omega.sim.bench.brain: not the sync bench's stack."""
    probe = "import json, sys, omega.sim.bench.brain; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    bench_only = ("omega.sim.bench.sync", "omega.sim.bench.poisoning", "omega.protocol", "usearch")
    assert [m for m in json.loads(out) if m.startswith(bench_only)] == []


def test_a_tv_loading_its_saved_index_imports_no_file_or_process_tools(tmp_path):
    """A TV's start (the brain's modules, the saved hnswlib index loaded, freed memory trimmed) imports neither
    tempfile, shutil nor subprocess (ctypes.util's find_library runs ldconfig through them) nor tomllib: ~1.5 MB
    of RSS a TV that ranks with the shipped defaults has no use for."""
    import numpy as np

    from omega.brain.index import VectorIndex

    index = VectorIndex(16, dtype="f32", backend="hnswlib", exact_below=0)
    index.add(np.arange(300), np.random.default_rng(0).normal(size=(300, 16)).astype(np.float32))
    path = tmp_path / "catalog.index"
    index.save(path)
    probe = (
        "import json, sys; from omega.brain.brain import Brain, release_freed_memory;"
        " from omega.brain.index import VectorIndex;"
        f" found = VectorIndex.load({str(path)!r}, dim=16).search([1.0] * 16, 5)[0]; release_freed_memory();"
        " print(json.dumps([len(found), sorted(m for m in ('tempfile', 'shutil', 'subprocess', 'tomllib')"
        " if m in sys.modules)]))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == [5, []]


def test_main_types_come_from_the_package_and_are_the_modules_own():
    from omega.brain import Brain, BrainConfig, BrainStore, Catalog, Embedder, Pattern, Recommender, VectorIndex
    from omega.brain.brain import Brain as DefinedBrain
    from omega.brain.catalog import Catalog as DefinedCatalog
    from omega.brain.config import BrainConfig as DefinedConfig
    from omega.brain.embedder import Embedder as DefinedEmbedder
    from omega.brain.index import VectorIndex as DefinedIndex
    from omega.brain.records import Pattern as DefinedPattern
    from omega.brain.recommender import Recommender as DefinedRecommender
    from omega.brain.store import BrainStore as DefinedStore

    assert (Brain, BrainConfig, BrainStore, Catalog, Embedder, Pattern, Recommender, VectorIndex) == (
        DefinedBrain, DefinedConfig, DefinedStore, DefinedCatalog, DefinedEmbedder, DefinedPattern,
        DefinedRecommender, DefinedIndex,
    )  # fmt: skip
    assert set(omega.brain.__all__) <= set(dir(omega.brain))
    assert all(getattr(omega.brain, name) is not None for name in omega.brain.__all__)
    with pytest.raises(AttributeError, match="no attribute 'Brian'"):
        omega.brain.Brian  # noqa: B018
