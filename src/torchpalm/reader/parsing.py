"""Data files: TSV, CSV, JSON lines, JSON arrays and Parquet parsed into rows, with errors naming `path:line`.

Every reader parses its files here. Column names of public datasets are mapped to PALM's (`COLUMN_ALIASES`).
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
from collections.abc import Iterable, Sequence

# Column names of public datasets (GLUE, SNLI/MNLI, HuggingFace `datasets` exports) mapped to PALM's, so their
# files load without rewriting. These names say which text they are, wherever they stand.
COLUMN_ALIASES = {
    "sentence": "text_a",
    "text": "text_a",
    "review": "text_a",  # IMDB's CSV (review, sentiment), Yelp and Amazon exports
    "content": "text_a",
    "comment_text": "text_a",  # Jigsaw toxic comments
    "sentence1": "text_a",
    "sentence2": "text_b",
    "question1": "text_a",
    "question2": "text_b",
    "premise": "text_a",
    "hypothesis": "text_b",
    "#1 String": "text_a",
    "#2 String": "text_b",
    "Quality": "label",
    "is_duplicate": "label",
    "gold_label": "label",
    "sentiment": "label",
    "class": "label",
}
# A question next to its context is a pair (QNLI: question + sentence, BoolQ: question + passage); alone,
# "question" is just another column and "sentence" is the single text.
QUESTION_CONTEXTS = ("sentence", "passage")


def canonical_columns(names: Sequence[str]) -> list[str]:
    """PALM's names for a header's (or a JSON object's) column names, through `COLUMN_ALIASES`.

    An alias never replaces a column that already has the PALM name, and two columns never get the same name:
    a header with `label` and `gold_label` keeps `label`, one with `text_a` and `text` keeps `text_a`.
    """
    names = [n.strip() for n in names]
    aliases = COLUMN_ALIASES
    if "question" in names and any(c in names for c in QUESTION_CONTEXTS):
        aliases = {**aliases, "question": "text_a", **{c: "text_b" for c in QUESTION_CONTEXTS}}
    taken = set(names)
    out = []
    for name in names:
        target = aliases.get(name, name)
        if target != name:
            if target in taken:
                target = name
            taken.add(target)
        out.append(target)
    return out


class DataError(ValueError):
    """Bad input data; the message names the file, the line and the problem."""


def read_lines(path: str | os.PathLike) -> list[tuple[int, str]]:
    """Reads a UTF-8 text file as (1-based line number, line without the newline) pairs; blank lines dropped."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"data file not found: {path}")
    with open(path, "rb") as f:
        raw = f.read()
    lines = []
    for line_no, raw_line in enumerate(raw.split(b"\n"), 1):
        try:
            line = raw_line.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(
                f"{path}:{line_no}: invalid UTF-8 byte {raw_line[e.start:e.start + 1]!r} at column {e.start + 1}"
            ) from None
        line = line.rstrip("\r")
        if "\r" in line:
            raise DataError(f"{path}:{line_no}: a carriage return (\\r) inside the line: the file seems to use "
                            f"CR-only (old Mac) line endings; convert them to \\n (e.g. tr '\\r' '\\n')")
        if "\x00" in line:
            raise DataError(f"{path}:{line_no}: NUL byte at column {line.index(chr(0)) + 1}: not a UTF-8 text "
                            f"file (UTF-16, or binary?)")
        if line.startswith("\ufeff") and line_no == 1:
            line = line[1:]
        if line.strip():
            lines.append((line_no, line))
    if not lines:
        raise DataError(f"{path}: the file is empty")
    return lines


TABLE_FORMATS = ("tsv", "csv", "jsonl")
# How a file's extension names its format; any other extension (.txt, none) is TSV, PALM's only format.
EXTENSION_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "jsonl"}


def table_format(path: str, file_format: str | None = None) -> str:
    """The format of a table file: `file_format` when given ('json' is 'jsonl'), else from the extension."""
    if file_format is None:
        return EXTENSION_FORMATS.get(os.path.splitext(path)[1].lower(), "tsv")
    fmt = "jsonl" if file_format == "json" else file_format
    if fmt not in TABLE_FORMATS:
        raise ValueError(f"file_format must be one of {list(TABLE_FORMATS)} (or 'json', or None to go by the "
                         f"file extension), got {file_format!r}")
    return fmt


def read_table(
    path: str | os.PathLike,
    required: Sequence[str],
    optional: Sequence[str] = (),
    file_format: str | None = None,
    columns: Sequence[str] | None = None,
) -> list[tuple[int, dict[str, str]]]:
    """Parses a TSV, CSV or JSON-lines file into (line number, {column: value}) rows.

    Args:
        path: the file.
        required: columns every row must have (PALM names: `text_a`, `text_b`, `label`, ...).
        optional: columns kept when present.
        file_format: 'tsv', 'csv', 'jsonl' (or 'json'), or None to go by the extension (`.csv`, `.jsonl` and
            `.json` are CSV and JSON lines, `.parquet` is read as records like JSON lines, anything else TSV).
        columns: the column names of a TSV or CSV file WITHOUT a header line (its first line is then data).

    TSV fields are split on tabs exactly as PALM did; a field quoted the CSV way (pandas'
    `to_csv(sep="\t")` writes `"He said ""hi"" twice"` for `He said "hi" twice`) is unquoted, and every other
    quote is text (GLUE's TSVs). CSV follows the `csv` module (commas, double quotes, quoted newlines); a
    JSON-lines file has one object per line whose keys are the column names.

    Hostile input: a NUL byte (a UTF-16 or binary file) is a DataError naming file:line. CR-only line
    endings are a DataError naming the line in TSV and JSON lines; CSV accepts them (the `csv` module reads
    `\r`, `\n` and `\r\n` as record ends). An empty field is kept as the empty string: an empty text
    encodes as no tokens (`[CLS] [SEP]`), and the readers log a warning with the count and the first file:line.
    Header and key names go through `COLUMN_ALIASES` (GLUE's `sentence`, `#1 String`, ...). Extra columns are
    allowed. Values come back as strings (a JSON number label as its digits).
    """
    path = os.fspath(path)
    fmt = table_format(path, file_format)
    if fmt == "jsonl":
        if columns is not None:
            raise ValueError(f"{path}: columns= names the columns of a TSV or CSV file without a header; a JSON-lines "
                             f"file names them in every object")
        return _read_jsonl(path, required, optional)
    if fmt == "tsv":
        records = [(no, [unquote_csv_style(f) for f in line.split("\t")]) for no, line in read_lines(path)]
    else:
        records = _read_csv_records(path)
    if columns is not None:
        header_no, header = None, canonical_columns(columns)
    else:
        (header_no, header), records = records[0], records[1:]
        header = canonical_columns(header)
    where = f"{path}:{header_no}: header {header}" if header_no is not None else f"{path}: columns={list(columns)}"
    missing = [c for c in required if c not in header]
    if missing:
        understood = sorted(k for k, v in COLUMN_ALIASES.items() if v in missing)
        raise DataError(
            f"{where} lacks the required column(s) {missing} (expected columns {list(required)}"
            f"{' and optionally ' + str(list(optional)) if optional else ''}; other names understood: "
            f"{understood}); rename the column, or for a file without a header line pass columns=[...]"
        )
    wanted = {c: header.index(c) for c in (*required, *optional) if c in header}
    kind = "tab-separated" if fmt == "tsv" else "comma-separated"
    # A predict file (its label optional) read with the training file's columns, label last: rows one field
    # short are unlabelled rows, not broken ones.
    unlabelled = header_no is None and header[-1] == "label" and "label" in optional
    rows = []
    for line_no, fields in records:
        if unlabelled and len(fields) == len(header) - 1:
            rows.append((line_no, {c: fields[i] for c, i in wanted.items() if c != "label"}))
            continue
        if len(fields) != len(header):
            hint = ""
            if header_no is None and "label" in optional:
                hint = ("; in a predict file the label may be left out when it is the last of the columns: "
                        "declare them so (e.g. columns=[text_a, text_b, label]), or give the predict file's own")
            raise DataError(f"{path}:{line_no}: expected {len(header)} {kind} fields "
                            f"({'header' if header_no is not None else 'columns'}: {header}), got {len(fields)}{hint}")
        rows.append((line_no, {c: fields[i] for c, i in wanted.items()}))
    if not rows:
        raise DataError(f"{path}: no examples{' after the header line' if header_no is not None else ''}")
    return rows


def unquote_csv_style(field: str) -> str:
    """`"He said ""hi"" twice"` -> `He said "hi" twice`: a TSV field that a CSV writer quoted because it
    holds quotes (it is wrapped in quotes and every quote inside is doubled). Anything else is returned as it
    is: a quote in raw text (`"Yes," he said.`) or a wrapped field with no doubled quote inside (`"Yes."`,
    ambiguous: kept, as PALM kept every quote)."""
    if len(field) > 3 and field[0] == field[-1] == '"':
        inner = field[1:-1]
        if '""' in inner and '"' not in inner.replace('""', ""):
            return inner.replace('""', '"')
    return field


def read_tsv(
    path: str | os.PathLike, required: Sequence[str], optional: Sequence[str] = (),
    columns: Sequence[str] | None = None,
) -> list[tuple[int, dict[str, str]]]:
    """`read_table` of a TSV file (PALM's format): a header line, or `columns` for a file without one."""
    return read_table(path, required, optional, "tsv", columns)


def _read_text(path: str) -> str:
    """The whole file as UTF-8 text (BOM dropped); bad bytes are a DataError naming their line."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"data file not found: {path}")
    with open(path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line_no = raw.count(b"\n", 0, e.start) + 1
        raise DataError(f"{path}:{line_no}: invalid UTF-8 byte {raw[e.start:e.start + 1]!r}") from None
    if "\x00" in text:
        line_no = text.count("\n", 0, text.index("\x00")) + 1
        raise DataError(f"{path}:{line_no}: NUL byte: not a UTF-8 text file (UTF-16, or binary?)")
    return text[1:] if text.startswith("\ufeff") else text


def _read_csv_records(path: str) -> list[tuple[int, list[str]]]:
    """(first line of the record, fields) for every non-blank CSV record (quoted fields may span lines)."""
    records = []
    reader = csv.reader(io.StringIO(_read_text(path), newline=""))
    try:
        while True:
            first_line = reader.line_num + 1
            fields = next(reader, None)
            if fields is None:
                break
            if any(f.strip() for f in fields):
                records.append((first_line, fields))
    except csv.Error as e:
        raise DataError(f"{path}:{reader.line_num}: malformed CSV ({e})") from None
    if not records:
        raise DataError(f"{path}: the file is empty")
    return records


def json_array_objects(path: str, text: str) -> list[tuple[int, object]]:
    """(line, element) for each element of a file holding one JSON array (pandas' `to_json(orient="records")`,
    many datasets' `.json` files); the line is where the element starts, for error messages."""
    decoder = json.JSONDecoder()
    items: list[tuple[int, object]] = []
    i, line_no, counted = text.index("[") + 1, 1, 0

    def skip_space(i: int) -> int:
        while i < len(text) and text[i] in " \t\r\n":
            i += 1
        return i

    def line_of(i: int) -> int:
        nonlocal line_no, counted
        line_no += text.count("\n", counted, i)
        counted = i
        return line_no

    i = skip_space(i)
    if i < len(text) and text[i] == "]":
        return items
    while True:
        try:
            obj, end = decoder.raw_decode(text, i)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}: not valid JSON ({e.msg} at column {e.colno}) in the array of "
                            f"objects this file holds") from None
        except RecursionError:
            raise DataError(f"{path}:{line_of(i)}: JSON nested too deeply to parse; each element is one flat "
                            f"object {{column: value}}") from None
        items.append((line_of(i), obj))
        i = skip_space(end)
        if i < len(text) and text[i] == ",":
            i = skip_space(i + 1)
        elif i < len(text) and text[i] == "]":
            if text[skip_space(i + 1):].strip():
                raise DataError(f"{path}:{line_of(skip_space(i + 1))}: text after the closing ']' of the JSON array")
            return items
        else:
            raise DataError(f"{path}:{line_of(min(i, len(text)))}: expected ',' or ']' after the array element "
                            f"that starts on line {items[-1][0]}")


def _first_character(path: str) -> str:
    """The first character of a text file that is not white space or a byte-order mark ('' if none)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"data file not found: {path}")
    with open(path, "rb") as f:
        head = f.read(4096)
        while head and not head.lstrip(b" \t\r\n\xef\xbb\xbf"):
            head = f.read(4096)
    return head.lstrip(b" \t\r\n\xef\xbb\xbf")[:1].decode("latin-1")


def read_parquet_objects(path: str) -> list[tuple[int, dict]]:
    """(row number, record) for every row of a Parquet file, the format HuggingFace Hub datasets ship in (columns
    as keys; list and struct columns as lists and dicts). Needs pyarrow (`pip install pyarrow`)."""
    try:
        import pyarrow
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError(f"{path}: reading Parquet needs pyarrow: pip install pyarrow") from None
    if not os.path.isfile(path):
        raise FileNotFoundError(f"data file not found: {path}")
    try:
        rows = pq.read_table(path).to_pylist()
    except (OSError, pyarrow.ArrowException) as e:
        raise DataError(f"{path}: not a readable Parquet file ({e})") from None
    if not rows:
        raise DataError(f"{path}: the Parquet file has no rows")
    return list(enumerate(rows, 1))


def parquet_class_names(path: str) -> dict[str, list[str]]:
    """{column: class names} of the ClassLabel columns (or lists of ClassLabel, as `ner_tags`) that a Parquet
    file written by HuggingFace `datasets` describes in its schema metadata (key `huggingface`); {} when the
    file has no such metadata or pyarrow is missing."""
    try:
        import pyarrow.parquet as pq

        metadata = pq.read_schema(path).metadata or {}
        features = json.loads(metadata.get(b"huggingface", b"{}")).get("info", {}).get("features", {})
    except (ImportError, OSError, ValueError, AttributeError):
        return {}
    names = {}
    for column, feature in features.items() if isinstance(features, dict) else ():
        while isinstance(feature, dict) and feature.get("_type") != "ClassLabel" and "feature" in feature:
            feature = feature["feature"]  # Sequence / List of ClassLabel
        if isinstance(feature, dict) and feature.get("_type") == "ClassLabel" and feature.get("names"):
            names[column] = [str(n) for n in feature["names"]]
    return names


def read_json_objects(path: str) -> list[tuple[int, object]]:
    """(line, parsed value) for every row of a JSON-lines file, or every element of a file that is one JSON
    array (told apart by its first character); a `.parquet` file gives (row number, record) instead."""
    if path.lower().endswith(".parquet"):
        return read_parquet_objects(path)
    if _first_character(path) == "[":
        items = json_array_objects(path, _read_text(path))
        if not items:
            raise DataError(f"{path}: the JSON array is empty")
        return items
    return json_lines_objects(path, read_lines(path))


def json_lines_objects(path: str, lines: Iterable[tuple[int, str]]) -> list[tuple[int, object]]:
    """(line, parsed value) for each non-blank (line number, text) of a JSON-lines file; errors name the line."""
    items = []
    for line_no, line in lines:
        if not line.strip():
            continue
        try:
            items.append((line_no, json.loads(line)))
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{line_no}: not a JSON object ({e.msg} at column {e.colno}); a JSON-lines file "
                            f"has one object per line (or the whole file is one JSON array of objects)") from None
        except RecursionError:
            raise DataError(f"{path}:{line_no}: JSON nested too deeply to parse; a JSON-lines row is one flat "
                            f"object {{column: value}}") from None
    return items


def _read_jsonl(path: str, required: Sequence[str], optional: Sequence[str]) -> list[tuple[int, dict[str, str]]]:
    """Rows of a JSON-lines file (one object per line) or of a file holding one JSON array of objects."""
    rows: list[tuple[int, dict[str, str]]] = []
    for line_no, obj in read_json_objects(path):
        if not isinstance(obj, dict):
            raise DataError(f"{path}:{line_no}: expected a JSON object {{column: value}}, got {type(obj).__name__}")
        obj = dict(zip(canonical_columns(list(obj)), obj.values()))
        missing = [c for c in required if c not in obj]
        if missing:
            raise DataError(f"{path}:{line_no}: the object lacks the required key(s) {missing} (keys: {list(obj)})")
        row = {}
        for c in (*required, *optional):
            if c in obj:
                value = obj[c]
                if isinstance(value, bool) or not isinstance(value, str | int):
                    raise DataError(f"{path}:{line_no}: key {c!r} must be a string (or an integer label), got "
                                    f"{json.dumps(value, ensure_ascii=False)[:80]}")
                row[c] = str(value)
        # Every row must have the optional columns the first one has (a batch cannot mix pairs and singles).
        if rows and set(row) != set(rows[0][1]):
            raise DataError(f"{path}:{line_no}: keys {sorted(row)} differ from those of line {rows[0][0]} "
                            f"{sorted(rows[0][1])}; every object needs the same columns")
        rows.append((line_no, row))
    return rows


def write_first_examples(path: str | os.PathLike, n: int, out_dir: str | os.PathLike, file_format: str | None = None,
                         header: bool = True) -> str:
    """Writes the first n examples of a TSV, CSV or JSON table file (after its header line, when `header`) to
    `out_dir/train.first<n>.<format>` in the same format (JSON arrays as JSON lines); returns that path. For quick
    runs on part of a dataset."""
    path = os.fspath(path)
    os.makedirs(out_dir, exist_ok=True)
    fmt = table_format(path, file_format)
    target = os.path.join(out_dir, f"train.first{n}.{fmt}")
    if fmt == "jsonl":
        with open(target, "w", encoding="utf-8") as g:
            g.writelines(json.dumps(obj, ensure_ascii=False) + "\n" for _, obj in read_json_objects(path)[:n])
    elif fmt == "csv":  # records, not lines: a quoted field may span lines
        with open(path, encoding="utf-8-sig", newline="") as f, open(target, "w", encoding="utf-8", newline="") as g:
            csv.writer(g).writerows(itertools.islice(csv.reader(f), n + header))
    else:
        with open(path, encoding="utf-8") as f, open(target, "w", encoding="utf-8") as g:
            g.writelines(itertools.islice(f, n + header))
    return target
