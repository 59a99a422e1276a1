"""Files of tagged words, as `SequenceLabelReader` reads them (spec §5.4): the four formats, how a file's
format is detected, and parsing one into `TaggedSentence`s with errors that name the file and line.

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
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .parsing import DataError, parquet_class_names, read_json_objects, read_lines, read_tsv

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
