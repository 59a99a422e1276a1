"""benchmarks/tagging_full_run.py's helpers: the merged-ATIS regime and the check that both sides read one batch."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from tagging_full_run import merge_spans, same_data  # noqa: E402


def test_merged_atis_spans_join_consecutive_words_of_one_type():
    tags = ["O", "B-fromloc.city_name", "I-fromloc.city_name", "O", "B-depart_date.month_name",
            "B-depart_date.day_number", "B-toloc.city_name", "B-toloc.state_code", "B-round_trip", "I-round_trip"]
    assert merge_spans(tags) == ["O", "B-fromloc", "I-fromloc", "O", "B-depart_date", "I-depart_date", "B-toloc",
                                 "I-toloc", "B-round_trip", "I-round_trip"]
    # an O between two words of one type ends the span
    assert merge_spans(["B-toloc.city_name", "O", "B-toloc.city_name"]) == ["B-toloc", "O", "B-toloc"]


def test_same_data_compares_ids_and_the_label_of_each_words_first_piece():
    ids = torch.tensor([[101, 7, 8, 102, 0], [101, 9, 102, 0, 0]])
    ours = {"token_ids": ids, "label_ids": torch.tensor([[3, 4], [5, -100]])}
    hf = {"input_ids": ids.clone(), "labels": torch.tensor([[-100, 3, 4, -100, -100], [-100, 5, -100, -100, -100]])}
    assert same_data(ours, hf)
    assert not same_data(ours, {**hf, "labels": torch.tensor([[-100, 3, 5, -100, -100], [-100, 5, -100, -100, -100]])})
    assert not same_data(ours, {**hf, "input_ids": ids.flip(0)})
