"""Hostile training conditions (issue 28 items 2, 4, 7, 8): trainers in threads, non-finite weights, full disks,
two runs on one save folder."""

from __future__ import annotations

import threading
import time

import numpy as np
import torch
from conftest import TINY_CONFIG

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
