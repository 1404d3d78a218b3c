"""`omega model …` commands: build the INT8 MiniLM cache and describe it.

Heavy modules are imported inside the commands so `omega --help` stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from omega.cli.progress import notes

app = typer.Typer(help="the INT8 MiniLM embedding model: build it into the cache, inspect it", no_args_is_help=True)

CacheDirOption = Annotated[
    Path | None,
    typer.Option("--cache-dir", help="model cache directory (default: $OMEGA_MODEL_DIR or ~/.cache/omega/models/minilm-l6-v2-int8)"),
]


@app.command("build")
def build(
    cache_dir: CacheDirOption = None,
    force: Annotated[bool, typer.Option("--force", help="rebuild even when the cache is valid")] = False,
) -> None:
    """Build (or verify) the INT8 model from the installed weights; prints the cache path."""
    from omega.modelbuild import ensure_model

    say = notes("model")
    path = ensure_model(cache_dir, progress=say, force=force)
    say(f"model ready in {path}")
    print(path)


@app.command("info")
def info(
    cache_dir: CacheDirOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object on stdout")] = False,
) -> None:
    """Describe the model cache: whether it is valid, its files, sizes and digests."""
    from omega.modelbuild import default_model_dir, ext_problem, fused_problem, manifest_problem, read_manifest

    path = cache_dir if cache_dir is not None else default_model_dir()
    manifest = read_manifest(path) if path.is_dir() else None
    problem = manifest_problem(path) if manifest is not None else "not built"
    report = {
        "cache_dir": str(path),
        "valid": problem is None,
        "problem": problem,
        "builder_version": manifest.get("builder_version") if manifest else None,
        "model": manifest.get("model") if manifest else None,
        "dim": manifest.get("dim") if manifest else None,
        "built_at": manifest.get("built_at") if manifest else None,
        "weights_sha256": manifest.get("source", {}).get("weights_sha256") if manifest else None,
        "int8_cosine_check": manifest.get("check_int8_cosine_min") if manifest else None,
        "files": manifest.get("files", {}) if manifest else {},
        # the INT8 weights as external data (mapped, not copied, by the TV's embedder); rebuilt by `omega model build`
        "int8_external_data": problem is None and ext_problem(path) is None,
        # over them, the graph with fused GELU and attention (bit-identical outputs), which the embedder loads first
        "int8_fused_graph": problem is None and ext_problem(path) is None and fused_problem(path) is None,
    }
    if as_json:
        print(json.dumps(report, indent=2))
        return
    print(f"cache:   {report['cache_dir']}")
    print(f"status:  {'valid' if problem is None else 'needs `omega model build` (' + str(problem) + ')'}")
    if manifest:
        print(f"model:   {report['model']} ({report['dim']}-d), builder {report['builder_version']}, built {report['built_at']}")
        for name, meta in sorted(report["files"].items()):
            size = meta.get("bytes", 0) / 1e6 if isinstance(meta, dict) else 0.0
            digest = meta.get("sha256", "?") if isinstance(meta, dict) else "?"
            print(f"  {name:<18} {size:7.1f} MB  sha256 {digest}")


def register(root: typer.Typer) -> None:
    """Attach `omega model …` to the root app."""
    root.add_typer(app, name="model")
