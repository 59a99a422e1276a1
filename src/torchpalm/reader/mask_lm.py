"""MaskLMReader: masked-language-model batches with dynamic masking (spec §5.6).

Texts are tokenised once; masking is drawn afresh for every batch from the batch's own generator (a function
of seed, epoch and position), so every epoch sees new masks and a resumed run sees the very same ones.

Masking (BERT's recipe, PALM's per-token draw): every maskable token (anything but [PAD] [UNK] [CLS] [SEP]
[MASK], or the special tokens of the model's tokenizer.json) is selected with probability `mask_prob`; with
`whole_word_mask` the draw is per word, a word being a piece plus its '##' continuation pieces (a CJK character
is a word of its own), or with a tokenizer.json the pieces of one pre-tokenizer word (its `word_ids`). A sentence with at least
one maskable token and no selection gets one unit selected uniformly (PALM forced one [MASK]; with numpy >= 2,
or for a length-2 input, its forcing code crashed, spec §17.31). Each selected token independently becomes
[MASK] (80%), a random vocabulary token (10%, never a special or `[unusedN]` token) or stays (10%).

Predict phase: PALM masked predict files too (spec §17.31). Here a predict reader masks nothing by default;
`mask_pos` then lists the `[MASK]` tokens written in the text itself ("the capital of france is [MASK] ."),
which is what fill-in-the-blank prediction needs. Pass `mask_in_predict=True` to mask predict batches exactly
as in training (reproducibly; `mask_label` is then in the batch too, for `require_attr('mask_label')`).
"""

from __future__ import annotations

import os

import numpy as np
import torch

from .base import Reader
from .collate import COMMON_OUTPUTS, collate_common, pad_2d
from .parsing import read_lines, read_tsv

FILE_FORMATS = ("tsv", "csv", "txt")


def _is_cjk_char(token: str) -> bool:
    if len(token) != 1:
        return False
    cp = ord(token)
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF or 0x2A700 <= cp <= 0x2B73F
            or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF or 0xF900 <= cp <= 0xFAFF
            or 0x2F800 <= cp <= 0x2FA1F)


class MaskLMReader(Reader):
    """Reads text for masked-LM training: a TSV with a `text_a` column (`text_b` optional, segment 1), or with
    `load_data(..., file_format='txt')` a plain-text file with one text per line and no header.

    Yields the common backbone inputs with the masked `token_ids [B, L]`, plus
        mask_pos   [M] int64: flat indices into the padded `[B * L]` batch (sentence-major, ascending);
        mask_label [M] int64: the original ids at those positions (train).

    Args:
        vocab_path, max_len, tokenizer, lang, seed, do_lower_case, phase: as for every reader
            (`torchpalm.reader.base.Reader`); `seed` also decides the masks. As in PALM, `lang` does not
            change MLM text (spaces are kept; CJK characters are split by the tokenizer anyway).
        dev_count, print_prefix: kept for PALM's signature.
        mask_prob: the probability that a token (or word) is selected for prediction.
        whole_word_mask: select whole words rather than single word pieces.
        mask_in_predict: mask predict batches like training ones (default: predict on the [MASK] tokens
            written in the text; see the module docstring).
    """


    def __init__(
        self,
        vocab_path: str | os.PathLike,
        max_len: int,
        tokenizer: str = "wordpiece",
        lang: str = "en",
        seed: int | None = None,
        do_lower_case: bool = False,
        phase: str = "train",
        dev_count: int = 1,
        print_prefix: str = "",
        mask_prob: float = 0.15,
        whole_word_mask: bool = False,
        mask_in_predict: bool = False,
    ):
        if not 0.0 < mask_prob <= 1.0:
            raise ValueError(f"mask_prob must be in (0, 1], got {mask_prob}")
        super().__init__(vocab_path, max_len, tokenizer=tokenizer, lang=lang, seed=seed,
                         do_lower_case=do_lower_case, phase=phase)
        self.dev_count, self.print_prefix = dev_count, print_prefix
        self.mask_prob, self.whole_word_mask, self.mask_in_predict = float(mask_prob), whole_word_mask, mask_in_predict
        self._file_format = "tsv"
        tok = self._tokenizer
        if tok.mask_id is None:
            raise ValueError(f"{tok.vocab_path}: the tokenizer has no mask token (mask_token in its "
                             f"tokenizer_config.json, or [MASK] / <mask> in the vocabulary): masked-LM needs one")
        vocab = tok.vocab
        size = tok.vocab_size
        self._is_special = np.zeros(size, dtype=bool)
        self._is_special[sorted(tok.special_ids)] = True  # [PAD] [UNK] [CLS] [SEP] [MASK], <s> </s> <pad> ...
        # WordPiece: '##' pieces continue the previous word (only used for whole-word masking); a CJK character is
        # a word of its own even as a '##' piece (the tokenizer isolates CJK characters, so that is rare). Other
        # tokenizers give each example its word starts (the pre-tokenizer's words) instead.
        self._is_continuation = np.zeros(size, dtype=bool)
        wordpiece = tok.kind == "wordpiece"
        replaceable = []
        for token, i in vocab.items():
            if wordpiece and token.startswith("##") and len(token) > 2 and not _is_cjk_char(token[2:]):
                self._is_continuation[i] = True
            # random replacements: real tokens only, no specials and no reserved "[unused0]"-style entries
            if not self._is_special[i] and not (len(token) > 2 and token[0] == "[" and token[-1] == "]"):
                replaceable.append(i)
        if not replaceable:
            raise ValueError(f"{self._vocab_path}: the vocabulary has no ordinary tokens to draw replacements from")
        self._replacement_ids = np.array(sorted(replaceable), dtype=np.int64)

    _cache_version = 1  # bump when the encoded examples change (masking happens per batch, after the cache)

    def _task_outputs(self):
        outs = {"mask_pos": ([-1], "int64")}
        if self._phase == "train":
            outs["mask_label"] = ([-1], "int64")
        return outs

    def _all_outputs(self):
        return {**COMMON_OUTPUTS, "mask_pos": ([-1], "int64"), "mask_label": ([-1], "int64")}

    def _masks(self) -> bool:
        return self._phase == "train" or self.mask_in_predict

    def load_data(self, input_file: str | os.PathLike, batch_size: int, num_epochs: int | None = None,
                  file_format: str = "tsv", shuffle_train: bool = True) -> None:
        """As `Reader.load_data`; `file_format` is 'tsv' (header with `text_a`; 'csv' is PALM's name for the
        same TSV) or 'txt' (one text per line, no header)."""
        if file_format not in FILE_FORMATS:
            raise ValueError(f"file_format must be one of {FILE_FORMATS}, got {file_format!r}")
        self._file_format = file_format
        super().load_data(input_file, batch_size, num_epochs=num_epochs, file_format=file_format,
                          shuffle_train=shuffle_train)

    def _load_examples(self, path):
        if self._file_format == "txt":
            rows = [(line_no, {"text_a": line}) for line_no, line in read_lines(path)]
        else:
            rows = read_tsv(path, required=("text_a",), optional=("text_b",))
        has_b = "text_b" in rows[0][1]
        tok = self._tokenizer
        if tok.kind == "wordpiece":  # word starts come from the '##' pieces (`_is_continuation`)
            examples = []
            enc_a = tok.encode_batch([r["text_a"] for _, r in rows])
            enc_b = tok.encode_batch([r["text_b"] for _, r in rows]) if has_b else None
            for i, (line_no, _) in enumerate(rows):
                ids, segs = tok.build_inputs(enc_a[i], enc_b[i] if has_b else None, self._max_len)
                examples.append({"token_ids": ids, "segment_ids": segs, "line": line_no})
            return examples
        return self._examples_with_word_starts(rows, has_b)

    def _examples_with_word_starts(self, rows: list, has_b: bool) -> list[dict]:
        """Examples of a tokenizer.json tokenizer, each with `word_start` (bool per token: it begins a word of
        the pre-tokenizer, `word_ids`; True on special tokens), for whole-word masking."""
        tok = self._tokenizer
        enc_a = tok.encode_with_word_starts([r["text_a"] for _, r in rows])
        enc_b = tok.encode_with_word_starts([r["text_b"] for _, r in rows]) if has_b else None
        examples = []
        for i, (line_no, _) in enumerate(rows):
            (ids_a, starts_a), (ids_b, starts_b) = enc_a[i], enc_b[i] if has_b else (None, None)
            ids, segs = tok.build_inputs(ids_a, ids_b, self._max_len)
            word_start = tok.template.arrange(starts_a, starts_b, self._max_len, special=1)[0].astype(bool)
            examples.append({"token_ids": ids, "segment_ids": segs, "word_start": word_start, "line": line_no})
        return examples

    def _collate(self, examples, rng):
        batch = collate_common([e["token_ids"] for e in examples], [e["segment_ids"] for e in examples],
                               self._tokenizer.pad_id)
        ids = batch["token_ids"].numpy()
        if self._masks():
            word_start = None
            if "word_start" in examples[0]:  # tokenizer.json tokenizers: the pre-tokenizer's words
                word_start = pad_2d([e["word_start"] for e in examples], 1, ids.shape[1]).numpy().astype(bool)
            masked, mask_pos = self.mask(ids, rng, word_start)
            batch["token_ids"] = torch.from_numpy(masked)
            batch["mask_label"] = torch.from_numpy(ids.reshape(-1)[mask_pos])
        else:
            mask_pos = np.flatnonzero(ids.reshape(-1) == self._tokenizer.mask_id)
        batch["mask_pos"] = torch.from_numpy(mask_pos.astype(np.int64))
        return batch

    def mask(self, ids: np.ndarray, rng: np.random.Generator, word_start: np.ndarray | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
        """Draws the masks of one padded batch.

        Args:
            ids: token ids `[B, L]` (padded with [PAD]).
            rng: the batch's generator (all randomness comes from it).
            word_start: bool `[B, L]`, True where a token begins a word (whole-word masking); None: a token
                begins a word unless it is a WordPiece '##' piece.

        Returns:
            (masked ids `[B, L]`, selected flat positions `[M]` into `[B * L]`, ascending).
        """
        b, length = ids.shape
        flat = ids.reshape(-1)
        maskable = ~self._is_special[flat]
        # 1. units: each maskable piece, or (whole-word) a piece together with its '##' continuations, or the
        #    maskable pieces of one word that `word_start` marks (an [UNK] inside it does not cut it in two)
        if self.whole_word_mask and word_start is not None:
            word_of = np.cumsum(word_start.reshape(-1)) - 1  # rows begin with a special token: a word of its own
            has_maskable = np.zeros(word_of[-1] + 1, dtype=bool)
            has_maskable[word_of[maskable]] = True
            unit_of_token = np.cumsum(has_maskable)[word_of] - 1
            starts = np.zeros_like(maskable)
            starts[maskable] = np.concatenate([[True], np.diff(unit_of_token[maskable]) != 0])
        else:
            starts = maskable.copy()
            if self.whole_word_mask:
                prev_maskable = np.concatenate([[False], maskable[:-1]])
                prev_maskable[::length] = False  # a row never continues the previous row's last word
                starts &= ~(self._is_continuation[flat] & prev_maskable)
            unit_of_token = np.cumsum(starts) - 1  # unit index of every maskable token
        start_pos = np.flatnonzero(starts)  # the first maskable piece of each unit
        n_units = len(start_pos)
        if n_units == 0:  # nothing maskable in the whole batch (e.g. only empty texts)
            return ids.copy(), np.zeros(0, dtype=np.int64)
        # 2. select every unit with probability mask_prob
        chosen = rng.random(n_units) < self.mask_prob
        # 3. a sentence with units but no selection gets one unit chosen uniformly
        unit_row = start_pos // length
        units_per_row = np.bincount(unit_row, minlength=b)
        chosen_per_row = np.bincount(unit_row[chosen], minlength=b)
        needy = np.flatnonzero((units_per_row > 0) & (chosen_per_row == 0))
        if len(needy):
            first_unit = np.concatenate([[0], np.cumsum(units_per_row)[:-1]])
            chosen[first_unit[needy] + rng.integers(0, units_per_row[needy])] = True
        selected = maskable & chosen[np.maximum(unit_of_token, 0)]
        mask_pos = np.flatnonzero(selected)
        # 4. 80% [MASK], 10% random token, 10% unchanged, drawn per token
        r = rng.random(len(mask_pos))
        out = flat.copy()
        out[mask_pos[r < 0.8]] = self._tokenizer.mask_id
        rand_pos = mask_pos[(r >= 0.8) & (r < 0.9)]
        out[rand_pos] = self._replacement_ids[rng.integers(0, len(self._replacement_ids), size=len(rand_pos))]
        return out.reshape(b, length), mask_pos
