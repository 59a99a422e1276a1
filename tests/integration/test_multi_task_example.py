"""examples/multi_task (PALM's ATIS joint intent + slot example) on the real ATIS data, tiny: the first 32-64
training utterances per task, 1 epoch, the tiny random BERT of conftest instead of MiniLM.

Checks: results.json and its scores; a checkpoint that holds the backbone and both heads, from which a fresh
single-task Trainer predicts exactly what the example wrote; the two-stage recipe (`--finetune`) really starts
from the multi-task weights (with a vanishing stage-2 learning rate its predictions equal stage 1's); an
auxiliary task never blocks the end; and the aux experiment's arms agree exactly when the auxiliary task is
never drawn."""

from __future__ import annotations

import importlib.util
import json
import shlex

import numpy as np
import pytest
from conftest import ROOT, shared
from safetensors.torch import load_file

import torchpalm as palm

EXAMPLE = ROOT / "examples" / "multi_task"


def load_module(name: str, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


run = load_module("multi_task_run_under_test", EXAMPLE / "run.py")
aux_experiment = load_module("multi_task_aux_experiment_under_test", EXAMPLE / "aux_experiment.py")


@pytest.fixture
def tiny(tmp_path, tiny_config, uncased_vocab) -> list[str]:
    """run.py options: the real ATIS folder, a randomly initialised tiny BERT, small batches, quiet logs."""
    for split in ("train", "dev", "test"):
        for name in ("seq.in", "seq.out", "label"):
            shared("atis", split, name)
    atis = shared("atis", "intent_label.txt").parent
    config = tmp_path / "tiny_config.json"
    config.write_text(json.dumps(tiny_config))
    return ["--atis_dir", str(atis), "--pretrain", "none", "--config", str(config), "--vocab", uncased_vocab,
            "--batch_size", "8", "--print_steps", "0"]


def logits(path) -> np.ndarray:
    with open(path, encoding="utf-8") as f:
        return np.array([json.loads(line)["logits"] for line in f if line.strip()])


def test_joint_run_checkpoint_and_two_stage_finetune(tmp_path, tiny, tiny_config, uncased_vocab):
    work = tmp_path / "joint"
    r = run.main(tiny + ["--work_dir", str(work), "--intent_examples", "32", "--slot_examples", "32",
                         "--num_epochs", "1", "--lr", "5e-3", "--finetune", "intent", "--finetune_epochs", "1",
                         "--finetune_lr", "1e-12"])
    saved = json.loads((work / "results.json").read_text())
    assert saved["intent_acc"] == r["intent_acc"] and saved["slot_f1"] == r["slot_f1"]
    assert 0.0 <= saved["intent_acc"] <= 1.0 and 0.0 <= saved["slot_f1"] <= 1.0
    assert saved["test"]["intent"]["n"] == saved["test"]["slot"]["n"] == 893
    # dev is scored too (where settings are chosen), from the same checkpoint, into its own prediction files
    assert saved["dev"]["intent"]["n"] == saved["dev"]["slot"]["n"] == 500
    assert saved["dev"]["intent"]["predictions"] == str(work / "predict-intent-dev" / "predictions.json")
    assert saved["test"]["intent"]["predictions"] == str(work / "predict-intent" / "predictions.json")
    assert saved["mode"] == "multi_task" and saved["tasks"] == ["slot", "intent"] and saved["aux_tasks"] == []
    assert saved["command"].startswith("python examples/multi_task/run.py ") and saved["args"]["seed"] == 1
    # PALM's budgets: 1 epoch of the reference task (slot, 32 // 8 = 4 steps) times each mix ratio (1.0)
    train = saved["train"]
    assert train["budgets"] == {"slot": 4, "intent": 4}
    assert min(train["steps"].values()) >= 4 and 4 in train["steps"].values()  # the last to finish: exactly 4
    assert sum(train["steps"].values()) == train["global_steps"] == train["overall_train_steps"]
    assert train["schedule_steps"] == train["overall_train_steps"]
    assert {t: m["steps"] for t, m in train["task_mix"].items()} == train["steps"]

    # the final checkpoint: the shared backbone and both heads
    ckpt = train["checkpoint"]
    assert ckpt.endswith(f"ckpt.step{train['global_steps']}")
    keys = load_file(f"{ckpt}/model.safetensors").keys()
    for prefix in ("backbone.", "slot.", "intent."):
        assert any(k.startswith(prefix) for k in keys), prefix

    # a fresh single-task trainer named "intent" predicts from that checkpoint exactly what the example wrote
    reader = palm.reader.ClassifyReader(uncased_vocab, 64, do_lower_case=True, phase="predict")
    reader.load_data(str(work / "data" / "intent" / "test.tsv"), 256)
    backbone = palm.backbone.BERT.from_config(tiny_config, phase="predict")
    reader.register_with(backbone)
    trainer = palm.Trainer("intent", device="cpu")
    trainer.build_predict_forward(backbone, palm.head.Classify(22, tiny_config["hidden_size"], phase="predict"))
    trainer.load_ckpt(ckpt)
    trainer.fit_reader(reader, phase="predict")
    mine = np.array([row["logits"] for row in trainer.predict(output_dir=None, print_steps=0)])
    stage1 = logits(work / "predict-intent" / "predictions.json")
    np.testing.assert_allclose(mine, stage1, atol=1e-5)

    # stage 2: intent alone, from the multi-task weights (backbone + intent head), new optimizer and schedule
    ft = saved["finetune"]
    assert ft["task"] == "intent" and ft["epochs"] == 1 and 0.0 <= ft["intent_acc"] <= 1.0
    assert set(ft["dev"]) == set(ft["test"]) == {"intent"} and ft["dev"]["intent"]["n"] == 500
    assert ft["intent_acc"] == ft["test"]["intent"]["intent_acc"]
    assert ft["train"]["init_checkpoint"] == ckpt
    assert ft["train"]["steps"] == {"intent": 4} and ft["train"]["schedule_steps"] == 4
    ft_keys = load_file(f"{ft['train']['checkpoint']}/model.safetensors").keys()
    assert any(k.startswith("intent.") for k in ft_keys) and not any(k.startswith("slot.") for k in ft_keys)
    # with a vanishing learning rate stage 2 keeps the weights it loaded: its predictions are stage 1's
    stage2 = logits(work / "finetune-intent" / "predict-intent" / "predictions.json")
    assert np.abs(stage1).max() > 1e-3
    np.testing.assert_allclose(stage2, stage1, atol=1e-6)


def test_aux_task_never_blocks_the_end(tmp_path, tiny, caplog):
    with caplog.at_level("INFO", logger="torchpalm"):
        r = run.main(tiny + ["--work_dir", str(tmp_path / "aux"), "--aux", "slot", "--mix_ratio", "slot=3",
                             "--intent_examples", "32", "--slot_examples", "64", "--num_epochs", "1",
                             "--keep_ckpt", "0"])
    text = caplog.text
    assert r["main_tasks"] == ["intent"] and r["aux_tasks"] == ["slot"] and r["args"]["reference"] == "intent"
    assert "intent: expected train steps 4." in text
    assert "slot: expected train steps" not in text and "slot train finish!" not in text
    assert "intent train finish!" in text
    train = r["train"]
    # the run ends when intent has its 4 steps, however often slot (drawn 3 times as often) trained
    assert train["steps"]["intent"] == 4 and train["global_steps"] == train["overall_train_steps"]
    assert train["task_mix"]["slot"]["expected_share"] == pytest.approx(0.75)
    assert 0.0 <= r["intent_acc"] <= 1.0 and 0.0 <= r["slot_f1"] <= 1.0  # the aux task is scored too
    assert r["checkpoints_deleted"] and not (tmp_path / "aux" / "ckpt" / f"ckpt.step{train['global_steps']}").exists()


def test_aux_experiment_arms_agree_when_the_aux_task_is_never_drawn(tmp_path, tiny):
    out = tmp_path / "exp"
    report = aux_experiment.main(["--out", str(out), "--main_examples", "32", "--aux_examples", "32",
                                  "--num_epochs", "1", "--seeds", "1", "--aux_ratio", "0", "--print_steps", "0",
                                  "--run_args", shlex.join(tiny + ["--lr", "5e-3"])])
    saved = json.loads((out / "aux_experiment.json").read_text())
    assert saved["summary"] == report["summary"] and saved["main_metric"] == "intent_acc"
    single, aux = saved["runs"]["single"]["1"], saved["runs"]["aux_slot"]["1"]
    assert single["steps"] == {"intent": 4} and aux["steps"] == {"slot": 0, "intent": 4}
    assert 0.0 <= aux["slot_f1"] <= 1.0 and "slot_f1" not in single
    # slot never drawn: the multi-task arm trains intent exactly as the single-task arm does
    np.testing.assert_array_equal(logits(out / "single" / "seed1" / "predict-intent" / "predictions.json"),
                                  logits(out / "aux_slot" / "seed1" / "predict-intent" / "predictions.json"))
    s = saved["summary"]
    assert s["single"]["intent_acc"] == {"n": 1, "mean": single["intent_acc"], "std": None}
    assert s["aux_slot"]["intent_acc_minus_single"]["per_seed"] == [0.0]
    assert "--aux slot" in aux["command"] and "--mix_ratio intent=1.0,slot=0.0" in aux["command"]
