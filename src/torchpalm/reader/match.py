"""MatchReader: text-pair matching, pointwise (labelled pairs) or pairwise (a, positive b, negative b) (spec §5.3).

Pointwise is sentence-pair classification: `[CLS] a [SEP] b [SEP]` plus `label_ids [B]`. Pairwise builds two
pairs per row, (a, b) and (a, b_neg), each truncated on its own, and yields the negative one under `*_neg`
names for a backbone built with `is_pairwise=True`. `text_a` is tokenised once per row (PALM did it twice,
spec §17.36), and predict files need neither a label nor a `text_b_neg` column (spec §17.24).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from .classify import ClassifyReader, rows_from_inputs
from .collate import COMMON_OUTPUTS, collate_common

STRATEGIES = ("pointwise", "pairwise")
NEG_OUTPUTS = {f"{k}_neg": v for k, v in COMMON_OUTPUTS.items()}


class MatchReader(ClassifyReader):
    """Reads matching files (column order free; GLUE MRPC/QQP headers are understood): TSV, CSV or JSON lines,
    with or without a header, and with integer labels or label names, exactly as `ClassifyReader`.

    Columns:
        pointwise: `text_a`, `text_b`, `label` (the label is optional in predict; kept for scoring).
        pairwise: `text_a`, `text_b`, `text_b_neg` in train; `text_a`, `text_b` in predict.

    Yields the common backbone inputs `[B, L]` of (a, b), plus `label_ids [B]` (pointwise train) or the
    `*_neg` inputs `[B, L_neg]` of (a, b_neg) (pairwise train), padded to their own longest length.

    Args:
        vocab_path, max_len, tokenizer, lang, seed, do_lower_case, phase: as for every reader
            (`torchpalm.reader.base.Reader`).
        learning_strategy: 'pointwise' or 'pairwise'.
        dev_count: kept for PALM's signature (a batch is one global batch; see `Reader.shard`).
        print_prefix: kept for PALM's signature (unused there too).
        label_map: label names (pointwise), as for `ClassifyReader`: a list of names, a dict name -> id, or a
            JSON file of either.
    """

    def __init__(
        self,
        vocab_path: str | os.PathLike,
        max_len: int,
        tokenizer: str = "wordpiece",
        lang: str = "en",
        seed: int | None = None,
        do_lower_case: bool = False,
        learning_strategy: str = "pointwise",
        phase: str = "train",
        dev_count: int = 1,
        print_prefix: str = "",
        label_map: str | os.PathLike | Mapping[str, int] | Sequence[str] | None = None,
    ):
        if learning_strategy not in STRATEGIES:
            raise ValueError(f"learning_strategy must be 'pointwise' or 'pairwise', got {learning_strategy!r}")
        # Set before the base constructor, which asks _task_outputs() what to register.
        self._learning_strategy = learning_strategy
        self.dev_count, self.print_prefix = dev_count, print_prefix
        super().__init__(vocab_path, max_len, tokenizer=tokenizer, lang=lang, seed=seed,
                         do_lower_case=do_lower_case, phase=phase, label_map=label_map)

    @property
    def learning_strategy(self) -> str:
        return self._learning_strategy

    def _encoding_options(self) -> dict:
        return {**super()._encoding_options(), "learning_strategy": self._learning_strategy}

    def _example_length(self, example) -> int:
        # a pairwise example is two sequences padded alike: the longer one decides
        return max(len(example["token_ids"]), len(example.get("token_ids_neg", ())))

    def _pairwise_train(self) -> bool:
        return self._learning_strategy == "pairwise" and self._phase == "train"

    def _task_outputs(self):
        outs = {"token_ids": ([-1, -1], "int64")}
        if self._phase == "train":
            if self._learning_strategy == "pointwise":
                outs["label_ids"] = ([-1], "int64")
            else:
                outs.update(NEG_OUTPUTS)
        return outs

    def _all_outputs(self):
        return {**super()._all_outputs(), **NEG_OUTPUTS}

    def _columns(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(required, optional) columns for this strategy and phase."""
        if self._learning_strategy == "pointwise":
            if self._phase == "train":
                return ("text_a", "text_b", "label"), ()
            return ("text_a", "text_b"), ("label",)
        if self._phase == "train":
            return ("text_a", "text_b", "text_b_neg"), ()
        # A predict file may be the training file itself: text_b_neg and label are then ignored / kept.
        return ("text_a", "text_b"), ("label",)

    def export_options(self) -> dict:
        options = {**super().export_options(), "learning_strategy": self._learning_strategy}
        options.pop("text_pairs")  # always pairs (the columns say so)
        return options

    def _examples_from_inputs(self, inputs: list) -> list[dict]:
        """(text_a, text_b) pairs, or dicts with those keys."""
        return self._encode_rows(rows_from_inputs(inputs, ("text_a", "text_b"), ()), "<inputs>")

    def _load_examples(self, path):
        required, optional = self._columns()
        return self._encode_rows(self._read_rows(path, required=required, optional=optional), path)

    def data_options(self) -> dict:
        learned = super().data_options()
        learned.pop("text_pairs", None)  # always pairs
        return learned

    def _encode_rows(self, rows: list, path: str) -> list[dict]:
        text_columns = ("text_a", "text_b", "text_b_neg") if self._pairwise_train() else ("text_a", "text_b")
        encoded = self._encode_text_columns(rows, text_columns)
        build_inputs = self._tokenizer.build_inputs  # the model's pair template ([SEP] or </s></s> between)
        examples = []
        for i, (line_no, row) in enumerate(rows):
            ids, segs = build_inputs(encoded["text_a"][i], encoded["text_b"][i], self._max_len)
            ex = {"token_ids": ids, "segment_ids": segs, "line": line_no}
            if self._pairwise_train():
                ex["token_ids_neg"], ex["segment_ids_neg"] = build_inputs(
                    encoded["text_a"][i], encoded["text_b_neg"][i], self._max_len)
            if "label" in row:
                ex["label"] = self._label(row["label"], path, line_no)
            examples.append(ex)
        return examples

    def _collate(self, examples, rng):
        batch = super()._collate(examples, rng)  # (a, b) inputs, and label_ids when every row has a label
        if self._pairwise_train():
            neg = collate_common([e["token_ids_neg"] for e in examples], [e["segment_ids_neg"] for e in examples],
                                 self._tokenizer.pad_id)
            batch.update({f"{k}_neg": v for k, v in neg.items()})
        return batch
