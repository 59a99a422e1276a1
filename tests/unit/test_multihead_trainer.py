"""MultiHeadTrainer (spec §4) on a tiny BERT: budgets and the finish rule, joint batches, log lines, checkpoints
that single-task trainers read, exact resume, multi-head inference, head sharing, custom components, bad input."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from toy_data import sentences, write_cls, write_tags

import torchpalm as palm
from torchpalm.head.base import Head
from torchpalm.reader.base import Reader, collate_common, read_tsv

TAGS = {"O": 0, "B-POS": 1}


class Setup:
    """Two tasks on one tiny backbone: 'tag' (SequenceLabel, CRF) and 'cls' (Classify)."""

    def __init__(self, tmp_path, vocab, config, n_tag=40, n_cls=24, batch=4, seed=0, sampling="ratio",
                 cls_ratio=1.0, aux=False, lr=3e-3, sched_steps=None, **mh_kwargs):
        torch.manual_seed(seed)
        self.tmp, self.vocab, self.config = tmp_path, vocab, config
        self.tag_file = write_tags(tmp_path / "tag.tsv", n_tag)
        self.cls_file = write_cls(tmp_path / "cls.tsv", n_cls, seed=1)
        self.tag_reader = palm.reader.SequenceLabelReader(vocab, 32, TAGS, seed=seed, do_lower_case=True)
        self.tag_reader.load_data(self.tag_file, batch, num_epochs=None)
        self.cls_reader = palm.reader.ClassifyReader(vocab, 32, seed=seed, do_lower_case=True)
        self.cls_reader.load_data(self.cls_file, batch, num_epochs=None)
        self.backbone = palm.backbone.BERT.from_config(config)
        self.tag_reader.register_with(self.backbone)
        self.cls_reader.register_with(self.backbone)
        self.t_tag = palm.Trainer("tag", device="cpu")
        self.t_cls = palm.Trainer("cls", mix_ratio=cls_ratio, device="cpu")
        if aux:
            self.t_cls.set_as_aux()
        self.t_tag.build_forward(self.backbone, palm.head.SequenceLabel(2, 32, 0.1))
        self.t_cls.build_forward(self.backbone, palm.head.Classify(2, 32, 0.1))
        self.mh = palm.MultiHeadTrainer([self.t_tag, self.t_cls], sampling=sampling, **mh_kwargs)
        loss = self.mh.build_forward()
        self.sched = palm.lr_sched.TriangularSchedualer(0.1, sched_steps)
        self.mh.build_backward(palm.optimizer.Adam(loss, lr, self.sched), weight_decay=0.01)

    def fit(self, epochs=2):
        return self.mh.fit_readers_with_mixratio([self.tag_reader, self.cls_reader], "tag", epochs)

    def losses(self, n):
        out = []
        for _ in range(n):
            outputs, task_id = self.mh.train_one_step(self.mh.get_one_batch())
            out.append((task_id, float(next(iter(outputs.values())))))
        return out

    def predict_side(self):
        pb = palm.backbone.BERT.from_config(self.config, phase="predict")
        tag_pred = palm.reader.SequenceLabelReader(self.vocab, 32, TAGS, do_lower_case=True, phase="predict")
        tag_pred.load_data(self.tag_file, 5)
        cls_pred = palm.reader.ClassifyReader(self.vocab, 32, do_lower_case=True, phase="predict")
        cls_pred.load_data(self.cls_file, 5)
        tag_pred.register_with(pb)
        cls_pred.register_with(pb)
        self.t_tag.build_predict_forward(pb, palm.head.SequenceLabel(2, 32, phase="predict"))
        self.t_cls.build_predict_forward(pb, palm.head.Classify(2, 32, phase="predict"))
        self.mh.build_predict_forward()
        return tag_pred, cls_pred


def test_budgets_finish_rule_and_log_lines(tmp_path, uncased_vocab, tiny_config, caplog):
    s = Setup(tmp_path, uncased_vocab, tiny_config, cls_ratio=0.5)
    with caplog.at_level("INFO", logger="torchpalm"):
        s.fit(epochs=2)
        s.mh.train(print_steps=5)
    text = caplog.text
    # PALM: max_train_steps_t = int(num_epochs * mix_ratio_t * (ref examples // ref batch))
    assert s.t_tag.task.budget == 2 * 10 and s.t_cls.task.budget == int(2 * 0.5 * 10)
    assert "tag: expected train steps 20." in text and "cls: expected train steps 10." in text
    total = s.mh.overall_train_steps
    assert f"Estimated overall train steps {total}." in text
    # the run ends exactly where it was planned, when the last main task reached its budget
    assert s.mh.cur_train_step == total
    assert s.t_tag.cur_train_step >= 20 and s.t_cls.cur_train_step >= 10
    assert s.t_tag.cur_train_step + s.t_cls.cur_train_step == total
    assert text.count("tag train finish!") == 1 and text.count("cls train finish!") == 1
    # the schedule left open (num_train_steps=None) was given the planned length, warmup 10% of it
    assert s.sched.num_train_steps == total and s.sched.warmup_steps == int(0.1 * total)
    # PALM's multi-task line: global step, task name right-aligned to the longest name, the task's own step/epoch
    lines = [ln for ln in caplog.messages if ln.startswith("global step: ")]
    assert len(lines) == total // 5
    import re

    pattern = re.compile(r"global step: (\d+), (tag|cls): step (\d+)/(\d+) \(epoch (\d+)\), loss: \d+\.\d{3}, "
                         r"speed: \d+\.\d\d steps/s")
    for line in lines:
        m = pattern.fullmatch(line)
        assert m, line
        assert int(m.group(1)) % 5 == 0 and int(m.group(4)) == (10 if m.group(2) == "tag" else 6)
    assert "task mix over" in text


def test_aux_task_never_blocks_the_end(tmp_path, uncased_vocab, tiny_config, caplog):
    # the aux task is drawn 4 times as often as the main one but the run ends when 'tag' is done
    s = Setup(tmp_path, uncased_vocab, tiny_config, cls_ratio=4.0, aux=True)
    with caplog.at_level("INFO", logger="torchpalm"):
        s.fit(epochs=1)
        s.mh.train(print_steps=0)
    assert s.t_tag.cur_train_step == 10 and s.mh.cur_train_step == s.mh.overall_train_steps
    assert s.t_cls.cur_train_step == s.mh.cur_train_step - 10
    assert "cls: expected train steps" not in caplog.text and "cls train finish!" not in caplog.text
    assert "tag train finish!" in caplog.text


def test_joint_batches_carry_task_id_and_step_returns_it(tmp_path, uncased_vocab, tiny_config):
    s = Setup(tmp_path, uncased_vocab, tiny_config)
    s.fit()
    batch = s.mh.get_one_batch()
    task_id = int(batch["__task_id"][0])
    assert batch["__task_id"].shape == (1,) and task_id in (0, 1)
    assert ("word_starts" in batch) == (task_id == 0) and ("label_ids" in batch)
    outputs, got_id = s.mh.train_one_step(batch)
    assert got_id == task_id and list(outputs) == [f"{['tag', 'cls'][task_id]}.loss"]
    assert s.mh.cur_train_step == 1 and s.mh.trainers[task_id].cur_train_step == 1
    # the draws are the sampler's, a pure function of (seed, step)
    draws = [int(s.mh.get_one_batch()["__task_id"][0]) for _ in range(30)]
    assert draws == [s.mh.sampler.draw(step) for step in range(1, 31)]


def test_resume_is_exact(tmp_path, uncased_vocab, tiny_config):
    straight = Setup(tmp_path, uncased_vocab, tiny_config)
    straight.fit()
    expected = straight.losses(16)

    first = Setup(tmp_path, uncased_vocab, tiny_config)
    first.fit()
    got = first.losses(9)
    path = first.mh.save(str(tmp_path / "ckpt"))
    torch.manual_seed(999)
    resumed = Setup(tmp_path, uncased_vocab, tiny_config, seed=5)  # other init, other reader seeds
    resumed.mh.load_ckpt(path)  # before fitting, as PALM's scripts may do
    resumed.fit()
    assert resumed.mh.cur_train_step == 9
    got += resumed.losses(7)
    assert got == expected
    # and after fitting
    again = Setup(tmp_path, uncased_vocab, tiny_config, seed=6)
    again.fit()
    again.mh.load_ckpt(path)
    assert got[9:] == again.losses(7)


def test_resume_from_the_latest_checkpoint_of_the_saver(tmp_path, uncased_vocab, tiny_config):
    straight = Setup(tmp_path, uncased_vocab, tiny_config)
    straight.fit()
    expected = straight.losses(14)

    out = str(tmp_path / "out")
    first = Setup(tmp_path, uncased_vocab, tiny_config)
    first.mh.set_saver(out, 3, max_to_keep=1)
    first.fit()
    got = first.losses(8)
    assert os.listdir(out) == ["ckpt.step6"]
    resumed = Setup(tmp_path, uncased_vocab, tiny_config, seed=5)
    resumed.mh.set_saver(out, 3, max_to_keep=1)
    with pytest.raises(RuntimeError, match="belongs to a MultiHeadTrainer: call resume"):
        resumed.t_cls.resume()
    assert resumed.mh.resume() == os.path.join(out, "ckpt.step6")
    resumed.fit()
    assert got[:6] + resumed.losses(8) == expected


def test_ctrl_c_in_a_step_saves_and_resumes_exactly(tmp_path, uncased_vocab, tiny_config):
    import signal

    def recorded(s):
        losses, step = [], s.mh._loop.train_step

        def train_step(task, batch):
            if s.mh.cur_train_step + 1 == s.interrupt_at:  # inside the step: the batch is drawn, not yet trained
                os.kill(os.getpid(), signal.SIGINT)
            loss = step(task, batch)
            losses.append((task, float(loss)))
            return loss

        s.mh._loop.train_step = train_step
        return losses

    straight = Setup(tmp_path, uncased_vocab, tiny_config)
    straight.interrupt_at = None
    expected = recorded(straight)
    straight.fit()
    straight.mh.train(print_steps=0)

    out = str(tmp_path / "out")
    first = Setup(tmp_path, uncased_vocab, tiny_config)
    first.interrupt_at = 7
    got = recorded(first)
    first.mh.set_saver(out, 100)
    first.fit()
    with pytest.raises(KeyboardInterrupt):
        first.mh.train(print_steps=0)
    assert palm.checkpoint.latest(out) == os.path.join(out, "ckpt.step7")
    resumed = Setup(tmp_path, uncased_vocab, tiny_config, seed=5)
    resumed.interrupt_at = None
    rest = recorded(resumed)
    resumed.mh.set_saver(out, 100)
    resumed.fit()
    resumed.mh.resume()
    resumed.mh.train(print_steps=0)
    assert got + rest == expected


def test_checkpoint_holds_every_head_and_single_task_trainers_predict_from_it(tmp_path, uncased_vocab, tiny_config):
    s = Setup(tmp_path, uncased_vocab, tiny_config, lr=5e-3)
    s.fit(epochs=6)  # 3 epochs left the Classify task at chance for most seeds (it learned for seeds 0-3 with 6)
    s.mh.set_saver(str(tmp_path / "out"), 1000)
    s.mh.train(print_steps=0)
    final = tmp_path / "out" / f"ckpt.step{s.mh.overall_train_steps}"
    keys = load_file(str(final / "model.safetensors")).keys()
    assert "backbone.layers.0.qkv.weight" in keys and "cls.classifier.weight" in keys
    assert "tag.emission.weight" in keys and "tag.crf.transitions" in keys
    state = json.load(open(final / "trainer_state.json"))
    assert set(state["tasks"]) == {"tag", "cls"} and state["sampler"]["strategy"] == "ratio"

    # joint inference in the training process
    tag_pred, cls_pred = s.predict_side()
    joint = s.mh.merge_inference_readers({"cls": cls_pred, "tag": tag_pred})  # the dict form (PALM crashed)
    joint_logits = np.concatenate([s.mh.predict_one_batch("cls", b)["logits"] for b in joint("cls")])
    assert joint_logits.shape == (24, 2)
    assert list(joint("cls")) != [] and len(list(joint("tag"))) == 8  # each call is one clean pass

    # PALM's predict_intent.py: a fresh single-task Trainer named like the task reads backbone + its head
    fresh = palm.Trainer("cls", device="cpu")
    reader = palm.reader.ClassifyReader(uncased_vocab, 32, do_lower_case=True, phase="predict")
    reader.load_data(s.cls_file, 5)
    pb = palm.backbone.BERT.from_config(tiny_config, phase="predict")
    reader.register_with(pb)
    fresh.build_predict_forward(pb, palm.head.Classify(2, 32, phase="predict"))
    fresh.load_ckpt(str(final))
    fresh.fit_reader(reader, phase="predict")
    results = fresh.predict()
    np.testing.assert_allclose([r["logits"] for r in results], joint_logits, atol=1e-5)
    gold = [int(x.split("\t")[0]) for x in open(s.cls_file).read().splitlines()[1:]]
    assert np.mean([r["label"] == g for r, g in zip(results, gold)]) >= 0.9  # it learned

    # a checkpoint lacking a task's head is an error naming it
    other = palm.Trainer("intent", device="cpu")
    other.build_predict_forward(palm.backbone.BERT.from_config(tiny_config, phase="predict"),
                                palm.head.Classify(2, 32, phase="predict"))
    with pytest.raises(KeyError, match=r"no parameters for task 'intent'.*\['cls', 'tag'\]"):
        other.load_ckpt(str(final))


def test_predict_shares_the_backbone_pass_for_the_same_text(tmp_path, uncased_vocab, tiny_config):
    # two classification tasks on the same file: one backbone pass per batch feeds both heads
    torch.manual_seed(0)
    f = write_cls(tmp_path / "same.tsv", 12)
    pb = palm.backbone.BERT.from_config(tiny_config, phase="predict")
    trainers, readers = [], []
    for name in ("a", "b"):
        t = palm.Trainer(name, device="cpu")
        r = palm.reader.ClassifyReader(uncased_vocab, 32, do_lower_case=True, phase="predict")
        r.load_data(f, 5)
        r.register_with(pb)
        t.build_predict_forward(pb, palm.head.Classify(2, 32, phase="predict"))
        trainers.append(t)
        readers.append(r)
    mh = palm.MultiHeadTrainer(trainers)
    mh.build_predict_forward()
    mh.merge_inference_readers(readers)
    results = mh.predict(output_dir=str(tmp_path / "pred"))
    assert mh.backbone_passes == 3  # ceil(12 / 5) batches, not 6
    assert sorted(os.listdir(tmp_path / "pred")) == ["a", "b"]
    for t in trainers:  # equal to each task predicted on its own
        r2 = palm.reader.ClassifyReader(uncased_vocab, 32, do_lower_case=True, phase="predict")
        r2.load_data(f, 5)
        r2.register_with(pb)
        t.fit_reader(r2, phase="predict")
        alone = t.predict()
        np.testing.assert_allclose([x["logits"] for x in results[t.name]], [x["logits"] for x in alone], atol=1e-6)


def test_reuse_head_with_shares_one_head(tmp_path, uncased_vocab, tiny_config):
    torch.manual_seed(0)
    backbone = palm.backbone.BERT.from_config(tiny_config)
    readers = []
    for i in range(2):
        r = palm.reader.ClassifyReader(uncased_vocab, 32, seed=i, do_lower_case=True)
        r.load_data(write_cls(tmp_path / f"c{i}.tsv", 16, seed=i), 4, num_epochs=None)
        r.register_with(backbone)
        readers.append(r)
    a = palm.Trainer("a", device="cpu")
    b = palm.Trainer("b", reuse_head_with="a", device="cpu")
    a.build_forward(backbone, palm.head.Classify(2, 32))
    b.build_forward(backbone, palm.head.Classify(2, 32))
    mh = palm.MultiHeadTrainer([a, b])
    model = mh.build_forward()
    assert model.heads["a"] is model.heads["b"]
    mh.build_backward(palm.optimizer.Adam(model, 1e-3), weight_decay=0.01)
    n_params = sum(len(g["params"]) for g in mh.torch_optimizer.param_groups)
    assert n_params == len(list(model.parameters()))  # the shared head is optimised once
    mh.fit_readers_with_mixratio(readers, "a", 1)
    mh.train(print_steps=0)
    path = mh.save(str(tmp_path / "ck"))
    keys = load_file(path + "/model.safetensors").keys()
    assert "a.classifier.weight" in keys and not any(k.startswith("b.") for k in keys)
    # a single-task Trainer("b") finds its (shared) head under 'a'
    alone = palm.Trainer("b", device="cpu")
    alone.build_predict_forward(palm.backbone.BERT.from_config(tiny_config, phase="predict"),
                                palm.head.Classify(2, 32, phase="predict"))
    alone.load_ckpt(path)
    torch.testing.assert_close(alone._pred_head.classifier.weight, model.heads["a"].classifier.weight)
    with pytest.raises(ValueError, match="reuse_head_with='zzz' names no other task"):
        palm.MultiHeadTrainer([palm.Trainer("x", reuse_head_with="zzz"), palm.Trainer("y")])


class RegressionReader(Reader):
    """A user's reader: `score<TAB>text_a` rows, a float target per sentence."""

    def _task_outputs(self):
        return {"score": ([-1], "float32")} if self._phase == "train" else {}

    def _load_examples(self, path):
        examples = []
        for _, row in read_tsv(path, required=("score", "text_a")):
            ids = self._tokenizer.encode(row["text_a"])[: self._max_len - 2]
            tokens = np.array([self._tokenizer.cls_id, *ids, self._tokenizer.sep_id])
            examples.append({"token_ids": tokens, "score": float(row["score"])})
        return examples

    def _collate(self, examples, rng):
        batch = collate_common([e["token_ids"] for e in examples], [np.zeros(len(e["token_ids"]), np.int64)
                                                                   for e in examples], self._tokenizer.pad_id)
        batch["score"] = torch.tensor([e["score"] for e in examples], dtype=torch.float32)
        return batch


class RegressionHead(Head):
    """A user's head: a linear score on the pooled embedding, mean squared error."""

    def __init__(self, input_dim, phase="train"):
        super().__init__(phase)
        self.out = torch.nn.Linear(input_dim, 1)

    @property
    def inputs_attrs(self):
        reader = {"score": ([-1], "float32")} if self.phase == "train" else {}
        return {"reader": reader, "backbone": {"sentence_embedding": ([-1, -1], "float32")}}

    def forward(self, backbone_outputs, batch):
        pred = self.out(backbone_outputs["sentence_embedding"]).squeeze(-1).float()
        out = {"score": pred}
        if "score" in batch:
            out["loss"] = F.mse_loss(pred, batch["score"])
        return out


def test_custom_reader_and_head_train_beside_a_builtin_task(tmp_path, uncased_vocab, tiny_config):
    # PALM#80: a user-defined reader/head pair failed inside MultiHeadTrainer
    torch.manual_seed(0)
    reg_file = tmp_path / "reg.tsv"
    reg_file.write_text("score\ttext_a\n" + "".join(f"{label * 2.0 - 1}\t{' '.join(s)}\n"
                                                     for label, s in sentences(24, 3)), encoding="utf-8")
    backbone = palm.backbone.BERT.from_config(tiny_config)
    reg_reader = RegressionReader(uncased_vocab, 32, seed=0, do_lower_case=True)
    reg_reader.load_data(str(reg_file), 4, num_epochs=None)
    cls_reader = palm.reader.ClassifyReader(uncased_vocab, 32, seed=0, do_lower_case=True)
    cls_reader.load_data(write_cls(tmp_path / "c.tsv", 24), 4, num_epochs=None)
    reg_reader.register_with(backbone)
    cls_reader.register_with(backbone)
    t_reg, t_cls = palm.Trainer("reg", device="cpu"), palm.Trainer("cls", device="cpu")
    t_reg.build_forward(backbone, RegressionHead(32))
    t_cls.build_forward(backbone, palm.head.Classify(2, 32))
    mh = palm.MultiHeadTrainer([t_reg, t_cls])
    mh.build_backward(palm.optimizer.Adam(mh.build_forward(), 3e-3), weight_decay=0.01)
    mh.fit_readers({"reg": reg_reader, "cls": cls_reader}, "reg", 8)  # 4 epochs learned for 2-3 of 5 seeds
    first = [mh.train_one_step(mh.get_one_batch())[0] for _ in range(6)]
    mh.train(print_steps=0)
    assert t_reg.cur_train_step >= 24 and t_cls.cur_train_step >= 24
    reg_losses = [float(o["reg.loss"]) for o in first if "reg.loss" in o]
    last = [float(mh.train_one_step(b)[0].get("reg.loss", np.nan)) for b in
            (mh.get_one_batch() for _ in range(12))]
    assert np.nanmean(last) < np.mean(reg_losses)  # the user's task learns


def test_bad_input_is_named_before_training(tmp_path, uncased_vocab, tiny_config):
    s = Setup(tmp_path, uncased_vocab, tiny_config)
    with pytest.raises(ValueError, match="sampling_reference 'slot' names no task.*\\['tag', 'cls'\\]"):
        s.mh.fit_readers_with_mixratio([s.tag_reader, s.cls_reader], "slot", 1)
    bad = palm.reader.ClassifyReader(uncased_vocab, 32)
    bad.load_data(s.cls_file, 4, num_epochs=2)
    bad.register_with(s.backbone)
    with pytest.raises(ValueError, match="task 'cls': load its reader with num_epochs=None"):
        s.mh.fit_readers_with_mixratio([s.tag_reader, bad], "tag", 1)
    with pytest.raises(ValueError, match="got 1 readers for 2 tasks"):
        s.mh.fit_readers_with_mixratio([s.tag_reader], "tag", 1)
    with pytest.raises(ValueError, match=r"unknown \['intent'\], missing \['cls'\]"):
        s.mh.fit_readers_with_mixratio({"tag": s.tag_reader, "intent": s.cls_reader}, "tag", 1)
    with pytest.raises(ValueError, match=r"share the name\(s\) \['x'\]"):
        palm.MultiHeadTrainer([palm.Trainer("x"), palm.Trainer("x")])
    with pytest.raises(ValueError, match="sampling must be one of"):
        palm.MultiHeadTrainer([palm.Trainer("x")], sampling="roundrobin")
    # trainers built on different backbones
    t1, t2 = palm.Trainer("one", device="cpu"), palm.Trainer("two", device="cpu")
    t1.build_forward(palm.backbone.BERT.from_config(tiny_config), palm.head.Classify(2, 32))
    t2.build_forward(palm.backbone.BERT.from_config(tiny_config), palm.head.Classify(2, 32))
    with pytest.raises(ValueError, match=r"ONE backbone object; task\(s\) \['two'\]"):
        palm.MultiHeadTrainer([t1, t2]).build_forward()
    # only aux tasks
    aux = Setup(tmp_path, uncased_vocab, tiny_config)
    aux.t_tag.set_as_aux()
    aux.t_cls.set_as_aux()
    with pytest.raises(ValueError, match="every task is auxiliary"):
        aux.fit()


def test_single_task_schedule_length_comes_from_the_trainer(tmp_path, uncased_vocab, tiny_config, caplog):
    # 26 examples, batch 4, 3 epochs: the trainer runs 3 * (26 // 4) = 18 steps, not 26 * 3 // 4 = 19
    reader = palm.reader.ClassifyReader(uncased_vocab, 32, seed=0, do_lower_case=True)
    reader.load_data(write_cls(tmp_path / "c.tsv", 26), 4, num_epochs=3)
    backbone = palm.backbone.BERT.from_config(tiny_config)
    reader.register_with(backbone)
    trainer = palm.Trainer("c", device="cpu")
    loss = trainer.build_forward(backbone, palm.head.Classify(2, 32))
    sched = palm.lr_sched.TriangularSchedualer(0.25, None, decay_from_warmup_end=True)
    adam = palm.optimizer.Adam(loss, 1e-3, sched)
    trainer.build_backward(adam)
    trainer.fit_reader(reader)
    assert trainer.num_train_steps == 18 and sched.num_train_steps == 18 and sched.warmup_steps == 4
    trainer.train(print_steps=0)
    assert trainer.cur_train_step == 18 and adam.lr_at(18) == 0.0
    # a script-side length that disagrees is reported
    other = palm.lr_sched.TriangularSchedualer(2, 19)
    with caplog.at_level("WARNING", logger="torchpalm"):
        other.set_total_steps(18)
    assert "decays over 19 steps but training runs 18 steps" in caplog.text
    # ... but not for a reader that cycles forever (num_epochs=None), stepped by the script's own loop for as
    # many steps as its schedule says (PALM's manual train_one_step loop)
    caplog.clear()
    reader.load_data(write_cls(tmp_path / "c.tsv", 26), 4, num_epochs=None)
    manual = palm.Trainer("m", device="cpu")
    loss = manual.build_forward(backbone, palm.head.Classify(2, 32))
    manual.build_backward(palm.optimizer.Adam(loss, 1e-3, palm.lr_sched.TriangularSchedualer(2, 40)))
    with caplog.at_level("WARNING", logger="torchpalm"):
        manual.fit_reader(reader)
    assert "decays over" not in caplog.text


def dev_readers(s: Setup):
    """Predict-phase dev readers over the labelled training files (registered with the predict backbone)."""
    tag_pred, cls_pred = s.predict_side()
    s.t_tag.set_dev(tag_pred)
    s.t_cls.set_dev(cls_pred)
    return tag_pred, cls_pred


def test_evaluation_during_training_keeps_the_best_and_scores_right(tmp_path, uncased_vocab, tiny_config, caplog):
    s = Setup(tmp_path, uncased_vocab, tiny_config, lr=5e-3)
    s.fit(epochs=3)
    dev_readers(s)
    s.mh.set_saver(str(tmp_path / "out"), 1000)
    s.mh.set_evaluation(every_steps=10, weights={"tag": 1.0, "cls": 3.0})
    with caplog.at_level("INFO", logger="torchpalm"):
        s.mh.train(print_steps=0)
    history = s.mh.eval_history
    total = s.mh.overall_train_steps
    assert [h["step"] for h in history] == [*range(10, total + 1, 10)] + ([total] if total % 10 else [])
    for h in history:
        tag, cls = h["tasks"]["tag"]["f1"], h["tasks"]["cls"]["accuracy"]
        assert h["aggregate"] == pytest.approx((tag + 3 * cls) / 4)
    assert any(m.startswith("[eval] step 10: tag f1 ") and "aggregate" in m for m in caplog.messages)
    best_agg = max(history, key=lambda h: h["aggregate"])
    assert {"best.tag", "best.cls", "best.aggregate"} <= set(os.listdir(tmp_path / "out"))
    # the best-aggregate checkpoint really scores what was logged: reload it and evaluate independently
    fresh = palm.Trainer("cls", device="cpu")
    reader = palm.reader.ClassifyReader(uncased_vocab, 32, do_lower_case=True, phase="predict")
    reader.load_data(s.cls_file, 7)
    pb = palm.backbone.BERT.from_config(tiny_config, phase="predict")
    reader.register_with(pb)
    fresh.build_predict_forward(pb, palm.head.Classify(2, 32, phase="predict"))
    fresh.load_ckpt(str(tmp_path / "out" / "best.aggregate"))
    fresh.fit_reader(reader, phase="predict")
    gold = [int(x.split("\t")[0]) for x in open(s.cls_file).read().splitlines()[1:]]
    acc = np.mean([r["label"] == g for r, g in zip(fresh.predict(), gold)])
    assert acc == pytest.approx(best_agg["tasks"]["cls"]["accuracy"])
    # and the tagging F1 against seqeval on the same predictions
    from seqeval.metrics import f1_score

    tag_pred = palm.reader.SequenceLabelReader(uncased_vocab, 32, TAGS, do_lower_case=True, phase="predict")
    tag_pred.load_data(s.tag_file, 6)
    t = palm.Trainer("tag", device="cpu")
    pb2 = palm.backbone.BERT.from_config(tiny_config, phase="predict")
    tag_pred.register_with(pb2)
    t.build_predict_forward(pb2, palm.head.SequenceLabel(2, 32, phase="predict"))
    t.load_ckpt(str(tmp_path / "out" / "best.aggregate"))
    t.fit_reader(tag_pred, phase="predict")
    id2 = {v: k for k, v in TAGS.items()}
    results = t.predict(output_dir=str(tmp_path / "tagged"))
    pred_tags = [[id2[i] for i in row] for row in results]
    gold_tags = [["B-POS" if w == "good" else "O" for w in ws] for _, ws in sentences(40)]
    # PALM#85: each result is the list of ids, and also the words with their tag names
    assert [r.words for r in results] == [ws for _, ws in sentences(40)] and [r.tags for r in results] == pred_tags
    tagged = [json.loads(x) for x in open(tmp_path / "tagged" / "predictions_tagged.json")]
    assert tagged[3] == {"index": 3, "words": results[3].words, "tags": pred_tags[3]}
    assert [json.loads(x) for x in open(tmp_path / "tagged" / "predictions.json")] == [list(r) for r in results]
    assert f1_score(gold_tags, pred_tags) == pytest.approx(best_agg["tasks"]["tag"]["f1"])


def test_early_stopping_on_a_task_metric(tmp_path, uncased_vocab, tiny_config, caplog):
    # lr so small nothing changes: accuracy never improves after the first evaluation, so patience 2 stops
    s = Setup(tmp_path, uncased_vocab, tiny_config, lr=1e-9)
    s.fit(epochs=5)
    dev_readers(s)
    s.mh.set_evaluation(every_steps=4, monitor="cls", patience=2, save_best=False)
    with caplog.at_level("INFO", logger="torchpalm"):
        s.mh.train(print_steps=0)
    assert s.mh.cur_train_step == 12 < s.mh.overall_train_steps
    assert [h["step"] for h in s.mh.eval_history] == [4, 8, 12]
    assert any("early stopping at step 12: cls has not improved for 2 evaluations" in m for m in caplog.messages)
    with pytest.raises(ValueError, match="monitor must be 'aggregate' or a task with a dev set"):
        s.mh.set_evaluation(every_steps=4, monitor="slot", save_best=False)


def single_task_with_dev(tmp_path, vocab, config, schedule=None):
    """A single-task Trainer on 24 classification rows (batch 4, 3 epochs: 18 steps) whose dev set is the same
    file, read by a predict-phase reader. Returns the trainer and its optimizer."""
    torch.manual_seed(0)
    f = write_cls(tmp_path / "c.tsv", 24)
    reader = palm.reader.ClassifyReader(vocab, 32, seed=0, do_lower_case=True)
    reader.load_data(f, 4, num_epochs=3)
    backbone = palm.backbone.BERT.from_config(config)
    reader.register_with(backbone)
    trainer = palm.Trainer("c", device="cpu")
    adam = palm.optimizer.Adam(trainer.build_forward(backbone, palm.head.Classify(2, 32)), 5e-3, schedule)
    trainer.build_backward(adam)
    trainer.fit_reader(reader)
    dev = palm.reader.ClassifyReader(vocab, 32, do_lower_case=True, phase="predict")
    dev.load_data(f, 8)
    pb = palm.backbone.BERT.from_config(config, phase="predict")
    dev.register_with(pb)
    trainer.build_predict_forward(pb, palm.head.Classify(2, 32, phase="predict"))
    trainer.set_dev(dev)
    return trainer, adam


def test_single_task_trainer_evaluates_too(tmp_path, uncased_vocab, tiny_config):
    trainer, _ = single_task_with_dev(tmp_path, uncased_vocab, tiny_config)
    trainer.set_evaluation(every_steps=5, save_dir=str(tmp_path / "o"))
    trainer.train(print_steps=0)
    steps = [h["step"] for h in trainer.eval_history]
    assert steps == [5, 10, 15, 18]
    assert os.path.isdir(tmp_path / "o" / "best.c") and not os.path.exists(tmp_path / "o" / "best.aggregate")
    final = trainer.evaluate()["accuracy"]
    assert final == trainer.eval_history[-1]["tasks"]["c"]["accuracy"]


def test_metrics_jsonl_holds_the_log_and_the_evaluations_and_resume_drops_later_lines(tmp_path, uncased_vocab,
                                                                                       tiny_config, caplog):
    from torchpalm.metrics_log import read_metrics

    def build(out):  # 6 steps per epoch, 18 in all
        trainer, adam = single_task_with_dev(tmp_path, uncased_vocab, tiny_config,
                                             palm.lr_sched.TriangularSchedualer(3, None))
        trainer.set_saver(str(out), 6)
        trainer.set_evaluation(every_steps=9, save_best=False)
        return trainer, adam

    out = tmp_path / "run"
    trainer, adam = build(out)
    with caplog.at_level("INFO", logger="torchpalm"):
        trainer.train(print_steps=4)
    records = read_metrics(str(out))
    logged = [r for r in records if "loss" in r]
    assert [r["step"] for r in logged] == [4, 8, 12, 16]
    assert [(r["task_step"], r["epoch"]) for r in logged] == [(4, 0), (8, 1), (12, 1), (16, 2)]
    assert [r["lr"] for r in logged] == [adam.lr_at(s - 1) for s in (4, 8, 12, 16)]  # the rate each step used
    shown = [f"loss: {r['loss']:.3f}" for r in logged]  # the console's numbers, unrounded
    assert all(line in caplog.text for line in shown)
    evals = [r for r in records if "eval" in r]
    assert [(r["step"], r["eval"]) for r in evals] == [(h["step"], h["tasks"]) for h in trainer.eval_history]
    assert [r["step"] for r in evals] == [9, 18]
    # a killed run resumed from its step-12 checkpoint: the lines of steps 13-18 go, the run writes them again
    resumed, _ = build(out)
    resumed.load_ckpt(str(out / "ckpt.step12"))
    resumed.train(print_steps=4)
    again = read_metrics(str(out))
    assert [r["step"] for r in again if "loss" in r] == [4, 8, 12, 16]
    assert [r["loss"] for r in again if "loss" in r] == [r["loss"] for r in logged]  # exact resume
    assert [r["step"] for r in again if "eval" in r] == [9, 18]
    # a fresh run in the same folder starts a new history
    fresh, _ = build(out)
    fresh.train(print_steps=8)
    assert [r["step"] for r in read_metrics(str(out)) if "loss" in r] == [8, 16]


# ---- TensorBoard scalars and the curve plot (the same records as metrics.jsonl) ----
def tensorboard_events(directory) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of the event files in `directory`, read back by TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(directory), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def scalars_of_jsonl(records: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """What TensorBoard should hold, from metrics.jsonl (float32, as event files store scalars)."""
    want: dict[str, list] = {}

    def add(tag, step, value):
        want.setdefault(tag, []).append((step, float(np.float32(value))))

    for r in records:
        if "eval" in r:
            for task, scores in r["eval"].items():
                for name, value in scores.items():
                    add(f"eval/{task}/{name}", r["step"], value)
            if "aggregate" in r and len(r["eval"]) > 1:  # one task: its own metric
                add("eval/aggregate", r["step"], r["aggregate"])
        else:
            add(f"loss/{r['task']}", r["step"], r["loss"])
            add("lr", r["step"], r["lr"])
            add(f"steps_per_second/{r['task']}", r["step"], r["steps_per_second"])
            for task, weight in r.get("task_weights", {}).items():  # multi-task balancing
                add(f"task_weight/{task}", r["step"], weight)
            for name, values in r.get("balance_stats", {}).items():  # and what it did (protected_moments)
                for task, value in values.items():
                    add(f"balance/{name}/{task}", r["step"], value)
    return want


def is_png(path) -> bool:
    import matplotlib.image

    with open(path, "rb") as f:
        magic = f.read(8)
    return magic == b"\x89PNG\r\n\x1a\n" and matplotlib.image.imread(str(path)).ndim == 3


def test_tensorboard_holds_what_metrics_jsonl_holds_also_after_a_resume(tmp_path, uncased_vocab, tiny_config):
    from torchpalm.metrics_log import read_metrics

    def build(out):  # 18 steps, checkpoints every 6, evaluations at 9 and 18
        trainer, _ = single_task_with_dev(tmp_path, uncased_vocab, tiny_config,
                                          palm.lr_sched.TriangularSchedualer(3, None))
        trainer.set_saver(str(out), 6, tensorboard=True)
        trainer.set_evaluation(every_steps=9, save_best=False)
        return trainer

    out = tmp_path / "run"
    build(out).train(print_steps=4)
    first = tensorboard_events(out / "tensorboard")
    assert first == scalars_of_jsonl(read_metrics(str(out)))
    assert set(first) == {"loss/c", "lr", "steps_per_second/c", "eval/c/accuracy"}
    assert [step for step, _ in first["loss/c"]] == [4, 8, 12, 16] and is_png(out / "metrics.png")
    # a killed run resumed from step 12: TensorBoard drops the later events, as metrics.jsonl its lines
    resumed = build(out)
    resumed.load_ckpt(str(out / "ckpt.step12"))
    resumed.train(print_steps=4)
    again = tensorboard_events(out / "tensorboard")
    assert again == scalars_of_jsonl(read_metrics(str(out)))
    assert [step for step, _ in again["steps_per_second/c"]] == [4, 8, 12, 16]
    assert again["steps_per_second/c"][3] != first["steps_per_second/c"][3]  # step 16 is the resumed run's


def test_multi_task_tensorboard_and_the_plotted_series(tmp_path, uncased_vocab, tiny_config, monkeypatch):
    from torchpalm import metrics_log
    from torchpalm.metrics_log import read_metrics

    drawn = []
    real_draw = metrics_log.draw_panels
    monkeypatch.setattr(metrics_log, "draw_panels", lambda panels, path: drawn.append(panels) or
                        real_draw(panels, path))
    s = Setup(tmp_path, uncased_vocab, tiny_config, balance="auto")  # its weights are logged too
    s.fit(epochs=1)
    dev_readers(s)
    out, tb = tmp_path / "out", tmp_path / "tb"
    s.mh.set_saver(str(out), 1000, tensorboard=str(tb))
    s.mh.set_evaluation(every_steps=7, save_best=False)
    s.mh.train(print_steps=3)
    records = read_metrics(str(out))
    events = tensorboard_events(tb)
    assert events == scalars_of_jsonl(records)
    assert {"loss/tag", "loss/cls", "eval/tag/f1", "eval/cls/accuracy", "eval/aggregate",
            "balance/projected_share/cls"} <= set(events)
    # the plot got every task's losses, the rate and each evaluation metric, at their global steps
    (panels,) = drawn
    losses = {task: ([r["step"] for r in records if r.get("task") == task],
                     [r["loss"] for r in records if r.get("task") == task]) for task in ("tag", "cls")}
    evals = [r for r in records if "eval" in r]
    assert panels["loss"] == losses and all(losses[t][0] for t in losses)
    assert panels["learning rate"]["lr"][1] == [r["lr"] for r in records if "loss" in r]
    assert panels["task weights (balancing)"]["cls"][1] == [r["task_weights"]["cls"] for r in records if "loss" in r]
    assert panels["tag (dev)"]["f1"] == ([r["step"] for r in evals], [r["eval"]["tag"]["f1"] for r in evals])
    assert panels["cls (dev)"]["accuracy"][1] == [r["eval"]["cls"]["accuracy"] for r in evals]
    assert panels["aggregate (dev)"]["aggregate"][1] == [r["aggregate"] for r in evals] and len(evals) >= 2
    assert is_png(out / "metrics.png")
    # and the command line redraws it from the finished run
    from torchpalm.cli import main

    assert main(["plot", str(out), "-o", str(tmp_path / "again.png")]) == 0 and is_png(tmp_path / "again.png")
    assert len(drawn) == 2 and drawn[1] == panels


def test_logging_extras_are_needed_only_when_asked_for(tmp_path, uncased_vocab, tiny_config, monkeypatch, capsys):
    import sys

    from torchpalm.cli import main

    for module in ("torch.utils.tensorboard", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, module, None)  # as if not installed
    with pytest.raises(ImportError, match="tensorboard package"):  # before build_backward too
        palm.Trainer("early").set_saver(str(tmp_path / "o"), 100, tensorboard=True)
    trainer, _ = single_task_with_dev(tmp_path, uncased_vocab, tiny_config)
    with pytest.raises(ImportError, match="tensorboard package.*torchpalm\\[logging\\]"):
        trainer.set_saver(str(tmp_path / "o"), 100, tensorboard=True)
    with pytest.raises(ImportError, match="needs matplotlib"):
        trainer.set_saver(str(tmp_path / "o"), 100, plot=True)
    trainer.set_saver(str(tmp_path / "o"), 100)  # not asked for: metrics.jsonl only, no error
    trainer.train(print_steps=6)
    assert os.listdir(tmp_path / "o") and not os.path.exists(tmp_path / "o" / "metrics.png")
    assert main(["plot", str(tmp_path / "o")]) == 2 and "needs matplotlib" in capsys.readouterr().err
    assert main(["plot", str(tmp_path / "nothing")]) == 2 and "no metrics file" in capsys.readouterr().err
