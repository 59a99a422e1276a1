"""A trivial dev result is said next to its metric: every prediction one class (with the majority class's share
of the gold labels), or a tagger predicting only `O` (torchpalm.evaluation's `Scores.note`)."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

from torchpalm import cli
from torchpalm.evaluation import Evaluator, Scores, accuracy_metric, entity_f1_metric


def classify_reader(gold):
    return SimpleNamespace(gold_labels=lambda: gold, id2label={0: "neg", 1: "pos", 2: "neutral"})


def test_one_class_predictions_are_flagged_with_the_majority_rate():
    gold = [1, 1, 1, 0, 2, 1, 0, 1]  # pos 5 of 8
    scores = accuracy_metric([{"label": 1}] * 8, classify_reader(gold))
    assert scores == {"accuracy": 5 / 8}
    assert scores.note == ("trivial: every prediction is class pos; the majority class pos is 62.5% of the gold "
                           "labels")
    # all one class that is not the majority: the majority rate is what a constant guess would reach
    assert "every prediction is class neg; the majority class pos is 62.5%" in accuracy_metric(
        [{"label": 0}] * 8, classify_reader(gold)).note
    assert accuracy_metric([{"label": 1}] * 7 + [{"label": 0}], classify_reader(gold)).note == ""


def test_a_tagger_predicting_only_o_is_flagged():
    reader = SimpleNamespace(id2label={0: "B-PER", 1: "I-PER", 2: "O"},
                             gold_tags=lambda: [["B-PER", "I-PER", "O"], ["O", "B-PER"]])
    scores = entity_f1_metric([[2, 2, 2], [2, 2]], reader)
    assert scores["f1"] == 0.0 and scores.note == "trivial: every predicted tag is 'O'"
    assert entity_f1_metric([[0, 1, 2], [2, 2]], reader).note == ""


def test_the_note_is_printed_next_to_the_metric(tmp_path, capsys, caplog):
    scores = Scores({"accuracy": 0.625}, "trivial: every prediction is class pos; ...")
    cli.report({"cls": scores, "other": {"accuracy": 0.5}}, str(tmp_path / "metrics.json"))
    out = capsys.readouterr().out
    assert "cls: accuracy 0.6250 (trivial: every prediction is class pos; ...)" in out
    assert "other: accuracy 0.5000\n" in out
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"cls": {"accuracy": 0.625},
                                                                    "other": {"accuracy": 0.5}}
    trainer = SimpleNamespace(name="cls", evaluate=lambda: scores)
    evaluator = Evaluator([trainer], 10, None, "cls", None, None, 0.0, save=lambda d: d)
    with caplog.at_level(logging.INFO, logger="torchpalm"):
        evaluator.evaluate(10)
    assert "[eval] step 10: cls accuracy 0.6250 (trivial: every prediction is class pos; ...) (best" in caplog.text
