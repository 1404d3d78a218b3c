"""The all-MiniLM-L6-v2 encoder as an ONNX graph, its float64 numpy reference, INT8 quantisation.

The graph is written node by node with `onnx.helper` (no torch); `reference_forward`
is the yardstick the build checks it against. `onnx`, `safetensors` and the
quantiser are imported inside the functions (the [model] extras).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from omega.brain.modelcache import WORD_ROWS_INPUT
from omega.errors import OmegaError
from omega.protocol import EMBEDDING_DIM

# all-MiniLM-L6-v2 (config.json of the weights package); its width is the protocol's EMBEDDING_DIM.
LAYERS = 6
HEADS = 12
HEAD_DIM = EMBEDDING_DIM // HEADS
LAYER_NORM_EPS = 1e-12
OPSET = 17
# Additive mask value for padded keys, as in the original BERT code.
MASK_NEG = -10000.0
#: ONNX element types of a quantised table whose rows the embedder may read itself (uint8 = 2, int8 = 3)
_ROW_DTYPES = {2: "uint8", 3: "int8"}


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
        ctx = (probs @ v).transpose(0, 2, 1, 3).reshape(batch, seq, EMBEDDING_DIM)
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
    merge_heads = g.const("shape_merged", np.array([0, 0, EMBEDDING_DIM], dtype=np.int64))
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
        outputs=[helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "seq", EMBEDDING_DIM])],
        initializer=g.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="omega.modelbuild")
    model.ir_version = 8  # onnxruntime-compatible IR for opset 17
    onnx.checker.check_model(model)
    return model


def fuse_int8_graph(model: Any) -> tuple[Any, dict[str, Any]]:
    """The INT8 graph (as `quantize_int8` wrote it from `build_graph`) with each layer's exact GELU and attention
    written as ONNX Runtime's own kernels (`com.microsoft` Gelu and MultiHeadAttention), in place; returned.

    ONNX Runtime does not fuse either in the quantised graph by itself (its attention fusion wants float MatMuls,
    and the Erf form stays five nodes), so one embedding ran ~200 small kernels; fused, ~90. The kernels compute
    the same float operations in the same order: on onnxruntime 1.32 every output is bit-identical to the unfused
    graph's (the build checks that before it keeps the file: `omega.modelbuild.build._build_fused`). Initializers
    are left where they are (external data stays external); the ones no node reads any more are dropped.

    The word-embedding table leaves the graph too: its quantised rows become the input `WORD_ROWS_INPUT` (batch ×
    seq × 384), which the embedder reads from the data file row by row (`omega.brain.modelcache.WordRows`) instead
    of onnxruntime gathering them from its mapping of the file, where each token mapped ~400 KB of the table (the
    page cache's large folios): 5.9 MB of RSS after one context, 10.8 after 300. Returns the model and where the
    table lies in the data file (offset, length, rows, dim, dtype)."""
    from onnx import TensorProto, helper

    g = model.graph
    made_by = {out: node for node in g.node for out in node.output}
    used_by: dict[str, list[Any]] = {}
    for node in g.node:
        for name in node.input:
            used_by.setdefault(name, []).append(node)

    def only(name: str, op_type: str) -> Any:
        found = [n for n in used_by.get(name, ()) if n.op_type == op_type]
        if len(found) != 1:
            raise OmegaError(f"cannot fuse the INT8 graph: {name!r} does not feed one {op_type}")
        return found[0]

    def source(name: str, op_type: str) -> Any:
        node = made_by.get(name)
        if node is None or node.op_type != op_type:
            raise OmegaError(f"cannot fuse the INT8 graph: {name!r} is not made by a {op_type}")
        return node

    dropped: set[str] = set()
    replaced: dict[str, Any] = {}  # name of the last node of a pattern -> the fused node standing in its place
    mask = "attention_mask_int32"
    for node in g.node:
        if node.op_type == "Erf":  # 0.5·h · (1 + erf(h·(1/√2)))
            scaled = source(node.input[0], "Mul")
            h = scaled.input[0]
            plus_one = only(node.output[0], "Add")
            product = only(plus_one.output[0], "Mul")
            halved = source(next(i for i in product.input if i != plus_one.output[0]), "Mul")
            if halved.input[0] != h:
                raise OmegaError("cannot fuse the INT8 graph: GELU's two halves read different inputs")
            dropped.update(n.name for n in (scaled, node, plus_one, halved, product))
            replaced[product.name] = helper.make_node(
                "Gelu", [h], [product.output[0]], name=f"Gelu_{node.name}", domain="com.microsoft"
            )
        elif node.op_type == "Softmax":  # softmax(q·kᵀ·scale + bias)·v, heads split and merged by Reshape/Transpose
            with_bias = source(node.input[0], "Add")
            scaled = source(with_bias.input[0], "Mul")
            scores = source(scaled.input[0], "MatMul")
            q_t, k_t = source(scores.input[0], "Transpose"), source(scores.input[1], "Transpose")
            q_r, k_r = source(q_t.input[0], "Reshape"), source(k_t.input[0], "Reshape")
            weighted = only(node.output[0], "MatMul")
            v_t = source(weighted.input[1], "Transpose")
            v_r = source(v_t.input[0], "Reshape")
            merged_t = only(weighted.output[0], "Transpose")
            merged = only(merged_t.output[0], "Reshape")
            dropped.update(n.name for n in (with_bias, scaled, scores, q_t, k_t, q_r, k_r, node, weighted, v_t, v_r,
                                             merged_t, merged))  # fmt: skip
            replaced[merged.name] = helper.make_node(
                "MultiHeadAttention", [q_r.input[0], k_r.input[0], v_r.input[0], "", mask], [merged.output[0]],
                name=f"MultiHeadAttention_{node.name}", domain="com.microsoft", num_heads=HEADS,
                mask_filter_value=MASK_NEG,
            )  # fmt: skip
    if not replaced:
        raise OmegaError("cannot fuse the INT8 graph: no GELU or attention found")
    gather = [n for n in g.node if n.op_type == "Gather" and list(n.input)[1:] == ["input_ids"]]
    tables = {t.name: t for t in g.initializer}
    if len(gather) != 1 or gather[0].input[0] not in tables:
        raise OmegaError("cannot fuse the INT8 graph: no one word-embedding Gather over an initializer")
    table = tables[gather[0].input[0]]
    where = {e.key: e.value for e in table.external_data}
    if table.data_location != TensorProto.EXTERNAL or len(table.dims) != 2 or table.data_type not in _ROW_DTYPES:
        raise OmegaError("cannot fuse the INT8 graph: the word-embedding table is not 8-bit external data")
    rows, dim = (int(x) for x in table.dims)
    word_rows = {"offset": int(where.get("offset", 0)), "length": int(where["length"]), "rows": rows, "dim": dim,
                 "dtype": _ROW_DTYPES[table.data_type]}  # fmt: skip
    dropped.add(gather[0].name)
    for node in g.node:  # the rows' consumer (DequantizeLinear) and the sequence length (Shape) read the input
        node.input[:] = [WORD_ROWS_INPUT if name in (gather[0].output[0], "input_ids") else name for name in node.input]
    kept_inputs = [i for i in g.input if i.name != "input_ids"]
    del g.input[:]
    rows_input = helper.make_tensor_value_info(WORD_ROWS_INPUT, table.data_type, ["batch", "seq", dim])
    g.input.extend([rows_input, *kept_inputs])
    nodes = [helper.make_node("Cast", ["attention_mask"], [mask], name=f"Cast_{mask}", to=TensorProto.INT32)]
    nodes += [replaced.get(n.name, n) for n in g.node if n.name not in dropped or n.name in replaced]
    # The additive mask (Cast, Unsqueeze, Sub, Mul) and the constants only the unfused nodes read go too.
    while True:
        read = {name for n in nodes for name in n.input} | {o.name for o in g.output}
        unread = [n for n in nodes if not any(out in read for out in n.output)]
        if not unread:
            break
        nodes = [n for n in nodes if n not in unread]
    del g.node[:]
    g.node.extend(nodes)
    made = {out for n in nodes for out in n.output}
    shapes = [v for v in g.value_info if v.name in made]
    del g.value_info[:]
    g.value_info.extend(shapes)
    read = {name for n in nodes for name in n.input}
    kept = [t for t in g.initializer if t.name in read]
    del g.initializer[:]
    g.initializer.extend(kept)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return model, word_rows


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


def run_graph(
    model_path: Path, input_ids: np.ndarray, attention_mask: np.ndarray, *,
    inputs: Mapping[str, np.ndarray] | None = None,
) -> np.ndarray:
    """last_hidden_state from an ONNX file, optimised as the TV's embedder runs it; `inputs` replaces `input_ids`
    (the fused graph takes the tokens' word-embedding rows instead)."""
    import onnxruntime as ort

    from omega.brain.modelcache import DISABLED_OPTIMIZERS

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(
        str(model_path), options, providers=["CPUExecutionProvider"], disabled_optimizers=list(DISABLED_OPTIMIZERS)
    )
    feed = {**(inputs or {"input_ids": input_ids}), "attention_mask": attention_mask}
    return session.run(["last_hidden_state"], feed)[0]

