"""What a run shows about itself (issue 29): metrics.jsonl and metrics.png whenever there is an output folder
(save_steps or not), global step / total steps and the epoch in the CLI's log lines, and --dry-run's plan."""

from __future__ import annotations

import json
import logging
import os
import re

import pytest
import yaml
from conftest import TINY_CONFIG
from toy_data import write_cls, write_tags

from torchpalm.cli import main


def write_config(tmp_path, vocab, multi: bool, **train) -> str:
    (tmp_path / "tiny.json").write_text(json.dumps(TINY_CONFIG), encoding="utf-8")
    tasks = [{"name": "cls", "reader": {"type": "classify", "do_lower_case": True}, "head": {"type": "classify"},
              "train_file": write_cls(tmp_path / "cls.tsv", 24)}]
    if multi:
        tasks.append({"name": "tag", "reader": {"type": "sequence_label", "do_lower_case": True},
                      "head": {"type": "sequence_label"}, "train_file": write_tags(tmp_path / "tag.tsv", 16)})
    cfg = {"backbone": {"type": "bert", "config": "tiny.json", "vocab": vocab}, "tasks": tasks,
           "optimizer": {"type": "adam", "lr": 1e-3}, "schedule": {"type": "triangular", "warmup": 0.1},
           "train": {"epochs": 2, "batch_size": 8, "max_len": 16, "seed": 0, "save_path": "out", "device": "cpu",
                     "print_steps": 1, **train}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return str(tmp_path / "run.yaml")


@pytest.mark.parametrize("multi", [False, True])
def test_metrics_log_and_curves_without_save_steps(tmp_path, uncased_vocab, monkeypatch, multi):
    pytest.importorskip("matplotlib")
    monkeypatch.chdir(tmp_path)
    assert main(["train", write_config(tmp_path, uncased_vocab, multi)]) == 0  # (no save_steps)
    records = [json.loads(x) for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    final = max(int(n.split("step")[1]) for n in os.listdir(tmp_path / "out") if n.startswith("ckpt.step"))
    assert [r["step"] for r in records] == list(range(1, final + 1))  # print_steps 1: every step
    assert (tmp_path / "out" / "metrics.png").stat().st_size > 0
    # and no periodic checkpoints: only the final one the CLI writes
    assert [n for n in os.listdir(tmp_path / "out") if n.startswith("ckpt.")] == [f"ckpt.step{final}"]


@pytest.mark.parametrize("multi", [False, True])
def test_cli_log_lines_show_the_global_step_of_the_run(tmp_path, uncased_vocab, monkeypatch, caplog, capsys,
                                                       multi):
    monkeypatch.chdir(tmp_path)
    path = write_config(tmp_path, uncased_vocab, multi)
    assert main(["train", path, "--dry-run"]) == 0
    out = capsys.readouterr().out
    plan = [line for line in out.splitlines() if line.startswith("plan: ")]
    cls_steps, epochs = re.fullmatch(r"plan: cls: 24 examples, 3 steps an epoch, (\d+) steps \(([\d.]+) epochs\)",
                                     plan[0]).groups()
    assert float(epochs) == pytest.approx(int(cls_steps) / 3, abs=0.005)
    total = int(re.fullmatch(r"plan: (\d+) steps in all", plan[-1]).group(1))
    if multi:  # (the run lasts until every main task has had its steps: the sampler's exact run length)
        assert plan[1].startswith("plan: tag: 16 examples, 2 steps an epoch, ") and total >= int(cls_steps)
    else:
        assert (int(cls_steps), total) == (6, 6)
    with caplog.at_level(logging.INFO, logger="torchpalm"):
        assert main(["train", path]) == 0
    steps = [m for m in caplog.messages if m.startswith("step ")]
    assert len(steps) == total
    assert steps[0].startswith(f"step 1/{total}, ")
    cls = [m for m in steps if ", cls (epoch" in m]
    # the task's epoch and its step within it: the third cls step ends epoch 0, the fourth starts epoch 1
    assert ", cls (epoch 0: 3/3), loss: " in cls[2] and ", cls (epoch 1: 1/3), loss: " in cls[3]
    assert steps[-1].startswith(f"step {total}/{total}, ")


def test_max_steps_and_fractional_epochs_from_the_config(tmp_path, uncased_vocab, monkeypatch, capsys):
    """`train.max_steps` (one task: 3 steps an epoch; and several) and a fraction of an epoch end the run exactly
    there, with the schedule over those steps; a run killed and resumed ends with the same weights."""
    from safetensors.torch import load_file

    monkeypatch.chdir(tmp_path)
    one = write_config(tmp_path, uncased_vocab, multi=False, save_steps=2)
    assert main(["train", one, "--set", "train.max_steps=5", "--set", "train.save_path=full"]) == 0
    assert sorted(n for n in os.listdir("full") if n.startswith("ckpt.")) == ["ckpt.step2", "ckpt.step4",
                                                                               "ckpt.step5"]
    records = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    # triangular, warmup 0.1 of 5 steps (0 whole steps), decaying to 0 at step 5 (not at the 6 of 2 epochs)
    assert [r["lr"] for r in records] == pytest.approx([1e-3 * (5 - k) / 5 for k in range(5)])
    # killed after step 2, resumed: the same last weights
    os.makedirs("killed")
    os.rename("full/ckpt.step2", "killed/ckpt.step2")
    assert main(["train", one, "--set", "train.max_steps=5", "--set", "train.save_path=killed", "--resume"]) == 0
    full, resumed = (load_file(f"{d}/ckpt.step5/model.safetensors") for d in ("full", "killed"))
    assert all((full[k] == resumed[k]).all() for k in full)
    # half an epoch of 3 steps: 2 steps (rounded up)
    assert main(["train", one, "--set", "train.epochs=0.5", "--set", "train.save_path=half", "--dry-run"]) == 0
    assert "plan: cls: 24 examples, 3 steps an epoch, 2 steps (0.67 epochs)" in capsys.readouterr().out
    assert main(["train", one, "--set", "train.epochs=0.5", "--set", "train.save_path=half"]) == 0
    assert sorted(n for n in os.listdir("half") if n.startswith("ckpt.")) == ["ckpt.step2"]
    # several tasks: the run is max_steps global steps
    several = write_config(tmp_path, uncased_vocab, multi=True)
    assert main(["train", several, "--set", "train.max_steps=7", "--dry-run"]) == 0
    assert "plan: 7 steps in all" in capsys.readouterr().out
    assert main(["train", several, "--set", "train.max_steps=7", "--set", "train.save_path=multi"]) == 0
    assert sorted(n for n in os.listdir("multi") if n.startswith("ckpt.")) == ["ckpt.step7"]
    assert main(["train", one, "--set", "train.max_steps=0"]) == 2
    assert "train.max_steps: must be > 0, got 0" in capsys.readouterr().err


def test_max_steps_through_the_api(tmp_path, uncased_vocab, tiny_config):
    import torchpalm as palm

    def trainer_on(num_epochs):
        reader = palm.reader.ClassifyReader(uncased_vocab, 16, seed=0)
        reader.load_data(write_cls(tmp_path / "cls.tsv", 24), 8, num_epochs=num_epochs)
        backbone = palm.backbone.BERT.from_config(tiny_config)
        reader.register_with(backbone)
        trainer = palm.Trainer("cls", device="cpu")
        schedule = palm.lr_sched.TriangularSchedualer(0.1, None)
        trainer.build_backward(palm.optimizer.Adam(trainer.build_forward(backbone, palm.head.Classify(2, 32)), 1e-3,
                                                   schedule))
        return trainer, reader, schedule

    trainer, reader, schedule = trainer_on(None)  # cycling
    trainer.fit_reader(reader, max_steps=5)
    assert trainer.num_train_steps == schedule.num_train_steps == 5
    trainer.train(print_steps=0)
    assert trainer.cur_train_step == 5
    trainer, reader, _ = trainer_on(1)  # one epoch holds 3 steps
    with pytest.raises(ValueError, match=r"max_steps=5 is more than the reader's 1 epoch\(s\) of 3 steps give \(3\)"):
        trainer.fit_reader(reader, max_steps=5)
