"""SequenceLabelReader: word-level tagging (NER, slot filling) from PALM TSV, one-sentence-per-line, CoNLL
column or JSON files (spec §5.4).

Four input formats (`file_format`):

* 'tsv', PALM's TSV: a header `text_a<TAB>label`; in each row the words of `text_a` and the tags of `label` are
  joined by `\\x02` (a trailing `\\x02` is allowed; empty words are dropped together with their tags). Files that
  use no `\\x02` at all are split on spaces instead (the UER copy of PALM's MSRA split is written that way).
  In predict the `label` column may be left out.
* 'lines', one sentence per line: the same rows WITHOUT a header, `tokens<TAB>tags` (Chinese NER's common
  "chars<TAB>tags" files), tokens and tags separated by spaces or `\\x02`, as many of each. A headerless file with
  other columns takes `load_data(..., columns=[...])` naming them (`text_a` = the tokens, `label` = the tags).
* 'conll', one word per line: the word in the first column and its tag in the LAST column, any number of columns
  (tab-separated when the line has a tab, else whitespace-separated; the same count on every line), a blank line
  between sentences, `-DOCSTART-` lines skipped. This covers CoNLL-2003 (`word POS chunk NER`), MSRA's
  `char<TAB>TAG` and CoNLL-U-like files. In predict the file may have the word column only.
* 'jsonl', one JSON object per sentence, on its own line or as the elements of one JSON array, or one row per
  sentence of a `.parquet` file (HuggingFace `datasets` exports and Hub files:
  `{"tokens": ["EU", "rejects"], "ner_tags": [3, 0]}`): the words under `tokens`, `words`, `text_a` or `text`,
  the tags under the first of `tags`, `ner_tags`, `labels`, `label`, `slot_labels`; each a list, or a string
  split like a 'lines' field. Integer tags are ids into the reader's `label_map_config` (HF's
  `features["ner_tags"].feature.names`), which they then require, except in a Parquet file written by
  `datasets`: its metadata names them, and without a label map those names become it.

Detection (`file_format=None`) looks at the extension and the first non-blank line only, so it is easy to predict:

0. a `.json` / `.jsonl` / `.parquet` file, or a first line that is a JSON object -> 'jsonl';
1. a tab-separated field named `text_a` -> 'tsv';
2. exactly two tab-separated fields, the second holding several tags (split on `\\x02` or spaces) -> 'lines';
3. no tab, or a last tab-separated field holding a single tag -> 'conll';
4. anything else (several tab-separated fields with a multi-tag last one) -> a DataError naming the file and the
   line and listing the three formats.

A 'lines' file whose first sentence has one token looks like CoNLL (rule 3); its first multi-tag line then stops
the CoNLL parse with an error that says so and asks for `file_format='lines'`, instead of reading "O O O" as a tag.

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

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .base import Reader
from .collate import collate_common, pad_2d
from .labels import load_label_map, preview
from .parsing import DataError, parquet_class_names, read_json_objects, read_lines, read_tsv

logger = logging.getLogger("torchpalm")

IGNORE_INDEX = -100
FORMATS = ("tsv", "lines", "conll", "jsonl")
# Where a JSON sentence keeps its words and its tags (the first key present wins).
JSON_WORD_KEYS = ("tokens", "words", "text_a", "text")
JSON_TAG_KEYS = ("tags", "ner_tags", "labels", "label", "slot_labels")


@dataclass
class TaggedSentence:
    """One sentence of a tagging file.

    Attributes:
        line: 1-based line of the sentence (its TSV row, or its first CoNLL line).
        words: the words (never empty strings).
        tags: one tag per word, or None when the file has no tag column (predict files).
        word_lines: the line each word came from (all equal to `line` for TSV).
    """

    line: int
    words: list[str]
    tags: list[str] | None
    word_lines: list[int]


FORMAT_NAMES = {
    "tsv": "a PALM TSV with a 'text_a<TAB>label' header",
    "lines": "one sentence per line, 'tokens<TAB>tags' without a header",
    "conll": "one word per line with its tag in the last column (CoNLL)",
    "jsonl": 'one JSON object per sentence ({"tokens": [...], "tags": [...]})',
}


def _tags_in(field: str) -> list[str]:
    """The tags of a tag field: split on `\\x02` when it has one, else on spaces (empty pieces dropped)."""
    return [t for t in field.split("\x02" if "\x02" in field else " ") if t.strip()]


def _first_line(path: str) -> tuple[int, str]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"data file not found: {path}")
    # Only the first line matters; decoding errors are reported with their line by the full parse.
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        for line_no, line in enumerate(f, 1):
            if line.strip():
                return line_no, line.rstrip("\r\n")
    raise DataError(f"{path}: the file is empty")


def _is_json_object(line: str) -> bool:
    if not line.lstrip().startswith("{"):
        return False
    try:
        return isinstance(json.loads(line), dict)
    except (json.JSONDecodeError, RecursionError):
        return False


def _detect(line: str) -> str | None:
    """The module docstring's detection rule applied to the first non-blank line; None: not recognised."""
    if _is_json_object(line):
        return "jsonl"
    fields = line.split("\t")
    if "text_a" in [f.strip() for f in fields]:
        return "tsv"
    if len(fields) == 2 and len(_tags_in(fields[1])) > 1:
        return "lines"
    if len(fields) == 1 or len(_tags_in(fields[-1])) <= 1:
        return "conll"
    return None


def detect_format(path: str | os.PathLike) -> str:
    """'tsv', 'lines' or 'conll', from the first non-blank line (the rule is in the module docstring).

    Raises:
        DataError: naming the file and line when the line fits none of the three formats.
    """
    path = os.fspath(path)
    if os.path.splitext(path)[1].lower() in (".json", ".jsonl", ".parquet"):
        return "jsonl"
    line_no, line = _first_line(path)
    detected = _detect(line)
    if detected is None:
        formats = "; ".join(f"'{k}': {v}" for k, v in FORMAT_NAMES.items())
        raise DataError(f"{path}:{line_no}: cannot tell the format of {line[:80]!r}: expected {formats} "
                        f"(tokens and tags separated by spaces or \\x02, as many of each); pass file_format=...")
    return detected


def read_tagged_file(
    path: str | os.PathLike, file_format: str | None = None, require_tags: bool = True,
    columns: Sequence[str] | None = None, tag_names: Mapping[int, str] | None = None,
) -> tuple[str, list[TaggedSentence]]:
    """Parses a tagging file ('tsv', 'lines', 'conll' or 'jsonl', see the module docstring) into sentences.

    Args:
        path: the file.
        file_format: 'tsv', 'lines', 'conll', 'jsonl', or None to detect it from the extension and first line.
        require_tags: raise when the tag column is missing (train files).
        columns: the column names of a TSV without a header (`text_a` = tokens, `label` = tags); the file is
            then read as 'lines' with these columns.
        tag_names: id -> tag, for JSON files whose tags are integer ids.

    Returns:
        (the format used, the sentences in file order).

    Raises:
        DataError: naming `path:line` for an unrecognised format, a malformed line, a word/tag count mismatch
            or a missing tag column.
    """
    path = os.fspath(path)
    if file_format is not None and file_format not in FORMATS:
        raise ValueError(f"file_format must be one of {FORMATS} or None (detect), got {file_format!r}")
    if columns is not None:
        if file_format in ("conll", "jsonl"):
            raise ValueError(f"columns= names the columns of a TSV without a header; a {file_format} file has none")
        return "lines", _read_tsv_sentences(path, require_tags, tuple(columns))
    if file_format is None:
        file_format = detect_format(path)
    elif file_format != "jsonl":
        line_no, line = _first_line(path)
        detected = _detect(line)
        if file_format == "tsv" and detected != "tsv":
            looks = f"this looks like {FORMAT_NAMES[detected]}: pass file_format={detected!r}" if detected else ""
            raise DataError(f"{path}:{line_no}: file_format='tsv' needs a header line with a 'text_a' column "
                            f"(PALM's 'text_a<TAB>label'), or columns=[...] for a file without one; {looks}")
        if file_format != "tsv" and detected == "tsv":
            raise DataError(f"{path}:{line_no}: file_format={file_format!r} but the first line is a TSV header "
                            f"with 'text_a'; pass file_format='tsv' (or None to detect)")
    if file_format == "conll":
        return file_format, _read_conll_sentences(path, require_tags)
    if file_format == "jsonl":
        return file_format, _read_json_sentences(path, require_tags, tag_names)
    return file_format, _read_tsv_sentences(path, require_tags, ("text_a", "label") if file_format == "lines" else None)


def _split_field(value: str, sep: str) -> list[str]:
    parts = value.split(sep)
    if len(parts) > 1 and parts[-1] == "":  # PALM's ATIS files end every field with the separator
        parts.pop()
    return parts


def _read_tsv_sentences(path: str, require_tags: bool, columns: tuple[str, ...] | None) -> list[TaggedSentence]:
    rows = read_tsv(path, required=("text_a", "label") if require_tags else ("text_a",),
                    optional=() if require_tags else ("label",), columns=columns)
    has_tags = "label" in rows[0][1]
    sep = "\x02" if any("\x02" in r["text_a"] or "\x02" in r.get("label", "") for _, r in rows) else " "
    sentences = []
    for line_no, row in rows:
        words = _split_field(row["text_a"], sep)
        tags = None
        if has_tags:
            tags = [t.strip() for t in _split_field(row["label"], sep)]
            if len(tags) != len(words):
                raise DataError(f"{path}:{line_no}: {len(words)} words but {len(tags)} tags "
                                f"(separated by {sep!r}); every word needs exactly one tag")
            tags = [t for w, t in zip(words, tags, strict=True) if w != ""]
        words = [w for w in words if w != ""]
        sentences.append(TaggedSentence(line_no, words, tags, [line_no] * len(words)))
    return sentences


def _json_field(path: str, line_no: int, obj: dict, key: str, what: str) -> list:
    """A JSON sentence's words or tags: a list of strings (or integer tag ids), or one string split on \\x02
    when it has one, else on white space."""
    value = obj[key]
    if isinstance(value, str):
        return [v for v in value.split("\x02" if "\x02" in value else None) if v != ""]
    ok = (str,) if what == "words" else (str, int)
    if isinstance(value, list) and all(isinstance(v, ok) and not isinstance(v, bool) for v in value):
        return value
    raise DataError(f"{path}:{line_no}: key {key!r} must be a list of {what}"
                    f"{' (strings, or integer ids)' if what == 'tags' else ' (strings)'} or one string, got "
                    f"{json.dumps(value, ensure_ascii=False)[:80]}")


def parquet_tag_names(path: str) -> tuple[str | None, list[str]]:
    """(tag column, its names in id order) of a HuggingFace `datasets` Parquet file whose tag column (the first
    of JSON_TAG_KEYS it names) is a list of ClassLabel; (None, []) otherwise."""
    names = parquet_class_names(path)
    key = next((k for k in JSON_TAG_KEYS if k in names), None)
    return key, (names[key] if key is not None else [])


def _read_json_sentences(path: str, require_tags: bool, tag_names: Mapping[int, str] | None) -> list[TaggedSentence]:
    sentences = []
    for line_no, obj in read_json_objects(path):
        if not isinstance(obj, dict):
            raise DataError(f"{path}:{line_no}: expected a JSON object such as {{\"tokens\": [...], \"tags\": "
                            f"[...]}}, got {type(obj).__name__}")
        word_key = next((k for k in JSON_WORD_KEYS if k in obj), None)
        tag_key = next((k for k in JSON_TAG_KEYS if k in obj), None)
        if word_key is None or (require_tags and tag_key is None):
            wanted = [*([] if word_key else [JSON_WORD_KEYS]), *([] if tag_key else [JSON_TAG_KEYS])]
            raise DataError(f"{path}:{line_no}: the object has no key for its "
                            f"{'words' if word_key is None else 'tags'} (one of "
                            f"{' / '.join(map(str, wanted[0]))}); keys: {list(obj)[:10]}")
        words = _json_field(path, line_no, obj, word_key, "words")
        tags = None
        if tag_key is not None:
            tags = _json_field(path, line_no, obj, tag_key, "tags")
            if len(tags) != len(words):
                raise DataError(f"{path}:{line_no}: {len(words)} words under {word_key!r} but {len(tags)} tags under "
                                f"{tag_key!r}; every word needs exactly one tag")
            if any(isinstance(t, int) for t in tags):
                tags = [_tag_name(path, line_no, t, tag_names) for t in tags]
            tags = [t.strip() for t in tags]
        if sentences and (tags is None) != (sentences[0].tags is None):
            raise DataError(f"{path}:{line_no}: {'no' if tags is None else 'a'} tag key, unlike line "
                            f"{sentences[0].line}; every sentence of a file needs the same keys")
        sentences.append(TaggedSentence(line_no, words, tags, [line_no] * len(words)))
    return sentences


def _tag_name(path: str, line_no: int, tag: int | str, tag_names: Mapping[int, str] | None) -> str:
    if isinstance(tag, str):
        return tag
    if tag_names is None:
        raise DataError(f"{path}:{line_no}: the tags are integer ids; give the reader their names in id order, "
                        f"label_map_config=[...] (HuggingFace: dataset.features['ner_tags'].feature.names)")
    if tag not in tag_names:
        raise DataError(f"{path}:{line_no}: tag id {tag} is not in the label map (ids {min(tag_names)}.."
                        f"{max(tag_names)})")
    return tag_names[tag]


def _read_conll_sentences(path: str, require_tags: bool) -> list[TaggedSentence]:
    sentences: list[TaggedSentence] = []
    ncols = first_line = None
    words: list[str] = []
    tags: list[str] = []
    lines: list[int] = []
    prev_no = 0

    def flush():
        if words:
            sentences.append(TaggedSentence(lines[0], list(words), list(tags) if ncols > 1 else None, list(lines)))
        words.clear()
        tags.clear()
        lines.clear()

    # read_lines drops blank lines but keeps the line numbers: a gap in the numbering is a sentence break.
    for line_no, line in read_lines(path):
        if line_no != prev_no + 1:
            flush()
        prev_no = line_no
        if line.startswith("-DOCSTART-"):
            flush()
            continue
        # A tab-separated line keeps spaces inside its fields (MSRA has a few space "characters").
        fields = line.split("\t") if "\t" in line else line.split()
        if ncols is None:
            ncols, first_line = len(fields), line_no
            if require_tags and ncols < 2:
                raise DataError(f"{path}:{line_no}: expected a word and a tag (at least 2 columns), got 1 "
                                f"column {line!r}")
        if len(fields) != ncols:
            raise DataError(f"{path}:{line_no}: {len(fields)} columns but line {first_line} has {ncols}; every "
                            f"word line needs the same columns (word first, tag last) in {line!r}")
        if ncols > 1 and len(_tags_in(fields[-1])) > 1:
            raise DataError(f"{path}:{line_no}: the tag column {fields[-1]!r} holds several tags: this looks like one "
                            f"sentence per line ('tokens<TAB>tags'), read as CoNLL (one word per line) because line "
                            f"{first_line} has a single tag; pass file_format='lines'")
        if fields[0] == "" or (ncols > 1 and fields[-1].strip() == ""):
            raise DataError(f"{path}:{line_no}: empty word or tag column in {line!r}")
        words.append(fields[0])
        if ncols > 1:
            tags.append(fields[-1].strip())
        lines.append(line_no)
    flush()
    if not sentences:
        raise DataError(f"{path}: no sentences (only -DOCSTART- lines?)")
    return sentences


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
        file_format: 'tsv', 'lines', 'conll', 'jsonl' or None (detect, see the module docstring);
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
                the module docstring, when that is None too).
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
