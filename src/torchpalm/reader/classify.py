"""ClassifyReader: single-text or text-pair classification from a TSV, CSV or JSON-lines file (spec §5.2)."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from .base import Reader
from .collate import collate_common
from .labels import load_label_map, preview
from .parsing import DataError, canonical_columns

logger = logging.getLogger("torchpalm")

# The gold label of a predict row whose name is not in the label map: scored as a miss, never an error.
UNKNOWN_LABEL = -1


def is_integer(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def parse_label(value: str, path: str, line_no: int) -> int:
    """A class id from the `label` column: a non-negative integer, or a DataError naming file and line."""
    try:
        label = int(value.strip())
    except ValueError:
        raise DataError(f"{path}:{line_no}: column 'label' must be an integer, got {value!r}: other labels of the "
                        f"file are integer ids; give every label as an id or every one as a name (or pass "
                        f"label_map=[...] to the reader)") from None
    if label < 0:
        raise DataError(f"{path}:{line_no}: label must be >= 0, got {label}")
    return label


def rows_from_inputs(inputs: list, required: tuple[str, ...], optional: tuple[str, ...]) -> list:
    """Table rows `(input number, {column: text})` from texts, tuples of texts (in the order of `required` then
    `optional`) or dicts; every input must have the columns the first one has."""
    columns = (*required, *optional)
    rows = []
    for n, item in enumerate(inputs, 1):
        if isinstance(item, str):
            item = (item,)
        if isinstance(item, Mapping):
            row = {c: v for c, v in zip(canonical_columns(list(item)), item.values()) if c in columns}
        elif isinstance(item, Sequence) and 0 < len(item) <= len(columns):
            row = dict(zip(columns, item))
        else:
            raise TypeError(f"input {n}: expected a text, a tuple of texts {columns} or a dict with "
                            f"those keys, got {item!r:.80}")
        missing = [c for c in required if c not in row]
        bad = [c for c, v in row.items() if not isinstance(v, str)]
        if missing or bad:
            raise ValueError(f"input {n}: {'lacks ' + str(missing) if missing else f'{bad} must be strings'} "
                             f"(each input: {' + '.join(columns)})")
        if rows and set(row) != set(rows[0][1]):
            raise ValueError(f"input {n} has {sorted(row)} but input 1 has {sorted(rows[0][1])}; predict one kind "
                             f"at a time (texts or pairs)")
        rows.append((n, row))
    return rows


class ClassifyReader(Reader):
    """Reads `label`, `text_a` and optionally `text_b` columns (column order free) from a table file.

    Files: TSV with a header (PALM's format; GLUE's column names are understood), CSV, or JSON lines, chosen by
    the extension or `load_data(file_format=...)`; a TSV or CSV without a header takes
    `load_data(..., columns=["label", "text_a"])` (see `torchpalm.reader.parsing.read_table`).

    Labels are integer class ids, or, with `label_map`, names: a list of names (index = id), a dict name -> id,
    or the path of a label file (a JSON list or object, or one label per line). An unknown name in a train file
    is an error naming file, line and the known labels; in a predict file (where the label column is optional)
    it is a gold label the model cannot get right (`UNKNOWN_LABEL` in `gold_labels()`). Without a `label_map`, a
    training file whose labels are not all non-negative integers gets one built from its labels, in sorted
    order (logged; `label_map` and `data_options()` hold it, so checkpoints and bundles keep it).

    `text_pairs` says whether the task reads text pairs (`text_a` + `text_b`) or single texts; a train reader
    learns it from its file, and a predict reader given it (from a checkpoint or bundle) refuses the other
    kind of input with the reason, rather than predicting on input the model was never trained on.

    Yields the common backbone inputs plus `label_ids [B] int64` in train. In predict the label column is
    optional; when present it is kept so predictions can be scored.
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
        label_map: str | os.PathLike | Mapping[str, int] | Sequence[str] | None = None,
        text_pairs: bool | None = None,
    ):
        super().__init__(vocab_path, max_len, tokenizer=tokenizer, lang=lang, seed=seed,
                         do_lower_case=do_lower_case, phase=phase)
        self._label_map, self._label_map_source = load_label_map(label_map) if label_map is not None else (None, "")
        self._label_map_built = False  # built from the training file's labels (not given)
        self._text_pairs = text_pairs

    _cache_version = 1  # bump when the encoded examples change

    def _encoding_options(self) -> dict:
        return {**super()._encoding_options(), "label_map": self._label_map}

    def _task_outputs(self):
        outs = {"token_ids": ([-1, -1], "int64")}
        if self._phase == "train":
            outs["label_ids"] = ([-1], "int64")
        return outs

    def _all_outputs(self):
        return {**super()._all_outputs(), "label_ids": ([-1], "int64")}

    @property
    def label_map(self) -> dict[str, int] | None:
        """The `{label name: id}` map given to the constructor, or None (the file holds integer ids)."""
        return dict(self._label_map) if self._label_map is not None else None

    @property
    def id2label(self) -> dict[int, str]:
        """`{id: label name}` ({} without a label map)."""
        return {i: name for name, i in (self._label_map or {}).items()}

    def get_epoch_outputs(self) -> dict:
        """What the Classify and Match heads read after prediction: `id2label`, to write label names."""
        return {"id2label": self.id2label}

    def data_options(self) -> dict:
        """What the training file decided: whether rows are text pairs, and the label map built from its labels
        (see `Reader.data_options`)."""
        learned = {"text_pairs": self._text_pairs} if self._text_pairs is not None else {}
        if self._label_map_built:
            learned["label_map"] = self.label_map
        return learned

    def _columns(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(required, optional) columns of a file in this phase."""
        if self._phase == "train":
            return ("text_a", "label"), ("text_b",)
        return ("text_a",), ("text_b", "label")

    def _load_examples_cached(self, path: str):
        if self._phase == "train":  # before encoding: the label map is part of the cache key
            self._learn_from(self._read_rows(path, *self._columns()), path)
        return super()._load_examples_cached(path)

    def _learn_from(self, rows: list, path: str) -> None:
        """Takes from a training file what it decides: text pairs or single texts, and, when no label map was
        given and no label is an integer (an id), a label map of its labels, sorted."""
        self._text_pairs = "text_b" in rows[0][1]
        if self._label_map is not None and not self._label_map_built or "label" not in self._columns()[0]:
            return
        empty = next((line_no for line_no, row in rows if not row["label"].strip()), None)
        if empty is not None:
            raise DataError(f"{path}:{empty}: empty label")
        names = sorted({row["label"].strip() for _, row in rows})
        if any(is_integer(name) for name in names):  # integer ids, as they always were (a name among them is an error)
            self._label_map, self._label_map_built = None, False
            return
        self._label_map, self._label_map_built = {name: i for i, name in enumerate(names)}, True
        self._label_map_source = f"built from the labels of {path}, sorted"
        logger.info("label map built from the labels of %s (sorted; pass label_map=[...] for another order): %s",
                    path, self._label_map)

    def _check_input_kind(self, rows: list, path: str) -> None:
        """A predict reader that knows its task's input refuses the other kind (pairs for singles, or back)."""
        if self._phase != "predict" or self._text_pairs is None or not rows:
            return
        has_b = "text_b" in rows[0][1]
        if has_b != self._text_pairs:
            trained, given = ("text pairs (text_a, text_b)", "single texts") if self._text_pairs else (
                "single texts (text_a)", "text pairs")
            raise DataError(f"{path}: this task was trained on {trained} but the input holds {given}; the model "
                            f"would predict on input it never saw. Give {trained}"
                            + (" (a text_b column, or (text_a, text_b) tuples)" if self._text_pairs else ""))

    def _label(self, value: str, path: str, line_no: int) -> int:
        """The class id of a `label` field: an integer, or a name looked up in the label map."""
        if self._label_map is None:
            return parse_label(value, path, line_no)
        name = value.strip()
        if name in self._label_map:
            return self._label_map[name]
        if self._phase == "predict":
            return UNKNOWN_LABEL
        raise DataError(f"{path}:{line_no}: label {name!r} is not in the label map ({self._label_map_source}); "
                        f"known labels: {preview(list(self._label_map))}")

    def export_options(self) -> dict:
        return {**self._base_options(), "label_map": self.label_map, "text_pairs": self._text_pairs}

    def _examples_from_inputs(self, inputs: list) -> list[dict]:
        """Texts, (text_a, text_b) pairs, or dicts with those keys; all of one kind."""
        return self._encode_rows(rows_from_inputs(inputs, ("text_a",), ("text_b",)), "<inputs>")

    def _load_examples(self, path):
        return self._encode_rows(self._read_rows(path, *self._columns()), path)

    def _encode_text_columns(self, rows: list, columns: tuple[str, ...]) -> dict[str, list[list[int]]]:
        """Tokenises the given text columns of all rows in one batched call per column.

        An empty text is kept (it encodes as no tokens) and logged once per column with its count and first
        line: it is usually a shifted column or a cut-off file, rarely meant."""
        for c in columns:
            empty = [line_no for line_no, r in rows if not r[c].strip()]
            if empty:
                logger.warning("%s:%d: empty %s (%d row(s) of %d have an empty %s; kept as no tokens)",
                               self._input_file, empty[0], c, len(empty), len(rows), c)
        return {c: self._tokenizer.encode_batch([self._text(r[c]) for _, r in rows]) for c in columns}

    def _encode_rows(self, rows: list, path: str) -> list[dict]:
        self._check_input_kind(rows, path)
        has_b = "text_b" in rows[0][1]
        encoded = self._encode_text_columns(rows, ("text_a", "text_b") if has_b else ("text_a",))
        examples = []
        for i, (line_no, row) in enumerate(rows):
            ids, segs = self._tokenizer.build_inputs(encoded["text_a"][i], encoded["text_b"][i] if has_b else None,
                                                     self._max_len)
            ex = {"token_ids": ids, "segment_ids": segs, "line": line_no}
            if "label" in row:
                ex["label"] = self._label(row["label"], path, line_no)
            examples.append(ex)
        return examples

    def gold_labels(self) -> list[int]:
        """Every example's label, in file order, for evaluation (the file must have a label column)."""
        examples = self._examples or []
        if not examples or any("label" not in e for e in examples):
            raise ValueError(f"{self._input_file}: the file has no label column to evaluate against")
        return [e["label"] for e in examples]

    def check_num_classes(self, num_classes: int) -> None:
        """Raises, naming the file and line (or the label map), if a label is outside [0, num_classes)."""
        if self._label_map is not None and max(self._label_map.values()) >= num_classes:
            raise ValueError(f"the label map ({self._label_map_source}) has id {max(self._label_map.values())} but "
                             f"the head has {num_classes} classes; use num_classes={max(self._label_map.values()) + 1}")
        for ex in self._examples or ():
            if "label" in ex and ex["label"] >= num_classes:
                raise DataError(f"{self._input_file}:{ex['line']}: label {ex['label']} is out of range for "
                                f"{num_classes} classes (labels must be 0..{num_classes - 1})")

    def _collate(self, examples, rng):
        batch = collate_common([e["token_ids"] for e in examples], [e["segment_ids"] for e in examples],
                               self._tokenizer.pad_id)
        if all("label" in e for e in examples):
            batch["label_ids"] = torch.from_numpy(np.array([e["label"] for e in examples], dtype=np.int64))
        return batch
