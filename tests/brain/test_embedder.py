"""The TV embedder: real INT8 MiniLM through onnxruntime (the `embedder` fixture)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from omega.brain.embedder import Embedder
from omega.brain.modelcache import (
    EXT_MANIFEST_FILE,
    INT8_EXT_DATA,
    INT8_EXT_FILE,
    INT8_FILE,
    INT8_FUSED_FILE,
    MANIFEST_FILE,
    TOKENIZER_FILE,
)
from omega.errors import OmegaError

# Movie titles with genres, and viewing contexts: what the brain embeds.
SENTENCES = [
    "Toy Story (1995) Adventure|Animation|Children|Comedy|Fantasy",
    "The Matrix (1999) Action|Sci-Fi|Thriller",
    "Pulp Fiction (1994) Comedy|Crime|Drama|Thriller",
    "Amélie (2001) Comedy|Romance",
    "Spirited Away (2001) Adventure|Animation|Fantasy",
    "The Shining (1980) Horror",
    "March of the Penguins (2005) Documentary",
    "Casablanca (1942) Drama|Romance",
    "Mad Max: Fury Road (2015) Action|Adventure|Sci-Fi|Thriller",
    "Seven Samurai (1954) Action|Adventure|Drama",
    "The Great British Bake Off: series 5, episode 3",
    "Friday night, 21:00, living room, two adults, want something funny",
    "Sunday morning with the kids, cartoons before breakfast",
    "late night alone, something scary and tense",
    "rainy afternoon, a slow romantic classic in black and white",
    "watching the football highlights after work",
    "binge the next episode of a crime drama series",
    "a nature documentary about the deep ocean",
    "weekday evening, 19:30, profile: teen, action films",
    "Le fabuleux destin d'Amélie Poulain, comédie romantique",
]


@pytest.fixture(scope="module")
def fp32_embedder(embedder: Embedder) -> Embedder:
    return Embedder(embedder.model_dir, threads=1, variant="fp32")


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_embed_is_unit_float32_384(embedder: Embedder) -> None:
    for text in ["The Matrix (1999) Action|Sci-Fi", "", "   ", "!!!", "日本のアニメ"]:
        vector = embedder.embed(text)
        assert vector.shape == (384,) and vector.dtype == np.float32
        assert np.isfinite(vector).all()
        assert abs(float(np.linalg.norm(vector)) - 1.0) < 1e-5
    assert Embedder.dim == embedder.dim == 384


def test_int8_stays_close_to_fp32(embedder: Embedder, fp32_embedder: Embedder) -> None:
    int8 = np.stack([embedder.embed(s) for s in SENTENCES])
    fp32 = np.stack([fp32_embedder.embed(s) for s in SENTENCES])
    cosines = _cosines(int8, fp32)
    assert cosines.min() >= 0.98, dict(zip(SENTENCES, cosines.round(4)))
    assert cosines.mean() >= 0.99


def test_title_ranks_its_paraphrase_above_unrelated_titles(embedder: Embedder) -> None:
    cases = [
        ("The Matrix (1999) Action|Sci-Fi", "a hacker learns the world is a computer simulation and fights the machines"),
        ("Toy Story (1995) Animation|Children|Comedy", "animated family comedy about toys that come alive"),
        ("The Shining (1980) Horror", "scary film about a haunted hotel in winter"),
        ("March of the Penguins (2005) Documentary", "nature documentary following emperor penguins in Antarctica"),
    ]
    titles = embedder.embed_batch([title for title, _ in cases])
    paraphrases = embedder.embed_batch([para for _, para in cases])
    similarity = paraphrases @ titles.T  # row: a paraphrase, column: a title
    for i, (title, para) in enumerate(cases):
        assert int(np.argmax(similarity[i])) == i, (para, similarity[i].round(3))


def test_batch_matches_single(embedder: Embedder, fp32_embedder: Embedder) -> None:
    single = np.stack([embedder.embed(s) for s in SENTENCES])
    # One text per run gives exactly what embed() gives.
    np.testing.assert_allclose(embedder.embed_batch(SENTENCES, batch_size=1), single, atol=1e-6)
    # Batched INT8 shares one dynamic activation scale across a batch, so rows move
    # within quantisation noise (fp32 has no such scale and must match exactly).
    batched = embedder.embed_batch(SENTENCES, batch_size=8)
    assert _cosines(batched, single).min() >= 0.97
    fp32_single = np.stack([fp32_embedder.embed(s) for s in SENTENCES])
    np.testing.assert_allclose(fp32_embedder.embed_batch(SENTENCES, batch_size=7), fp32_single, atol=1e-5)


def test_batch_keeps_input_order_and_reports_progress(embedder: Embedder) -> None:
    texts = SENTENCES[:10]
    calls: list[tuple[int, int]] = []
    forward = embedder.embed_batch(texts, batch_size=1, progress=lambda done, total: calls.append((done, total)))
    backward = embedder.embed_batch(texts[::-1], batch_size=1)
    np.testing.assert_allclose(backward[::-1], forward, atol=1e-6)
    assert calls[-1] == (10, 10) and len(calls) == 10
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)
    rows = embedder.embed_batch(texts, batch_size=4)
    assert rows.shape == (10, 384) and rows.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-5)
    assert embedder.embed_batch([]).shape == (0, 384)


def test_long_text_is_truncated_to_max_length(embedder: Embedder) -> None:
    short_limit = Embedder(embedder.model_dir, max_length=16)
    long_text = "a quiet drama about a family farm " * 200
    assert embedder.embed(long_text).shape == (384,)
    assert _cosines(embedder.embed(long_text)[None], short_limit.embed(long_text)[None])[0] < 0.9999
    short_text = "The Shining (1980) Horror"  # well under 16 tokens: same input either way
    np.testing.assert_allclose(short_limit.embed(short_text), embedder.embed(short_text), atol=1e-6)


def test_bad_arguments_raise_omega_error(embedder: Embedder) -> None:
    with pytest.raises(OmegaError, match="str"):
        embedder.embed(42)  # type: ignore[arg-type]
    with pytest.raises(OmegaError, match="str"):
        embedder.embed(b"bytes")  # type: ignore[arg-type]
    with pytest.raises(OmegaError, match="item 1"):
        embedder.embed_batch(["fine", None])  # type: ignore[list-item]
    with pytest.raises(OmegaError, match="single string"):
        embedder.embed_batch("not a list")
    with pytest.raises(OmegaError, match="batch_size"):
        embedder.embed_batch(["x"], batch_size=0)
    with pytest.raises(OmegaError, match="variant"):
        Embedder(embedder.model_dir, variant="int4")
    with pytest.raises(OmegaError, match="threads"):
        Embedder(embedder.model_dir, threads=0)
    with pytest.raises(OmegaError, match="max_length"):
        Embedder(embedder.model_dir, max_length=1000)


def test_missing_model_tells_the_user_to_build(tmp_path: Path) -> None:
    with pytest.raises(OmegaError, match="omega model build"):
        Embedder(tmp_path / "nothing-here")


def test_damaged_model_file_is_refused(embedder: Embedder, tmp_path: Path) -> None:
    for name in (MANIFEST_FILE, INT8_FILE, TOKENIZER_FILE):
        shutil.copyfile(embedder.model_dir / name, tmp_path / name)
    assert Embedder(tmp_path).embed("ok").shape == (384,)
    data = bytearray((tmp_path / INT8_FILE).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / INT8_FILE).write_bytes(bytes(data))
    with pytest.raises(OmegaError, match="damaged"):
        Embedder(tmp_path)
    (tmp_path / INT8_FILE).unlink()
    with pytest.raises(OmegaError, match="missing"):
        Embedder(tmp_path)


def test_the_weights_mapped_as_external_data_embed_exactly_as_the_one_file(embedder: Embedder, tmp_path: Path) -> None:
    """A built cache also holds the INT8 weights as external data, which the TV loads; a cache without that copy
    (made by an older builder) loads the one file, with bit-identical vectors. Over the external data, the TV runs
    the graph with fused GELU and attention: the same vectors again, one text or a padded batch."""
    assert embedder.model_file == INT8_FUSED_FILE
    for name in (MANIFEST_FILE, INT8_FILE, TOKENIZER_FILE):
        shutil.copyfile(embedder.model_dir / name, tmp_path / name)
    one_file = Embedder(tmp_path)
    assert one_file.model_file == INT8_FILE
    np.testing.assert_array_equal(one_file.embed_batch(SENTENCES[:6]), embedder.embed_batch(SENTENCES[:6]))
    for name in (EXT_MANIFEST_FILE, INT8_EXT_FILE, INT8_EXT_DATA):  # an older cache: external data, nothing fused
        shutil.copyfile(embedder.model_dir / name, tmp_path / name)
    unfused = Embedder(tmp_path)
    assert unfused.model_file == INT8_EXT_FILE
    np.testing.assert_array_equal(unfused.embed_batch(SENTENCES), embedder.embed_batch(SENTENCES))
    for text in SENTENCES[:8]:
        np.testing.assert_array_equal(unfused.embed(text), embedder.embed(text))
