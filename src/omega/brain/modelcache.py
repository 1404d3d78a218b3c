"""The model cache as a TV reads it: where it lives, its files, its manifest, the pooling.

A TV never builds the model (`omega.modelbuild` does, on a build host or at
set-up): it locates the cache, checks each file against the manifest's sha256
and runs it (`omega.brain.embedder`). Only the standard library and numpy.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

TOKENIZER_FILE = "tokenizer.json"
FP32_FILE = "model_fp32.onnx"
INT8_FILE = "model_int8.onnx"
MANIFEST_FILE = "manifest.json"
VARIANT_FILES = {"fp32": FP32_FILE, "int8": INT8_FILE}

# all-MiniLM-L6-v2 (config.json of the weights package): what the embedder needs.
MAX_POSITIONS = 512


def default_model_dir() -> Path:
    """Where the built model lives: $OMEGA_MODEL_DIR, else the user cache."""
    env = os.environ.get("OMEGA_MODEL_DIR")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "omega" / "models" / "minilm-l6-v2-int8"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(model_dir: Path) -> dict[str, Any] | None:
    """The cache's manifest, or None when it is absent or unreadable."""
    try:
        data = json.loads((model_dir / MANIFEST_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def mean_pool(hidden: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """Mean over attended tokens, then L2-normalised (sentence-transformers' pooling)."""
    mask = attention_mask.astype(hidden.dtype)[:, :, None]
    summed = (hidden * mask).sum(axis=1)
    pooled = summed / np.maximum(mask.sum(axis=1), 1e-9)
    return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
