"""`torchpalm export CONFIG --checkpoint CKPT --out DIR [--onnx]` and `torchpalm predict --bundle DIR --input FILE`:
a bundle exported from a two-task checkpoint predicts what `torchpalm predict CONFIG --checkpoint` predicts."""

from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import pytest
import yaml
from conftest import TINY_CONFIG

from torchpalm import bundle
from torchpalm.cli import main

WORDS = ["good", "bad", "movie", "plot", "actor", "film", "story", "great", "awful", "scene"]


def sentences(n: int, seed: int) -> list[list[str]]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        words = [str(w) for w in rng.choice(WORDS[1:], size=int(rng.integers(2, 6)))]
        if i % 2:
            words.insert(int(rng.integers(0, len(words) + 1)), "good")
        out.append(words)
    return out


def write_files(tmp_path) -> None:
    for name, n, seed in (("train", 16, 0), ("test", 7, 1)):
        sents = sentences(n, seed)
        (tmp_path / f"cls_{name}.tsv").write_text(
            "label\ttext_a\n" + "".join(f"{int('good' in s)}\t{' '.join(s)}\n" for s in sents), encoding="utf-8")
        (tmp_path / f"tag_{name}.tsv").write_text("text_a\tlabel\n" + "".join(
            "\x02".join(s) + "\t" + "\x02".join("B-POS" if w == "good" else "O" for w in s) + "\n" for s in sents),
            encoding="utf-8")


def test_export_and_predict_with_a_bundle(tmp_path, uncased_vocab, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_files(tmp_path)
    (tmp_path / "tiny.json").write_text(json.dumps(TINY_CONFIG), encoding="utf-8")
    tasks = [{"name": "tag", "reader": {"type": "sequence_label", "label_map_config": None, "do_lower_case": True},
              "head": {"type": "sequence_label"}, "train_file": "tag_train.tsv", "predict_file": "tag_test.tsv"},
             {"name": "cls", "reader": {"type": "classify", "do_lower_case": True},
              "head": {"type": "classify", "num_classes": 2}, "train_file": "cls_train.tsv",
              "predict_file": "cls_test.tsv"}]
    cfg = {"backbone": {"type": "bert", "config": "tiny.json", "vocab": uncased_vocab}, "tasks": tasks,
           "optimizer": {"type": "adam", "lr": 3e-3}, "schedule": {"type": "none"},
           "train": {"epochs": 1, "batch_size": 4, "max_len": 32, "seed": 0, "save_path": "out", "device": "cpu"}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    assert main(["train", "run.yaml"]) == 0
    (ckpt,) = (tmp_path / "out").glob("ckpt.step*")
    assert main(["predict", "run.yaml", "--checkpoint", str(ckpt)]) == 0

    onnx = importlib.util.find_spec("onnxscript") is not None  # the `onnx` extra
    assert main(["export", "run.yaml", "--checkpoint", str(ckpt), "--out", "bundle", *(["--onnx"] * onnx)]) == 0
    assert {"bundle.json", "reader.tag", "reader.cls", *(["model.onnx"] * onnx)} <= set(os.listdir(tmp_path / "bundle"))
    assert main(["predict", "--bundle", "bundle", "--input", "tag=tag_test.tsv", "--input", "cls=cls_test.tsv",
                 "--output", "from_bundle"]) == 0

    def lines(path):
        return [json.loads(x) for x in (tmp_path / path).read_text(encoding="utf-8").splitlines()]

    for_config = lines("out/predict/cls/predictions.json")
    from_bundle = lines("from_bundle/cls/predictions.json")
    assert len(from_bundle) == 7
    np.testing.assert_allclose([r["probs"] for r in from_bundle], [r["probs"] for r in for_config], rtol=0,
                               atol=1e-6)
    assert [r["tag_ids"] for r in lines("from_bundle/tag/predictions.json")] == lines(
        "out/predict/tag/predictions.json")
    # without --output: JSON lines on stdout; --task picks one task of the bundle
    capsys.readouterr()
    assert main(["predict", "--bundle", "bundle", "--task", "cls", "--input", "cls_test.tsv"]) == 0
    assert [json.loads(x)["label"] for x in capsys.readouterr().out.splitlines()] == [r["label"] for r in for_config]

    # a bundle of a newer format: a clear error naming the versions, exit status 2
    spec = json.loads((tmp_path / "bundle" / "bundle.json").read_text())
    spec["format_version"] = bundle.FORMAT_VERSION + 1
    (tmp_path / "bundle" / "bundle.json").write_text(json.dumps(spec))
    assert main(["predict", "--bundle", "bundle", "--input", "cls=cls_test.tsv"]) == 2
    assert f"reads format versions up to {bundle.FORMAT_VERSION}" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # neither CONFIG nor --bundle
        main(["predict", "--input", "cls_test.tsv"])
    assert e.value.code == 2 and "give CONFIG --checkpoint CKPT, or --bundle DIR" in capsys.readouterr().err
