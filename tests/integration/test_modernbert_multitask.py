"""A multi-task run on ModernBERT through the command line: a classifier and a CRF tagger on one tiny random
ModernBERT (`backbone: {type: modernbert, pretrained: DIR}`) train, a run killed with SIGKILL resumes to the very
weights of the uninterrupted run, the checkpoint exports as a bundle that predicts what `torchpalm predict` does,
and its ONNX graph (onnxruntime) gives the PyTorch outputs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import yaml
from conftest import ROOT
from modernbert_fixtures import make_hf_modernbert
from safetensors.torch import load_file
from toy_data import sentences, write_cls, write_tags

import torchpalm as palm
from torchpalm.cli import main


def _config(tmp_path, vocab) -> str:
    # a 4-token window (|i - j| <= 2): the toy sentences are longer, so the local layers really are local
    make_hf_modernbert(tmp_path / "mb", vocab=vocab, local_attention=4, embedding_dropout=0.1, mlp_dropout=0.1)
    tasks = [
        {"name": "cls", "reader": {"type": "classify", "do_lower_case": True},
         "head": {"type": "classify", "num_classes": 2, "dropout_prob": 0.1},
         "train_file": write_cls(tmp_path / "cls.tsv", 48), "dev_file": write_cls(tmp_path / "clsdev.tsv", 8, 1),
         "predict_file": "clsdev.tsv"},
        {"name": "tag", "reader": {"type": "sequence_label", "label_map_config": None, "do_lower_case": True},
         "head": {"type": "sequence_label", "dropout_prob": 0.1},  # a CRF (use_crf defaults to true)
         "train_file": write_tags(tmp_path / "tag.tsv", 48), "dev_file": write_tags(tmp_path / "tagdev.tsv", 8, 2),
         "predict_file": "tagdev.tsv"},
    ]
    cfg = {"backbone": {"type": "modernbert", "pretrained": "mb"}, "tasks": tasks,
           "optimizer": {"type": "adam", "lr": 2e-3, "weight_decay": 0.01},
           "schedule": {"type": "triangular", "warmup": 0.1},
           "train": {"epochs": 6, "batch_size": 4, "max_len": 24, "seed": 0, "save_path": "straight",
                     "save_steps": 4, "print_steps": 100, "device": "cpu"}}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return str(path)


def _final(out) -> str:
    steps = [int(p.name[len("ckpt.step"):]) for p in out.glob("ckpt.step*")]
    return str(out / f"ckpt.step{max(steps)}")


def test_train_kill_resume_export_predict(tmp_path, uncased_vocab):
    path = _config(tmp_path, uncased_vocab)
    assert main(["train", path]) == 0
    straight = _final(tmp_path / "straight")
    total = json.loads(open(os.path.join(straight, "trainer_state.json")).read())["step"]
    assert total >= 60

    # the same run in a child process, killed (SIGKILL: no handler runs) once its first checkpoint is on disk
    killed = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen([sys.executable, "-m", "torchpalm", "train", path, "--set",
                              f"train.save_path={killed}"], env=env, cwd=tmp_path,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while palm.checkpoint.latest(str(killed)) is None and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    child.send_signal(signal.SIGKILL)
    assert child.wait() == -signal.SIGKILL, child.stderr.read().decode()[-2000:]
    at_kill = palm.checkpoint.latest(str(killed))
    assert at_kill is not None and int(at_kill.rsplit("step", 1)[1]) < total  # killed mid-run

    assert main(["train", path, "--resume", "--set", f"train.save_path={killed}"]) == 0
    resumed = _final(killed)
    assert os.path.basename(resumed) == os.path.basename(straight)
    want, got = load_file(os.path.join(straight, "model.safetensors")), load_file(os.path.join(resumed,
                                                                                                "model.safetensors"))
    assert set(want) == set(got) and {k.split(".")[0] for k in want} == {"backbone", "cls", "tag"}
    for name, value in want.items():
        assert torch.equal(value, got[name]), name  # bit-exact
    start = palm.backbone.ModernBERT.from_config(str(tmp_path / "mb"))
    assert not torch.equal(want["backbone.layers.1.qkv.weight"], start.state_dict()["layers.1.qkv.weight"])

    # a bundle of the checkpoint predicts what `torchpalm predict` writes, and its ONNX graph agrees
    assert main(["predict", path, "--checkpoint", straight]) == 0
    bundle = str(tmp_path / "bundle")
    onnx = bool(pytest.importorskip("onnxscript")) and main(["export", path, "--checkpoint", straight, "--out",
                                                            bundle, "--onnx"]) == 0
    assert onnx
    predictor = palm.Predictor.load(bundle, device="cpu")
    texts = [" ".join(s) for _, s in sentences(8, 1)]
    cls_pred = predictor.predict(texts, task="cls")
    written = [json.loads(line) for line in open(tmp_path / "straight" / "predict" / "cls" / "predictions.json")]
    assert [r["label"] for r in cls_pred] == [r["label"] for r in written]
    np.testing.assert_allclose([r["probs"] for r in cls_pred], [r["probs"] for r in written], atol=1e-5)
    tag_written = [json.loads(line) for line in open(tmp_path / "straight" / "predict" / "tag" / "predictions.json")]
    tag_pred = predictor.predict([s for _, s in sentences(8, 2)], task="tag")
    assert [r["tag_ids"] for r in tag_pred] == tag_written  # (the file holds each sentence's tag ids)
    assert len({i for ids in tag_written for i in ids}) == 2  # the tagger learnt both tags

    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(os.path.join(bundle, "model.onnx"))
    names = [i.name for i in session.get_inputs()]
    long = [" ".join([t] * 3) for t in texts[:3]]  # another batch size and length than the traced sample
    batch = next(iter(predictor.reader_for("tag", long, 3)))
    assert batch["input_mask"].min() == 0
    with torch.no_grad():
        features = predictor.backbone(batch)
        want = [predictor.heads[t].export_output(features, batch).numpy() for t in ("cls", "tag")]
    outputs = session.run(["cls", "tag"], {k: batch[k].numpy() for k in names})
    for g, w in zip(outputs, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=0, atol=1e-4)


# the killed child runs with one thread (OMP_NUM_THREADS=1): see conftest.one_thread
pytestmark = pytest.mark.usefixtures("one_thread")
