"""DistilBERT's uncased WordPiece tokenizer from a vocab.txt, in pure Python: the paper's text tower reads it.

Same ids as transformers' `DistilBertTokenizer` (the Rust `tokenizers` BertNormalizer + BertPreTokenizer +
WordPiece) for `[CLS] text [SEP]`, right-padded with [PAD]:
  1. special tokens written literally in the text ("[CLS]", "[SEP]", ...) are matched first, case-sensitively;
  2. normalize: drop NUL, U+FFFD and control/format characters (Unicode C*, except tab/newline/CR), map
     whitespace to " ", put spaces around CJK ideographs, strip accents (NFD, drop Mn), lowercase per
     character (so "Σ" is always "σ", as Rust lowercases, never the final "ς" of str.lower());
  3. split on whitespace, and every punctuation character (ASCII punctuation, Unicode P*) is its own word;
  4. each word: greedy longest-match-first pieces, "##" on all but the first; a word of more than 100
     characters, or one with a part no piece matches, is one [UNK].
The attention mask is "id != [PAD]" (what the towers use); it differs from transformers' only for a text that
spells "[PAD]" itself, which both encode as id 0.
Caution: `DistilBertTokenizer(vocab_file=...)` in transformers 5.x silently ignores the file (every word
becomes [UNK]); load the reference with `DistilBertTokenizer.from_pretrained(folder_with_vocab_txt)`.
"""
from __future__ import annotations

import os
import unicodedata
from collections.abc import Sequence

import numpy as np

SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
MAX_CHARS_PER_WORD = 100

# Rust's char::is_whitespace (the Unicode White_Space property). Its control members (\x0b, \x0c, \x85,
# \x1c-\x1f) are dropped as controls before this test, as the Rust normalizer does.
_WHITESPACE = frozenset("\t\n\x0b\x0c\r \x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000"
                        + "".join(chr(c) for c in range(0x2000, 0x200B)))
_CJK = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F), (0x2B740, 0x2B81F),
        (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))


def _is_control(ch: str) -> bool:
    return ch not in "\t\n\r" and unicodedata.category(ch).startswith("C")


def _is_cjk(ch: str) -> bool:
    cp = ord(ch)
    return any(lo <= cp <= hi for lo, hi in _CJK)


def _is_punct(ch: str) -> bool:
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def normalize(text: str, lowercase: bool = True) -> str:
    """BertNormalizer(clean_text, handle_chinese_chars, strip_accents=lowercase, lowercase)."""
    out = []
    for ch in text:
        if ch == "\0" or ch == "\ufffd" or _is_control(ch):
            continue
        if ch in _WHITESPACE:
            out.append(" ")
        elif _is_cjk(ch):
            out.append(f" {ch} ")
        else:
            out.append(ch)
    s = "".join(out)
    if lowercase:
        s = "".join(c for c in unicodedata.normalize("NFD", s) if unicodedata.category(c) != "Mn")
        s = "".join(c.lower() for c in s)
    return s


def pre_tokenize(text: str) -> list[str]:
    """Whitespace split, each punctuation character a word of its own (BertPreTokenizer)."""
    words, cur = [], []
    for ch in text:
        if ch in _WHITESPACE:
            if cur:
                words.append("".join(cur))
                cur = []
        elif _is_punct(ch):
            if cur:
                words.append("".join(cur))
                cur = []
            words.append(ch)
        else:
            cur.append(ch)
    if cur:
        words.append("".join(cur))
    return words


def read_vocab(path: str | os.PathLike) -> dict[str, int]:
    """vocab.txt (one piece a line, id = line number) -> {piece: id}; the first of a repeated piece wins."""
    vocab: dict[str, int] = {}
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            vocab.setdefault(line.rstrip("\n"), i)
    return vocab


class WordPiece:
    """Fixed-length DistilBERT (uncased) encoder: [CLS] pieces [SEP], then [PAD]; picklable."""

    def __init__(self, vocab_path: str | os.PathLike, max_len: int = 512, lowercase: bool = True):
        self.vocab_path = os.fspath(vocab_path)
        if not os.path.isfile(self.vocab_path):
            raise FileNotFoundError(f"WordPiece vocab not found: {self.vocab_path}")
        if max_len < 2:
            raise ValueError(f"max_len must be >= 2 ([CLS] + [SEP]), got {max_len}")
        self.max_len, self.lowercase = int(max_len), bool(lowercase)
        self.vocab = read_vocab(self.vocab_path)
        missing = [s for s in SPECIALS if s not in self.vocab]
        if missing:
            raise ValueError(f"{self.vocab_path}: not a BERT vocab, it lacks {missing}")
        self.pad_id, self.unk_id = self.vocab["[PAD]"], self.vocab["[UNK]"]
        self.cls_id, self.sep_id = self.vocab["[CLS]"], self.vocab["[SEP]"]
        self.vocab_size = max(self.vocab.values()) + 1
        self._cache: dict[str, list[int]] = {}

    def __getstate__(self) -> dict:
        return {"vocab_path": self.vocab_path, "max_len": self.max_len, "lowercase": self.lowercase}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["vocab_path"], state["max_len"], state["lowercase"])

    @property
    def eos_id(self) -> int:
        """[SEP]: the id that ends every encoded text."""
        return self.sep_id

    def _word(self, word: str) -> list[int]:
        if len(word) > MAX_CHARS_PER_WORD:
            return [self.unk_id]
        ids, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.vocab:
                    ids.append(self.vocab[piece])
                    break
                end -= 1
            if end == start:  # no piece matches here: the whole word is unknown
                return [self.unk_id]
            start = end
        return ids

    def _word_cached(self, word: str) -> list[int]:
        ids = self._cache.get(word)
        if ids is None:
            ids = self._word(word)
            if len(self._cache) < 1 << 16:  # EXIF texts repeat the same few thousand words
                self._cache[word] = ids
        return ids

    def ids(self, text: str) -> list[int]:
        """Piece ids of `text`, without [CLS]/[SEP] and without truncation."""
        out: list[int] = []
        for k, part in enumerate(self._split_specials(text)):
            if k % 2:  # odd parts are literal special tokens
                out.append(self.vocab[part])
                continue
            for word in pre_tokenize(normalize(part, self.lowercase)):
                out.extend(self._word_cached(word))
        return out

    def _split_specials(self, text: str) -> list[str]:
        """[text, special, text, special, ...]: literal special tokens cut out, leftmost-longest first."""
        parts, i, last = [], 0, 0
        while i < len(text):
            if text[i] == "[":
                hit = next((s for s in SPECIALS if text.startswith(s, i)), None)
                if hit:
                    parts += [text[last:i], hit]
                    i += len(hit)
                    last = i
                    continue
            i += 1
        parts.append(text[last:])
        return parts

    def _fill(self, ids: list[int], row: np.ndarray) -> bool:
        truncated = len(ids) + 2 > self.max_len
        ids = [self.cls_id] + ids[: self.max_len - 2] + [self.sep_id]
        row[: len(ids)] = ids
        return truncated

    def encode(self, text: str) -> np.ndarray:
        """Text -> int32 [max_len]: [CLS], pieces, [SEP], then [PAD]; a long text is cut before [SEP]."""
        row = np.full((self.max_len,), self.pad_id, np.int32)
        self._fill(self.ids(text), row)
        return row

    def encode_batch(self, texts: Sequence[str]) -> tuple[np.ndarray, int]:
        """Texts -> (int32 [n, max_len], how many were truncated)."""
        texts = list(texts)
        out = np.full((len(texts), self.max_len), self.pad_id, np.int32)
        n_trunc = sum(self._fill(self.ids(t), row) for row, t in zip(out, texts))
        return out, n_trunc

    def attention_mask(self, ids: np.ndarray) -> np.ndarray:
        """int32 mask of the same shape: 1 where a token is not [PAD]."""
        return (np.asarray(ids) != self.pad_id).astype(np.int32)

    def length(self, text: str) -> int:
        """Number of tokens of `text` with [CLS] and [SEP], before any truncation."""
        return len(self.ids(text)) + 2
