"""Log lines and the progress bar share a terminal: while the bar is drawn, console log lines go through its
`write` (printed above it) instead of into it (torchpalm.process.logging_above)."""

from __future__ import annotations

import io
import logging
import sys

import torch
from toy_data import write_cls, write_tags
from tqdm.std import tqdm

import torchpalm as palm
from torchpalm import loop


class RecordingBar(tqdm):
    """A bar drawn into a buffer (as on a terminal) that records what is written above it."""

    written: list[str] = []

    @classmethod
    def write(cls, s, file=None, end="\n", nolock=False):
        cls.written.append(s)


def test_multi_task_log_lines_print_above_the_progress_bar(tmp_path, uncased_vocab, tiny_config, monkeypatch):
    monkeypatch.setattr(loop, "progress_bar", lambda total, initial, desc: RecordingBar(
        total=total, initial=initial, desc=desc, file=io.StringIO(), disable=False))
    RecordingBar.written = []
    console = logging.StreamHandler(sys.stdout)  # what ensure_console_logging installs outside pytest
    logger = logging.getLogger("torchpalm")
    logger.addHandler(console)
    level = logger.level
    logger.setLevel(logging.INFO)  # (setLevel, not the attribute: it clears the logger's isEnabledFor cache)
    try:
        torch.manual_seed(0)
        backbone = palm.backbone.BERT.from_config(tiny_config)
        trainers, readers = [], []
        for name, reader, head, path in [
                ("cls", palm.reader.ClassifyReader(uncased_vocab, 16, seed=0), palm.head.Classify(2, 32),
                 write_cls(tmp_path / "cls.tsv", 8)),
                ("tag", palm.reader.SequenceLabelReader(uncased_vocab, 16, {"B-POS": 0, "O": 1}, seed=0),
                 palm.head.SequenceLabel(2, 32), write_tags(tmp_path / "tag.tsv", 8))]:
            reader.load_data(path, 4, num_epochs=None)
            reader.register_with(backbone)
            trainers.append(palm.Trainer(name, device="cpu"))
            trainers[-1].build_forward(backbone, head)
            readers.append(reader)
        mh = palm.MultiHeadTrainer(trainers)
        mh.build_backward(palm.optimizer.Adam(mh.build_forward(), 1e-3))
        mh.fit_readers_with_mixratio(readers, "cls", 2)
        mh.train(print_steps=1)
        assert console in logger.handlers  # given back after the run
    finally:
        logger.removeHandler(console)
        logger.setLevel(level)
    steps = [line for line in RecordingBar.written if line.startswith("global step: ")]
    assert len(steps) == mh.cur_train_step >= 4
