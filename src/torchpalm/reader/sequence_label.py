"""SequenceLabelReader: word-level tagging (NER, slot filling) from PALM TSV, one-sentence-per-line, CoNLL
column or JSON files (spec §5.4).

Four input formats (`file_format`): PALM's TSV ('tsv'), one sentence per line ('lines'), one word per line
('conll') and one JSON object or Parquet row per sentence ('jsonl'); `file_format=None` detects the format from
the extension and the first non-blank line. The formats and the detection rule are written out in
`reader/tagged_files.py`, which parses them.

Unlike PALM, labels are per WORD, not per sub-token (spec §17.10): every word is tokenised on its own, as the
tokenizer encodes pre-split words (`is_split_into_words` in transformers: WordPiece; a `tokenizer.json`'s
Unigram / Metaspace pieces, "▁word"; byte-level BPE, where every word but a sentence's first carries its leading
space, "Ġword", as in running text), a word that the pre-tokenizer splits further ("U.S." -> "U", ".", "S", ".")
keeping all its pieces, and the head scores the hidden state of its first piece. The model's special tokens go
around the sentence (its single template). Batch layout (beside the common backbone inputs):

    word_starts  [B, W] int64  position of each word's first sub-token in `token_ids` (padded with 0)
    seq_lens     [B]    int64  number of words kept (PALM: sub-tokens incl. [CLS]/[SEP])
    label_ids    [B, W] int64  word tag ids, padded with -100 (train)

Sentences longer than `max_len - 2` sub-tokens keep whole words only; the cut words are counted so that
the head can still emit one label (the no-entity label) per input word.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from .base import Reader
from .collate import collate_common, pad_2d
from .labels import load_label_map, preview
from .parsing import DataError
from .tagged_files import FORMATS, TaggedSentence, parquet_tag_names, read_tagged_file

logger = logging.getLogger("torchpalm")

IGNORE_INDEX = -100


class SequenceLabelReader(Reader):
    """Reads word-tagged sentences and yields sub-token inputs with word-level labels.

    Args:
        vocab_path: vocabulary file.
        max_len: maximum sub-tokens per sequence including [CLS]/[SEP].
        label_map_config: a dict `{tag: id}`, a list of tags (index = id), or the path of a label file (JSON
            list or object, or one tag per line); None (the default) builds the map from the training file's
            tags (sorted, so it is deterministic; see `label_map`). Required in predict.
        tokenizer, lang, seed, do_lower_case, phase: as for every reader (spec §5.1); `lang` changes nothing
            here (words come pre-split, and CJK characters are split by the tokenizer anyway).
        dev_count, print_prefix: kept for PALM's signature (unused, as in PALM).
        no_entity_label: the tag of "no entity"; must be in the label map. Words cut by truncation are
            predicted as this tag (PALM hard-coded id `len(label_map) - 1`, spec §17.28).
        file_format: 'tsv', 'lines', 'conll', 'jsonl' or None (detect, by the rule in `reader/tagged_files.py`);
            `load_data(file_format=...)` overrides it.
    """

    def __init__(
        self,
        vocab_path: str | os.PathLike,
        max_len: int,
        label_map_config: str | os.PathLike | Mapping[str, int] | Sequence[str] | None = None,
        tokenizer: str = "wordpiece",
        lang: str = "en",
        seed: int | None = None,
        do_lower_case: bool = False,
        phase: str = "train",
        dev_count: int = 1,
        print_prefix: str = "",
        no_entity_label: str = "O",
        file_format: str | None = None,
    ):
        super().__init__(vocab_path, max_len, tokenizer, lang, seed, do_lower_case, phase)
        if file_format is not None and file_format not in FORMATS:
            raise ValueError(f"file_format must be one of {FORMATS} or None (detect), got {file_format!r}")
        self._dev_count, self._print_prefix = dev_count, print_prefix
        self._no_entity_label = no_entity_label
        self._file_format = self._load_format = file_format
        self._used_format: str | None = None
        self._label_map: dict[str, int] | None = None
        self._label_map_source = "the training tags"
        self._label_map_given = label_map_config is not None
        if label_map_config is not None:
            self._label_map, self._label_map_source = load_label_map(label_map_config, what="tag")
            self._check_no_entity()
        elif phase == "predict":
            raise ValueError("label_map_config is required in predict: pass the training reader's label_map "
                             "(a dict) or the JSON file it was built from")

    def _label_map_from_parquet(self, path: str) -> None:
        """A HuggingFace `datasets` Parquet file names its integer tags in its metadata (ClassLabel names, e.g.
        conll2003's `ner_tags`): without a label map they become it, in id order."""
        key, names = parquet_tag_names(path)
        if key is not None:
            self._label_map = {name: i for i, name in enumerate(names)}
            self._label_map_source = f"the names of {key!r} in {path}'s metadata"
            self._check_no_entity()
            logger.info("label map from the names of %r in %s: %s", key, path, self._label_map)

    def _check_no_entity(self) -> None:
        if self._no_entity_label not in self._label_map:
            raise ValueError(f"no_entity_label {self._no_entity_label!r} is not in the label map "
                             f"({self._label_map_source}); tags: {preview(sorted(self._label_map))}")

    # ---- register protocol ----
    def _task_outputs(self):
        outs = {"token_ids": ([-1, -1], "int64"), "seq_lens": ([-1], "int64"), "word_starts": ([-1, -1], "int64")}
        if self._phase == "train":
            outs["label_ids"] = ([-1, -1], "int64")
        return outs

    def _all_outputs(self):
        return {**super()._all_outputs(), "label_ids": ([-1, -1], "int64")}

    # ---- label map ----
    @property
    def label_map(self) -> dict[str, int] | None:
        """The `{tag: id}` map (built from the training tags when none was given), or None before load_data."""
        return dict(self._label_map) if self._label_map is not None else None

    @property
    def id2label(self) -> dict[int, str]:
        return {i: t for t, i in (self._label_map or {}).items()}

    @property
    def no_entity_label(self) -> str:
        return self._no_entity_label

    @property
    def no_entity_id(self) -> int | None:
        return self._label_map[self._no_entity_label] if self._label_map is not None else None

    @property
    def file_format(self) -> str | None:
        """The format of the loaded file ('tsv', 'lines' or 'conll'), None before load_data."""
        return self._used_format

    def check_num_classes(self, num_classes: int) -> None:
        """Raises if a tag id does not fit a head with `num_classes` classes."""
        if self._label_map is None:
            raise RuntimeError("SequenceLabelReader: call load_data() before checking the number of classes")
        top = max(self._label_map.values())
        if top >= num_classes:
            raise ValueError(f"the label map ({self._label_map_source}) has tag id {top} but the head has "
                             f"{num_classes} classes; use num_classes >= {top + 1}")

    # ---- data ----
    def load_data(
        self,
        input_file: str | os.PathLike,
        batch_size: int,
        num_epochs: int | None = None,
        file_format: str | None = None,
        shuffle_train: bool = True,
        columns: Sequence[str] | None = None,
    ) -> None:
        """Reads, validates and encodes the whole file once (see `Reader.load_data`).

        Args:
            file_format: 'tsv', 'lines', 'conll', or None for the constructor's choice (detected, by the rule in
                `reader/tagged_files.py`, when that is None too).
            columns: the column names of a TSV without a header, e.g. `["label", "text_a"]` (read as 'lines').
        """
        if file_format is not None and file_format not in FORMATS:
            raise ValueError(f"file_format must be one of {FORMATS} or None (detect), got {file_format!r}")
        self._load_format = file_format or self._file_format
        super().load_data(input_file, batch_size, num_epochs, shuffle_train=shuffle_train, columns=columns)

    def data_options(self) -> dict:
        """The label map, when the training file gave it (its tags, or its Parquet schema's tag names)."""
        return {} if self._label_map is None or self._label_map_given else {"label_map_config": self.label_map}

    def export_options(self) -> dict:
        return {**self._base_options(), "label_map_config": self.label_map, "no_entity_label": self._no_entity_label,
                "file_format": self._file_format}

    def _examples_from_inputs(self, inputs: list) -> list[dict]:
        """Lists of words, or sentences: split on whitespace, or into characters for Chinese (lang 'cn')."""
        sentences = []
        for n, item in enumerate(inputs, 1):
            if isinstance(item, str):
                words = [c for c in item if not c.isspace()] if self._for_cn else item.split()
            elif isinstance(item, Sequence) and all(isinstance(w, str) for w in item):
                words = [w for w in item if w != ""]
            else:
                raise TypeError(f"input {n}: expected a sentence or a list of words, got {item!r:.80}")
            sentences.append(TaggedSentence(n, words, None, [n] * len(words)))
        return self._encode_sentences(sentences, "<inputs>")

    def _load_examples(self, path):
        if self._label_map is None and path.lower().endswith(".parquet"):
            self._label_map_from_parquet(path)
        tag_names = {i: t for t, i in self._label_map.items()} if self._label_map is not None else None
        self._used_format, sentences = read_tagged_file(path, self._load_format, self._phase == "train",
                                                        self._file_columns, tag_names)
        return self._encode_sentences(sentences, path)

    def _encode_sentences(self, sentences: list[TaggedSentence], path: str) -> list[dict]:
        has_tags = sentences[0].tags is not None
        if self._label_map is None:
            tags = sorted({t for s in sentences for t in s.tags})
            self._label_map = {t: i for i, t in enumerate(tags)}
            self._label_map_source = f"built from the tags of {path}"
            self._check_no_entity()
            logger.info("label map built from %s: %s", path, self._label_map)
        if self._phase == "train":
            for s in sentences:
                if not s.words:
                    raise DataError(f"{path}:{s.line}: the sentence has no words")

        # Encode each distinct word once, all in one batched call (MSRA: 2.2M characters, ~5k distinct). A word
        # encodes as it reads in running text: byte-level BPE marks a word after a space ("Ġword", `word_prefix`),
        # so a sentence's first word (no space before it) is encoded on its own where that differs.
        tok = self._tokenizer

        def pieces(word: str, ids: list[int]) -> list[int]:
            """A word the tokenizer drops entirely (white space, a control character) still needs a token for
            its label: the unknown token."""
            if ids:
                return ids
            if tok.unk_id is None:
                raise DataError(f"{path}: the word {word!r} encodes to no token and the tokenizer "
                                f"({tok.vocab_path}) has no unknown token to stand for it")
            return [tok.unk_id]

        distinct = list(dict.fromkeys(w for s in sentences for w in s.words))
        pieces_of = {w: pieces(w, ids) for w, ids in
                     zip(distinct, tok.encode_batch([tok.word_prefix + w for w in distinct]), strict=True)}
        first_pieces_of = pieces_of
        if tok.word_prefix:
            firsts = list(dict.fromkeys(s.words[0] for s in sentences if s.words))
            first_pieces_of = {w: pieces(w, ids) for w, ids in zip(firsts, tok.encode_batch(firsts), strict=True)}

        # the model's special tokens around the sentence ([CLS] ... [SEP], <s> ... </s>): its single template
        template = tok.template
        budget, first = self._max_len - template.num_special, template.single_offset
        examples, n_truncated = [], 0
        for s in sentences:
            pieces = [first_pieces_of[w] if k == 0 else pieces_of[w] for k, w in enumerate(s.words)]
            ends = np.cumsum([len(p) for p in pieces], dtype=np.int64)
            kept = int(np.searchsorted(ends, budget, side="right"))  # whole words that fit
            flat = [i for p in pieces[:kept] for i in p]
            if kept == 0 and pieces:  # a single word longer than the budget: keep its first pieces
                kept, flat = 1, pieces[0][:budget]
            n_truncated += kept < len(s.words)
            starts = np.concatenate([[0], ends[: kept - 1]]) + first if kept else np.zeros(0, dtype=np.int64)
            ex = {"token_ids": template.build(flat, None, self._max_len)[0],
                  "word_starts": starts.astype(np.int64), "n_words": len(s.words), "line": s.line,
                  "words": s.words}
            if has_tags:
                ex["tags"] = s.tags
                # In predict, gold tags are kept for scoring only: one the model never saw is not an error
                # (`gold_tags()` returns it and it scores as a miss).
                if self._phase == "train" or all(t in self._label_map for t in s.tags):
                    ex["label_ids"] = np.asarray(self._tag_ids(path, s)[:kept], dtype=np.int64)
            examples.append(ex)
        if n_truncated:
            logger.info("%s: %d of %d sentences have more than %d sub-tokens (max_len %d minus special tokens); their "
                        "last words are cut (and predicted as %r)", path, n_truncated, len(sentences), budget,
                        self._max_len, self._no_entity_label)
        return examples

    def _tag_ids(self, path: str, s: TaggedSentence) -> list[int]:
        try:
            return [self._label_map[t] for t in s.tags]
        except KeyError:
            k = next(k for k, t in enumerate(s.tags) if t not in self._label_map)
            raise DataError(f"{path}:{s.word_lines[k]}: tag {s.tags[k]!r} (word {s.words[k]!r}) is not in the label "
                            f"map ({self._label_map_source}); known tags: {preview(sorted(self._label_map))}"
                            ) from None

    def _collate(self, examples, rng):
        batch = collate_common([e["token_ids"] for e in examples],
                               [np.zeros(len(e["token_ids"]), dtype=np.int64) for e in examples],
                               self._tokenizer.pad_id)
        # At least one word column, so the head's gather and CRF see W >= 1 even for empty sentences.
        width = max(1, max(len(e["word_starts"]) for e in examples))
        batch["word_starts"] = pad_2d([e["word_starts"] for e in examples], 0, width)
        batch["seq_lens"] = torch.tensor([len(e["word_starts"]) for e in examples], dtype=torch.int64)
        if all("label_ids" in e for e in examples):
            batch["label_ids"] = pad_2d([e["label_ids"] for e in examples], IGNORE_INDEX, width)
        return batch

    def gold_tags(self) -> list[list[str]]:
        """Every sentence's gold tags, one per input word (truncated words included), for evaluation."""
        examples = self._examples or []
        if not examples or any("tags" not in e for e in examples):
            raise ValueError(f"{self._input_file}: the file has no tag column to evaluate against")
        return [list(e["tags"]) for e in examples]

    def get_epoch_outputs(self) -> dict:
        """Per-example data in file order for the head: `word_counts` (input words), `kept_word_counts` (after
        cutting), `words`, and the `id2label` map (so predictions come back as tag names next to the words)."""
        examples = self._examples or []
        return {"word_counts": [e["n_words"] for e in examples],
                "kept_word_counts": [len(e["word_starts"]) for e in examples],
                "words": [e["words"] for e in examples], "id2label": self.id2label}
