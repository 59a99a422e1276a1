"""ClassifyReader: single-text or text-pair classification from a TSV (spec §5.2)."""

from __future__ import annotations

import numpy as np
import torch

from ..tokenizer import build_inputs
from .base import DataError, Reader, collate_common, parse_int, read_tsv


def encode_text_columns(reader: Reader, rows: list, columns: tuple[str, ...]) -> dict[str, list[list[int]]]:
    """Tokenises the given text columns of all rows in one batched call per column."""
    tok = reader.tokenizer
    return {c: tok.encode_batch([reader._text(r[c]) for _, r in rows]) for c in columns}


def parse_label(value: str, path: str, line_no: int) -> int:
    """A class id from the `label` column: a non-negative integer, or a DataError naming file and line."""
    label = parse_int(value, path, line_no, "label")
    if label < 0:
        raise DataError(f"{path}:{line_no}: label must be >= 0, got {label}")
    return label


class ClassifyReader(Reader):
    """Reads `label<TAB>text_a[<TAB>text_b]` TSV files (header required; column order free).

    Yields the common backbone inputs plus `label_ids [B] int64` in train. In predict the label column is
    optional; when present it is kept so predictions can be scored.
    """

    def _task_outputs(self):
        outs = {"token_ids": ([-1, -1], "int64")}
        if self._phase == "train":
            outs["label_ids"] = ([-1], "int64")
        return outs

    def _all_outputs(self):
        return {**super()._all_outputs(), "label_ids": ([-1], "int64")}

    def _load_examples(self, path):
        need_label = self._phase == "train"
        rows = read_tsv(path, required=("text_a", "label") if need_label else ("text_a",),
                        optional=("text_b",) if need_label else ("text_b", "label"))
        has_b = "text_b" in rows[0][1]
        encoded = encode_text_columns(self, rows, ("text_a", "text_b") if has_b else ("text_a",))
        examples = []
        for i, (line_no, row) in enumerate(rows):
            ids, segs = build_inputs(encoded["text_a"][i], encoded["text_b"][i] if has_b else None,
                                     self._max_len, self._tokenizer.cls_id, self._tokenizer.sep_id)
            ex = {"token_ids": ids, "segment_ids": segs, "line": line_no}
            if "label" in row:
                ex["label"] = parse_label(row["label"], path, line_no)
            examples.append(ex)
        return examples

    def gold_labels(self) -> list[int]:
        """Every example's label, in file order, for evaluation (the file must have a label column)."""
        examples = self._examples or []
        if not examples or any("label" not in e for e in examples):
            raise ValueError(f"{self._input_file}: the file has no label column to evaluate against")
        return [e["label"] for e in examples]

    def check_num_classes(self, num_classes: int) -> None:
        """Raises, naming the file and line, if a label is outside [0, num_classes)."""
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
