"""benchmarks/tagging_full_run.py's helpers: the merged-ATIS regime and the check that both sides read one batch."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from tagging_data import merge_spans  # noqa: E402
from tagging_full_run import same_data  # noqa: E402


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


def test_head_starts_separate_the_truncated_normals_width_from_its_missing_tail():
    """`--head_init`: 'normal_narrow' has the truncated start's std and a tail, 'truncated_wide' the plain start's
    std and no tail (the experiment that tells which of the two made PALM's start train worse)."""
    from tagging_full_run import HEAD_INITS

    def start(name):
        torch.manual_seed(0)
        return HEAD_INITS[name](torch.empty(400, 384))

    stds = {name: start(name).std().item() for name in ("normal", "truncated", "normal_narrow", "truncated_wide")}
    assert abs(stds["truncated"] / stds["normal"] - 0.8796) < 0.01  # N(0,1) cut at +-2 has std 0.8796
    assert abs(stds["normal_narrow"] / stds["truncated"] - 1) < 0.01
    assert abs(stds["truncated_wide"] / stds["normal"] - 1) < 0.01
    assert start("truncated").abs().max() <= 0.04 < start("normal_narrow").abs().max()
    assert start("truncated_wide").abs().max() <= 0.04 / 0.8796 < start("normal").abs().max()
