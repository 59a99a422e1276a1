"""Any torch.optim optimizer and torch.optim.lr_scheduler schedule where PALM's go (`palm.optimizer.Torch`,
`palm.lr_sched.Torch`), single- and multi-task: the rate of every step equals torch's own scheduler on a twin
optimizer, the update equals a plain torch loop's, the trainer's parameter groups (weight decay, CRF lr scale) and
its run length still apply, and resuming is exact."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, SequentialLR
from toy_data import write_cls, write_tags

import torchpalm as palm
from torchpalm.lr_sched import NUM_TRAIN_STEPS


def no_dropout(config: dict) -> dict:
    return dict(config, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def decayed_by_rule(model: torch.nn.Module, no_decay: set[str] = frozenset()) -> set[int]:
    """The spec §9.2 rule, written out independently: matrices and embeddings, not norms, biases or `no_decay`."""
    return {id(p) for n, p in model.named_parameters()
            if p.ndim >= 2 and "norm" not in n.lower() and not n.endswith("bias") and n not in no_decay}


def record_lrs(trainer_or_mh) -> list[list[tuple[float, float]]]:
    """(lr, weight_decay) of every param group at each optimizer step, as the optimizer saw them."""
    seen = []
    trainer_or_mh.torch_optimizer.register_step_pre_hook(
        lambda opt, args, kwargs: seen.append([(g["lr"], g["weight_decay"]) for g in opt.param_groups]))
    return seen


# ------------------------------------------------------------------------------------------ single task
LR, MOMENTUM, WD, ETA_MIN = 0.05, 0.9, 0.01, 1e-3


def single(tmp_path, vocab, config, seed=0):
    """SGD + momentum and a cosine schedule whose length the trainer fills: 24 rows, batch 4, 2 epochs = 12 steps."""
    torch.manual_seed(seed)
    reader = palm.reader.ClassifyReader(vocab, 32, seed=0, do_lower_case=True)
    reader.load_data(write_cls(tmp_path / "c.tsv", 24, seed=1), 4, num_epochs=2)
    backbone = palm.backbone.BERT.from_config(no_dropout(config))
    reader.register_with(backbone)
    trainer = palm.Trainer("c", device="cpu")
    trainer.build_forward(backbone, palm.head.Classify(2, 32))
    initial = copy.deepcopy(trainer.model)
    sched = palm.lr_sched.Torch(CosineAnnealingLR, T_max=NUM_TRAIN_STEPS, eta_min=ETA_MIN)
    trainer.build_backward(palm.optimizer.Torch(torch.optim.SGD, LR, sched, momentum=MOMENTUM), weight_decay=WD)
    trainer.fit_reader(reader)
    return trainer, sched, initial, reader


def test_sgd_and_cosine_schedule_match_a_plain_torch_loop(tmp_path, uncased_vocab, tiny_config):
    trainer, sched, twin_model, reader = single(tmp_path, uncased_vocab, tiny_config)
    assert sched.num_train_steps == trainer.num_train_steps == 12  # the length the trainer computed
    seen = record_lrs(trainer)
    twin_batches = list(reader.clone("train"))[:12]  # the same seed: the batches train() draws
    trainer.train(print_steps=0)

    # the twin: torch's SGD and CosineAnnealingLR over the spec's weight-decay groups, stepped by hand
    decayed = decayed_by_rule(twin_model)
    params = list(twin_model.parameters())
    twin = torch.optim.SGD([{"params": [p for p in params if id(p) in decayed], "weight_decay": WD},
                            {"params": [p for p in params if id(p) not in decayed], "weight_decay": 0.0}],
                           lr=LR, momentum=MOMENTUM)
    twin_sched = CosineAnnealingLR(twin, T_max=12, eta_min=ETA_MIN)
    twin_lrs = []
    for batch in twin_batches:
        twin_lrs.append(twin.param_groups[0]["lr"])
        twin_model(batch)["loss"].backward()
        twin.step()
        twin.zero_grad()
        twin_sched.step()
    assert [[lr for lr, _ in groups] for groups in seen] == [[lr, lr] for lr in twin_lrs]
    assert [wd for wd, _ in [(g[0][1], g[1][1]) for g in seen]] == [WD] * 12  # first group decayed
    assert len(set(twin_lrs)) == 12 and min(twin_lrs) > ETA_MIN  # a real schedule: every step's rate differs
    for (name, got), want in zip(trainer.model.named_parameters(), twin_model.parameters()):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=name)


def test_sgd_momentum_and_schedule_resume_exactly(tmp_path, uncased_vocab, tiny_config):
    out = tmp_path / "run"
    straight, *_ = single(tmp_path, uncased_vocab, tiny_config)
    straight.set_saver(str(out), 5)
    straight.train(print_steps=0)
    resumed, sched, *_ = single(tmp_path, uncased_vocab, tiny_config, seed=7)  # other initial weights
    resumed.load_ckpt(str(out / "ckpt.step5"))
    assert resumed.torch_optimizer.state  # the momentum buffers came back
    resumed.train(print_steps=0)
    assert resumed.cur_train_step == 12
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name


# ------------------------------------------------------------------------------------------ multi-task
def warmup_then_cosine(optimizer, total):
    """A schedule built from others (a factory): 3 steps of linear warmup, then cosine to 0."""
    return SequentialLR(optimizer, [LinearLR(optimizer, 0.1, total_iters=3),
                                    CosineAnnealingLR(optimizer, T_max=total - 3)], milestones=[3])


CRF_SCALE = 10.0


def multi(tmp_path, vocab, config, seed=0):
    torch.manual_seed(seed)
    tag_reader = palm.reader.SequenceLabelReader(vocab, 32, {"O": 0, "B-POS": 1}, seed=0, do_lower_case=True)
    tag_reader.load_data(write_tags(tmp_path / "t.tsv", 40), 4, num_epochs=None)
    cls_reader = palm.reader.ClassifyReader(vocab, 32, seed=0, do_lower_case=True)
    cls_reader.load_data(write_cls(tmp_path / "c.tsv", 24, seed=1), 4, num_epochs=None)
    backbone = palm.backbone.BERT.from_config(config)
    tag_reader.register_with(backbone)
    cls_reader.register_with(backbone)
    t_tag, t_cls = palm.Trainer("tag", device="cpu"), palm.Trainer("cls", device="cpu")
    t_tag.build_forward(backbone, palm.head.SequenceLabel(2, 32, 0.1, crf_lr_multiplier=CRF_SCALE))
    t_cls.build_forward(backbone, palm.head.Classify(2, 32, 0.1))
    mh = palm.MultiHeadTrainer([t_tag, t_cls])
    mh.build_forward()
    sched = palm.lr_sched.Torch(warmup_then_cosine, total=NUM_TRAIN_STEPS)
    adamw = palm.optimizer.Torch(torch.optim.AdamW, 3e-3, sched, betas=(0.8, 0.99))
    mh.build_backward(adamw, weight_decay=WD)
    mh.fit_readers_with_mixratio([tag_reader, cls_reader], "tag", 2)
    return mh, sched, adamw


def test_multi_task_keeps_groups_crf_scale_and_the_trainers_length(tmp_path, uncased_vocab, tiny_config):
    mh, sched, _ = multi(tmp_path, uncased_vocab, tiny_config)
    total = mh._overall_train_steps
    assert sched.num_train_steps == total and total >= 20
    groups = mh.torch_optimizer.param_groups
    crf = mh.model.heads["tag"]
    no_decay = {f"heads.tag.{n}" for n in crf.no_weight_decay()}
    assert no_decay and {id(p) for g in groups if g["weight_decay"] == WD for p in g["params"]} == \
        decayed_by_rule(mh.model, no_decay)
    assert sorted(g["lr_scale"] for g in groups) == [1.0, 1.0, CRF_SCALE]
    assert {id(p) for g in groups if g["lr_scale"] == CRF_SCALE for p in g["params"]} == \
        {id(p) for n, p in crf.named_parameters() if n in crf.param_lr_scales()}
    seen = record_lrs(mh)
    mh.train(print_steps=0)
    twin = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=3e-3)
    twin_sched, twin_lrs = warmup_then_cosine(twin, total), []
    for _ in range(total):
        twin_lrs.append(twin.param_groups[0]["lr"])
        twin.step()
        twin_sched.step()
    assert len(seen) == total
    assert [[lr for lr, _ in step] for step in seen] == [[lr * g["lr_scale"] for g in groups] for lr in twin_lrs]


def test_multi_task_resume_is_exact(tmp_path, uncased_vocab, tiny_config):
    out = tmp_path / "run"
    straight, *_ = multi(tmp_path, uncased_vocab, tiny_config)
    straight.set_saver(str(out), 7)
    straight.train(print_steps=0)
    resumed, *_ = multi(tmp_path, uncased_vocab, tiny_config, seed=3)
    resumed.load_ckpt(str(out / "ckpt.step14"))
    resumed.train(print_steps=0)
    assert resumed.cur_train_step == straight.cur_train_step
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name


# ------------------------------------------------------------------------------------------ bad input
def test_what_cannot_work_is_a_clear_error(tiny_config):
    with pytest.raises(ValueError, match="ReduceLROnPlateau follows a metric"):
        palm.lr_sched.Torch(torch.optim.lr_scheduler.ReduceLROnPlateau)
    with pytest.raises(ValueError, match="cycle_momentum=False"):
        palm.lr_sched.Torch(torch.optim.lr_scheduler.OneCycleLR, max_lr=0.1, total_steps=NUM_TRAIN_STEPS)
    with pytest.raises(RuntimeError, match="NUM_TRAIN_STEPS is not known yet"):
        palm.optimizer.Adam(None, 0.1, palm.lr_sched.Torch(CosineAnnealingLR, T_max=NUM_TRAIN_STEPS)).lr_at(0)
    with pytest.raises(ValueError, match="weight_decay=.*build_backward"):
        palm.optimizer.Torch(torch.optim.SGD, 0.1, weight_decay=0.01)
    model = torch.nn.Linear(2, 2)
    with pytest.raises(TypeError, match="CLASS"):
        palm.optimizer.Torch(torch.optim.SGD(model.parameters(), lr=0.1), 0.1)
    with pytest.raises(TypeError, match=r"palm.lr_sched.Torch\(torch.optim.lr_scheduler.StepLR"):
        palm.optimizer.Adam(None, 0.1, torch.optim.lr_scheduler.StepLR(torch.optim.SGD(model.parameters()), 2))
    backbone = palm.backbone.BERT.from_config(tiny_config)
    trainer = palm.Trainer("c", device="cpu")
    trainer.build_forward(backbone, palm.head.Classify(2, 32))
    with pytest.raises(TypeError, match="palm.optimizer.Torch"):
        trainer.build_backward(torch.optim.SGD)
    with pytest.raises(TypeError, match="momentum"):
        trainer.build_backward(palm.optimizer.Torch(torch.optim.SGD, 0.1, momentum=0.9, nesterv=True))


def test_onecycle_rates_with_absolute_max_lr(tmp_path):
    # OneCycleLR sets absolute rates (max_lr): the replay runs on the real base rate, so they mean what they say
    sched = palm.lr_sched.Torch(torch.optim.lr_scheduler.OneCycleLR, max_lr=0.4, total_steps=NUM_TRAIN_STEPS,
                                cycle_momentum=False)
    sched.set_total_steps(10)
    opt = palm.optimizer.Torch(torch.optim.SGD, 0.1, sched)
    twin = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    ref = torch.optim.lr_scheduler.OneCycleLR(twin, max_lr=0.4, total_steps=10, cycle_momentum=False)
    want = []
    for _ in range(10):
        want.append(twin.param_groups[0]["lr"])
        twin.step()
        ref.step()
    assert [opt.lr_at(t) for t in range(10)] == want and max(want) == pytest.approx(0.4)
