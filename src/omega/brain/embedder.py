"""Text → 384-d L2-normalised vector, on the TV, with the INT8 MiniLM model.

Loads a model cache written by `omega.modelbuild.ensure_model` (it never
builds one: on a TV the model arrives built). Tokenises with HF `tokenizers`,
runs the encoder in onnxruntime, mean-pools over the attention mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from omega.brain.modelcache import (
    DISABLED_OPTIMIZERS,
    INT8_EXT_DATA,
    INT8_EXT_FILE,
    INT8_FUSED_FILE,
    MAX_POSITIONS,
    TOKENIZER_FILE,
    VARIANT_FILES,
    WORD_ROWS_INPUT,
    WordRows,
    default_model_dir,
    ext_split_of,
    fused_of,
    mean_pool,
    read_manifest,
    sha256_file,
)
from omega.errors import OmegaError
from omega.progress import Progress
from omega.protocol import EMBEDDING_DIM

# Titles with genres and viewing contexts are short; 128 tokens keep their meaning.
DEFAULT_MAX_LENGTH = 128


class Embedder:
    """Sentence embeddings from a built MiniLM cache (`variant` "int8" or "fp32")."""

    dim: int = EMBEDDING_DIM

    def __init__(
        self,
        model_dir: Path | None = None,
        *,
        threads: int = 1,
        variant: str = "int8",
        max_length: int = DEFAULT_MAX_LENGTH,
    ) -> None:
        if variant not in VARIANT_FILES:
            raise OmegaError(f"unknown model variant {variant!r}: choose one of {', '.join(VARIANT_FILES)}")
        if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
            raise OmegaError(f"threads must be a positive integer, got {threads!r}")
        # 2 = [CLS] + [SEP]; the position table has MAX_POSITIONS rows.
        if not isinstance(max_length, int) or isinstance(max_length, bool) or not 2 <= max_length <= MAX_POSITIONS:
            raise OmegaError(f"max_length must be an integer in 2..{MAX_POSITIONS}, got {max_length!r}")
        self.model_dir = Path(model_dir) if model_dir is not None else default_model_dir()
        self.variant = variant
        self.threads = threads
        self.max_length = max_length
        # The INT8 weights as external data when the cache holds them (mapped, not copied), else the one file; over
        # them, the graph with fused GELU and attention when the cache holds one that matched them exactly.
        split = ext_split_of(self.model_dir) if variant == "int8" else None
        #: the word-embedding rows the fused graph takes as input, read from the data file (None: the graph gathers)
        self._word_rows: WordRows | None = None
        if split is not None:
            data = self._verified(INT8_EXT_DATA, split)
            fused = fused_of(self.model_dir, split)
            if fused is not None:
                model_path = self._verified(INT8_FUSED_FILE, fused)
                self._word_rows = WordRows(data, fused["word_rows"])
            else:
                model_path = self._verified(INT8_EXT_FILE, split)
        else:
            model_path = self._verified(VARIANT_FILES[variant])
        self.model_file = model_path.name
        tokenizer_path = self._verified(TOKENIZER_FILE)

        import onnxruntime as ort
        from tokenizers import Tokenizer

        try:
            self._tokenizer = Tokenizer.from_file(str(tokenizer_path))
        except Exception as exc:
            raise OmegaError(f"cannot load tokenizer {tokenizer_path}: {exc}") from exc
        # The shipped tokenizer pads every input to 128; we pad per batch instead.
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(max_length=max_length)

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # No CPU memory arena: the arena keeps the high-water mark of the largest batch for the
        # life of the session (~100 MB after embedding a catalog in batches of 64), while one-text
        # inference, the TV's steady state, measured the same latency and RSS without it.
        options.enable_cpu_mem_arena = False
        try:
            self._session = ort.InferenceSession(
                str(model_path), options, providers=["CPUExecutionProvider"],
                disabled_optimizers=list(DISABLED_OPTIMIZERS),
            )  # fmt: skip
        except Exception as exc:
            raise OmegaError(f"cannot load model {model_path}: {exc}; run `omega model build --force`") from exc
        self._inputs = {i.name for i in self._session.get_inputs()}

    def _verified(self, name: str, manifest: dict | None = None) -> Path:
        """Path of a cache file after checking it against the (main, unless given) manifest's sha256."""
        manifest = manifest if manifest is not None else read_manifest(self.model_dir)
        if manifest is None:
            raise OmegaError(f"no model in {self.model_dir}: run `omega model build` first")
        path = self.model_dir / name
        meta = manifest.get("files", {}).get(name)
        if not isinstance(meta, dict) or not path.is_file():
            raise OmegaError(f"model file {path} is missing: run `omega model build`")
        if path.stat().st_size != meta.get("bytes") or sha256_file(path) != meta.get("sha256"):
            raise OmegaError(f"model file {path} is damaged: run `omega model build` to rebuild it")
        return path

    def embed(self, text: str) -> np.ndarray:
        """One text → float32 vector of shape (384,), unit length."""
        if not isinstance(text, str):
            raise OmegaError(f"embed() takes a str, got {type(text).__name__}")
        ids = self._tokenizer.encode(text).ids
        return self._run([ids])[0]

    def embed_batch(
        self,
        texts: Sequence[str],
        *,
        batch_size: int = 64,
        progress: Progress | None = None,
    ) -> np.ndarray:
        """Many texts → float32 (n, 384), unit rows, in input order.

        Texts are sorted by token count so each batch pads to similar lengths;
        `progress(done, total)` is called after every batch.
        """
        if isinstance(texts, (str, bytes)):
            raise OmegaError("embed_batch() takes a sequence of str, not a single string")
        texts = list(texts)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise OmegaError(f"embed_batch() item {i} is {type(text).__name__}, not str")
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise OmegaError(f"batch_size must be a positive integer, got {batch_size!r}")
        out = np.empty((len(texts), EMBEDDING_DIM), dtype=np.float32)
        if not texts:
            return out
        encoded = [e.ids for e in self._tokenizer.encode_batch(texts)]
        order = np.argsort([len(ids) for ids in encoded], kind="stable")
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            out[rows] = self._run([encoded[r] for r in rows])
            if progress is not None:
                progress(min(start + batch_size, len(order)), len(order))
        return out

    def _run(self, batch: list[list[int]]) -> np.ndarray:
        """Token id lists → pooled, normalised float32 vectors (pads to the longest)."""
        width = max(len(ids) for ids in batch)
        attention_mask = np.zeros((len(batch), width), dtype=np.int64)
        for row, ids in enumerate(batch):
            attention_mask[row, : len(ids)] = 1
        if self._word_rows is not None:  # the fused graph: the tokens' rows, not their ids
            feed = {WORD_ROWS_INPUT: self._word_rows(batch, width), "attention_mask": attention_mask}
            (hidden,) = self._session.run(["last_hidden_state"], feed)
            return mean_pool(hidden, attention_mask).astype(np.float32, copy=False)
        input_ids = np.zeros((len(batch), width), dtype=np.int64)
        for row, ids in enumerate(batch):
            input_ids[row, : len(ids)] = ids
        feed = {"input_ids": input_ids, "attention_mask": attention_mask}
        if "token_type_ids" in self._inputs:  # graphs exported elsewhere may want it
            feed["token_type_ids"] = np.zeros_like(input_ids)
        (hidden,) = self._session.run(["last_hidden_state"], feed)
        return mean_pool(hidden, attention_mask).astype(np.float32, copy=False)

    def __repr__(self) -> str:
        return f"Embedder({str(self.model_dir)!r}, variant={self.variant!r}, threads={self.threads})"
