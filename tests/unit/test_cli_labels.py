"""Labels read from the data (issue 29): a classification config without a label map or num_classes trains on
text labels (the map is the training file's labels, sorted), and evaluate, predict, export and the Predictor
name the same classes from the checkpoint; integer labels keep their meaning (num_classes = largest id + 1); a
bundle of a sentence-pair task refuses single sentences, saying why."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import yaml
from conftest import TINY_CONFIG
from toy_data import sentences

import torchpalm as palm
from torchpalm.cli import main

NAMES = ("not_entailment", "entailment")  # first seen: not_entailment; sorted: entailment first


def write_pairs(path, n, seed, names=NAMES) -> str:
    rows = ["label\ttext_a\ttext_b"] + [f"{names[label]}\t{' '.join(s)}\t{' '.join(s[::-1])}"
                                        for label, s in sentences(n, seed)]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return str(path)


def write_config(tmp_path, vocab, **task) -> str:
    (tmp_path / "tiny.json").write_text(json.dumps(TINY_CONFIG), encoding="utf-8")
    cfg = {"backbone": {"type": "bert", "config": "tiny.json", "vocab": vocab},
           "tasks": {"name": "rte", "reader": {"type": "classify", "do_lower_case": True}, "head": {"type": "classify"},
                     **task},
           "optimizer": {"type": "adam", "lr": 3e-3}, "schedule": {"type": "none"},
           "train": {"epochs": 1, "batch_size": 8, "max_len": 32, "seed": 0, "save_path": "out", "device": "cpu"}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return str(tmp_path / "run.yaml")


def lines(path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


def test_text_labels_without_a_label_map(tmp_path, uncased_vocab, monkeypatch, caplog, capsys):
    monkeypatch.chdir(tmp_path)
    write_pairs(tmp_path / "train.tsv", 24, 0)
    write_pairs(tmp_path / "dev.tsv", 12, 1)
    path = write_config(tmp_path, uncased_vocab, train_file="train.tsv", dev_file="dev.tsv", predict_file="dev.tsv")
    with caplog.at_level(logging.INFO, logger="torchpalm"):
        assert main(["train", path]) == 0
    assert "label map built from the labels of" in caplog.text and "sorted" in caplog.text
    ckpt = tmp_path / "out" / "ckpt.step3"
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert state["tasks"]["rte"]["reader"]["data_options"] == {
        "text_pairs": True, "label_map": {"entailment": 0, "not_entailment": 1}}
    assert state["heads"]["rte"]["config"]["num_classes"] == 2

    # predict and evaluate (in new processes they know only the config and the checkpoint) name the classes alike
    assert main(["predict", path, "--checkpoint", str(ckpt)]) == 0
    predicted = lines(tmp_path / "out" / "predict" / "rte" / "predictions.json")
    assert [r["label_name"] for r in predicted] == [["entailment", "not_entailment"][r["label"]] for r in predicted]
    gold = [NAMES[label] for label, _ in sentences(12, 1)]
    assert main(["evaluate", path, "--checkpoint", str(ckpt), "--output", "ev"]) == 0
    accuracy = json.loads((tmp_path / "ev" / "metrics.json").read_text())["rte"]["accuracy"]
    assert accuracy == pytest.approx(np.mean([r["label_name"] == g for r, g in zip(predicted, gold)]))

    # the bundle keeps them: the Predictor names the same classes, and refuses single sentences
    assert main(["export", path, "--checkpoint", str(ckpt), "--out", "bundle"]) == 0
    predictor = palm.Predictor.load(tmp_path / "bundle", device="cpu")
    from_bundle = predictor.predict(str(tmp_path / "dev.tsv"))
    assert [r["label_name"] for r in from_bundle] == [r["label_name"] for r in predicted]
    with pytest.raises(palm.reader.DataError, match=r"trained on text pairs \(text_a, text_b\) but the input holds "
                                                    r"single texts"):
        predictor.predict(["one sentence alone"])
    (tmp_path / "single.tsv").write_text("text_a\none sentence alone\n", encoding="utf-8")
    capsys.readouterr()
    assert main(["predict", "--bundle", "bundle", "--input", "single.tsv"]) == 2
    assert "single.tsv: this task was trained on text pairs" in capsys.readouterr().err


def test_integer_labels_keep_their_meaning_and_give_num_classes(tmp_path, uncased_vocab, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_pairs(tmp_path / "train.tsv", 24, 0, names=("2", "0"))  # ids 0 and 2: three classes, id = the label
    path = write_config(tmp_path, uncased_vocab, train_file="train.tsv", predict_file="train.tsv")
    assert main(["train", path]) == 0
    state = json.loads((tmp_path / "out" / "ckpt.step3" / "trainer_state.json").read_text())
    assert state["heads"]["rte"]["config"]["num_classes"] == 3
    assert state["tasks"]["rte"]["reader"]["data_options"] == {"text_pairs": True}
    assert main(["predict", path, "--checkpoint", str(tmp_path / "out" / "ckpt.step3")]) == 0
    predicted = lines(tmp_path / "out" / "predict" / "rte" / "predictions.json")
    assert len(predicted[0]["probs"]) == 3 and "label_name" not in predicted[0]


def test_multi_task_evaluate_and_export_read_the_checkpoint_once(tmp_path, uncased_vocab, monkeypatch):
    from toy_data import write_cls, write_tags

    from torchpalm import checkpoint

    monkeypatch.chdir(tmp_path)
    path = write_config(tmp_path, uncased_vocab, train_file="train.tsv", dev_file="train.tsv")
    raw = yaml.safe_load(open(path))
    write_pairs(tmp_path / "train.tsv", 16, 0)
    raw["tasks"] = [raw["tasks"], {"name": "tag", "reader": {"type": "sequence_label", "do_lower_case": True},
                                   "head": {"type": "sequence_label"}, "train_file": write_tags(tmp_path / "tag.tsv", 16),
                                   "dev_file": "tag.tsv"},
                    {"name": "cls", "reader": {"type": "classify"}, "head": {"type": "classify"},
                     "train_file": write_cls(tmp_path / "cls.tsv", 16), "dev_file": "cls.tsv"}]
    (tmp_path / "multi.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")
    assert main(["train", "multi.yaml", "--set", "train.max_steps=4"]) == 0
    reads = []
    real = checkpoint.load_checkpoint_dir
    monkeypatch.setattr(checkpoint, "load_checkpoint_dir", lambda d: reads.append(d) or real(d))
    assert main(["evaluate", "multi.yaml", "--checkpoint", "out/ckpt.step4", "--output", "ev"]) == 0
    assert len(reads) == 1
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert set(metrics) == {"rte", "tag", "cls"}
    assert main(["export", "multi.yaml", "--checkpoint", "out/ckpt.step4", "--out", "bundle"]) == 0
    assert len(reads) == 2
    # the bundle's predictions score as evaluate scored (every head got its own weights from the one read)
    predictor = palm.Predictor.load(tmp_path / "bundle", device="cpu")
    predicted = predictor.predict(str(tmp_path / "cls.tsv"), task="cls")
    gold = [int(line.split("\t")[0]) for line in (tmp_path / "cls.tsv").read_text().splitlines()[1:]]
    assert metrics["cls"]["accuracy"] == pytest.approx(np.mean([r["label"] == g for r, g in zip(predicted, gold)]))
