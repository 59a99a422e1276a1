"""Task balancing (`torchpalm.balancing`): each method's formula, its state in checkpoints, its place in the
training step and in the logs."""

import copy
import json
import math

import pytest
import torch
from test_multihead_trainer import Setup
from torch import nn

import torchpalm as palm
from torchpalm import balancing
from torchpalm.loop import MultiTaskModel, Task, TrainLoop
from torchpalm.metrics_log import curve_series, tensorboard_scalars


# ---- a toy model: a shared linear layer and one regression head per task, the task's loss scaled ----
class Shared(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 8)

    def forward(self, batch):
        return {"x": torch.tanh(self.linear(batch["x"]))}


class ScaledHead(nn.Module):
    """Mean squared error times `scale` (a task whose loss is `scale` times another's)."""

    def __init__(self, scale):
        super().__init__()
        self.out, self.scale = nn.Linear(8, 1), scale

    def forward(self, features, batch):
        return {"loss": self.scale * ((self.out(features["x"]).squeeze(-1) - batch["y"]) ** 2).mean()}

    def no_weight_decay(self):
        return []

    def param_lr_scales(self):
        return {}


def toy_loop(balancer, scales=(1.0, 10.0), loss_weights=(1.0, 1.0), ema_decay=None):
    torch.manual_seed(0)
    names = ["a", "b"]
    heads = {n: ScaledHead(s) for n, s in zip(names, scales)}
    tasks = {n: Task(n, heads[n], loss_weight=w) for n, w in zip(names, loss_weights)}
    loop = TrainLoop(MultiTaskModel(Shared(), heads), tasks, palm.optimizer.Adam(None, 1e-3), None,
                     ema_decay is not None, ema_decay, torch.device("cpu"), "fp32", None)
    loop.balancer = balancer
    return loop


def toy_batch(step):
    g = torch.Generator().manual_seed(step)
    x = torch.randn(16, 4, generator=g)
    return {"x": x, "y": x.sum(-1)}


def effective_norms(loop, steps):
    """The backbone gradient norm each step backpropagated, per task (what the balancer observed)."""
    seen = {"a": [], "b": []}
    observe = loop.balancer.observe

    def spy(task, loss, shared, applied):
        seen[task].append(float(shared))
        observe(task, loss, shared, applied)

    loop.balancer.observe = spy
    for step in range(steps):
        loop.train_step("ab"[step % 2], toy_batch(step))
    return seen


# ---- task_moments ----
def test_task_moments_step_is_each_task_alone_adam_step():
    """A step of task t moves every parameter as t's own Adam (its m, v and step count, fed only t's gradients)
    would: the reference is one plain torch AdamW per task over a copy of the model. A step of b leaves a's
    state as it was."""
    loop = toy_loop(balancing.TaskMoments(["a", "b"]))
    reference = toy_loop(None)
    reference.model.load_state_dict(loop.model.state_dict())
    own = {t: torch.optim.AdamW(reference.model.parameters(), lr=1e-3, weight_decay=0.0) for t in "ab"}
    for step, task in enumerate("aabbbabab"):
        batch = toy_batch(step)
        other = loop.balancer.states["b" if task == "a" else "a"]
        before = {p: {k: v.clone() for k, v in s.items()} for p, s in other.items()}
        loop.train_step(task, batch)
        reference.model.zero_grad(set_to_none=True)
        reference.model(task, batch)["loss"].backward()
        own[task].step()
        for mine, theirs in zip(loop.model.parameters(), reference.model.parameters()):
            assert torch.allclose(mine, theirs, rtol=1e-5, atol=1e-7)
        assert set(other) == set(before) and all(torch.equal(v, before[p][k]) for p, s in other.items()
                                                 for k, v in s.items())
    steps = {t: {int(s["step"]) for s in loop.balancer.states[t].values()} for t in "ab"}
    assert steps == {"a": {4}, "b": {5}}  # each task's own step count (bias correction as alone)
    # the head of a has no state in b's moments: b's steps never train it
    head_a = set(loop.model.heads["a"].parameters())
    assert not head_a & set(loop.balancer.states["b"]) and head_a <= set(loop.balancer.states["a"])


def backbone_updates(loop, steps):
    """The size of each step's update of the backbone, per task (tasks alternate a, b)."""
    sizes = {"a": [], "b": []}
    for step in range(steps):
        task = "ab"[step % 2]
        before = loop.model.backbone.linear.weight.detach().clone()
        loop.train_step(task, toy_batch(step))
        sizes[task].append(float((loop.model.backbone.linear.weight.detach() - before).norm()))
    return sizes


def test_task_moments_makes_the_loss_scale_irrelevant_and_loss_weight_scales_the_step():
    """Tasks whose losses differ 10x take the same backbone steps as when their losses are alike (Adam per task
    ignores the scale), where one shared Adam state shrinks the small-loss task's steps; loss_weight w scales
    the task's learning rate, so its first update is exactly w times as large."""
    equal = backbone_updates(toy_loop(balancing.TaskMoments(["a", "b"]), scales=(1.0, 1.0)), 40)
    scaled = backbone_updates(toy_loop(balancing.TaskMoments(["a", "b"]), scales=(1.0, 10.0)), 40)
    for task in "ab":
        assert scaled[task] == pytest.approx(equal[task], rel=1e-3)
    shared = backbone_updates(toy_loop(None, scales=(1.0, 10.0)), 40)
    assert sum(shared["a"][5:]) < 0.8 * sum(scaled["a"][5:])  # one shared state: a's steps follow b's moments
    weighted = backbone_updates(toy_loop(balancing.TaskMoments(["a", "b"]), scales=(1.0, 10.0),
                                         loss_weights=(1.0, 0.25)), 2)
    assert weighted["b"][0] == pytest.approx(0.25 * scaled["b"][0], rel=1e-4)
    assert weighted["a"][0] == pytest.approx(scaled["a"][0], rel=1e-6)


@pytest.mark.parametrize("method", ["task_moments", "protected_moments", "removal"])
def test_task_moments_resume_exactly_and_refuse_a_mismatched_optimizer(tmp_path, uncased_vocab, tiny_config,
                                                                        method):
    """Every task's moments are in optimizer.pt: a resumed run's losses are the straight run's, bit for bit
    (protected_moments without reflection too: the resumed trainer asks for 'auto', which reflects, and
    continues as the checkpoint was trained)."""
    def balance():
        return balancing.ProtectedMoments(["tag", "cls"], reflect=False) if method == "removal" else method

    straight = Setup(tmp_path, uncased_vocab, tiny_config, balance=balance())
    straight.fit()
    expected = straight.losses(12)
    first = Setup(tmp_path, uncased_vocab, tiny_config, balance=balance())
    first.fit()
    got = first.losses(5)
    path = first.mh.save(str(tmp_path / "tm"))
    saved = torch.load(tmp_path / "tm" / "optimizer.pt", weights_only=True)
    assert set(saved["task_states"]) == {"tag", "cls"} and saved["state"] == {}
    steps = {t: {int(s["step"]) for s in saved["task_states"][t].values()} for t in ("tag", "cls")}
    tasks = [task_id for task_id, _ in got]
    assert steps["tag"] >= {tasks.count(0)} and steps["cls"] >= {tasks.count(1)}
    resumed = Setup(tmp_path, uncased_vocab, tiny_config, seed=3, balance="auto")  # auto: the checkpoint's method
    resumed.fit()
    resumed.mh.load_ckpt(path)
    name = "protected_moments" if method == "removal" else method
    assert resumed.mh.balancer.name == name
    assert got + resumed.losses(7) == expected
    assert resumed.mh.balancer.stats() == straight.mh.balancer.stats()  # projected shares resume too
    with pytest.raises(ValueError, match=f"trained with balance='{name}'"):
        Setup(tmp_path, uncased_vocab, tiny_config, balance="grad_scale").mh.load_ckpt(path)


# ---- grad_scale ----
def test_grad_scale_gives_tasks_whose_losses_differ_10x_equal_backbone_gradients():
    """After warm-up each task's backpropagated backbone gradient is the running mean over tasks, though b's
    loss (and gradient) is 10x a's; loss_weight stays a factor on top."""
    loop = toy_loop(balancing.GradScale(["a", "b"], beta=0.9))
    seen = effective_norms(loop, 200)
    ratio = sum(seen["b"][-20:]) / sum(seen["a"][-20:])
    assert ratio == pytest.approx(1.0, abs=0.15)
    # unbalanced the same toy has b's backbone gradient about 10x a's
    plain = toy_loop(balancing.GradScale(["a", "b"], beta=0.9))
    plain_seen = effective_norms(plain, 2)  # the first step of each task has factor 1: the raw norms
    assert plain_seen["b"][0] / plain_seen["a"][0] > 5
    # loss_weight 2 on b: b's backpropagated gradient is twice a's, the balancer's estimate of b unchanged
    weighted = toy_loop(balancing.GradScale(["a", "b"], beta=0.9), loss_weights=(1.0, 2.0))
    seen = effective_norms(weighted, 200)
    assert sum(seen["b"][-20:]) / sum(seen["a"][-20:]) == pytest.approx(2.0, rel=0.15)


def test_grad_scale_formula_with_bias_correction():
    """factor_t = mean_s(G_s) / G_t with G_t the bias-corrected running mean of the raw norms (the observed norm
    divided by the factor applied); a task not seen yet has factor 1."""
    b = balancing.GradScale(["a", "b", "c"], beta=0.5)
    assert float(b.factor("a")) == 1.0
    one = torch.tensor(1.0)
    b.observe("a", one, torch.tensor(2.0), one)          # G_a = 2 (one observation: exactly the value)
    for value in (8.0, 8.0, 8.0):
        b.observe("b", one, torch.tensor(value * 0.5), torch.tensor(0.5))  # backpropagated at 0.5: raw 8
    assert float(b.factor("c")) == 1.0
    assert float(b.factor("a")) == pytest.approx((2 + 8) / 2 / 2)
    assert float(b.factor("b")) == pytest.approx((2 + 8) / 2 / 8)
    b.observe("a", one, torch.tensor(float("nan")), one)  # a skipped step moves nothing
    assert float(b.factor("a")) == pytest.approx((2 + 8) / 2 / 2)


# ---- loss_scale ----
def test_loss_scale_divides_each_loss_by_its_running_scale():
    b = balancing.LossScale(["a", "b"], beta=0.9)
    one = torch.tensor(1.0)
    b.observe("a", torch.tensor(1.0), None, one)
    for _ in range(5):
        b.observe("b", torch.tensor(10.0), None, one)
    # bias-corrected: the estimates are the losses themselves however few steps each task had
    assert float(b.factor("a")) * 1.0 == pytest.approx(float(b.factor("b")) * 10.0)
    assert float(b.factor("a")) == pytest.approx(5.5)


def test_loss_scale_in_the_loop_equalises_the_backpropagated_losses():
    loop = toy_loop(balancing.LossScale(["a", "b"], beta=0.9))
    contributions = {"a": [], "b": []}
    for step in range(200):
        task = "ab"[step % 2]
        factor = float(loop.balancer.factor(task))
        contributions[task].append(factor * float(loop.train_step(task, toy_batch(step))))
    assert sum(contributions["b"][-20:]) / sum(contributions["a"][-20:]) == pytest.approx(1.0, abs=0.2)


# ---- uncertainty ----
def test_uncertainty_weights_move_to_the_inverse_loss_scales():
    """Kendall et al.: minimising exp(-s) L + s gives exp(-s) = 1 / L; the first Adam step is lr against the
    gradient's sign."""
    b = balancing.Uncertainty(["a", "b"], lr=0.05)
    one = torch.tensor(1.0)
    b.observe("b", torch.tensor(10.0), None, one)  # gradient 1 - 10 < 0: s_b goes up by lr
    assert float(b.log_var[1]) == pytest.approx(0.05, rel=1e-4) and float(b.log_var[0]) == 0.0
    for _ in range(1500):
        b.observe("a", torch.tensor(0.5), None, one)
        b.observe("b", torch.tensor(10.0), None, one)
    assert float(b.factor("a")) == pytest.approx(2.0, rel=0.05)
    assert float(b.factor("b")) == pytest.approx(0.1, rel=0.05)
    assert float(b.log_var[1]) == pytest.approx(math.log(10.0), abs=0.05)


# ---- checkpoints, resume, choice, logs ----
def test_state_round_trips_exactly_through_json():
    for b in (balancing.GradScale(["a", "b"]), balancing.Uncertainty(["a", "b"], lr=0.1)):
        for i in range(7):
            b.observe("ab"[i % 2], torch.tensor(1.0 + i / 3), torch.tensor(0.3 + i / 7), torch.tensor(1.0))
        copy = type(b)(["a", "b"])
        copy.load_state_dict(json.loads(json.dumps(b.state_dict())))
        assert copy.state_dict() == b.state_dict() and torch.equal(copy.counts, b.counts)
        with pytest.raises(ValueError, match="trained with balance"):
            balancing.LossScale(["a", "b"]).load_state_dict(b.state_dict())


def test_make_balancer_names():
    assert isinstance(balancing.make_balancer("auto", ["a", "b"], joint=False), balancing.ProtectedMoments)
    assert isinstance(balancing.make_balancer("auto", ["a", "b"], joint=True), balancing.LossScale)
    assert balancing.make_balancer("protected_moments", ["a", "b"], joint=False).protect
    assert not balancing.make_balancer("task_moments", ["a", "b"], joint=False).protect
    assert balancing.make_balancer(None, ["a", "b"], joint=False) is None
    with pytest.raises(ValueError, match="balance must be"):
        balancing.make_balancer("gradnorm", ["a"], joint=False)
    with pytest.raises(ValueError, match="balance must be"):
        palm.MultiHeadTrainer([palm.Trainer("a"), palm.Trainer("b")], balance="sum")


def test_grad_scale_logs_the_weights_and_resumes_them(tmp_path, uncased_vocab, tiny_config):
    s = Setup(tmp_path, uncased_vocab, tiny_config, balance="grad_scale")
    s.fit()
    s.mh.set_saver(str(tmp_path / "out"), 100)
    s.mh.train(print_steps=2)
    weights = s.mh.task_weights
    assert set(weights) == {"tag", "cls"} and weights["cls"] > weights["tag"]  # the CRF's gradient is larger
    records = [json.loads(line) for line in open(tmp_path / "out" / "metrics.jsonl")]
    assert all(set(r["task_weights"]) == {"tag", "cls"} for r in records if "loss" in r)
    assert ("task_weight/cls", records[-1]["task_weights"]["cls"]) in tensorboard_scalars(records[-1])
    assert set(curve_series(records)["task weights (balancing)"]) == {"tag", "cls"}
    state = json.load(open(next((tmp_path / "out").glob("ckpt.step*")) / "trainer_state.json"))["balance"]
    assert state["method"] == "grad_scale" and sum(state["counts"]) == s.mh.cur_train_step


def test_protected_moments_logs_the_share_of_projected_steps(tmp_path, uncased_vocab, tiny_config):
    """What the default balancing did is in metrics.jsonl, TensorBoard's scalars and the curves."""
    s = Setup(tmp_path, uncased_vocab, tiny_config)  # the default: balance='auto', protected_moments
    s.fit()
    s.mh.set_saver(str(tmp_path / "out"), 100)
    s.mh.train(print_steps=2)
    assert s.mh.balancer.name == "protected_moments"
    records = [json.loads(line) for line in open(tmp_path / "out" / "metrics.jsonl")]
    logged = [r["balance_stats"]["projected_share"] for r in records if "loss" in r]
    assert logged and all(set(x) == {"tag", "cls"} and all(0 <= v <= 1 for v in x.values()) for x in logged)
    assert any(v > 0 for v in logged[-1].values())  # some updates conflicted and were projected
    assert ("balance/projected_share/cls", logged[-1]["cls"]) in tensorboard_scalars(records[-1])
    assert set(curve_series(records)["projected share (balancing)"]) == {"tag", "cls"}


def test_plain_sum_and_checkpoints_without_balancing(tmp_path, uncased_vocab, tiny_config):
    """balance=None is PALM's plain sum (no factor); a checkpoint written without balancing, as by earlier
    versions, resumes with the plain sum even under balance='auto', and its losses are those of balance=None."""
    plain = Setup(tmp_path, uncased_vocab, tiny_config, balance=None)
    plain.fit()
    assert plain.mh.task_weights is None
    expected = plain.losses(10)

    first = Setup(tmp_path, uncased_vocab, tiny_config, balance=None)
    first.fit()
    first.losses(4)
    path = first.mh.save(str(tmp_path / "old"))
    state_file = tmp_path / "old" / "trainer_state.json"
    state = json.load(open(state_file))
    del state["balance"]  # what an earlier torchpalm wrote
    json.dump(state, open(state_file, "w"))
    marker = json.load(open(tmp_path / "old" / "complete.json"))  # keep the completeness marker truthful
    marker["files"] = [[n, state_file.stat().st_size if n == state_file.name else size]
                       for n, size in dict(marker["files"]).items()]
    json.dump(marker, open(tmp_path / "old" / "complete.json", "w"))
    resumed = Setup(tmp_path, uncased_vocab, tiny_config, seed=5, balance="auto")
    resumed.fit()
    resumed.mh.load_ckpt(path)
    assert resumed.mh.task_weights is None
    assert resumed.losses(6) == expected[4:]
    # a balanced checkpoint under an explicit balance=None is an error, not a silent switch
    balanced = Setup(tmp_path, uncased_vocab, tiny_config, balance="auto")
    balanced.fit()
    balanced.losses(3)
    path = balanced.mh.save(str(tmp_path / "new"))
    explicit = Setup(tmp_path, uncased_vocab, tiny_config, balance=None)
    with pytest.raises(ValueError, match="trained with balance='protected_moments'"):
        explicit.mh.load_ckpt(path)


def test_balanced_run_differs_from_the_plain_sum(tmp_path, uncased_vocab, tiny_config):
    """balance="auto" really changes the steps (the factor reaches the backward), and 'uncertainty' resumes exactly."""
    plain = Setup(tmp_path, uncased_vocab, tiny_config, balance=None)
    plain.fit()
    auto = Setup(tmp_path, uncased_vocab, tiny_config, balance="auto")
    auto.fit()
    assert plain.losses(8) != auto.losses(8)
    straight = Setup(tmp_path, uncased_vocab, tiny_config, balance="uncertainty")
    straight.fit()
    expected = straight.losses(12)
    first = Setup(tmp_path, uncased_vocab, tiny_config, balance="uncertainty")
    first.fit()
    got = first.losses(5)
    path = first.mh.save(str(tmp_path / "u"))
    resumed = Setup(tmp_path, uncased_vocab, tiny_config, seed=3, balance="uncertainty")
    resumed.fit()
    resumed.mh.load_ckpt(path)
    assert got + resumed.losses(7) == expected


# ---- pcgrad and the joint step (sampling="all") ----
def test_pcgrad_removes_the_conflicting_component():
    """Yu et al.'s projection on whole gradient vectors (a parameter a task gives no gradient counts as zeros)."""
    b = balancing.PCGrad(["a", "b"])
    g_a, g_b = [torch.tensor([1.0, 1.0]), None], [torch.tensor([-1.0, 0.0]), torch.tensor([2.0])]
    shared, second = b.combine({"a": g_a, "b": g_b})
    va, vb = torch.tensor([1.0, 1.0, 0.0]), torch.tensor([-1.0, 0.0, 2.0])  # the same, flattened
    assert float(va @ vb) < 0
    pa = va - (va @ vb) / (vb @ vb) * vb  # a without its component along b
    pb = vb - (vb @ va) / (va @ va) * va
    assert float(pa @ vb) == pytest.approx(0.0, abs=1e-6) and float(pb @ va) == pytest.approx(0.0, abs=1e-6)
    assert torch.allclose(torch.cat([shared, second]), pa + pb)
    # gradients that agree (positive dot product) are summed as they are
    agree, none = b.combine({"a": [torch.tensor([1.0, 1.0]), None], "b": [torch.tensor([1.0, 0.0]), None]})
    assert torch.equal(agree, torch.tensor([2.0, 1.0])) and none is None


def test_joint_step_trains_every_task_and_resumes_exactly(tmp_path, uncased_vocab, tiny_config):
    for balance in ("pcgrad", None):
        s = Setup(tmp_path, uncased_vocab, tiny_config, sampling="all", balance=balance)
        s.fit(epochs=2)
        assert s.mh.overall_train_steps == 2 * (40 // 4)  # every task at every step, 2 epochs of 'tag'
        before = [p.detach().clone() for p in s.backbone.parameters()]
        s.mh.train(print_steps=0)
        moved = [not torch.equal(a, p) for a, p in zip(before, s.backbone.parameters())]
        assert sum(moved) > len(moved) // 2  # the combined gradient reached the backbone's update
        assert s.t_tag.cur_train_step == s.t_cls.cur_train_step == s.mh.cur_train_step == 20
    straight = Setup(tmp_path, uncased_vocab, tiny_config, sampling="all", balance="pcgrad")
    straight.fit()
    expected = straight.losses(8)
    first = Setup(tmp_path, uncased_vocab, tiny_config, sampling="all", balance="pcgrad")
    first.fit()
    got = first.losses(3)
    path = first.mh.save(str(tmp_path / "joint"))
    resumed = Setup(tmp_path, uncased_vocab, tiny_config, seed=4, sampling="all", balance="pcgrad")
    resumed.fit()
    resumed.mh.load_ckpt(path)
    assert got + resumed.losses(5) == expected
    with pytest.raises(ValueError, match=r"sampling='all'.*in a config, multi_task: \{sampling: all\}"):
        Setup(tmp_path, uncased_vocab, tiny_config, balance="pcgrad")  # the API's and the config's words
    with pytest.raises(ValueError, match="one task's gradient per step"):
        Setup(tmp_path, uncased_vocab, tiny_config, sampling="all", balance="grad_scale")
    with pytest.raises(ValueError, match="optimizer state per task"):
        Setup(tmp_path, uncased_vocab, tiny_config, sampling="all", balance="task_moments")


def test_joint_step_with_the_plain_sum_adds_the_tasks_gradients():
    """sampling='all', balance=None: the step's backbone gradient is the sum of the tasks' own gradients."""
    loop = toy_loop(None)
    batches = {"a": toy_batch(0), "b": toy_batch(1)}
    alone = {}
    for task in ("a", "b"):
        loop.model.zero_grad(set_to_none=True)
        loop.model(task, batches[task])["loss"].backward()
        alone[task] = loop.model.backbone.linear.weight.grad.clone()
    loop.model.zero_grad(set_to_none=True)
    total = balancing.joint_backward(batches, lambda t, b: loop.model(t, b)["loss"], lambda t: 1.0,
                                     list(loop.model.backbone.parameters()), None)
    assert torch.allclose(loop.model.backbone.linear.weight.grad, alone["a"] + alone["b"])
    assert total.requires_grad is False


def test_task_moments_auxiliary_task_steps_with_the_main_tasks_state():
    """An auxiliary task's steps feed the main task's moments: with one main task the run is PALM's one shared
    Adam state, bit for bit (the plain sum)."""
    per_task = toy_loop(balancing.TaskMoments(["a", "b"]))
    plain = toy_loop(None)
    for loop in (per_task, plain):
        loop.tasks["b"].is_aux = True
        for step, task in enumerate("abbabaab"):
            loop.train_step(task, toy_batch(step))
    for mine, theirs in zip(per_task.model.parameters(), plain.model.parameters()):
        assert torch.equal(mine, theirs)
    assert not per_task.balancer.states["b"]  # b never had a state of its own


def conflicting_batch(step, task):
    """b fits another function of x than a: their gradients on the backbone conflict."""
    x = toy_batch(step)["x"]
    return {"x": x, "y": x.sum(-1) if task == "a" else torch.sin(3 * x[:, 0]) - x[:, 1] * x[:, 2]}


def test_protected_moments_ema_follows_the_projected_weights():
    """The EMA moves towards the weights as the step leaves them, projection included (decay 0: it equals them)."""
    loop = toy_loop(balancing.ProtectedMoments(["a", "b"]), ema_decay=0.0)
    for step, task in enumerate("ababbaab"):
        loop.train_step(task, conflicting_batch(step, task))
    assert loop.balancer.stats()["projected_share"]["a"] > 0  # some updates were projected
    live = loop.state()
    assert all(torch.equal(loop.ema[k], live[k]) for k in loop.ema)


def test_protected_moments_checkpoint_says_whether_it_reflects():
    """The saved state carries `reflect`; a state without it (written before reflection existed) resumes
    removing the conflict, as it was trained."""
    saved = balancing.ProtectedMoments(["a", "b"]).state_dict()
    assert saved["reflect"] is True
    for stored, expected in ((True, True), (False, False), (None, False)):
        state = dict(saved, reflect=stored) if stored is not None else {k: v for k, v in saved.items()
                                                                      if k != "reflect"}
        balancer = balancing.ProtectedMoments(["a", "b"], reflect=not expected)
        balancer.load_state_dict(state)
        assert balancer.reflect is expected
    assert "reflect" not in balancing.TaskMoments(["a", "b"]).state_dict()


@pytest.mark.parametrize("m_a, u, expected", [
    # cos(m_a, m_b)^2 = 1/2: c = <u, m_b> / (|m_b|^2 (1 - 1/2)) = 2, k = c <m_b, m_a> / |m_a|^2 = -1; the result
    # has <., m_b> = 0 and <., m_a> = <u, m_a> = -3
    ([-1.0, 1.0, 0.0], [1.0, -2.0, 0.5], [1.0 - 2.0 + 1.0, -2.0 - 1.0, 0.5]),
    # the tasks nearly opposite (cos^2 > 0.99): the divisor is floored at 1% of |m_b|^2, c = 1 / 0.01
    ([-1.0, 0.001, 0.0], [1.0, 0.0, 0.0], [1.0 - 100.0 + 100.0 * 1.0 / (1.0 + 1e-6), 100.0 * -0.001 / (1.0 + 1e-6),
                                            0.0]),
    # no conflict (<u, m_b> < 0): the update stays
    ([-1.0, 1.0, 0.0], [-1.0, 3.0, 2.0], [-1.0, 3.0, 2.0]),
])
@pytest.mark.parametrize("reflect", [True, False])
def test_protected_moments_correction_formula(m_a, u, expected, reflect):
    """a's update u against b's first moment m_b = e_1: u - c (m_b - <m_b, m_a> / |m_a|^2 m_a), c = <u, m_b> /
    max(<m_b, m_b> - <m_b, m_a>^2 / |m_a|^2, 0.01 |m_b|^2) where <u, m_b> > 0; reflected (the default): twice
    that correction."""
    if reflect:
        expected = [x + 2.0 * (e - x) for x, e in zip(u, expected)]
    balancer = balancing.ProtectedMoments(["a", "b"], reflect=reflect)
    w = nn.Parameter(torch.tensor([0.5, -0.25, 2.0], dtype=torch.float32))
    balancer.states["a"][w] = {"exp_avg": torch.tensor(m_a, dtype=torch.float32)}
    balancer.states["b"][w] = {"exp_avg": torch.tensor([1.0, 0.0, 0.0], dtype=torch.float32)}
    optimizer = type("Optimizer", (), {"state": None})()
    balancer.use("a", optimizer)
    assert optimizer.state is balancer.states["a"]
    start = w.detach().clone()
    balancer.before_step([w])
    with torch.no_grad():
        w += torch.tensor(u, dtype=torch.float32)  # the optimizer's step
    balancer.after_step([w])
    assert torch.allclose(w.detach() - start, torch.tensor(expected, dtype=torch.float32), rtol=1e-5, atol=1e-5)
    assert balancer.projected.tolist() == [float(u != expected), 0.0]  # a's step counted as projected or not


def test_protected_moments_corrects_every_backbone_parameter_but_the_token_table(tmp_path, uncased_vocab,
                                                                                 tiny_config):
    """The correction reads and moves every trainable backbone parameter except the token-embedding table (the
    largest nn.Embedding; position and type embeddings stay in), and the multi-task loop passes exactly those."""
    backbone = palm.backbone.BERT.from_config(tiny_config)
    corrected = balancing.corrected_params(backbone)
    table = backbone.word_embeddings.weight
    assert all(p is not table for p in corrected)
    assert [id(p) for p in corrected] == [id(p) for p in backbone.parameters() if p is not table]
    assert any(p is backbone.position_embeddings.weight for p in corrected)
    s = Setup(tmp_path, uncased_vocab, tiny_config)  # the default: protected_moments
    s.fit()
    loop = s.mh._loop
    passed = []
    for hook in ("before_step", "after_step"):
        original = getattr(loop.balancer, hook)
        setattr(loop.balancer, hook, lambda params, original=original: (passed.append(list(params)), original(params)))
    s.losses(2)
    table = loop.model.backbone.word_embeddings.weight
    expected = [id(p) for p in loop._shared_params if p is not table]
    assert len(passed) == 4 and all([id(p) for p in params] == expected for params in passed)


def test_protected_moments_leaves_everything_as_it_was_on_a_nonfinite_step():
    """A step whose loss is NaN changes no weight, no task's moments and no count (the fused optimizer skips it on
    the device; the correction then finds no update to correct)."""
    loop = toy_loop(balancing.ProtectedMoments(["a", "b"]))
    for step, task in enumerate("ababba"):
        loop.train_step(task, conflicting_batch(step, task))
    weights = {k: v.clone() for k, v in loop.model.state_dict().items()}
    states = {t: {p: {k: v.clone() for k, v in s.items()} for p, s in loop.balancer.states[t].items()} for t in "ab"}
    counts = (loop.balancer.counts.clone(), loop.balancer.projected.clone())
    poisoned = conflicting_batch(6, "a")
    poisoned["y"] = poisoned["y"] * float("nan")
    loop.train_step("a", poisoned)
    assert all(torch.equal(v, weights[k]) for k, v in loop.model.state_dict().items())
    for t in "ab":
        assert all(torch.equal(v, states[t][p][k]) for p, s in loop.balancer.states[t].items() for k, v in s.items())
    assert torch.equal(loop.balancer.counts, counts[0]) and torch.equal(loop.balancer.projected, counts[1])


def dot(a, b):
    """<a, b> of two lists of tensors, in float64."""
    return sum(float((x.double() * y.double()).sum()) for x, y in zip(a, b))


def mirror(loop, free):
    """Puts `loop`'s weights and every task's optimizer state (copies) into `free`, a loop of the same model: its
    next step is the update `loop`'s next step makes before any correction."""
    free.model.load_state_dict(loop.model.state_dict())
    for t, states in loop.balancer.states.items():
        free.balancer.states[t] = balancing.defaultdict(dict, {
            q: {k: v.clone() for k, v in states[p].items()}
            for p, q in zip(loop.model.parameters(), free.model.parameters()) if p in states})


@pytest.mark.parametrize("reflect", [False, True])
def test_task_moments_protect_corrects_the_conflicting_part_of_the_update(reflect):
    """With protect, a step of a moves the backbone by its Adam update u corrected where <u, m_b> > 0 (b's first
    moment): by the smallest change in span{m_b, m_a} that leaves <update, m_b> = 0 (reflect: -<u, m_b>) and
    <update, m_a> = <u, m_a> (a's own first moment, its progress to first order); by u itself otherwise."""
    loop = toy_loop(balancing.TaskMoments(["a", "b"], protect=True, reflect=reflect))
    free = toy_loop(balancing.TaskMoments(["a", "b"]))
    shared = list(loop.model.backbone.parameters())
    conflicts, per_task, steps = 0, {"a": 0, "b": 0}, {"a": 0, "b": 0}
    for step, task in enumerate("ababbaabab" * 3):
        mirror(loop, free)
        before = [p.detach().clone() for p in shared]
        loop.train_step(task, conflicting_batch(step, task))
        free.train_step(task, conflicting_batch(step, task))
        steps[task] += 1
        other = loop.balancer.states["b" if task == "a" else "a"]
        m = [other[p]["exp_avg"] for p in shared] if all(p in other for p in shared) else None
        mt = [loop.balancer.states[task][p]["exp_avg"] for p in shared]
        u = [q.detach() - b for q, b in zip(free.model.backbone.parameters(), before)]
        got = [p.detach() - b for p, b in zip(shared, before)]
        if m is None:  # the other task has no moments yet: nothing to protect
            assert all(torch.allclose(g, x, atol=1e-7) for g, x in zip(got, u))
            continue
        # solve for the correction alpha m_b + beta m_a: <u + corr, m_b> = 0 (reflect: -<u, m_b>) and <corr, m_a>
        # = 0 (a 2x2 system)
        along = dot(u, m)
        target = -along if reflect else 0.0
        if along > 0:
            gram = torch.tensor([[dot(m, m), dot(mt, m)], [dot(m, mt), dot(mt, mt)]], dtype=torch.float64)
            alpha, beta = torch.linalg.solve(gram, torch.tensor([target - along, 0.0], dtype=torch.float64)).tolist()
        else:
            alpha = beta = 0.0
        expected = [x + alpha * y + beta * z for x, y, z in zip(u, m, mt)]
        assert all(torch.allclose(g, e, atol=1e-6) for g, e in zip(got, expected))
        mm = dot(m, m)
        if along > 0:  # b's first-order change: none (reflect: the conflict turned into as large a gain)
            assert abs(dot(got, m) - target) <= 1e-6 * mm ** 0.5
        assert dot(got, mt) == pytest.approx(dot(u, mt), rel=1e-4, abs=1e-9)  # a's own progress kept
        conflicts += along > 0
        per_task[task] += along > 0
    assert conflicts >= 3  # the case was exercised
    # the log's statistic: the share of each task's steps whose update was projected
    assert loop.balancer.stats() == {"projected_share": {t: pytest.approx(per_task[t] / steps[t]) for t in "ab"}}
    assert free.balancer.stats() == {}


def three_task_loop(balancer):
    torch.manual_seed(0)
    heads = {n: ScaledHead(1.0) for n in "abc"}
    tasks = {n: Task(n, heads[n]) for n in "abc"}
    loop = TrainLoop(MultiTaskModel(Shared(), heads), tasks, palm.optimizer.Adam(None, 1e-3), None, False, None,
                     torch.device("cpu"), "fp32", None)
    loop.balancer = balancer
    return loop


def three_task_batch(step, task):
    """a, b and c fit three different functions of x: their gradients on the backbone conflict in turns."""
    if task != "c":
        return conflicting_batch(step, task)
    x = toy_batch(step)["x"]
    return {"x": x, "y": torch.cos(2 * x[:, 3]) - x[:, 0]}


@pytest.mark.parametrize("reflect", [False, True])
def test_protected_moments_with_three_tasks_in_the_loop(reflect):
    """With three main tasks a step of t is corrected by the smallest change in span{m_o for both others, m_t}
    after which every conflicting <update, m_o> is 0 (reflect: -<u, m_o>), every other <update, m_o> is <u, m_o>
    and <update, m_t> is <u, m_t>: one correction cannot undo another, as PCGrad's one at a time can."""
    names = "abc"
    loop = three_task_loop(balancing.ProtectedMoments(list(names), reflect=reflect))
    free = three_task_loop(balancing.TaskMoments(list(names)))
    shared = list(loop.model.backbone.parameters())
    corrected = 0
    for step, task in enumerate("abcacbbcaabcca" * 2):
        mirror(loop, free)
        before = [p.detach().clone() for p in shared]
        loop.train_step(task, three_task_batch(step, task))
        free.train_step(task, three_task_batch(step, task))
        others = [loop.balancer.states[o] for o in names if o != task]
        moments = [[o[p]["exp_avg"] for p in shared] for o in others if all(p in o for p in shared)]
        mt = [loop.balancer.states[task][p]["exp_avg"] for p in shared]
        u = [q.detach() - b for q, b in zip(free.model.backbone.parameters(), before)]
        got = [p.detach() - b for p, b in zip(shared, before)]
        alongs = [dot(u, m) for m in moments]
        if len(moments) < 2 or not any(a > 0 for a in alongs):
            continue  # the two-task case and no conflict are checked above
        # the change to <., m_o> each condition asks for, and none to <., m_t>: a Gram system in float64
        changes = [(-2.0 * a if reflect else -a) if a > 0 else 0.0 for a in alongs] + [0.0]
        basis = moments + [mt]
        gram = torch.tensor([[dot(x, y) for y in basis] for x in basis], dtype=torch.float64)
        coef = torch.linalg.solve(gram, torch.tensor(changes, dtype=torch.float64)).tolist()
        expected = [x + sum(c * v[i] for c, v in zip(coef, basis)) for i, x in enumerate(u)]
        assert all(torch.allclose(g, e, atol=1e-6) for g, e in zip(got, expected))
        for m, a, change in zip(moments, alongs, changes):
            assert dot(got, m) == pytest.approx(a + change, abs=1e-6 * dot(m, m) ** 0.5)
        assert dot(got, mt) == pytest.approx(dot(u, mt), rel=1e-4, abs=1e-9)
        corrected += 1
    assert corrected >= 5  # steps that conflicted with one other task and not the other were exercised


@pytest.mark.parametrize("reflect", [False, True])
def test_protected_moments_correction_against_two_conflicting_tasks(reflect):
    """a's update u = (1, 1, 0, 1) conflicts with b's moment m_b = e_1 and with c's m_c; a's own moment is m_a =
    (0, 0, 1, 1). Asked together, <u', m_b> = <u', m_c> = 0 (reflect: -<u, m_b>, -<u, m_c>) and <u', m_a> =
    <u, m_a> = 1 give u' = (0, 0, 0, 1) (reflect: (-1, -1, 0, 1)), for m_c = e_2 and for m_c = (e_1 + e_2) / sqrt(2)
    alike. One at a time, the tilted m_c would undo part of b's correction (removal: <u', m_b> = -1/2) or find
    nothing left to reflect (reflect: <u', m_c> = 0)."""
    balancer = balancing.ProtectedMoments(["a", "b", "c"], reflect=reflect)
    w = nn.Parameter(torch.zeros(4, dtype=torch.float32))
    balancer.states["a"][w] = {"exp_avg": torch.tensor([0.0, 0.0, 1.0, 1.0])}
    balancer.states["b"][w] = {"exp_avg": torch.tensor([1.0, 0.0, 0.0, 0.0])}
    optimizer = type("Optimizer", (), {"state": None})()
    expected = [0.0, 0.0, 0.0, 1.0]
    for m_c in ([0.0, 1.0, 0.0, 0.0], [0.5 ** 0.5, 0.5 ** 0.5, 0.0, 0.0]):
        balancer.states["c"][w] = {"exp_avg": torch.tensor(m_c)}
        u = torch.tensor([1.0, 1.0, 0.0, 1.0])
        with torch.no_grad():
            w.zero_()
        balancer.use("a", optimizer)
        balancer.before_step([w])
        with torch.no_grad():
            w += u
        balancer.after_step([w])
        got = w.detach().clone()
        for name in "bc":  # every conflict removed (reflect: turned around) at once
            m = balancer.states[name][w]["exp_avg"]
            assert float(got @ m) == pytest.approx(-float(u @ m) if reflect else 0.0, abs=1e-6)
        assert float(got @ balancer.states["a"][w]["exp_avg"]) == pytest.approx(1.0, abs=1e-6)  # a's progress
        assert torch.allclose(got, torch.tensor(expected) - (torch.tensor([1.0, 1.0, 0.0, 0.0]) if reflect else 0.0),
                              atol=1e-6)


def test_protected_moments_forgets_kept_norms_when_the_states_are_loaded():
    """A loop that has trained, then loads other tasks' states (a checkpoint), corrects its next step as a loop
    that only loaded them does: no squared norm kept from the moments it had before."""
    trained = toy_loop(balancing.ProtectedMoments(["a", "b"]))
    for step, task in enumerate("ababab"):
        trained.train_step(task, conflicting_batch(step, task))
    checkpoint = ({k: v.clone() for k, v in trained.model.state_dict().items()},
                  trained.balancer.optimizer_state_dict(trained.torch_optimizer))
    loops = []
    for warm_steps in ("abbab", ""):
        loop = toy_loop(balancing.ProtectedMoments(["a", "b"]))
        for step, task in enumerate(warm_steps):  # moments of its own, and norms kept of them
            loop.train_step(task, conflicting_batch(100 + step, task))
        loop.model.load_state_dict(checkpoint[0])
        # a copy, as a file gives: the loaded state would otherwise hold the checkpoint's own tensors
        loop.balancer.load_optimizer_state_dict(loop.torch_optimizer, copy.deepcopy(checkpoint[1]))
        loop.train_step("a", conflicting_batch(6, "a"))
        loops.append(loop)
    assert loops[0].balancer.stats()["projected_share"]["a"] > 0
    assert all(torch.equal(x, y) for x, y in zip(loops[0].model.parameters(), loops[1].model.parameters()))
