"""The model cache as a TV reads it: where it lives, its files, its manifest, the pooling.

A TV never builds the model (`omega.modelbuild` does, on a build host or at
set-up): it locates the cache, checks each file against the manifest's sha256
and runs it (`omega.brain.embedder`). Only the standard library, numpy and `OmegaError`.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from omega.errors import OmegaError

TOKENIZER_FILE = "tokenizer.json"
FP32_FILE = "model_fp32.onnx"
INT8_FILE = "model_int8.onnx"
MANIFEST_FILE = "manifest.json"
VARIANT_FILES = {"fp32": FP32_FILE, "int8": INT8_FILE}
#: The INT8 model once more, its weights in a file of their own (ONNX external data), described by a manifest of
#: its own that names the INT8 file it was split from. ONNX Runtime maps that file instead of copying the weights
#: out of the parsed model: the session's RSS 34 -> 22 MB at load, 45 -> 38 MB (with the tokenizer) after use.
#: Its own manifest keeps `manifest.json` (and builder version 1) as they were: a cache without it still works.
INT8_EXT_FILE = "model_int8_ext.onnx"
INT8_EXT_DATA = "model_int8_ext.onnx.data"
EXT_MANIFEST_FILE = "manifest-ext.json"
#: The external-data INT8 graph once more with each layer's GELU and attention as ONNX Runtime's fused kernels
#: (`omega.modelbuild.graph.fuse_int8_graph`); it reads the same `INT8_EXT_DATA` (no second copy of the weights).
#: Its manifest names the external-data files it was written from and says whether its outputs were bit-identical
#: to theirs at build time; only then does the embedder load it. One embedding 5 % less CPU, the same vectors.
#: (Named anew when the word rows left the graph: 9996b31's `model_int8_fused.onnx` + `manifest-fused.json` took
#: token ids; they are left alone, so code of that commit sharing a cache keeps loading what it knows.)
INT8_FUSED_FILE = "model_int8_fused_rows.onnx"
FUSED_MANIFEST_FILE = "manifest-fused-rows.json"
#: The fused graph's first input: the quantised word-embedding rows of the tokens, which the embedder reads from
#: `INT8_EXT_DATA` itself (`WordRows`, where the fused manifest's "word_rows" says the table lies) instead of the
#: graph gathering them from onnxruntime's mapping of that file.
WORD_ROWS_INPUT = "word_rows_quantized"

#: ONNX Runtime graph rewrites the embedder leaves out. SkipLayerNormFusion (residual add + LayerNorm in one
#: kernel) made the INT8 MiniLM slower on the measuring machine (onnxruntime 1.32, x86-64 AVX-512, one thread): a
#: 25-token context 1.94 -> 1.47 ms thread CPU without it, a batch of 64 130 -> 98 ms; outputs within
#: 1.5e-5 (float rounding of the unfused add and norm).
DISABLED_OPTIMIZERS = ("SkipLayerNormFusion",)

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


def read_manifest(model_dir: Path, name: str = MANIFEST_FILE) -> dict[str, Any] | None:
    """The cache's manifest (or another of its JSON files), or None when it is absent or unreadable."""
    try:
        data = json.loads((model_dir / name).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def mean_pool(hidden: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """Mean over attended tokens, then L2-normalised (sentence-transformers' pooling)."""
    mask = attention_mask.astype(hidden.dtype)[:, :, None]
    summed = (hidden * mask).sum(axis=1)
    pooled = summed / np.maximum(mask.sum(axis=1), 1e-9)
    return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)


def ext_split_of(model_dir: Path) -> dict[str, Any] | None:
    """The external-data manifest when it was split from the INT8 file the main manifest names, else None."""
    main, ext = read_manifest(model_dir), read_manifest(model_dir, EXT_MANIFEST_FILE)
    if main is None or ext is None:
        return None
    source = main.get("files", {}).get(INT8_FILE)
    if not isinstance(source, dict) or ext.get("from") != {"file": INT8_FILE, "sha256": source.get("sha256")}:
        return None
    files = ext.get("files")
    return ext if isinstance(files, dict) and set(files) == {INT8_EXT_FILE, INT8_EXT_DATA} else None


def fused_from(split: dict[str, Any]) -> dict[str, str]:
    """What a fused graph records it was written from: the external-data graph and data files (by sha256)."""
    files = split["files"]
    return {"file": INT8_EXT_FILE, "sha256": files[INT8_EXT_FILE]["sha256"],
            "data_sha256": files[INT8_EXT_DATA]["sha256"]}


def fused_of(model_dir: Path, split: dict[str, Any]) -> dict[str, Any] | None:
    """The fused graph's manifest when it was written from the external-data files `split` describes and matched
    their outputs exactly, else None (the embedder then loads the external-data graph)."""
    fused = read_manifest(model_dir, FUSED_MANIFEST_FILE)
    if fused is None or fused.get("from") != fused_from(split) or fused.get("identical") is not True:
        return None
    files, rows = fused.get("files"), fused.get("word_rows")
    if not isinstance(files, dict) or set(files) != {INT8_FUSED_FILE} or not isinstance(rows, dict):
        return None
    if not all(isinstance(rows.get(k), int) and rows[k] >= 0 for k in ("offset", "length", "rows", "dim")):
        return None
    ok = rows.get("dtype") in ("uint8", "int8") and rows["rows"] > 0 and rows["length"] == rows["rows"] * rows["dim"]
    return fused if ok and rows.get("file") == INT8_EXT_DATA else None


class WordRows:
    """The quantised word-embedding rows of token ids, read from the model's data file with `pread`.

    Mapping the 11.7 MB table (as onnxruntime does for a Gather over external data) made ~400 KB of it resident
    per distinct token on a kernel whose page cache keeps large folios: 5.9 MB after one context text, 10.8 after
    300. A pread per distinct token of a batch (384 bytes each) keeps none of it."""

    def __init__(self, path: Path, where: dict[str, Any]) -> None:
        self.path = path
        self._offset, self._rows, self._dim = where["offset"], where["rows"], where["dim"]
        self._dtype = np.dtype(where["dtype"])
        self._file = open(path, "rb", buffering=0)  # noqa: SIM115  (held for the embedder's life)

    def __call__(self, batch: list[list[int]], width: int) -> np.ndarray:
        """(len(batch), width, dim) rows of each list of ids, padded with the rows of id 0 as the model's padding."""
        fd, dim, offset = self._file.fileno(), self._dim, self._offset
        found: dict[int, bytes] = {}
        for ids in batch:
            for token in ids:
                if token not in found:
                    if not 0 <= token < self._rows:
                        raise OmegaError(f"token id {token} is outside the model's vocabulary of {self._rows}")
                    found[token] = os.pread(fd, dim, offset + token * dim)
        pad = found.get(0) or os.pread(fd, dim, offset)
        rows = b"".join(b"".join(found[t] for t in ids) + pad * (width - len(ids)) for ids in batch)
        if len(rows) != len(batch) * width * dim:
            raise OmegaError(f"model file {self.path} is shorter than its manifest says: run `omega model build`")
        return np.frombuffer(rows, dtype=self._dtype).reshape(len(batch), width, dim)
