"""`omega.brain.wordpiece.WordPiece` against Hugging Face `tokenizers` (the library it replaces on a TV) on the
model cache's own tokenizer.json: every Unicode code point, the catalog's texts, seeded random texts, truncation."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from omega.brain.embedder import Embedder
from omega.brain.modelcache import TOKENIZER_FILE
from omega.brain.wordpiece import WordPiece
from omega.errors import OmegaError


@pytest.fixture(scope="module")
def tokenizer_json(embedder: Embedder) -> Path:
    return embedder.model_dir / TOKENIZER_FILE


def _library(path: Path, max_length: int) -> Tokenizer:
    """The library as the embedder configured it before: no padding, truncation at max_length."""
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=max_length)
    return tokenizer


def _differences(path: Path, texts: list[str], max_length: int) -> list[tuple[str, list[int], list[int]]]:
    ours = WordPiece(path, max_length=max_length)
    expected = [e.ids for e in _library(path, max_length).encode_batch(texts)]
    return [(text, want, got) for text, want in zip(texts, expected) if (got := ours.encode(text)) != want][:5]


def test_every_code_point_gives_the_librarys_ids(tokenizer_json: Path) -> None:
    """Each character alone, inside a word and doubled: which class (whitespace, removed, CJK, punctuation, accent,
    letter) and lower case the library gives it, including where its Unicode tables differ from Python's."""
    chars = [chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]  # lone surrogates are not text
    texts = [" ".join(f"a{ch}b {ch} x{ch}{ch}y" for ch in chars[i : i + 8]) for i in range(0, len(chars), 8)]
    assert _differences(tokenizer_json, texts, 1024) == []


def test_catalog_and_context_texts_give_the_librarys_ids(tokenizer_json: Path, ml_latest_small: Path) -> None:
    from omega.brain.records import ViewingContext
    from omega.brain.recommender import context_text
    from omega.datasets.movielens import load_movielens

    items = load_movielens(ml_latest_small).items
    texts = [item.text() for item in items]  # what the catalog embeds
    texts += [context_text(ViewingContext(h % 24, h % 7), [item.title for item in items[h * 3 : h * 3 + 3]])
              for h in range(len(items) // 3)]  # fmt: skip
    assert any(not t.isascii() for t in texts)  # accents and other scripts are among them
    assert _differences(tokenizer_json, texts, 128) == []


@pytest.mark.parametrize("max_length", [128, 7, 2])
def test_random_texts_and_edges_give_the_librarys_ids(tokenizer_json: Path, max_length: int) -> None:
    """Mixed scripts, combining marks, controls, added tokens in the text ([CLS] ...), long words, truncation."""
    pools = [
        "abcdefghijklmnopqrstuvwxyz ABCXYZ 0123456789", " .,;:!?'\"()[]-_/\\|#", "ÀÉÎÕÜàéîõüçñßÆæøØåÅ",
        "ΑΣσςΣΙΟΥ αβγ", "İıŞşĞğ", "\u0301\u0308\u0327\u200b\u200d\u00ad\ufeff\ufffd\x00\x01\x0b\x0c\x1c\x1f\x7f\x85",
        "\xa0\u3000\u2028\t\n\r", "中文日本語한국어ㄱㅏ가각", "🎬🍿😀🥰👍🏽", "[CLS][SEP][MASK][PAD][UNK] [cls] [Sep",
        "ﬁﬂ ＡＢＣ① ² ½ Ⅻ", "ـًٌٍَُِّْ عربي", "\u061d\u0890\u1734\u166d\U000111c9",
    ]  # fmt: skip
    rng = random.Random(max_length)

    def chunk(pool: str) -> str:
        return "".join(rng.choice(pool) for _ in range(rng.randrange(25)))

    texts = ["".join(chunk(pool) for pool in rng.choices(pools, k=rng.randrange(1, 8))) for _ in range(5000)]
    texts += ["", " ", "a" * 100, "a" * 101, "x" + "é" * 120, "word " * 300, "[CLS]" * 200, "unaffable" * 3]
    assert _differences(tokenizer_json, texts, max_length) == []


def test_the_embedder_does_not_load_the_tokenizers_library(embedder: Embedder) -> None:
    """The point of WordPiece: a TV that embeds never loads `tokenizers` (13 MB of RSS, see the module doc)."""
    probe = (
        "import json, sys; from pathlib import Path; from omega.brain.embedder import Embedder;"
        " vector = Embedder(Path(sys.argv[1])).embed('Heat (1995). Genres: Action, Crime, Thriller');"
        " print(json.dumps([len(vector), 'tokenizers' in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", probe, str(embedder.model_dir)], capture_output=True, text=True,
                         check=True).stdout  # fmt: skip
    assert json.loads(out) == [384, False]


@pytest.mark.parametrize(
    "change",
    [
        lambda s: s["normalizer"].update(lowercase=False),
        lambda s: s["normalizer"].update(type="NFKC"),
        lambda s: s.update(pre_tokenizer={"type": "Whitespace"}),
        lambda s: s["model"].update(type="BPE"),
        lambda s: s["model"].update(unk_token="[NOPE]"),
        lambda s: s["post_processor"].update(single=[{"Sequence": {"id": "A", "type_id": 0}}]),
        lambda s: s["added_tokens"][0].update(normalized=True),
        lambda s: s.pop("model"),
    ],
)
def test_a_tokenizer_it_does_not_implement_is_refused(tokenizer_json: Path, tmp_path: Path, change) -> None:  # noqa: ANN001
    spec = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    change(spec)
    path = tmp_path / TOKENIZER_FILE
    path.write_text(json.dumps(spec), encoding="utf-8")
    with pytest.raises(OmegaError, match="not a BERT WordPiece tokenizer"):
        WordPiece(path, max_length=128)


def test_an_unreadable_tokenizer_file_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / TOKENIZER_FILE
    path.write_text('{"model": ', encoding="utf-8")
    with pytest.raises(OmegaError, match="cannot load tokenizer"):
        WordPiece(path, max_length=128)
    with pytest.raises(OmegaError, match="cannot load tokenizer"):
        WordPiece(tmp_path / "missing.json", max_length=128)
