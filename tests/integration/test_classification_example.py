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


def test_public_formats_give_the_same_run_as_the_tsv(tmp_path, uncased_vocab, tiny_config):
    # SST-2 rows as a headerless CSV of label names, as a HuggingFace-style JSON array ("text", names) and as
    # PALM's TSV: the same examples in the same order, so the same seeded run and the same scores
    from torchpalm.reader.base import read_table
    rows = [r for _, r in read_table(shared("sst2", "train.tsv"), required=("text_a", "label"))][:60]
    names = ["negative", "positive"]
    (tmp_path / "tiny.json").write_text(json.dumps(tiny_config))
    files = {}
    for split, part in (("train", rows[:40]), ("test", rows[40:])):
        tsv = tmp_path / f"{split}.tsv"
        tsv.write_text("label\ttext_a\n" + "".join(f"{r['label']}\t{r['text_a']}\n" for r in part))
        csv_file = tmp_path / f"{split}.csv"
        csv_file.write_text("".join(f'{names[int(r["label"])]},"{r["text_a"]}"\n' for r in part))
        array = tmp_path / f"{split}.json"
        array.write_text(json.dumps([{"idx": k, "text": r["text_a"], "label": names[int(r["label"])]}
                                     for k, r in enumerate(part)], indent=1))
        files[split] = (tsv, csv_file, array)
    common = ["--pretrain", "none", "--config", str(tmp_path / "tiny.json"), "--vocab", uncased_vocab,
              "--num_epochs", "1", "--batch_size", "8", "--lr", "1e-3", "--print_steps", "0", "--max_seqlen", "64"]
    scores = {}
    for k, extra in enumerate(([], ["--label_map", "negative,positive", "--columns", "label,text_a"],
                               ["--label_map", "negative,positive"])):
        scores[k] = classification_example.main(
            common + extra + ["--train_file", str(files["train"][k]), "--predict_file", str(files["test"][k]),
                              "--save_path", str(tmp_path / f"run{k}"), "--train_examples", "32"])
    assert scores[0]["n"] == 20
    assert scores[1] == scores[0] and scores[2] == scores[0]
    preds = [json.loads(line) for line in open(tmp_path / "run2" / "predict" / "predictions.json")]
    assert all(p["label_name"] == names[p["label"]] for p in preds)
    assert sorted(os.listdir(tmp_path / "run1"))[-1] == "train.first32.csv"
