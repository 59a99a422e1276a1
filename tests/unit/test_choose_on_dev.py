"""examples/multi_task/choose_on_dev.py: the setting is chosen on dev (never on test), and its test scores are
compared with the single-task references paired by seed, in points."""

from __future__ import annotations

import importlib.util
import json

import pytest
from conftest import ROOT

spec = importlib.util.spec_from_file_location("choose_on_dev_under_test",
                                              ROOT / "examples" / "multi_task" / "choose_on_dev.py")
choose_on_dev = importlib.util.module_from_spec(spec)
spec.loader.exec_module(choose_on_dev)


def write_run(path, weight, seed, dev, test):
    """A run.py results.json with (intent accuracy, slot F1) on dev and test."""
    run = {"args": {"seed": seed, "loss_weight": {"slot": weight}},
           "dev": {"intent": {"intent_acc": dev[0]}, "slot": {"slot_f1": dev[1]}},
           "test": {"intent": {"intent_acc": test[0]}, "slot": {"slot_f1": test[1]}}}
    path.write_text(json.dumps(run))
    return str(path)


def write_reference(path, seed, **scores):
    ref = {"args": {"seed": seed}}
    for side, value in scores.items():
        ref[side] = {choose_on_dev.METRICS[side.split("_")[1]]: value}
    path.write_text(json.dumps(ref))
    return str(path)


def test_chooses_on_dev_and_pairs_test_scores_by_seed(tmp_path):
    runs = [
        # 0.1: the best test scores, the worse dev scores
        write_run(tmp_path / "a1.json", 0.1, 1, dev=(0.95, 0.95), test=(0.99, 0.99)),
        write_run(tmp_path / "a2.json", 0.1, 2, dev=(0.95, 0.95), test=(0.99, 0.99)),
        # 0.2: dev mean of (intent + slot) / 2 = (0.96 + 0.97) / 2 and (0.98 + 0.96) / 2 -> 0.9675 > 0.95
        write_run(tmp_path / "b1.json", 0.2, 1, dev=(0.96, 0.97), test=(0.961, 0.950)),
        write_run(tmp_path / "b2.json", 0.2, 2, dev=(0.98, 0.96), test=(0.965, 0.945)),
    ]
    refs = [write_reference(tmp_path / "r1.json", 1, hf_intent=0.960, palm_slot=0.952),
            write_reference(tmp_path / "r2.json", 2, hf_intent=0.970, palm_slot=0.948)]
    out = tmp_path / "summary.json"
    result = choose_on_dev.main(["--runs", *runs, "--references", *refs, "--out", str(out)])

    assert result["chosen"] == "slot=0.2"
    assert result["settings"]["slot=0.2"]["dev_criterion"] == pytest.approx(0.9675)
    assert result["settings"]["slot=0.2"]["test_intent"]["mean"] == pytest.approx(0.963)
    intent = result["paired_test_differences"]["slot=0.2"]["intent - hf_intent"]
    # seed 1: 0.961 - 0.960 = +0.1 points; seed 2: 0.965 - 0.970 = -0.5 points (a mix-up of seeds gives others)
    assert intent["per_seed_points"] == pytest.approx([0.1, -0.5])
    assert intent["mean_points"] == pytest.approx(-0.2)
    slot = result["paired_test_differences"]["slot=0.2"]["slot - palm_slot"]
    assert slot["per_seed_points"] == pytest.approx([-0.2, -0.3])
    assert result["targets"] == {"test intent mean >= 0.96": True, "test slot mean >= 0.94": True,
                                 "intent - hf_intent >= -0.3 points": True, "slot - palm_slot >= -0.3 points": True}
    assert result["paired_test_differences"]["slot=0.1"]["intent - hf_intent"]["per_seed_points"] == \
        pytest.approx([3.0, 2.0])  # the other setting is reported too, but its test scores did not choose it
    assert json.loads(out.read_text())["chosen"] == "slot=0.2"


def test_refuses_settings_on_different_seeds_and_runs_without_dev(tmp_path):
    runs = [write_run(tmp_path / "a1.json", 0.1, 1, dev=(0.9, 0.9), test=(0.9, 0.9)),
            write_run(tmp_path / "b2.json", 0.2, 2, dev=(0.9, 0.9), test=(0.9, 0.9))]
    with pytest.raises(SystemExit, match="same seeds"):
        choose_on_dev.main(["--runs", *runs])
    no_dev = tmp_path / "old.json"
    no_dev.write_text(json.dumps({"args": {"seed": 1, "loss_weight": {}},
                                  "test": {"intent": {"intent_acc": 0.9}, "slot": {"slot_f1": 0.9}}}))
    with pytest.raises(SystemExit, match="no dev scores"):
        choose_on_dev.main(["--runs", str(no_dev)])
