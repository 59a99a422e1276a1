"""The classification example end to end on real data: MiniLM on SST-2, and a from-scratch Chinese BERT on
ChnSentiCorp (short runs; the full runs and their numbers are in examples/classification/README.md)."""

from __future__ import annotations

import json
import os
import sys

import pytest
from conftest import ROOT, shared

sys.path.insert(0, str(ROOT / "examples" / "classification"))
import run as classification_example  # noqa: E402


def test_sst2_minilm_short_finetune(tmp_path, minilm_dir):
    shared("sst2", "train.tsv")
    metrics = classification_example.main(
        ["--train_examples", "1280", "--save_path", str(tmp_path), "--print_steps", "0", "--save_steps", "20"])
    # 40 steps from the pretrained checkpoint: well above the 0.51 majority-class rate of SST-2 dev
    assert metrics["n"] == 872
    assert metrics["accuracy"] >= 0.75, metrics
    assert sorted(os.listdir(tmp_path)) == ["ckpt.step20", "ckpt.step40", "predict", "train.first1280.tsv"]
    first = json.loads(open(tmp_path / "predict" / "predictions.json").readline())
    assert set(first) == {"index", "label", "logits", "probs"}


def test_chnsenticorp_from_scratch_runs(tmp_path):
    shared("chnsenticorp", "train.tsv")
    metrics = classification_example.main(
        ["--preset", "chnsenticorp", "--train_examples", "320", "--num_epochs", "1", "--max_seqlen", "64",
         "--save_path", str(tmp_path), "--print_steps", "0"])
    assert metrics["n"] == 1200 and 0.0 <= metrics["accuracy"] <= 1.0
    with pytest.raises(SystemExit):
        classification_example.main(["--preset", "no-such-preset"])
