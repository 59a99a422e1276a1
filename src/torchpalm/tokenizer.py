"""WordPiece tokenization with PaddlePALM/BERT semantics (spec §6), fast and exact.

PALM's `FullTokenizer` is BERT's BasicTokenizer followed by greedy longest-match WordPiece: drop control
characters, put spaces around CJK ideographs, split on whitespace, then per whitespace token (unless it is one of
the special tokens, which are never lower-cased or split) optionally lower-case and strip accents, split on
punctuation, and WordPiece each piece (a piece over 100 characters, or one that cannot be matched, is [UNK]).

Two paths give the same ids:

* the reference path (`palm_basic_tokenize` + `wordpiece`), a direct port of that pipeline, one character at a
  time in Python: the definition, and what `tokenize` uses;
* the fast path (`WordPieceTokenizer.encode_batch`): the cleaning and CJK spacing are per-character maps, so
  `str.translate` does them in C with a table of the characters seen so far (ASCII text without control
  characters needs none), and `str.split` the whitespace split; every later step works on one whitespace token
  at a time, so its ids are memoised per distinct token. Per-character Python work then happens once per
  distinct token of the corpus, not once per character.

HuggingFace `tokenizers` (Rust) implements the same pipeline but, called from Python, encodes several times
slower than the fast path (see BENCHMARKS.md); it is kept for the character offsets the MRC reader needs.

Other tokenizers live in `torchpalm.hf_tokenizer`: `HFTokenizer` reads the model's own `tokenizer.json`
(WordPiece, byte-level BPE, Unigram / Metaspace; its SentencePiece model converted once where that is all it
ships), `ByteLevelBPETokenizer` is RoBERTa's. All offer the same surface to the readers: `encode_batch`, the
special ids, `word_prefix` (what a word that is not the first of a sentence carries before it: nothing for
WordPiece, a space for byte-level BPE), `template` / `build_inputs` (the model's single/pair layout) and
`encode_with_offsets` (character spans, for MRC). `load_tokenizer` picks one by the readers' `tokenizer=` name.
"""

from __future__ import annotations

import logging
import os
import re
import unicodedata
from collections.abc import Sequence
from itertools import chain

import numpy as np
from tokenizers import AddedToken, Tokenizer
from tokenizers.models import WordPiece
from tokenizers.normalizers import BertNormalizer
from tokenizers.pre_tokenizers import BertPreTokenizer

from .hf_tokenizer import (
    TOKENIZER_JSON,
    ByteLevelBPETokenizer,
    HFTokenizer,
    find_tokenizer,
    sentencepiece_converted,
)
from .input_template import InputTemplate, truncate_pair

__all__ = ["ByteLevelBPETokenizer", "HFTokenizer", "InputTemplate", "WordPieceTokenizer", "build_inputs",
           "load_tokenizer", "truncate_pair"]

logger = logging.getLogger("torchpalm")

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
MAX_INPUT_CHARS_PER_WORD = 100


# ---- the reference path: PALM's BasicTokenizer and WordpieceTokenizer, character by character ----
def is_whitespace(c: str) -> bool:
    return c in " \t\n\r" or unicodedata.category(c) == "Zs"


def is_control(c: str) -> bool:
    return c not in "\t\n\r" and unicodedata.category(c).startswith("C")


def is_punctuation(c: str) -> bool:
    cp = ord(c)
    return 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126 or \
        unicodedata.category(c).startswith("P")


def is_cjk(c: str) -> bool:
    cp = ord(c)
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF
            or 0x2A700 <= cp <= 0x2B73F or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF
            or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F)


def lower_and_strip_accents(token: str) -> str:
    """PALM's do_lower_case step: lower-case, decompose (NFD), drop the non-spacing marks."""
    return "".join(c for c in unicodedata.normalize("NFD", token.lower()) if unicodedata.category(c) != "Mn")


def split_punctuation(token: str) -> list[str]:
    """Every punctuation character becomes a piece of its own; the runs between them stay whole."""
    pieces, current = [], []
    for c in token:
        if is_punctuation(c):
            if current:
                pieces.append("".join(current))
                current = []
            pieces.append(c)
        else:
            current.append(c)
    if current:
        pieces.append("".join(current))
    return pieces


def basic_pieces(token: str, do_lower_case: bool) -> list[str]:
    """What PALM's BasicTokenizer makes of one whitespace-separated token (not a special token)."""
    if do_lower_case:
        token = lower_and_strip_accents(token)
    return [p for piece in split_punctuation(token) for p in piece.split()]


def palm_basic_tokenize(text: str, do_lower_case: bool) -> list[str]:
    """PALM's BasicTokenizer (spec §6.3): the words of `text`, special tokens kept whole."""
    chars = []
    for c in text:
        if c == "\x00" or c == "\ufffd" or is_control(c):
            continue
        if is_whitespace(c):
            chars.append(" ")
        elif is_cjk(c):
            chars.append(f" {c} ")
        else:
            chars.append(c)
    words = []
    for token in "".join(chars).split():
        words.extend([token] if token in SPECIAL_TOKENS else basic_pieces(token, do_lower_case))
    return words


def wordpiece(word: str, vocab: dict[str, int], unk_token: str = "[UNK]") -> list[str]:
    """PALM's WordpieceTokenizer (spec §6.4): greedy longest match first, '##' on continuation pieces."""
    if len(word) > MAX_INPUT_CHARS_PER_WORD:
        return [unk_token]
    pieces, start = [], 0
    while start < len(word):
        end = len(word)
        while start < end:
            piece = word[start:end] if start == 0 else "##" + word[start:end]
            if piece in vocab:
                break
            end -= 1
        else:
            return [unk_token]
        pieces.append(piece)
        start = end
    return pieces


# ---- the fast path: ASCII control characters (PALM deletes them, gluing their neighbours together) ----
_ASCII_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_ASCII_CONTROL_DELETE: dict[int, str | None] = {c: None for c in [*range(0, 9), 11, 12, *range(14, 32), 127]}
# A cleaned ASCII token (no whitespace, no control) split at punctuation: PALM's punctuation is all of ASCII's
# printable non-alphanumerics.
_ASCII_WORDS = re.compile(r"[A-Za-z0-9]+|[^A-Za-z0-9]")


def load_vocab(vocab_path: str | os.PathLike) -> dict[str, int]:
    """Reads a vocabulary: one `token` per line (id = line number) or `token<TAB>id` (ERNIE style).

    Reading stops at the first line with more than two tab-separated fields, as in PALM.
    """
    path = os.fspath(vocab_path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"vocabulary file not found: {path}")
    with open(path, encoding="utf-8", errors="strict") as f:
        text = f.read()  # universal newlines, as iterating over the file would split
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if "\t" not in text:  # BERT's one token per line: the id is the line number (a repeated token: its last line)
        vocab = dict(zip(lines, range(len(lines))))
    else:
        vocab = {}
        for line_no, line in enumerate(lines):
            fields = line.split("\t")
            if len(fields) > 2:
                break
            token = fields[0]
            if len(fields) == 2:
                try:
                    vocab[token] = int(fields[1])
                except ValueError:
                    raise ValueError(f"{path}:{line_no + 1}: token id {fields[1]!r} is not an integer") from None
            else:
                vocab[token] = line_no
    missing = [t for t in SPECIAL_TOKENS if t not in vocab]
    if missing:
        raise ValueError(f"{path}: vocabulary lacks the special tokens {missing}")
    return vocab


def is_uncased_vocab(vocab: dict[str, int]) -> bool:
    """True when no piece of the vocabulary (outside bracketed specials such as [CLS] or <S>) has an upper-case
    ASCII letter: BERT's uncased and Chinese vocabularies, where an unlowered "The" can only be [UNK]."""
    return not any(_HAS_UPPER.search(t) for t in vocab if not (t[:1] in "[<" and t[-1:] in "]>"))


_HAS_UPPER = re.compile("[A-Z]")
_warned_uncased: set[str] = set()


def _warn_cased_use_of_uncased(vocab_path: str) -> None:
    if vocab_path not in _warned_uncased:
        _warned_uncased.add(vocab_path)
        logger.warning("%s has no upper-case word pieces (an uncased vocabulary) but do_lower_case=False (PALM's "
                       "default): every word with a capital letter becomes [UNK]; pass do_lower_case=True to the "
                       "reader", vocab_path)


class WordPieceTokenizer:
    """BERT/PALM WordPiece tokenizer built from a `vocab.txt` (see the module docstring for its two paths).

    Args:
        vocab_path: vocabulary file (`token` or `token<TAB>id` per line).
        do_lower_case: lower-case and strip accents (use True for uncased vocabularies).

    """

    # The token memo is dropped when it grows past this many entries (a corpus of random strings must not
    # hold its memory forever; real text has a few hundred thousand distinct pieces at most).
    MAX_MEMO = 2_000_000
    word_prefix = ""  # WordPiece splits on whitespace: a word encodes the same wherever it stands
    pair_separators = 1  # [CLS] a [SEP] b [SEP]
    kind = "wordpiece"

    def __init__(self, vocab_path: str | os.PathLike, do_lower_case: bool = True):
        self.vocab_path = os.fspath(vocab_path)
        self.do_lower_case = do_lower_case
        self.vocab = load_vocab(vocab_path)
        self.inv_vocab = {i: t for t, i in self.vocab.items()}
        self.pad_id = self.vocab["[PAD]"]
        self.unk_id = self.vocab["[UNK]"]
        self.cls_id = self.vocab["[CLS]"]
        self.sep_id = self.vocab["[SEP]"]
        self.mask_id = self.vocab["[MASK]"]
        self.template = InputTemplate.bert(self.cls_id, self.sep_id)
        self.special_ids = frozenset(self.vocab[t] for t in SPECIAL_TOKENS)
        self._memo: dict[str, tuple[int, ...]] = {}  # whitespace token of cleaned text -> its word-piece ids
        # character -> what PALM's cleaning makes of it (None: deleted); ASCII controls known from the start
        self._translate: dict[int, str | None] = dict(_ASCII_CONTROL_DELETE)
        self._seen_chars: set[str] = {chr(i) for i in _ASCII_CONTROL_DELETE}
        self._rust: Tokenizer | None = None
        if not do_lower_case and is_uncased_vocab(self.vocab):
            _warn_cased_use_of_uncased(self.vocab_path)

    @property
    def vocab_size(self) -> int:
        return max(self.vocab.values()) + 1

    @property
    def _tok(self) -> Tokenizer:
        """The same pipeline in HuggingFace `tokenizers` (Rust), built on first use: the MRC reader needs its
        character offsets."""
        if self._rust is None:
            tok = Tokenizer(WordPiece(self.vocab, unk_token="[UNK]",
                                      max_input_chars_per_word=MAX_INPUT_CHARS_PER_WORD))
            tok.normalizer = BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                            strip_accents=self.do_lower_case, lowercase=self.do_lower_case)
            tok.pre_tokenizer = BertPreTokenizer()
            # The specials are matched before normalisation, so "[SEP]" in text is never lower-cased or split.
            tok.add_special_tokens([AddedToken(t, normalized=False) for t in SPECIAL_TOKENS])
            self._rust = tok
        return self._rust

    # ---- the reference path ----
    def tokenize(self, text: str) -> list[str]:
        """Word pieces of one text (no [CLS]/[SEP]), by the reference path."""
        return [p for w in palm_basic_tokenize(text, self.do_lower_case)
                for p in ([w] if w in SPECIAL_TOKENS else wordpiece(w, self.vocab))]

    def encode_reference(self, text: str) -> list[int]:
        """Token ids of one text by the reference path (the definition the fast path must equal)."""
        return self.convert_tokens_to_ids(self.tokenize(text))

    # ---- the fast path ----
    def encode(self, text: str) -> list[int]:
        """Token ids of one text (no [CLS]/[SEP])."""
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of many texts (no [CLS]/[SEP]); equal to `encode_reference` on each, only faster."""
        texts = list(texts)
        non_ascii = [t for t in texts if not t.isascii()]
        if non_ascii:
            self._learn_chars(set("".join(non_ascii)))
        if len(self._memo) > self.MAX_MEMO:
            self._memo.clear()
        memo, table = self._memo, self._translate
        ids_of = memo.__getitem__
        out = []
        for text in texts:
            # PALM's cleaning and CJK spacing, character by character but in C; then its whitespace split
            if not text.isascii() or _ASCII_CONTROL.search(text):
                text = text.translate(table)
            tokens = text.split()
            try:
                out.append(list(chain.from_iterable(map(ids_of, tokens))))
            except KeyError:  # a token seen for the first time
                for t in tokens:
                    if t not in memo:
                        memo[t] = self._token_ids(t)
                out.append(list(chain.from_iterable(map(ids_of, tokens))))
        return out

    def encode_words(self, words: Sequence[str]) -> list[list[int]]:
        """Ids of each pre-split word separately (for word-level labels)."""
        return self.encode_batch(words)

    def encode_with_offsets(self, texts: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        """(ids `[n]`, character spans `[n, 2]` in the original text) of each text, by the Rust pipeline."""
        return [(np.asarray(e.ids, dtype=np.int64), np.asarray(e.offsets, dtype=np.int64).reshape(-1, 2))
                for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def _token_ids(self, token: str) -> tuple[int, ...]:
        """The ids of one whitespace-separated token of cleaned text: PALM's per-token steps, then WordPiece."""
        vocab = self.vocab
        if token in SPECIAL_TOKENS:
            return (vocab[token],)
        if token.isascii():  # the same steps, shortened: no accents, and every non-alphanumeric is punctuation
            words = _ASCII_WORDS.findall(token.lower() if self.do_lower_case else token)
        else:
            words = basic_pieces(token, self.do_lower_case)
        return tuple(vocab[p] for w in words for p in wordpiece(w, vocab))

    def _learn_chars(self, chars: set[str]) -> None:
        """Adds the new characters to the cleaning table: controls are deleted and CJK characters set apart by
        spaces; anything else stays as it is (`str.split` already splits at every character PALM calls
        whitespace, category Zs included)."""
        for c in chars - self._seen_chars:
            if c == "\x00" or c == "\ufffd" or is_control(c):
                self._translate[ord(c)] = None
            elif is_cjk(c):
                self._translate[ord(c)] = f" {c} "
            self._seen_chars.add(c)

    def save(self, directory: str | os.PathLike) -> dict[str, str]:
        """Writes the files this tokenizer is built from into `directory` (an inference bundle); returns the
        reader constructor arguments that name them, relative to `directory` (`{"vocab_path": "vocab.txt"}`).

        A tokenizer of another kind (byte-level BPE) writes its own files and returns its own arguments.
        """
        ids = sorted(self.vocab.items(), key=lambda item: item[1])
        dense = [i for _, i in ids] == list(range(len(ids)))
        with open(os.path.join(directory, "vocab.txt"), "w", encoding="utf-8") as f:
            for token, i in ids:  # one token per line when the ids are 0..n-1, else ERNIE's `token<TAB>id`
                f.write(f"{token}\n" if dense else f"{token}\t{i}\n")
        return {"vocab_path": "vocab.txt"}

    def convert_tokens_to_ids(self, tokens: Sequence[str]) -> list[int]:
        return [self.vocab.get(t, self.unk_id) for t in tokens]

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str]:
        return [self.inv_vocab.get(int(i), "[UNK]") for i in ids]

    def build_inputs(self, ids_a: Sequence[int], ids_b: Sequence[int] | None, max_len: int):
        """`[CLS] a [SEP]` or `[CLS] a [SEP] b [SEP]` truncated to `max_len`: (token ids, segment ids)."""
        return self.template.build(ids_a, ids_b, max_len)


TOKENIZERS = ("wordpiece", "bpe", "auto")


def load_tokenizer(kind: str, path: str | os.PathLike, do_lower_case: bool = False):
    """The readers' tokenizer.

    Args:
        kind: 'wordpiece' (`vocab.txt`, or a folder holding it: PALM/BERT semantics, the fast path), 'bpe'
            (RoBERTa's byte-level BPE: a folder with `tokenizer.json` or `vocab.json` + `merges.txt`, or one of
            those files) or 'auto' (whatever the model ships, see `torchpalm.hf_tokenizer.find_tokenizer`: its
            `tokenizer.json`, else its SentencePiece model converted once, else `vocab.txt`, else `vocab.json`).
            A 'wordpiece' folder without `vocab.txt`, or a file named like another kind's (`*.json`, `*.model`),
            is read as 'auto'.
        path: the file or the model folder.
        do_lower_case: lower-case the text (WordPiece: and strip accents) before tokenizing.
    """
    if kind not in TOKENIZERS:
        raise ValueError(f"tokenizer must be one of {list(TOKENIZERS)}, got {kind!r}")
    path = os.fspath(path)
    if kind == "wordpiece" and os.path.isdir(path):
        if os.path.isfile(os.path.join(path, "vocab.txt")):
            return WordPieceTokenizer(os.path.join(path, "vocab.txt"), do_lower_case=do_lower_case)
        logger.info("%s has no vocab.txt: reading the tokenizer the model ships (tokenizer='auto')", path)
        kind = "auto"
    elif kind == "wordpiece" and os.path.isfile(path) and find_tokenizer(path)[0] != "wordpiece":
        kind = "auto"  # a tokenizer.json, vocab.json or SentencePiece model given by its path
    if kind == "bpe":
        return ByteLevelBPETokenizer(path, do_lower_case=do_lower_case)
    if kind == "wordpiece":
        return WordPieceTokenizer(path, do_lower_case=do_lower_case)
    found, file = find_tokenizer(path)
    if found == "sentencepiece":
        with sentencepiece_converted(file) as folder:  # read whole: the folder may be a temporary one
            return HFTokenizer(os.path.join(folder, TOKENIZER_JSON), do_lower_case=do_lower_case, source=file)
    if found == "hf":
        return HFTokenizer(file, do_lower_case=do_lower_case)
    return load_tokenizer(found, file, do_lower_case)


def build_inputs(
    ids_a: Sequence[int], ids_b: Sequence[int] | None, max_len: int, cls_id: int, sep_id: int,
    pair_separators: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """`[CLS] a [SEP]` or `[CLS] a [SEP] b [SEP]`, truncated to `max_len`; returns (token ids, segment ids).

    `pair_separators=2` puts two separators between a and b (RoBERTa's `<s> a </s></s> b </s>`).
    """
    return InputTemplate.bert(cls_id, sep_id, pair_separators).build(ids_a, ids_b, max_len)

