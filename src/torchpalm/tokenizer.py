"""WordPiece tokenization with PaddlePALM/BERT semantics, on HuggingFace `tokenizers` (Rust).

PALM's `FullTokenizer` (spec §6) is BERT's BasicTokenizer followed by greedy longest-match WordPiece:
clean control characters, put spaces around CJK ideographs, optionally lower-case and strip accents, split
on whitespace and punctuation, never split or lower-case the special tokens. HF `tokenizers` implements
exactly this pipeline as BertNormalizer + BertPreTokenizer + WordPiece, so we assemble it from a vocab file
and let the Rust code do the per-character work (batch encoding runs on all cores).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from tokenizers import AddedToken, Tokenizer
from tokenizers.models import WordPiece
from tokenizers.normalizers import BertNormalizer
from tokenizers.pre_tokenizers import BertPreTokenizer

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
    ids_a: Sequence[int], ids_b: Sequence[int] | None, max_len: int, cls_id: int, sep_id: int
) -> tuple[np.ndarray, np.ndarray]:
    """`[CLS] a [SEP]` or `[CLS] a [SEP] b [SEP]`, truncated to `max_len`; returns (token ids, segment ids)."""
    if ids_b is None:
        a = list(ids_a[: max(max_len - 2, 0)])
        tokens = [cls_id, *a, sep_id]
        return np.asarray(tokens, dtype=np.int64), np.zeros(len(tokens), dtype=np.int64)
    la, lb = truncate_pair(len(ids_a), len(ids_b), max_len - 3)
    tokens = [cls_id, *ids_a[:la], sep_id, *ids_b[:lb], sep_id]
    segments = np.zeros(len(tokens), dtype=np.int64)
    segments[la + 2 :] = 1
    return np.asarray(tokens, dtype=np.int64), segments
