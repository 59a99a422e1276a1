"""Hostile training conditions (issue 28 items 2, 4, 7, 8): trainers in threads, non-finite weights, full disks,
two runs on one save folder."""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import types

import numpy as np
import pytest
import torch
from conftest import TINY_CONFIG
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

import torchpalm as palm


def write_tsv(folder, n=16):
    rows = ["label\ttext_a"] + [f"{i % 2}\t{'good movie' if i % 2 else 'bad plot'} {i}" for i in range(n)]
    path = folder / "train.tsv"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return str(path)


def tiny_trainer(folder, vocab, seed=0, lr=1e-3, name="cls", pause=0.0, **trainer_options):
    """A 2-layer BERT classifier with dropout on (0.1 in the backbone and the head); `pause` seconds of sleep
    before each forward pass of the backbone (so steps in two threads overlap)."""
    torch.manual_seed(seed)
    reader = palm.reader.ClassifyReader(vocab, 32, seed=seed, do_lower_case=True)
    reader.load_data(write_tsv(folder), 4, num_epochs=4)
    backbone = palm.backbone.BERT.from_config(dict(TINY_CONFIG))
    reader.register_with(backbone)
    if pause:
        backbone.register_forward_pre_hook(lambda module, args: time.sleep(pause))
    trainer = palm.Trainer(name, device="cpu", **trainer_options)
    loss = trainer.build_forward(backbone, palm.head.Classify(2, TINY_CONFIG["hidden_size"], 0.1))
    trainer.build_backward(palm.optimizer.Adam(loss, lr))
    trainer.fit_reader(reader)
    return trainer


# ---------------------------------------------------------------- item 8: two trainers in two threads
def steps(trainer, n):
    return [float(trainer.train_one_step(trainer.get_one_batch())[f"{trainer.name}.loss"]) for _ in range(n)]


def test_two_trainers_in_two_threads_train_as_each_alone(tmp_path, uncased_vocab, monkeypatch):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    alone = [steps(tiny_trainer(tmp_path / "a", uncased_vocab, seed=1), 8),
             steps(tiny_trainer(tmp_path / "b", uncased_vocab, seed=2), 8)]
    # a pause before the dropout draws, so the threads' steps overlap on every step
    trainers = [tiny_trainer(tmp_path / "a", uncased_vocab, seed=1, pause=0.005),
                tiny_trainer(tmp_path / "b", uncased_vocab, seed=2, pause=0.005)]
    together, errors = [None, None], []
    start = threading.Barrier(2)

    def run(i):
        try:
            start.wait()
            together[i] = steps(trainers[i], 8)
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    np.testing.assert_array_equal(np.array(together), np.array(alone))


def test_one_trainer_in_two_threads_is_refused(tmp_path, uncased_vocab):
    trainer = tiny_trainer(tmp_path, uncased_vocab, pause=0.5)
    batches = [trainer.get_one_batch(), trainer.get_one_batch()]
    errors = []

    def run(batch):
        try:
            trainer.train_one_step(batch)
        except RuntimeError as e:
            errors.append(str(e))

    threads = [threading.Thread(target=run, args=(b,)) for b in batches]
    for t in threads:
        t.start()
        time.sleep(0.1)  # the first is inside its step (pausing in the backbone) when the second starts
    for t in threads:
        t.join()
    assert errors == ["task 'cls': this trainer is already taking a training step in another thread; a trainer "
                      "trains in one thread at a time (separate trainers may train in parallel)"]
    trainer.train_one_step(trainer.get_one_batch())  # the lock was released


# ---------------------------------------------------------------- item 2: non-finite state never saved
def poison(trainer, where):
    """What a learning-rate spike leaves while the losses and gradients stay finite: an infinite value in an
    embedding row no batch uses (a weight), or in an Adam second moment (an optimizer moment)."""
    backbone = next(m for m in trainer.model.modules() if isinstance(m, palm.backbone.BERT))
    weight = backbone.state_dict(keep_vars=True)["word_embeddings.weight"]
    with torch.no_grad():
        if where == "weight":
            weight[30000, 3] = float("inf")
        else:
            trainer.loop.torch_optimizer.state[weight]["exp_avg_sq"][30000, 3] = float("inf")


def saved_steps(folder):
    return sorted(int(n.split("step")[1]) for n in os.listdir(folder) if n.startswith("ckpt.step"))


@pytest.mark.parametrize("where", ["weight", "moment"])
def test_nonfinite_state_is_never_written(tmp_path, uncased_vocab, where):
    trainer = tiny_trainer(tmp_path, uncased_vocab)
    out = tmp_path / "out"
    trainer.set_saver(str(out), 3)
    steps(trainer, 3)  # ckpt.step3
    poison(trainer, where)
    steps(trainer, 2)
    with pytest.raises(FloatingPointError, match=r"global step 6: 1 tensor\(s\) of the model, its EMA or optimizer "
                                                 r"moments hold NaN or infinite values .* ckpt.step6 was not written"
                                                 rf".*the newest checkpoint, {out}/ckpt.step3, holds the last finite"):
        steps(trainer, 1)
    assert saved_steps(out) == [3]


def test_skip_nonfinite_rolls_back_to_the_last_finite_checkpoint(tmp_path, uncased_vocab, caplog):
    trainer = tiny_trainer(tmp_path, uncased_vocab, skip_nonfinite=True)
    out = tmp_path / "out"
    trainer.set_saver(str(out), 3)
    steps(trainer, 3)
    at_step3 = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    poison(trainer, "weight")
    steps(trainer, 2)
    with caplog.at_level(logging.WARNING, logger="torchpalm"):
        steps(trainer, 1)  # the save at step 6 rolls back, then writes the finite state
    assert f"rolled the weights, EMA and optimizer back to {out}/ckpt.step3" in caplog.text
    assert saved_steps(out) == [3, 6] and trainer.cur_train_step == 6
    for k, v in trainer.model.state_dict().items():
        assert torch.equal(v, at_step3[k]), k
    state, *_ = palm.checkpoint.load_checkpoint_dir(str(out / "ckpt.step6"))
    assert all(bool(torch.isfinite(v).all()) for v in state.values() if v.is_floating_point())
    steps(trainer, 3)  # and training goes on, finite
    assert saved_steps(out) == [3, 6, 9]


def test_resume_falls_back_to_the_newest_checkpoint_that_loads(tmp_path, uncased_vocab, caplog):
    trainer = tiny_trainer(tmp_path, uncased_vocab)
    out = tmp_path / "out"
    trainer.set_saver(str(out), 3)
    steps(trainer, 9)  # ckpt.step3, 6, 9
    weights = out / "ckpt.step9" / "model.safetensors"  # a NaN written by an older torchpalm
    state = load_file(str(weights))
    state["backbone.word_embeddings.weight"][5, 5] = float("nan")
    save_file(state, str(weights))
    marker = out / "ckpt.step9" / palm.checkpoint.MARKER
    record = json.loads(marker.read_text())
    record["files"]["model.safetensors"] = os.path.getsize(weights)
    marker.write_text(json.dumps(record))
    raw = out / "ckpt.step6" / "optimizer.pt"  # and a corrupt file of the same size
    raw.write_bytes(b"\xff" * os.path.getsize(raw))
    fresh = tiny_trainer(tmp_path, uncased_vocab)
    with caplog.at_level(logging.WARNING, logger="torchpalm"):
        assert fresh.resume(str(out)) == str(out / "ckpt.step3")
    assert fresh.cur_train_step == 3
    assert f"skipped {out}/ckpt.step9, which does not load" in caplog.text and "NaN or infinite" in caplog.text
    assert f"skipped {out}/ckpt.step6, which does not load" in caplog.text
    assert "resumed from" in caplog.text and "(skipped: ckpt.step9 (" in caplog.text
    shutil.rmtree(out / "ckpt.step3")
    with pytest.raises(ValueError, match=r"no checkpoint there loads, so training cannot resume: ckpt.step9 .*; "
                                         r"ckpt.step6"):
        tiny_trainer(tmp_path, uncased_vocab).resume(str(out))


# ---------------------------------------------------------------- item 4: full disk, size limit, read-only
def saving_trainer(tmp_path, vocab, **options):
    trainer = tiny_trainer(tmp_path, vocab, **options)
    out = tmp_path / "out"
    trainer.set_saver(str(out), 2)
    steps(trainer, 2)  # ckpt.step2
    steps(trainer, 1)
    return trainer, out


def assert_untouched(trainer, out):
    assert saved_steps(out) == [2] and not [n for n in os.listdir(out) if ".tmp-" in n]
    trainer.load_ckpt(palm.checkpoint.latest(out))
    assert trainer.cur_train_step == 2


INJECTED = {  # what each library raises when the disk fills up or a limit is hit, as the issue quotes them
    "safetensors ENOSPC": ("save_file", lambda: SafetensorError(
        'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'),
        r"the disk holding {out} is full \(No space left on device\) while saving checkpoint ckpt.step4: the "
        r"unfinished copy was removed and earlier checkpoints are untouched. It needs about [\d.]+ MiB; "),
    "torch.save short write": ("torch_save", lambda: RuntimeError(
        "[enforce fail at inline_container.cc:672] . unexpected pos 3904 vs 3840"),
        r"the disk holding {out} is full .* It needs about 11.\d MiB; 0.0 MiB free there"),
    "EFBIG": ("torch_save", lambda: OSError(errno.EFBIG, os.strerror(errno.EFBIG)),
              r"a file of checkpoint ckpt.step4 in {out} is larger than this process may write \(File too large: "
              r"a file size limit such as `ulimit -f`"),
    "EROFS": ("mkdtemp", lambda: OSError(errno.EROFS, os.strerror(errno.EROFS)),
              r"{out} is on a read-only file system \(Read-only file system; was it remounted read-only\?\) while "
              r"writing checkpoint ckpt.step4"),
}


@pytest.mark.parametrize("kind", list(INJECTED))
def test_write_failures_are_said_in_plain_words(tmp_path, uncased_vocab, monkeypatch, kind):
    trainer, out = saving_trainer(tmp_path, uncased_vocab)
    target, error, expected = INJECTED[kind]

    def fail(*args, **kwargs):
        raise error()

    if target == "save_file":
        monkeypatch.setattr(palm.checkpoint, "save_file", fail)
    elif target == "torch_save":
        monkeypatch.setattr(palm.checkpoint.torch, "save", fail)
        if kind == "torch.save short write":  # torch says nothing of the cause: the free space tells
            monkeypatch.setattr(palm.checkpoint.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(1, 1, 0))
    else:
        monkeypatch.setattr(palm.checkpoint.tempfile, "mkdtemp", fail)
    with pytest.raises(OSError, match=expected.format(out=out)):
        steps(trainer, 1)
    monkeypatch.undo()
    assert_untouched(trainer, out)


def test_a_log_line_on_a_read_only_folder_is_said_in_plain_words(tmp_path, uncased_vocab, monkeypatch):
    trainer, out = saving_trainer(tmp_path, uncased_vocab)

    def read_only(self, record):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(out / "metrics.jsonl"))

    monkeypatch.setattr(palm.metrics_log.MetricsLog, "write", read_only)
    with pytest.raises(OSError, match=rf"{out} is on a read-only file system .* while writing the training log"):
        trainer.train(print_steps=1)


REAL_DISK = """
import json, os, resource, signal, subprocess, sys
sys.path[:0] = [{tests!r}, os.path.dirname({tests!r})]  # this file and conftest
folder, kind = sys.argv[1], sys.argv[2]
if kind != "efbig":
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", folder], check=True)
import pathlib, torch
import test_hostile_training as T
import torchpalm as palm
trainer = T.tiny_trainer(pathlib.Path({tmp!r}), {vocab!r})
out = os.path.join(folder, "out")
trainer.set_saver(out, 1)
T.steps(trainer, 1)  # ckpt.step1: about 12 MiB of the 20
if kind == "efbig":
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the limit then fails the write with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (2**21, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
if kind == "readonly":
    subprocess.run(["mount", "-o", "remount,ro", folder], check=True)
try:
    trainer.train(print_steps=1) if kind == "readonly" else T.steps(trainer, 1)
    error = None
except OSError as e:
    error = str(e)
resource.setrlimit(resource.RLIMIT_FSIZE, (resource.getrlimit(resource.RLIMIT_FSIZE)[1],) * 2)
left = sorted(os.listdir(out))
trainer.load_ckpt(palm.checkpoint.latest(out))
print(json.dumps({{"error": error, "left": left, "step": trainer.cur_train_step}}))
"""


@pytest.mark.parametrize("kind", ["full", "readonly", "efbig"])
def test_a_real_small_disk(tmp_path, uncased_vocab, kind):
    """On a real 20 MiB tmpfs (mounted in a private mount namespace: `unshare -Urm`, no root needed where user
    namespaces are allowed) and under a real file size limit."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare to mount a tmpfs with")
    script = tmp_path / "disk.py"
    script.write_text(REAL_DISK.format(tests=os.path.dirname(__file__), tmp=str(tmp_path), vocab=uncased_vocab))
    folder = tmp_path / "disk"
    folder.mkdir()
    command = [sys.executable, str(script), str(folder), kind]
    if kind != "efbig":
        command = ["unshare", "-Urm", *command]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": os.path.join(os.path.dirname(__file__), "..", "..", "src")})
    if kind != "efbig" and "mount" in done.stderr and done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()[-200:]}")
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    expected = {"full": r"the disk holding .*/out is full \(No space left on device\) while saving checkpoint "
                        r"ckpt.step2: the unfinished copy was removed .* It needs about 11.\d MiB; [\d.]+ MiB free",
                "readonly": r"/out is on a read-only file system .* while writing the training log",
                "efbig": r"a file of checkpoint ckpt.step2 in .*/out is larger than this process may write \(File "
                         r"too large"}[kind]
    assert re.search(expected, result["error"]), result["error"]
    assert [n for n in result["left"] if n.startswith("ckpt")] == ["ckpt.step1"] and result["step"] == 1


# ---------------------------------------------------------------- item 7: one run per save folder
HOLDER = """
import sys, time
sys.path.insert(0, {src!r})
from torchpalm.checkpoint import SaveFolderLock
lock = SaveFolderLock(sys.argv[1])
print("holding", flush=True)
time.sleep(120)
"""


def test_a_second_run_on_a_save_folder_is_refused_naming_the_holder(tmp_path, uncased_vocab):
    out = tmp_path / "out"
    out.mkdir()
    live_save = out / "ckpt.step5.tmp-abc123"  # the other run's save in progress
    live_save.mkdir()
    src = os.path.join(os.path.dirname(__file__), "..", "..", "src")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER.format(src=src), str(out)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        trainer = tiny_trainer(tmp_path, uncased_vocab)
        with pytest.raises(palm.checkpoint.SaveFolderBusy, match=rf"{out} is in use by another training run \(pid "
                                                                 rf"{holder.pid} holds its lock\)"):
            trainer.set_saver(str(out), 2)
        assert live_save.is_dir()  # its save was not cleaned up
        with pytest.raises(palm.checkpoint.SaveFolderBusy, match=f"pid {holder.pid}"):  # nor by the evaluator's
            palm.evaluation.Evaluator([types.SimpleNamespace(name="cls")], 1, None, "cls", str(out), None, 0.0,
                                      save=str)
        assert live_save.is_dir()
    finally:
        holder.kill()
        holder.wait()
    trainer.set_saver(str(out), 2)  # the kernel released the lock with the process: a restart goes ahead
    assert not live_save.exists()  # and now the leftover of the killed run is removed
    second = tiny_trainer(tmp_path, uncased_vocab)  # another trainer of the same process may use it
    second.set_saver(str(out), 2)
