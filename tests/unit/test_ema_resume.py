"""A single-process run with EMA weights, stopped and resumed from a checkpoint, ends exactly where the
uninterrupted run ends: the live weights AND the averaged ones (which prediction uses), so the resumed run must
restore the EMA weights from the checkpoint rather than start averaging again from the weights it loaded."""

from __future__ import annotations

import shutil

import numpy as np
import torch
from safetensors.torch import load_file
from toy_data import write_cls

import torchpalm as palm


def build(vocab, config, data: str, save_path: str):
    torch.manual_seed(0)
    reader = palm.reader.ClassifyReader(vocab, 32, seed=0, do_lower_case=True)
    reader.load_data(data, 4, num_epochs=2)  # 24 examples: 12 steps
    backbone = palm.backbone.BERT.from_config(config)
    reader.register_with(backbone)
    trainer = palm.Trainer("cls", device="cpu")
    loss = trainer.build_forward(backbone, palm.head.Classify(2, config["hidden_size"], 0.1))
    trainer.build_backward(palm.optimizer.Adam(loss, 1e-2), weight_decay=0.01, use_ema=True, ema_decay=0.8)
    trainer.fit_reader(reader)
    trainer.set_saver(save_path, save_steps=4)
    return trainer


def predictions(trainer, vocab, config, data: str) -> np.ndarray:
    reader = palm.reader.ClassifyReader(vocab, 32, do_lower_case=True, phase="predict")
    reader.load_data(data, 8)
    backbone = palm.backbone.BERT.from_config(config, phase="predict")
    reader.register_with(backbone)
    trainer.build_predict_forward(backbone, palm.head.Classify(2, config["hidden_size"], phase="predict"))
    trainer.fit_reader(reader, phase="predict")
    return np.array([r["logits"] for r in trainer.predict()])


def test_single_process_resume_restores_the_ema_weights(tmp_path, uncased_vocab, tiny_config):
    data = write_cls(tmp_path / "train.tsv", 24)
    whole = build(uncased_vocab, tiny_config, data, str(tmp_path / "whole"))
    whole.train(print_steps=0)
    assert whole.cur_train_step == 12

    # a second process finds the step-4 checkpoint of the same run and goes on from there
    shutil.copytree(tmp_path / "whole" / "ckpt.step4", tmp_path / "resumed" / "ckpt.step4")
    resumed = build(uncased_vocab, tiny_config, data, str(tmp_path / "resumed"))
    assert resumed.resume().endswith("ckpt.step4")
    resumed.train(print_steps=0)

    end_whole = load_file(str(tmp_path / "whole" / "ckpt.step12" / "model.safetensors"))
    end_resumed = load_file(str(tmp_path / "resumed" / "ckpt.step12" / "model.safetensors"))
    ema = sorted(k for k in end_whole if k.startswith("ema."))
    assert ema and sorted(end_resumed) == sorted(end_whole)
    # the average lags the weights (so restarting it from the loaded weights would show)
    assert not torch.equal(end_whole["ema.backbone.pooler.weight"], end_whole["backbone.pooler.weight"])
    for k in sorted(end_whole):
        assert torch.equal(end_resumed[k], end_whole[k]), k
    # and prediction, which uses the EMA weights, gives the same logits
    np.testing.assert_array_equal(predictions(resumed, uncased_vocab, tiny_config, data),
                                  predictions(whole, uncased_vocab, tiny_config, data))
