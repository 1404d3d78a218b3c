"""The public face of `omega.constellation`: its exports resolve lazily, and nothing imports in a cycle."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

import omega.constellation as constellation

# A fresh interpreter: what `import omega.constellation.crdt` loads, and whether every module imports first.
_PROBE = """
import importlib, json, pkgutil, sys
import omega.constellation.crdt
heavy = [m for m in ("starlette", "uvicorn", "asyncpg", "redis", "nats", "omega.constellation.app") if m in sys.modules]
import omega.constellation as pkg
names = [m.name for m in pkgutil.walk_packages(pkg.__path__, "omega.constellation.") if "__main__" not in m.name]
for name in ["omega.constellation", *names]:
    for loaded in [m for m in sys.modules if m == "omega" or m.startswith("omega.")]:
        del sys.modules[loaded]
    importlib.import_module(name)  # first import of this module alone: a cycle would fail here
print(json.dumps({"heavy": heavy, "imported": names}))
"""


def test_every_export_resolves_to_its_defining_object() -> None:
    assert constellation.__all__ == sorted(constellation.__all__)
    for name in constellation.__all__:
        value = getattr(constellation, name)
        module = importlib.import_module(f"omega.constellation.{constellation._EXPORTS[name]}")
        assert value is getattr(module, name)
    assert set(constellation.__all__) <= set(dir(constellation))


def test_unknown_attribute_is_an_attribute_error() -> None:
    try:
        constellation.no_such_thing  # noqa: B018
    except AttributeError as exc:
        assert "no_such_thing" in str(exc)
    else:
        raise AssertionError("expected AttributeError")


def test_the_crdt_alone_stays_light_and_no_module_imports_in_a_cycle() -> None:
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    found = json.loads(out.stdout)
    assert found["heavy"] == []
    assert {"omega.constellation.app", "omega.constellation.store.logic"} <= set(found["imported"])
