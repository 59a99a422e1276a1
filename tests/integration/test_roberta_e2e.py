"""A tiny HF RoBERTa fine-tunes a Classify head through palm.Trainer (BPE reader, load_pretrain) and predicts."""

from __future__ import annotations

import json
import os

import pytest
import torch
from roberta_fixtures import make_hf_roberta, sentences

import torchpalm as palm

pytest.importorskip("transformers")


def write_data(path, n: int, seed: int) -> str:
    # label 1 iff the sentence says "good": learnable in a few steps
    rows = [f"{int('good' in t.split())}\t{t}" for t in sentences(n, seed)]
    path.write_text("label\ttext_a\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return str(path)


def test_tiny_roberta_trains_a_classify_head_and_predicts(tmp_path):
    model_dir = make_hf_roberta(tmp_path / "roberta")
    config = os.path.join(model_dir, "config.json")
    torch.manual_seed(0)
    reader = palm.reader.ClassifyReader(model_dir, 64, tokenizer="bpe", seed=0)
    reader.load_data(write_data(tmp_path / "train.tsv", 64, seed=5), 16, num_epochs=3)
    backbone = palm.backbone.RoBERTa.from_config(config)
    reader.register_with(backbone)
    head = palm.head.Classify(2, backbone.config["hidden_size"], 0.1)
    trainer = palm.Trainer("cls", device="cpu")
    loss = trainer.build_forward(backbone, head)
    adam = palm.optimizer.Adam(loss, 3e-3, palm.lr_sched.TriangularSchedualer(2, 12))
    trainer.build_backward(adam, weight_decay=0.01)
    trainer.fit_reader(reader)
    trainer.load_pretrain(model_dir)
    assert torch.equal(backbone.word_embeddings.weight,
                       palm.checkpoint.load_backbone_weights(model_dir)[0]["word_embeddings.weight"])
    losses = [float(trainer.train_one_step(trainer.get_one_batch())["cls.loss"]) for _ in range(12)]
    assert all(map(lambda x: x == x, losses)) and sum(losses[-3:]) < sum(losses[:3]), losses

    pred_reader = palm.reader.ClassifyReader(model_dir, 64, tokenizer="bpe", phase="predict")
    test_file = write_data(tmp_path / "test.tsv", 10, seed=6)
    pred_reader.load_data(test_file, 4)
    pred_backbone = palm.backbone.RoBERTa.from_config(config, phase="predict")
    pred_reader.register_with(pred_backbone)
    trainer.build_predict_forward(pred_backbone, palm.head.Classify(2, 32, phase="predict"))
    trainer.fit_reader(pred_reader, phase="predict")
    results = trainer.predict(output_dir=str(tmp_path / "pred"))
    lines = [json.loads(x) for x in open(tmp_path / "pred" / "predictions.json")]
    assert len(results) == len(lines) == 10 and all(abs(sum(r["probs"]) - 1) < 1e-5 for r in lines)


def test_yaml_config_with_a_roberta_backbone_trains_and_evaluates(tmp_path):
    """`backbone: {type: roberta, pretrained: DIR}`: the readers read DIR's BPE files, load_pretrain its weights."""
    import yaml

    from torchpalm.cli import main

    model_dir = make_hf_roberta(tmp_path / "roberta")
    write_data(tmp_path / "train.tsv", 32, seed=7)
    write_data(tmp_path / "dev.tsv", 8, seed=8)
    cfg = {"backbone": {"type": "roberta", "pretrained": model_dir},
           "tasks": [{"name": "cls", "reader": {"type": "classify"}, "head": {"type": "classify", "num_classes": 2},
                      "train_file": "train.tsv", "dev_file": "dev.tsv"}],
           "optimizer": {"type": "adam", "lr": 1e-3},
           "train": {"epochs": 1, "batch_size": 8, "max_len": 48, "seed": 0, "save_path": "out", "device": "cpu"}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    assert main(["train", str(tmp_path / "run.yaml")]) == 0
    state = json.load(open(tmp_path / "out" / "ckpt.step4" / "trainer_state.json"))
    assert state["backbone"]["class"] == "RoBERTa"
    # and the checkpoint converts to an HF RoBERTa directory
    assert main(["convert", "--from", "torchpalm", "--to", "hf", str(tmp_path / "out" / "ckpt.step4"),
                 str(tmp_path / "hf_out"), "--tokenizer", model_dir]) == 0
    assert json.load(open(tmp_path / "hf_out" / "config.json"))["model_type"] == "roberta"
    assert sorted(os.listdir(tmp_path / "hf_out")) == ["config.json", "merges.txt", "model.safetensors", "vocab.json"]
