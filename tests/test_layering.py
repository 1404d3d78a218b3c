"""The layering, enforced from the import graph of src/omega (docs/architecture.md §2).

Every `import`/`from ... import` (relative ones resolved, those under `if TYPE_CHECKING:`
and inside functions included) and every string constant naming one of our modules
(the lazy faces pass module names to `importlib.import_module`) is an edge. The rules:

- `omega.protocol` imports nothing of ours (only itself);
- `omega.brain` (the TV's runtime) imports only itself, `omega.protocol` and the shared base
  (`omega.errors`, `omega.progress`):
  never `omega.constellation`, and never the build-time parts (`omega.datasets`,
  `omega.modelbuild`) or the simulator;
- `omega.constellation` imports only itself, `omega.protocol`, `omega.errors` and `omega.progress`;
- nothing imports `omega.cli` but `omega.cli` itself (the `omega` script entry point is
  declared in pyproject.toml, not imported).

The checker is tested on synthetic trees that break each rule, so it cannot pass vacuously.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

#: package -> the top-level packages of ours it may import (itself always allowed)
ALLOWED: dict[str, frozenset[str]] = {
    "protocol": frozenset(),
    "brain": frozenset({"protocol", "errors", "progress"}),
    "constellation": frozenset({"protocol", "errors", "progress"}),
}
#: packages only they themselves may import
PRIVATE = frozenset({"cli"})

_MODULE_NAME = re.compile(r"omega(\.[A-Za-z_][A-Za-z0-9_]*)+")


@dataclass(frozen=True)
class Edge:
    importer: str  # dotted module name, e.g. omega.brain.brain
    imported: str  # dotted module name, e.g. omega.protocol.messages
    line: int


def module_name(path: Path, src: Path) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve_relative(importer: str, is_package: bool, level: int, module: str | None) -> str:
    base = importer.split(".")
    if not is_package:
        base = base[:-1]  # a module's relative imports start from its package
    if level > 1:
        base = base[: -(level - 1)]
    return ".".join(base + ([module] if module else []))


def imports_of(path: Path, src: Path, known: frozenset[str] = frozenset()) -> list[Edge]:
    """Every edge from the module at `path` to a module named `omega...`.

    A string constant is an edge only if it names one of the `known` modules (so a logger
    called "omega.serve" or the file name "omega.proto" is not).
    """
    importer = module_name(path, src)
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    edges: list[Edge] = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                target = _resolve_relative(importer, is_package, node.level, node.module)
            else:
                target = node.module or ""
            # `from omega.x import y` may import the submodule omega.x.y: count both.
            names = [target] + [f"{target}.{alias.name}" for alias in node.names if alias.name != "*"]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if _MODULE_NAME.fullmatch(node.value) and node.value in known:
                names = [node.value]
        for name in names:
            if name == "omega" or name.startswith("omega."):
                edges.append(Edge(importer, name, getattr(node, "lineno", 0)))
    return edges


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def violations(src: Path) -> list[str]:
    """One line per import that breaks the layering, for every module under src/omega."""
    found: list[str] = []
    paths = sorted((src / "omega").rglob("*.py"))
    known = frozenset(module_name(path, src) for path in paths)
    for path in paths:
        for edge in imports_of(path, src, known):
            here, there = _package(edge.importer), _package(edge.imported)
            if not there or there == here:
                continue
            where = f"{path.relative_to(src)}:{edge.line}: {edge.importer} imports {edge.imported}"
            if here in ALLOWED and there not in ALLOWED[here]:
                found.append(f"{where} (omega.{here} may import only {sorted(ALLOWED[here]) or 'nothing of ours'})")
            elif there in PRIVATE:
                found.append(f"{where} (nothing but omega.{there} imports omega.{there})")
    return found


def test_the_source_tree_keeps_its_layering() -> None:
    assert violations(SRC) == []


def test_the_checker_sees_the_real_import_graph() -> None:
    """The graph it reads is the real one: known edges are in it (so an empty result means something)."""
    paths = list((SRC / "omega").rglob("*.py"))
    known = frozenset(module_name(p, SRC) for p in paths)
    edges = {(e.importer, e.imported) for p in paths for e in imports_of(p, SRC, known)}
    importers = {importer for importer, _ in edges}
    assert any(i.startswith("omega.brain") for i, t in edges if t.startswith("omega.protocol"))
    assert any(i.startswith("omega.sim") for i, t in edges if t.startswith("omega.constellation"))
    assert any(i.startswith("omega.cli") for i, t in edges if t.startswith("omega.brain"))
    assert ("omega.brain", "omega.brain.brain") in edges  # the lazy face's string names count
    assert len(importers) > 50


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in {"omega/__init__.py": "", **files}.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        for parent in path.relative_to(tmp_path).parents:
            init = tmp_path / parent / "__init__.py"
            if parent != Path(".") and not init.exists():
                init.write_text("")
        path.write_text(text)
    return tmp_path


@pytest.mark.parametrize(
    ("files", "needle"),
    [
        ({"omega/protocol/wire.py": "from omega.errors import OmegaError\n"}, "omega.protocol.wire imports omega.errors"),
        ({"omega/protocol/wire.py": "from .. import brain\n"}, "omega.protocol.wire imports omega.brain"),
        ({"omega/brain/x.py": "import omega.constellation.crdt\n"}, "omega.brain.x imports omega.constellation"),
        (
            {"omega/brain/x.py": "def f():\n    from omega.datasets import movielens\n"},
            "omega.brain.x imports omega.datasets",
        ),
        (
            {"omega/brain/x.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from omega.modelbuild import build\n"},
            "omega.brain.x imports omega.modelbuild",
        ),
        (
            {
                "omega/brain/__init__.py": "import importlib\nM = importlib.import_module('omega.sim.fleet')\n",
                "omega/sim/fleet.py": "",
            },
            "omega.brain imports omega.sim.fleet",
        ),
        ({"omega/constellation/a/b.py": "from ...brain.store import BrainStore\n"}, "omega.constellation.a.b imports omega.brain"),
        ({"omega/sim/run.py": "from omega.cli import app\n"}, "omega.sim.run imports omega.cli"),
        ({"omega/datasets/x.py": "import omega.cli.bench as b\n"}, "omega.datasets.x imports omega.cli"),
        ({"omega/sim/y.py": "from omega import cli\n"}, "omega.sim.y imports omega.cli"),
    ],
)
def test_the_checker_catches_each_kind_of_violation(tmp_path: Path, files: dict[str, str], needle: str) -> None:
    found = violations(_tree(tmp_path, files))
    assert any(needle in line for line in found), found


def test_the_checker_allows_what_the_layering_allows(tmp_path: Path) -> None:
    src = _tree(
        tmp_path,
        {
            "omega/protocol/a.py": "from omega.protocol import b\nfrom . import c\n",
            "omega/protocol/b.py": "",
            "omega/protocol/c.py": "",
            "omega/brain/x.py": "from omega.protocol.a import X\nfrom omega.errors import OmegaError\nfrom .y import Y\n",
            "omega/constellation/z.py": "from omega.protocol import a\nfrom ..errors import OmegaError\n",
            "omega/sim/s.py": "from omega.brain import x\nfrom omega.constellation import z\nfrom omega.datasets import d\n",
            "omega/cli/__init__.py": "from omega.cli import bench\nfrom omega.sim import s\n",
            "omega/cli/bench.py": "from . import __name__ as n\n",
            "omega/constellation/log.py": "import logging\nlog = logging.getLogger('omega.serve')\nP = 'omega.proto'\n",
        },
    )
    assert violations(src) == []
