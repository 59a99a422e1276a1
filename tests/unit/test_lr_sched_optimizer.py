"""Schedules (spec §9.4) and the optimizer's parameter groups (spec §9.2)."""

from __future__ import annotations

import pytest
import torch

import torchpalm as palm
from torchpalm.optimizer import param_groups


def test_triangular_is_palm_formula():
    s = palm.lr_sched.TriangularSchedualer(10, 100)
    assert [s(t) for t in (0, 1, 5, 9)] == [0.0, 0.1, 0.5, 0.9]
    assert s(10) == pytest.approx(0.9)  # PALM decays on the global step: drops from ~1 to 1 - 10/100
    assert s(50) == pytest.approx(0.5) and s(100) == 0.0 and s(150) == 0.0


def test_triangular_decay_from_warmup_end_equals_hf_linear():
    from transformers import get_linear_schedule_with_warmup

    s = palm.lr_sched.TriangularScheduler(7, 50, decay_from_warmup_end=True)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    hf = get_linear_schedule_with_warmup(opt, 7, 50)
    for t in range(60):
        assert s(t) == pytest.approx(opt.param_groups[0]["lr"], abs=1e-12), t
        opt.step()
        hf.step()


def test_warmup_then_constant_and_validation():
    s = palm.lr_sched.WarmupSchedualer(4)
    assert [s(t) for t in range(6)] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    assert palm.lr_sched.WarmupScheduler is palm.lr_sched.WarmupSchedualer
    with pytest.raises(ValueError, match="num_train_steps > warmup_steps"):
        palm.lr_sched.TriangularSchedualer(10, 10)


def test_adam_lr_and_groups(tiny_config):
    backbone = palm.backbone.BERT.from_config(tiny_config)
    head = palm.head.Classify(2, 32)
    model = palm.loop.MultiTaskModel(backbone, {"cls": head})
    groups = param_groups(model, 0.01, no_decay={"heads.cls.classifier.weight"})
    decayed = {id(p) for g in groups if g["weight_decay"] for p in g["params"]}
    names = {id(p): n for n, p in model.named_parameters()}
    decayed_names = {names[i] for i in decayed}
    assert "backbone.word_embeddings.weight" in decayed_names and "backbone.layers.0.qkv.weight" in decayed_names
    assert not any(n.endswith("bias") or "norm" in n for n in decayed_names)
    assert "heads.cls.classifier.weight" not in decayed_names
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    adam = palm.optimizer.Adam(model, 2e-5, palm.lr_sched.TriangularSchedualer(2, 10))
    assert adam.lr_at(0) == 0.0 and adam.lr_at(1) == pytest.approx(1e-5)
    assert palm.optimizer.Adam(model, 3e-5).get_cur_learning_rate() == 3e-5
