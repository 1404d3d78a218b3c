"""`WordPiece`: the model's BERT (uncased) tokenizer, text → token ids, from its `tokenizer.json`.

The same ids as Hugging Face `tokenizers` 0.23 gives for that file (`Tokenizer.from_file`, no padding,
truncation at the embedder's max_length), for the one configuration the model cache ships: BertNormalizer
(clean text, CJK characters isolated, accents stripped, lower case), BertPreTokenizer, WordPiece, and the
template "[CLS] $A [SEP]". A file with anything else is refused, not tokenized differently.

Why not `tokenizers` itself: on a TV, which embeds one short text at a time, the library cost 13 MB of RSS
(its Rust vocabulary maps 8.6 MB, its .so 4.6 MB resident) where this module's vocabulary, a dict, costs
3.9 MB (bench/README, `omega bench brain` section). tests/brain/test_wordpiece.py compares the two
on every Unicode code point and the catalog's texts.

Character classes follow the library's own rules, which are not quite Python's `str` methods: whitespace is
Unicode's White_Space property (`str.isspace` also counts U+001C-U+001F), lower case is per character (no
final-sigma rule), and the library's Unicode tables are 8.0's, older than Python's: characters assigned since
are plain characters there (`_CATEGORY_THERE`).
"""

from __future__ import annotations

import json
import re
import unicodedata
from functools import lru_cache
from pathlib import Path

from omega.errors import OmegaError

#: Unicode's White_Space property (Rust's `char::is_whitespace`, which the library uses).
_WHITE_SPACE = frozenset(
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000"
)
#: the CJK blocks BERT isolates as one-character words (the library's `is_chinese_char`)
_CJK = (
    (0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F), (0x2B740, 0x2B81F),
    (0x2B920, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F),
)  # fmt: skip
_PUNCTUATION = ("Pc", "Pd", "Pe", "Pf", "Pi", "Po", "Ps")
#: Unicode's "Other" categories, which clean_text removes (\t, \n and \r excepted: they are whitespace)
_OTHER = ("Cc", "Cf", "Co", "Cs")


class WordPiece:
    """`encode(text)` → token ids, "[CLS] ... [SEP]", at most `max_length` of them."""

    def __init__(self, path: Path | str, *, max_length: int) -> None:
        try:
            with open(path, "rb") as handle:
                spec = json.load(handle)
        except (OSError, ValueError) as exc:
            raise OmegaError(f"cannot load tokenizer {path}: {exc}") from None
        try:
            self._configure(spec, max_length)
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise OmegaError(f"tokenizer {path} is not a BERT WordPiece tokenizer this embedder reads: {exc}") from None

    def _configure(self, spec: dict, max_length: int) -> None:
        norm, pre, model, post = spec["normalizer"], spec["pre_tokenizer"], spec["model"], spec["post_processor"]
        lowercase = norm.get("lowercase")
        strip = norm.get("strip_accents")
        if (
            norm.get("type") != "BertNormalizer" or norm.get("clean_text") is not True
            or norm.get("handle_chinese_chars") is not True or lowercase is not True or strip not in (None, True)
        ):  # fmt: skip
            raise ValueError(f"normalizer {norm!r}")
        if pre.get("type") != "BertPreTokenizer":
            raise ValueError(f"pre_tokenizer {pre!r}")
        if model.get("type") != "WordPiece":
            raise ValueError(f"model type {model.get('type')!r}")
        vocab = model["vocab"]
        if not isinstance(vocab, dict) or not all(isinstance(i, int) for i in vocab.values()):
            raise ValueError("vocab must map tokens to ids")
        self._vocab: dict[str, int] = vocab
        self._prefix: str = model["continuing_subword_prefix"]
        self._max_chars: int = int(model["max_input_chars_per_word"])
        self._unk: int = vocab[model["unk_token"]]
        specials = post["special_tokens"]
        template = [next(iter(piece.items())) for piece in post["single"]]
        if post.get("type") != "TemplateProcessing" or [kind for kind, _ in template] != [
            "SpecialToken", "Sequence", "SpecialToken"
        ]:  # fmt: skip
            raise ValueError(f"post_processor single template {post.get('single')!r}")
        (self._cls,) = specials[template[0][1]["id"]]["ids"]
        (self._sep,) = specials[template[2][1]["id"]]["ids"]
        added = spec.get("added_tokens") or []
        if any(t.get("normalized") or t.get("single_word") or t.get("lstrip") or t.get("rstrip") for t in added):
            raise ValueError("added tokens must match the raw text as they are (normalized, single_word, lstrip and"
                             " rstrip false)")  # fmt: skip
        #: added tokens found verbatim in the raw text become their ids (the library's AddedVocabulary), longest first
        self._added = {t["content"]: int(t["id"]) for t in added if t["content"]}
        contents = sorted(self._added, key=len, reverse=True)
        self._added_re = re.compile("|".join(map(re.escape, contents))) if contents else None
        self.max_length = int(max_length)
        if self.max_length < 2:
            raise ValueError("max_length must leave room for [CLS] and [SEP]")

    # ------------------------------------------------------------------ encoding

    def encode(self, text: str) -> list[int]:
        """Token ids of one text: [CLS], its first max_length - 2 word pieces, [SEP]."""
        ids: list[int] = [self._cls]
        if self._added_re is None:
            self._pieces(text, ids)
        else:
            start = 0
            for match in self._added_re.finditer(text):
                self._pieces(text[start : match.start()], ids)
                ids.append(self._added[match.group()])
                start = match.end()
            self._pieces(text[start:], ids)
        del ids[self.max_length - 1 :]
        ids.append(self._sep)
        return ids

    def _pieces(self, text: str, out: list[int]) -> None:
        """Append the word-piece ids of a stretch of text without added tokens."""
        if not text:
            return
        if text.isascii():  # the common case: no accents, CJK or non-ASCII classes to look up
            words = _ascii_words(text)
        else:
            words = _words(_normalised(text))
        vocab, prefix, unk = self._vocab, self._prefix, self._unk
        for word in words:
            if len(word) > self._max_chars:
                out.append(unk)
                continue
            found = vocab.get(word)
            if found is not None:  # the whole word: the greedy loop's first try, most words end there
                out.append(found)
                continue
            # Greedy longest match first; one piece not in the vocabulary makes the whole word [UNK].
            pieces: list[int] = []
            start = 0
            while start < len(word):
                end = len(word)
                while start < end:
                    piece = word[start:end] if start == 0 else prefix + word[start:end]
                    found = vocab.get(piece)
                    if found is not None:
                        break
                    end -= 1
                if found is None:
                    pieces = [unk]
                    break
                pieces.append(found)
                start = end
            out.extend(pieces)


#: ASCII text: control characters (removed by clean_text) other than \t \n \r, and the split into words
_ASCII_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_ASCII_WORD = re.compile(r"[0-9A-Za-z]+|[!-/:-@\[-`{-~]")


def _ascii_words(text: str) -> list[str]:
    # \x0b and \x0c are White_Space but also Cc: clean_text removes them before whitespace is mapped
    return _ASCII_WORD.findall(_ASCII_CONTROL.sub("", text).lower())


#: Where the library's character classes differ from Python's: its tables (the crate unicode_categories) are
#: Unicode 8.0's, Python 3.11's unicodedata is 14.0. Characters assigned since 8.0 are plain characters to the
#: library (never punctuation, marks or "other"), three changed category. Found by tokenizing every code point
#: with both (tests/brain/test_wordpiece.py does it again); a Python with newer tables than 14.0 may differ on
#: what Unicode assigned after 14.0, which that test would show.
_PLAIN_THERE = (
    (0x61D, 0x61D), (0x7FD, 0x7FD), (0x890, 0x891), (0x898, 0x89F), (0x8CA, 0x8E2), (0x9FD, 0x9FE), (0xA76, 0xA76),
    (0xAFA, 0xAFF), (0xB55, 0xB55), (0xC04, 0xC04), (0xC3C, 0xC3C), (0xC77, 0xC77), (0xC84, 0xC84), (0xD00, 0xD00),
    (0xD3B, 0xD3C), (0xD81, 0xD81), (0xEBA, 0xEBA), (0x180F, 0x180F), (0x1885, 0x1886), (0x1ABF, 0x1ACE),
    (0x1B7D, 0x1B7E), (0x1DF6, 0x1DFB), (0x2E43, 0x2E4F), (0x2E52, 0x2E5D), (0xA82C, 0xA82C), (0xA8C5, 0xA8C5),
    (0xA8FF, 0xA8FF), (0xA9BD, 0xA9BD), (0x10D24, 0x10D27), (0x10EAB, 0x10EAD), (0x10F46, 0x10F50),
    (0x10F55, 0x10F59), (0x10F82, 0x10F89), (0x11070, 0x11070), (0x11073, 0x11074), (0x110C2, 0x110C2),
    (0x110CD, 0x110CD), (0x111CF, 0x111CF), (0x1123E, 0x1123E), (0x1133B, 0x1133B), (0x11438, 0x1143F),
    (0x11442, 0x11444), (0x11446, 0x11446), (0x1144B, 0x1144F), (0x1145A, 0x1145B), (0x1145D, 0x1145E),
    (0x11660, 0x1166C), (0x116B9, 0x116B9), (0x1182F, 0x11837), (0x11839, 0x1183B), (0x1193B, 0x1193C),
    (0x1193E, 0x1193E), (0x11943, 0x11946), (0x119D4, 0x119D7), (0x119DA, 0x119DB), (0x119E0, 0x119E0),
    (0x119E2, 0x119E2), (0x11A01, 0x11A0A), (0x11A33, 0x11A38), (0x11A3B, 0x11A47), (0x11A51, 0x11A56),
    (0x11A59, 0x11A5B), (0x11A8A, 0x11A96), (0x11A98, 0x11A9C), (0x11A9E, 0x11AA2), (0x11C30, 0x11C36),
    (0x11C38, 0x11C3D), (0x11C3F, 0x11C3F), (0x11C41, 0x11C45), (0x11C70, 0x11C71), (0x11C92, 0x11CA7),
    (0x11CAA, 0x11CB0), (0x11CB2, 0x11CB3), (0x11CB5, 0x11CB6), (0x11D31, 0x11D36), (0x11D3A, 0x11D3A),
    (0x11D3C, 0x11D3D), (0x11D3F, 0x11D45), (0x11D47, 0x11D47), (0x11D90, 0x11D91), (0x11D95, 0x11D95),
    (0x11D97, 0x11D97), (0x11EF3, 0x11EF4), (0x11EF7, 0x11EF8), (0x11FFF, 0x11FFF), (0x12FF1, 0x12FF2),
    (0x13430, 0x13438), (0x16E97, 0x16E9A), (0x16F4F, 0x16F4F), (0x16FE2, 0x16FE2), (0x16FE4, 0x16FE4),
    (0x1CF00, 0x1CF2D), (0x1CF30, 0x1CF46), (0x1E000, 0x1E006), (0x1E008, 0x1E018), (0x1E01B, 0x1E021),
    (0x1E023, 0x1E024), (0x1E026, 0x1E02A), (0x1E130, 0x1E136), (0x1E2AE, 0x1E2AE), (0x1E2EC, 0x1E2EF),
    (0x1E944, 0x1E94A), (0x1E95E, 0x1E95F),
)
_CATEGORY_THERE = {
    **{code: "Lo" for lo, hi in _PLAIN_THERE for code in range(lo, hi + 1)},
    0x166D: "Po",  # CANADIAN SYLLABICS CHI SIGN: So since Unicode 12
    0x111C9: "Po",  # SHARADA SANDHI MARK: Mn since Unicode 11
    0x1734: "Mn",  # HANUNOO SIGN PAMUDPOD: Mc since Unicode 14
}


def _category(char: str) -> str:
    """The character's general category as the library sees it."""
    return _CATEGORY_THERE.get(ord(char)) or unicodedata.category(char)


def _is_cjk(code: int) -> bool:
    return any(lo <= code <= hi for lo, hi in _CJK)


def _normalised(text: str) -> str:
    """BertNormalizer: clean text, CJK characters isolated, accents stripped (NFD, nonspacing marks), lower case.
    The library goes character by character; here the ASCII ones (most of a title) go through `re` and `str` in C
    and only the others reach Python functions (`_clean`, `_unmark`, `_space`: 3x faster than a loop over all)."""
    text = _NON_ASCII.sub(_cleaned, _ASCII_CONTROL.sub("", text)).translate(_TAB_NL_CR)
    text = _NON_ASCII.sub(_unmarked, unicodedata.normalize("NFD", text))
    # per character, as the library lowers: str.lower() alone turns a word-final capital sigma into ς
    return text.lower() if "Σ" not in text else "".join(c.lower() for c in text)


def _words(text: str) -> list[str]:
    """BertPreTokenizer: split on whitespace (dropped) and punctuation (each its own word)."""
    text = _ASCII_PUNCTUATION_RE.sub(r" \g<0> ", _NON_ASCII.sub(_spaced, text))
    return [word for word in text.split(" ") if word]  # every whitespace character is " " by now


_NON_ASCII = re.compile(r"[^\x00-\x7f]")
_ASCII_PUNCTUATION_RE = re.compile(r"[!-/:-@\[-`{-~]")
_TAB_NL_CR = str.maketrans("\t\n\r", "   ")


@lru_cache(maxsize=256)  # a TV sees few distinct non-ASCII characters; bounded, as it stays in RSS
def _clean(char: str) -> str:
    if char == "\ufffd" or _category(char) in _OTHER:
        return ""
    if char in _WHITE_SPACE:
        return " "
    return f" {char} " if _is_cjk(ord(char)) else char


@lru_cache(maxsize=256)  # a TV sees few distinct non-ASCII characters; bounded, as it stays in RSS
def _unmark(char: str) -> str:
    return "" if _category(char) == "Mn" else char


@lru_cache(maxsize=256)  # a TV sees few distinct non-ASCII characters; bounded, as it stays in RSS
def _space(char: str) -> str:
    if char in _WHITE_SPACE:
        return " "
    return f" {char} " if _category(char) in _PUNCTUATION else char


def _cleaned(match: re.Match) -> str:
    return _clean(match.group())


def _unmarked(match: re.Match) -> str:
    return _unmark(match.group())


def _spaced(match: re.Match) -> str:
    return _space(match.group())
