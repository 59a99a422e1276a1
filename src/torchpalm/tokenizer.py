"""Tokenizers on HuggingFace `tokenizers` (Rust): WordPiece with PaddlePALM/BERT semantics, and RoBERTa's
byte-level BPE.

PALM's `FullTokenizer` (spec §6) is BERT's BasicTokenizer followed by greedy longest-match WordPiece:
clean control characters, put spaces around CJK ideographs, optionally lower-case and strip accents, split
on whitespace and punctuation, never split or lower-case the special tokens. HF `tokenizers` implements
exactly this pipeline as BertNormalizer + BertPreTokenizer + WordPiece, so we assemble it from a vocab file
and let the Rust code do the per-character work (batch encoding runs on all cores).

RoBERTa's byte-level BPE (`ByteLevelBPETokenizer`) is assembled exactly as `transformers.RobertaTokenizer`
does it, from `vocab.json` + `merges.txt` (or read from a `tokenizer.json`). Both classes offer the same
surface to the readers: `encode_batch`, the special ids, `word_prefix` (what a word that is not the first of a
sentence carries before it: nothing for WordPiece, a space for byte-level BPE) and `build_inputs` (the
model's single/pair template). `load_tokenizer` picks one by the readers' `tokenizer=` name.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from tokenizers import AddedToken, Tokenizer, decoders, normalizers, processors
from tokenizers.models import BPE, WordPiece
from tokenizers.normalizers import BertNormalizer
from tokenizers.pre_tokenizers import BertPreTokenizer, ByteLevel

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def load_vocab(vocab_path: str | os.PathLike) -> dict[str, int]:
    """Reads a vocabulary: one `token` per line (id = line number) or `token<TAB>id` (ERNIE style).

    Reading stops at the first line with more than two tab-separated fields, as in PALM.
    """
    path = os.fspath(vocab_path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"vocabulary file not found: {path}")
    vocab: dict[str, int] = {}
    with open(path, encoding="utf-8", errors="strict") as f:
        for line_no, line in enumerate(f):
            fields = line.rstrip("\n").rstrip("\r").split("\t")
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


class WordPieceTokenizer:
    """BERT/PALM WordPiece tokenizer built from a `vocab.txt`.

    Args:
        vocab_path: vocabulary file (`token` or `token<TAB>id` per line).
        do_lower_case: lower-case and strip accents (use True for uncased vocabularies).
    """

    word_prefix = ""  # WordPiece splits on whitespace: a word encodes the same wherever it stands
    pair_separators = 1  # [CLS] a [SEP] b [SEP]

    def __init__(self, vocab_path: str | os.PathLike, do_lower_case: bool = True):
        self.vocab_path = os.fspath(vocab_path)
        self.do_lower_case = do_lower_case
        self.vocab = load_vocab(vocab_path)
        self.inv_vocab = {i: t for t, i in self.vocab.items()}
        tok = Tokenizer(WordPiece(self.vocab, unk_token="[UNK]", max_input_chars_per_word=100))
        tok.normalizer = BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=do_lower_case, lowercase=do_lower_case
        )
        tok.pre_tokenizer = BertPreTokenizer()
        # The specials are matched before normalisation, so "[SEP]" in text is never lower-cased or split.
        tok.add_special_tokens([AddedToken(t, normalized=False) for t in SPECIAL_TOKENS])
        self._tok = tok
        self.pad_id = self.vocab["[PAD]"]
        self.unk_id = self.vocab["[UNK]"]
        self.cls_id = self.vocab["[CLS]"]
        self.sep_id = self.vocab["[SEP]"]
        self.mask_id = self.vocab["[MASK]"]

    @property
    def vocab_size(self) -> int:
        return max(self.vocab.values()) + 1

    def tokenize(self, text: str) -> list[str]:
        """Word pieces of one text (no [CLS]/[SEP])."""
        return self._tok.encode(text, add_special_tokens=False).tokens

    def encode(self, text: str) -> list[int]:
        """Token ids of one text (no [CLS]/[SEP])."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of many texts at once (parallel in Rust)."""
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def encode_words(self, words: Sequence[str]) -> list[list[int]]:
        """Ids of each pre-split word separately (for word-level labels and MRC token maps)."""
        return self.encode_batch(words)

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
