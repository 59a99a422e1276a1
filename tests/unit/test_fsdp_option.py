"""The FSDP option's plumbing in one process (the sharded runs are in tests/integration/test_distributed.py):
who decides, and that in one process it changes nothing."""

from __future__ import annotations

import logging

import pytest
import torch

import torchpalm as palm
from torchpalm.fsdp import FSDP_ENV, shard_like, sharded_optimizer_state, wanted


def test_the_argument_wins_over_the_environment(monkeypatch):
    monkeypatch.setenv(FSDP_ENV, "1")
    assert wanted(None) and wanted(True) and not wanted(False)
    monkeypatch.setenv(FSDP_ENV, "0")
    assert not wanted(None) and wanted(True)
    monkeypatch.delenv(FSDP_ENV)
    assert not wanted(None)


def test_multi_head_trainer_takes_its_trainers_choice():
    assert palm.MultiHeadTrainer([palm.Trainer("a", fsdp=True), palm.Trainer("b")])._fsdp is True
    assert palm.MultiHeadTrainer([palm.Trainer("a"), palm.Trainer("b")], fsdp=False)._fsdp is False
    assert palm.MultiHeadTrainer([palm.Trainer("a"), palm.Trainer("b")])._fsdp is None  # the environment decides


def test_full_tensors_pass_through_where_nothing_is_sharded():
    value, like = torch.ones(3), torch.zeros(3)
    assert shard_like(value, like) is value
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(3))])
    state = {"state": {0: {"step": torch.tensor(1.0), "exp_avg": value}}, "param_groups": opt.state_dict()["param_groups"]}
    assert sharded_optimizer_state(state, opt)["state"][0]["exp_avg"] is value


def test_one_process_trains_exactly_as_without_the_option(tmp_path, tiny_config, uncased_vocab, caplog):
    (tmp_path / "train.tsv").write_text("label\ttext_a\n" + "".join(f"{i % 2}\tgood movie {i}\n" for i in range(16)))
    losses = {}
    for fsdp in (False, True):
        torch.manual_seed(0)
        reader = palm.reader.ClassifyReader(uncased_vocab, 16, seed=1)
        reader.load_data(str(tmp_path / "train.tsv"), 4, num_epochs=1)
        backbone = palm.backbone.BERT.from_config(dict(tiny_config, hidden_dropout_prob=0.0,
                                                       attention_probs_dropout_prob=0.0))
        reader.register_with(backbone)
        trainer = palm.Trainer("cls", device="cpu", fsdp=fsdp)
        trainer.build_forward(backbone, palm.head.Classify(2, tiny_config["hidden_size"], 0.0))
        with caplog.at_level(logging.INFO, logger="torchpalm"):
            trainer.build_backward(palm.optimizer.Adam(None, 1e-3), weight_decay=0.01)
        trainer.fit_reader(reader)
        losses[fsdp] = [float(trainer.train_one_step(trainer.get_one_batch())["cls.loss"]) for _ in range(4)]
    assert losses[True] == losses[False]
    assert "fsdp: one process, nothing to shard" in caplog.text


@pytest.mark.parametrize("value", ["yes", "TRUE", "1"])
def test_environment_spellings(monkeypatch, value):
    monkeypatch.setenv(FSDP_ENV, value)
    assert wanted(None)


def test_the_command_line_takes_the_option(tmp_path, uncased_vocab, monkeypatch, caplog):
    from test_cli import cls_task, write_config

    from torchpalm.cli import main

    monkeypatch.chdir(tmp_path)
    path = write_config(tmp_path, uncased_vocab, [cls_task(tmp_path)], epochs=1)
    with caplog.at_level(logging.INFO, logger="torchpalm"):
        assert main(["train", path, "--set", "train.fsdp=true"]) == 0
    assert "fsdp: one process, nothing to shard" in caplog.text
    assert main(["train", path, "--set", "train.fsdp=3"]) == 2  # a mistyped value is refused by name
