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

RoBERTa's byte-level BPE (`ByteLevelBPETokenizer`) is assembled exactly as `transformers.RobertaTokenizer`
does it, from `vocab.json` + `merges.txt` (or read from a `tokenizer.json`). Both classes offer the same
surface to the readers: `encode_batch`, the special ids, `word_prefix` (what a word that is not the first of a
sentence carries before it: nothing for WordPiece, a space for byte-level BPE) and `build_inputs` (the
model's single/pair template). `load_tokenizer` picks one by the readers' `tokenizer=` name.
"""

from __future__ import annotations

import logging
import os
import re
import unicodedata
from collections.abc import Sequence
from itertools import chain

import numpy as np
from tokenizers import AddedToken, Tokenizer, decoders, normalizers, processors
from tokenizers.models import BPE, WordPiece
from tokenizers.normalizers import BertNormalizer
from tokenizers.pre_tokenizers import BertPreTokenizer, ByteLevel

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
        return build_inputs(ids_a, ids_b, max_len, self.cls_id, self.sep_id)


BPE_SPECIALS = {"cls": "<s>", "sep": "</s>", "pad": "<pad>", "unk": "<unk>", "mask": "<mask>"}


def _bpe_files(path: str) -> tuple[str | None, str | None, str | None]:
    """(tokenizer.json, vocab.json, merges.txt) that `path` (a model directory or one of those files) names."""
    if os.path.isdir(path):
        tokenizer_json = os.path.join(path, "tokenizer.json")
        if os.path.isfile(tokenizer_json):
            return tokenizer_json, None, None
        return None, os.path.join(path, "vocab.json"), os.path.join(path, "merges.txt")
    if os.path.basename(path) == "tokenizer.json":
        return path, None, None
    return None, path, os.path.join(os.path.dirname(path), "merges.txt")


class ByteLevelBPETokenizer:
    """RoBERTa's (GPT-2's) byte-level BPE, as `transformers.RobertaTokenizer` builds it.

    Args:
        path: a model directory holding `tokenizer.json`, or `vocab.json` and `merges.txt`; or the path of
            `tokenizer.json`, or of `vocab.json` (with `merges.txt` beside it).
        do_lower_case: lower-case the text first (RoBERTa is cased; off by default).

    Special tokens are RoBERTa's: `<s>` (cls), `</s>` (sep), `<pad>`, `<unk>`, `<mask>`. A word that is not the
    first of its sentence is encoded with a leading space (`word_prefix`), as it appears in running text
    ("Ġword"); pairs are `<s> a </s></s> b </s>`.
    """

    word_prefix = " "
    pair_separators = 2  # <s> a </s></s> b </s>

    def __init__(self, path: str | os.PathLike, do_lower_case: bool = False):
        path = os.fspath(path)
        tokenizer_json, vocab_json, merges_txt = _bpe_files(path)
        if tokenizer_json is not None:
            tok = Tokenizer.from_file(tokenizer_json)  # JSON only: nothing in it can run code
            self.vocab_path = tokenizer_json
        else:
            for needed in (vocab_json, merges_txt):
                if not os.path.isfile(needed):
                    raise FileNotFoundError(f"byte-level BPE file not found: {needed} (tokenizer='bpe' needs "
                                            f"tokenizer.json, or vocab.json and merges.txt, in {path})")
            # The same model, pre-tokenizer and decoder as transformers.RobertaTokenizer (no unk: every byte is
            # a symbol of a real byte-level vocabulary). The Rust code raises a bare Exception on a bad file, e.g.
            # a merge whose result the vocabulary lacks (HF's RobertaTokenizer refuses those files too).
            try:
                vocab, merges = BPE.read_file(vocab_json, merges_txt)
                tok = Tokenizer(BPE(vocab=vocab, merges=merges, dropout=None, continuing_subword_prefix="",
                                    end_of_word_suffix="", fuse_unk=False))
            except Exception as e:
                raise ValueError(f"{vocab_json} + {merges_txt}: not a usable BPE vocabulary and merges pair: {e}"
                                 ) from None
            tok.pre_tokenizer = ByteLevel(add_prefix_space=False)
            tok.decoder = decoders.ByteLevel()
            # character offsets without the leading space of "Ġword" (as HF's trim_offsets=True), for MRC
            tok.post_processor = processors.ByteLevel(trim_offsets=True)
            self.vocab_path = vocab_json
        self.vocab = tok.get_vocab(with_added_tokens=True)
        missing = [t for t in BPE_SPECIALS.values() if t not in self.vocab]
        if missing:
            raise ValueError(f"{self.vocab_path}: the vocabulary lacks RoBERTa's special tokens {missing}")
        tok.add_special_tokens([AddedToken(t, normalized=False) for t in BPE_SPECIALS.values()])
        if do_lower_case:
            tok.normalizer = (normalizers.Sequence([tok.normalizer, normalizers.Lowercase()])
                              if tok.normalizer is not None else normalizers.Lowercase())
        self.do_lower_case = do_lower_case
        self.inv_vocab = {i: t for t, i in self.vocab.items()}
        self._tok = tok
        self.cls_id, self.sep_id, self.pad_id, self.unk_id, self.mask_id = (
            self.vocab[BPE_SPECIALS[k]] for k in ("cls", "sep", "pad", "unk", "mask"))

    @property
    def vocab_size(self) -> int:
        return max(self.vocab.values()) + 1

    def tokenize(self, text: str) -> list[str]:
        """Byte-level pieces of one text (no <s>/</s>), e.g. ["Hello", "Ġworld"]."""
        return self._tok.encode(text, add_special_tokens=False).tokens

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def encode_words(self, words: Sequence[str]) -> list[list[int]]:
        """Ids of each word of ONE sentence as it reads in running text: the first bare, the others after a space."""
        return self.encode_batch([w if i == 0 else self.word_prefix + w for i, w in enumerate(words)])

    def convert_tokens_to_ids(self, tokens: Sequence[str]) -> list[int]:
        return [self.vocab.get(t, self.unk_id) for t in tokens]

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str]:
        return [self.inv_vocab.get(int(i), BPE_SPECIALS["unk"]) for i in ids]

    def build_inputs(self, ids_a: Sequence[int], ids_b: Sequence[int] | None, max_len: int):
        """`<s> a </s>` or `<s> a </s></s> b </s>` truncated to `max_len`: (token ids, segment ids)."""
        return build_inputs(ids_a, ids_b, max_len, self.cls_id, self.sep_id, pair_separators=2)


TOKENIZERS = {"wordpiece": WordPieceTokenizer, "bpe": ByteLevelBPETokenizer}


def load_tokenizer(kind: str, path: str | os.PathLike, do_lower_case: bool = False):
    """The readers' tokenizer: 'wordpiece' (`vocab.txt`, or a directory holding it) or 'bpe' (RoBERTa's
    byte-level BPE: a directory with `tokenizer.json` or `vocab.json` + `merges.txt`, or one of those files)."""
    if kind not in TOKENIZERS:
        raise ValueError(f"tokenizer must be one of {sorted(TOKENIZERS)}, got {kind!r}")
    path = os.fspath(path)
    if kind == "wordpiece" and os.path.isdir(path):
        path = os.path.join(path, "vocab.txt")
    return TOKENIZERS[kind](path, do_lower_case=do_lower_case)


def truncate_pair(len_a: int, len_b: int, max_tokens: int) -> tuple[int, int]:
    """PALM/BERT longest-first truncation of a pair, in closed form.

    Repeatedly drops the last token of the longer sequence (of b when equal) until `len_a + len_b <=
    max_tokens`; returns the kept lengths.
    """
    excess = len_a + len_b - max_tokens
    if excess <= 0:
        return len_a, len_b
    # Trim the longer one down to the shorter's length first, then alternate (b first when equal).
    diff = abs(len_a - len_b)
    take = min(diff, excess)
    if len_a > len_b:
        len_a -= take
    else:
        len_b -= take
    excess -= take
    if excess > 0:
        len_b -= (excess + 1) // 2
        len_a -= excess // 2
    return len_a, len_b


def build_inputs(
    ids_a: Sequence[int], ids_b: Sequence[int] | None, max_len: int, cls_id: int, sep_id: int,
    pair_separators: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """`[CLS] a [SEP]` or `[CLS] a [SEP] b [SEP]`, truncated to `max_len`; returns (token ids, segment ids).

    `pair_separators=2` puts two separators between a and b (RoBERTa's `<s> a </s></s> b </s>`).
    """
    if ids_b is None:
        a = list(ids_a[: max(max_len - 2, 0)])
        tokens = [cls_id, *a, sep_id]
        return np.asarray(tokens, dtype=np.int64), np.zeros(len(tokens), dtype=np.int64)
    la, lb = truncate_pair(len(ids_a), len(ids_b), max_len - 2 - pair_separators)
    tokens = [cls_id, *ids_a[:la], *[sep_id] * pair_separators, *ids_b[:lb], sep_id]
    segments = np.zeros(len(tokens), dtype=np.int64)
    segments[la + 1 + pair_separators :] = 1
    return np.asarray(tokens, dtype=np.int64), segments
