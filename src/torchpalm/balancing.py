"""Task balancing for multi-task training: how much each task's loss counts on the shared backbone.

PaddlePALM backpropagates each task's loss as it is (a plain sum over the run). A CRF tagger's loss sums over a
sentence's words, about ten times a classifier's cross-entropy, and all tasks share one Adam state: on the shared
layers Adam's second-moment estimate follows the tagger, and the classifier's steps shrink to a fraction of their
single-task size. A balancer gives every task's loss a factor (on top of `Trainer(loss_weight=)`) so that the
tasks count alike. `MultiHeadTrainer(balance=...)` picks one:

    protected_moments  ('auto' with one task per step, the default) `task_moments`, and each step's update u of
                 the backbone is corrected where it works against another main task o: <u, m_o> > 0 raises o's
                 loss to first order (o's first moment m_o standing for its gradient). The conflicting part is
                 reflected: the step lowers o's loss, to first order, by as much as it would have raised it, and
                 keeps <u, m_t>, the stepping task's own first-order progress (`TaskMoments.after_step`). It is
                 PCGrad's surgery (Yu et al. 2020) on the update of one task per step, with the other task's
                 momentum in place of a gradient it does not compute, t's own direction held (a plain projection
                 along m_o also takes from t's progress where the tasks' gradients point apart, which is where
                 they conflict), and the conflict reflected rather than removed: where nearly every step
                 conflicts, removing it leaves every step neutral for the other tasks and the tasks stop helping
                 each other; reflecting makes a conflicting step pay back what it would have cost (`reflect`;
                 measured in examples/multi_task/README.md). No extra backward; about 13 passes per step, with
                 two main tasks, over the backbone's parameters but its token-embedding table
                 (`corrected_params`).
    task_moments every task its own optimizer state (Adam's moments and step count) on the parameters it trains:
                 a step of task t moves the backbone and t's head as t's single-task Adam would, whatever the
                 other tasks did before; no factor on the loss (Adam ignores its scale), `loss_weight` scales
                 the task's learning rate instead (`TaskMoments`). The moments are in the checkpoint's
                 optimizer.pt. An auxiliary task (`set_as_aux`) steps with the first main task's state: its
                 gradients feed the main task's moments as in PALM's one shared state (with one main task the
                 run is PALM's plain sum, bit for bit).
    grad_scale   each task's gradient on the shared backbone scaled to the
                 running mean over tasks: factor_t = mean_s(G_s) / G_t, G_t a bias-corrected running mean of
                 task t's gradient norm on the backbone (the norm the loop computes anyway for clipping and the
                 finite check: no extra backward, no extra pass). The loss-scale normaliser of Chen et al. 2018
                 (GradNorm) without its learned weights; what Adam's shared second moment needs equalised.
    loss_scale   ('auto' with sampling="all") each loss divided by a running estimate of its own scale:
                 factor_t = mean_s(L_s) / L_t, L_t a bias-corrected running mean of the task's loss (the "DWA"
                 and "scale normalisation" family; Liu et al. 2019 use the losses' ratios the same way).
    uncertainty  Kendall, Gal & Cipolla 2018, "Multi-task learning using uncertainty to weigh losses": a learned
                 log-variance s_t per task, loss exp(-s_t) * L_t + s_t; s_t descends its own gradient
                 1 - exp(-s_t) * L_t with Adam (`lr`), so exp(-s_t) moves towards 1 / L_t.
    pcgrad       Yu et al. 2020, "Gradient surgery for multi-task learning" (sampling="all" only): each task's
                 backbone gradient loses its component along every other task's gradient it conflicts with
                 (negative dot product), then they are summed. One backward per task.

All balancers see only what is the same on every process under torchrun (the gradient norm after DDP's
all-reduce, the global batch's mean loss), so every process applies the same factors. Their state (running means,
log-variances, counts) is JSON in the checkpoint's trainer state and round-trips exactly (float32 values), so a
resumed run continues bit for bit.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence

import torch

from . import distributed, fsdp

METHODS = ("protected_moments", "task_moments", "grad_scale", "loss_scale", "uncertainty", "pcgrad")


class Balancer:
    """A factor per task on its loss, updated from what each step observed.

    Args:
        tasks: the task names, in task-id order.

    A subclass sets `factor` (what the loop multiplies a task's loss by before backward) and `observe` (what it
    learns from the step just taken). The factors live on the device as a float32 tensor [num_tasks], so nothing
    waits for the device; `weights()` reads them back (for the log).
    """

    name = ""
    needs_shared_norm = False  # observe() wants the norm of the task's gradient on the backbone
    joint_only = False  # needs a batch of every task in each step (sampling="all")
    per_task_state = False  # keeps the optimizer's state per task (`TaskMoments`): loss_weight scales the step

    def __init__(self, tasks: Sequence[str]):
        self.tasks = list(tasks)
        self.index = {t: i for i, t in enumerate(self.tasks)}
        self.device = torch.device("cpu")
        # finite steps observed per task, on the device like the rest (whether a step was finite is a device
        # flag: counting it on the host would wait for the device every step)
        self.counts = torch.zeros(len(self.tasks), dtype=torch.float32)

    def to(self, device: torch.device) -> Balancer:
        self.device = torch.device(device)
        for name, value in self._tensors().items():
            setattr(self, name, value.to(self.device))
        return self

    def _tensors(self) -> dict[str, torch.Tensor]:
        """The float32 state tensors [num_tasks] (moved by `to`, saved by `state_dict`)."""
        return {"counts": self.counts}

    def factor(self, task: str) -> torch.Tensor:
        """The factor on `task`'s loss this step (a 0-dim float32 device tensor)."""
        raise NotImplementedError

    def observe(self, task: str, loss: torch.Tensor, shared_norm: torch.Tensor | None,
                applied: torch.Tensor) -> None:
        """Learns from the step just taken on `task`.

        Args:
            task: the task of the step.
            loss: its loss as logged (this process's part of the global mean; unweighted) [].
            shared_norm: the norm of the gradient on the backbone as backpropagated (None unless
                `needs_shared_norm`) [].
            applied: the whole factor the loss was multiplied by (loss_weight x this balancer's factor) [].
        """
        raise NotImplementedError

    def _count(self, i: int, finite: torch.Tensor) -> None:
        self.counts[i] += finite.float()

    def weights(self) -> dict[str, float]:
        """Every task's current factor (reads back from the device)."""
        return {t: float(self.factor(t)) for t in self.tasks}

    def stats(self) -> dict[str, dict[str, float]]:
        """What the balancer did besides the factors, for the log: {statistic: {task: value}} (none here)."""
        return {}

    def state_dict(self) -> dict:
        return {"method": self.name, **{name: value.tolist() for name, value in self._tensors().items()}}

    def load_state_dict(self, state: dict) -> None:
        if state.get("method") != self.name:
            raise ValueError(f"the checkpoint was trained with balance={state.get('method')!r}, this trainer "
                             f"uses {self.name!r}")
        if len(state["counts"]) != len(self.tasks):
            raise ValueError(f"the checkpoint's balancer has {len(state['counts'])} tasks, this trainer "
                             f"{len(self.tasks)}")
        for name in self._tensors():
            setattr(self, name, torch.tensor(state[name], dtype=torch.float32, device=self.device))


class _RunningScale(Balancer):
    """factor_t = mean over the tasks seen so far of S_s / S_t, S_t a bias-corrected running mean (decay
    `beta` per step of task t) of a per-task scale; 1 for a task not seen yet."""

    def __init__(self, tasks: Sequence[str], beta: float = 0.98):
        super().__init__(tasks)
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"beta must be in [0, 1), got {beta}")
        self.beta = float(beta)
        self.ema = torch.zeros(len(self.tasks), dtype=torch.float32)

    def _tensors(self) -> dict[str, torch.Tensor]:
        return {**super()._tensors(), "ema": self.ema}

    def factor(self, task: str) -> torch.Tensor:
        i = self.index[task]
        seen = self.counts > 0
        # bias-corrected as Adam's moments: (1 - beta^n) is the weight the n observations carry in total
        estimates = torch.where(seen, self.ema / (1.0 - self.beta ** self.counts).clamp_min(1e-30), 0.0)
        mean = estimates.sum() / seen.sum().clamp_min(1)
        return torch.where(seen[i], mean / estimates[i].clamp_min(1e-12), 1.0)

    def _update(self, task: str, scale: torch.Tensor) -> None:
        """Moves task's running mean towards `scale` (a non-finite scale, a skipped step, changes nothing)."""
        i = self.index[task]
        scale = scale.detach().float().reshape(())
        new = self.beta * self.ema[i] + (1.0 - self.beta) * scale
        finite = torch.isfinite(scale)
        self.ema[i] = torch.where(finite, new, self.ema[i])
        self._count(i, finite)


class GradScale(_RunningScale):
    """Each task's backbone gradient scaled to the running mean over tasks (see the module docstring)."""

    name = "grad_scale"
    needs_shared_norm = True

    def observe(self, task, loss, shared_norm, applied):
        if shared_norm is None:
            raise ValueError("grad_scale needs the norm of the task's gradient on the backbone")
        # the gradient of the loss as it is, whatever factor it was backpropagated with
        self._update(task, shared_norm / applied.clamp_min(1e-30))


class LossScale(_RunningScale):
    """Each loss divided by a running estimate of its own scale (see the module docstring)."""

    name = "loss_scale"

    def observe(self, task, loss, shared_norm, applied):
        self._update(task, distributed.mean(loss))  # the global batch's loss: the same on every process


class Uncertainty(Balancer):
    """Kendall et al. 2018: factor_t = exp(-s_t), s_t a learned log-variance (Adam with `lr`, from `init`)."""

    name = "uncertainty"

    def __init__(self, tasks: Sequence[str], lr: float = 0.01, init: float = 0.0,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        super().__init__(tasks)
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        self.lr, self.betas, self.eps = float(lr), betas, float(eps)
        n = len(self.tasks)
        self.log_var = torch.full((n,), float(init), dtype=torch.float32)
        self.m = torch.zeros(n, dtype=torch.float32)
        self.v = torch.zeros(n, dtype=torch.float32)

    def _tensors(self) -> dict[str, torch.Tensor]:
        return {**super()._tensors(), "log_var": self.log_var, "m": self.m, "v": self.v}

    def factor(self, task: str) -> torch.Tensor:
        return torch.exp(-self.log_var[self.index[task]])

    def observe(self, task, loss, shared_norm, applied):
        i = self.index[task]
        loss = distributed.mean(loss).detach().float().reshape(())
        # d/ds [exp(-s) L + s] = 1 - exp(-s) L; an Adam step on s_t alone (the other tasks' s have no gradient)
        grad = 1.0 - torch.exp(-self.log_var[i]) * loss
        finite = torch.isfinite(grad)
        grad = torch.where(finite, grad, torch.zeros_like(grad))
        self._count(i, finite)
        step = self.counts[i].clamp_min(1)
        b1, b2 = self.betas
        m = b1 * self.m[i] + (1 - b1) * grad
        v = b2 * self.v[i] + (1 - b2) * grad * grad
        update = self.lr * (m / (1 - b1 ** step)) / ((v / (1 - b2 ** step)).sqrt() + self.eps)
        self.m[i] = torch.where(finite, m, self.m[i])
        self.v[i] = torch.where(finite, v, self.v[i])
        self.log_var[i] = torch.where(finite, self.log_var[i] - update, self.log_var[i])


class TaskMoments(Balancer):
    """Every task its own optimizer state (Adam's moments and step count) on every parameter it trains.

    With one task per step and one shared Adam state, the first moment (beta1 0.9) carries the previous steps of
    the other tasks into each step, and the second moment follows the task with the largest gradients: a
    classifier next to a CRF tagger moves the backbone half as far per step as alone, whatever its loss is scaled
    by. Here a step of task t runs the one torch optimizer on t's own state (`use`): the backbone and t's head
    move exactly as a single-task run's Adam would move them from the same weights and gradients; the learning-
    rate schedule, weight decay and parameter groups stay the run's. Adam's update does not depend on the
    gradient's scale, so no loss factor is needed (`factor` is 1) and `Trainer(loss_weight=w)` scales the
    task's learning rate by w instead (`step_scale`). The memory of the moments grows by one copy of the
    backbone's per extra task. The states are in the checkpoint's optimizer.pt (`optimizer_state_dict`).

    An auxiliary task has no state of its own: it steps with the first main task's (`use`). Auxiliary tasks
    are there to shape the main task's training, and in PALM they do it through the one shared Adam state;
    measured on ATIS (examples/multi_task/README.md), an auxiliary task with a state of its own stops helping.

    Args:
        tasks: the task names, in task-id order.
        protect: correct each step's backbone update where it conflicts with another main task's first moment,
            keeping the stepping task's own progress (`after_step`; `ProtectedMoments`).
        reflect: with `protect`, turn the conflicting part of the update around (<u, m_o> becomes -<u, m_o>)
            instead of removing it (<u, m_o> becomes 0).
    """

    name = "task_moments"
    per_task_state = True

    def __init__(self, tasks: Sequence[str], protect: bool = False, reflect: bool = False):
        super().__init__(tasks)
        self.states: dict[str, defaultdict] = {t: defaultdict(dict) for t in self.tasks}
        self.protect = bool(protect)
        self.reflect = bool(reflect)
        self._task = self._owner = self.tasks[0]
        self._others: list[str] = []
        # steps of each task whose backbone update was projected (`protect`; logged as a share of its steps)
        self.projected = torch.zeros(len(self.tasks), dtype=torch.float32)
        self._base: list = []
        # |m|^2 of a task's first moment on the corrected parameters, kept while that moment is unchanged (a step
        # with the task's state drops it): the other task's |m_o|^2 is then not read again at every step of t.
        # Recomputing it gives the same bits, so a resumed run needs no copy of it.
        self._sq_norms: dict[str, tuple[tuple[int, ...], torch.Tensor]] = {}

    def _tensors(self) -> dict[str, torch.Tensor]:
        return {**super()._tensors(), **({"projected": self.projected} if self.protect else {})}

    def state_dict(self) -> dict:
        return {**super().state_dict(), **({"reflect": self.reflect} if self.protect else {})}

    def load_state_dict(self, state: dict) -> None:
        """Also takes the checkpoint's `reflect`, so that a run resumes as it was trained: a checkpoint written
        before reflection existed (no key) resumes removing the conflict, as it was trained to."""
        super().load_state_dict(state)
        if self.protect:
            self.reflect = bool(state.get("reflect", False))

    def stats(self) -> dict[str, dict[str, float]]:
        """With `protect`: {"projected_share": {task: share of its steps whose update was projected}}."""
        if not self.protect:
            return {}
        shares = (self.projected / self.counts.clamp_min(1)).tolist()
        return {"projected_share": dict(zip(self.tasks, shares))}

    def factor(self, task: str) -> torch.Tensor:
        return torch.ones((), dtype=torch.float32, device=self.device)

    def observe(self, task, loss, shared_norm, applied):
        self._count(self.index[task], torch.isfinite(loss.detach()).reshape(()))

    def use(self, task: str, optimizer: torch.optim.Optimizer, main: Sequence[str] | None = None) -> None:
        """Installs the state `task` steps with in `optimizer` (the optimizer fills it in place): its own for a
        main task; an auxiliary task (not in `main`) steps with the first main task's state, so that its
        gradients feed the main task's moments as in PALM's one shared state."""
        main = list(self.tasks) if main is None else list(main)
        self._task = task
        self._owner = task if task in main or not main else main[0]
        self._others = [t for t in main if t != self._owner]
        optimizer.state = self.states[self._owner]

    def before_step(self, shared: list[torch.nn.Parameter]) -> None:
        """With `protect`: <w, m_o> for every other main task o before the step (for `after_step`)."""
        self._base = []
        if not self.protect:
            return
        with torch.no_grad():
            for other in self._others:
                params, m = self._moment_of(other, shared)
                if params:
                    self._base.append((other, params, m, _dot(params, m)))

    def after_step(self, shared: list[torch.nn.Parameter]) -> None:
        """With `protect`: corrects the step's update u of the shared parameters where it conflicts with the other
        main tasks: <u, m_o> > 0 raises o's loss to first order (o's first moment m_o standing for its
        gradient). The correction is the smallest change to u (in the span of the others' moments and m_t) after
        which <u, m_o> = 0 for every conflicting o (with `reflect`: twice that change, <u, m_o> = -<u, m_o>
        before) while <u, m_o> of every other o and <u, m_t>, the stepping task's own first-order progress (its
        first moment m_t), stay as they were: PCGrad's plain projection along m_o also takes away from t's
        progress wherever the tasks' gradients point apart, which is where the tasks conflict. With three or more
        main tasks all the conditions are solved together, so that no correction undoes another (PCGrad's
        one-at-a-time projections can). <u, m_o> is <w_after, m_o> - <w_before, m_o>, so the update needs no
        copy of the weights."""
        base, self._base = self._base, []
        self._sq_norms.pop(self._owner, None)  # this step moved the owner's moment
        if not base:
            return
        with torch.no_grad():
            along = torch.stack([_dot(params, m) - before for _, params, m, before in base])  # <u, m_o> per o
            conflicts = (along > 0).any()
            if self.device.type == "cpu" and not conflicts:  # no conflict (a free read on the CPU): u stays
                return
            self.projected[self.index[self._task]] += conflicts.float().to(self.projected.device)
            # every parameter some other task has a moment on; each other's moments on them (None: none)
            present = {id(p) for _, params, _, _ in base for p in params}
            params = [p for p in shared if id(p) in present]
            others = []
            for _, own_params, m, _ in base:
                by_param = dict(zip(map(id, own_params), m))
                others.append([by_param.get(id(p)) for p in params])
            own = self.states[self._owner]
            mt = [own[p].get("exp_avg") if p in own else None for p in params]
            tt = _dot(mt, mt)
            self._sq_norms[self._owner] = (tuple(id(p) for p, y in zip(params, mt) if y is not None), tt)
            tt = tt.clamp_min(1e-30)
            mo_mt = torch.stack([_dot(m, mt) for m in others])  # <m_o, m_t> per o
            gram = torch.diag(torch.stack([self._sq_norm(o, ps, m) for o, ps, m, _ in base]))  # <m_o, m_o'>
            for a in range(len(others)):
                for b in range(a + 1, len(others)):
                    gram[a, b] = gram[b, a] = _dot(others[a], others[b])
            # d_o = m_o - (<m_o, m_t> / |m_t|^2) m_t, the part of m_o orthogonal to m_t; u - sum_o c_o d_o keeps
            # <u, m_t> and moves <u, m_o'> by -(S c)_o', S_oo' = <d_o, d_o'>; S c = (<u, m_o>)+ (0 for an o
            # without conflict) leaves the conflicting <u, m_o> = 0 (reflect: 2c, <u, m_o> negated). S's diagonal
            # <d_o, m_o> = |m_o|^2 (1 - cos^2) is floored at 1% of |m_o|^2, so that for tasks pulling in nearly
            # opposite directions c is at most 100 times the plain projection's factor and the correction at
            # most 10 times its length (both before reflect's doubling; the protection then only partial)
            schur = gram - torch.outer(mo_mt, mo_mt) / tt
            floor = torch.maximum(torch.diagonal(gram) * 0.01, torch.full_like(tt, 1e-30))
            schur.diagonal().copy_(torch.maximum(schur.diagonal(), floor))
            pull = along.clamp(min=0.0)
            if len(base) == 1:
                c = pull / torch.diagonal(schur)
            else:  # the least-norm solution where two others' moments are (nearly) parallel
                c = (torch.linalg.pinv(schur.double()) @ pull.double()).to(pull.dtype)
            if self.reflect:
                c = 2.0 * c
            k = (c * mo_mt).sum() / tt
            for i, p in enumerate(params):
                for moments, c_o in zip(others, c):
                    if moments[i] is not None:
                        _axpy(p, moments[i], -c_o)
                if mt[i] is not None:
                    _axpy(p, mt[i], k)

    def _sq_norm(self, task: str, params: list[torch.nn.Parameter], m: list[torch.Tensor]) -> torch.Tensor:
        """|m|^2 of `task`'s first moment `m` on `params`: the kept one if it was taken over the same parameters
        in the same order (then it has the same bits), else computed and kept."""
        key = tuple(id(p) for p in params)
        kept = self._sq_norms.get(task)
        if kept is None or kept[0] != key:
            kept = self._sq_norms[task] = (key, _dot(m, m))
        return kept[1]

    def _moment_of(self, task: str, shared: list[torch.nn.Parameter]) -> tuple[list, list]:
        """The shared parameters `task`'s state has a first moment for, and those moments."""
        state = self.states[task]
        params = [p for p in shared if "exp_avg" in state.get(p, {})]
        return params, [state[p]["exp_avg"] for p in params]

    def moments(self) -> list[tuple[str, torch.nn.Parameter, dict]]:
        """(task, parameter, its state) for every parameter a task has trained."""
        return [(t, p, s) for t, states in self.states.items() for p, s in states.items()]

    def optimizer_state_dict(self, optimizer: torch.optim.Optimizer) -> dict:
        """`optimizer.state_dict()` with every task's state: {"param_groups", "state": {}, "task_states": {task:
        the "state" part of its state_dict (parameters by index)}}."""
        installed = optimizer.state
        try:
            task_states = {}
            for task in self.tasks:
                optimizer.state = self.states[task]
                saved = optimizer.state_dict()
                task_states[task] = saved["state"]
        finally:
            optimizer.state = installed
        return {"param_groups": saved["param_groups"], "state": {}, "task_states": task_states}

    def load_optimizer_state_dict(self, optimizer: torch.optim.Optimizer, state: dict) -> None:
        """Puts `optimizer_state_dict`'s states back (each through `optimizer.load_state_dict`)."""
        saved = sorted(state["task_states"])
        if saved != sorted(self.tasks):
            raise ValueError(f"the checkpoint's optimizer holds the states of tasks {saved}, this trainer trains "
                             f"{sorted(self.tasks)}")
        for task in self.tasks:
            optimizer.load_state_dict({"param_groups": state["param_groups"], "state": state["task_states"][task]})
            self.states[task] = optimizer.state
        self._sq_norms.clear()


class ProtectedMoments(TaskMoments):
    """`TaskMoments` whose steps do not work against the other main tasks: where a step's update of the backbone
    would raise another main task's loss to first order, it is corrected, the stepping task's own first-order
    progress kept (`protect`, `after_step`): by default the conflicting part is reflected, so that the step
    lowers the other task's loss as much as it would have raised it; `reflect=False` only removes it (the
    default before; examples/multi_task/README.md compares the two). The log shows, per task, the share of its
    steps whose update was corrected ("projected", `stats`)."""

    name = "protected_moments"

    def __init__(self, tasks: Sequence[str], reflect: bool = True):
        super().__init__(tasks, protect=True, reflect=reflect)


class PCGrad(Balancer):
    """Yu et al. 2020: each task's backbone gradient minus its projections on the other tasks' gradients it
    conflicts with, then summed (sampling="all"). The other tasks are taken in task order (the paper draws a
    random order; with two tasks there is only one)."""

    name = "pcgrad"
    joint_only = True

    def factor(self, task: str) -> torch.Tensor:
        return torch.ones((), dtype=torch.float32, device=self.device)

    def observe(self, task, loss, shared_norm, applied):
        self._count(self.index[task], torch.isfinite(loss.detach()).reshape(()))

    def combine(self, grads: dict[str, list[torch.Tensor | None]]) -> list[torch.Tensor | None]:
        """The summed, de-conflicted gradient of the shared parameters.

        Args:
            grads: {task: that task's gradient of each shared parameter (None: none)}.
        Returns:
            the gradient of each shared parameter (None where no task gave one).
        """
        names = list(grads)
        total: list[torch.Tensor | None] = [None] * len(grads[names[0]])
        for i in names:
            g = [x.clone() if x is not None else None for x in grads[i]]
            for j in names:
                if j == i:
                    continue
                # g . g_j < 0: remove g's component along g_j (clamp, not `if`: no read back from the device)
                coef = _dot(g, grads[j]).clamp(max=0.0) / _dot(grads[j], grads[j]).clamp_min(1e-30)
                g = [a - coef * b if a is not None and b is not None else (a if b is None else -coef * b)
                     for a, b in zip(g, grads[j])]
            total = [a if b is None else (b if a is None else a + b) for a, b in zip(total, g)]
        return total


def _dot(a: list[torch.Tensor | None], b: list[torch.Tensor | None]) -> torch.Tensor:
    """The dot product of two gradients given per parameter (None: zero); whole under FSDP (a collective)."""
    parts = [fsdp.full(_dot1(x, y)) for x, y in zip(a, b) if x is not None and y is not None]
    return torch.stack(parts).sum() if parts else torch.zeros(())


def _axpy(p: torch.Tensor, x: torch.Tensor, a: torch.Tensor) -> None:
    """p += a * x in place, `a` a 0-dim device tensor (no read back to the host, except for an FSDP shard,
    which does not mix with a plain 0-dim tensor)."""
    if isinstance(p, fsdp.DTensor):
        p.add_(x, alpha=float(a))
    else:
        p.addcmul_(x, a)


def _dot1(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """One tensor pair's dot product in float32 (BLAS's, without a product tensor, where it can)."""
    x, y = x.detach(), y.detach()
    if x.dtype == y.dtype == torch.float32 and not isinstance(x, fsdp.DTensor) and x.is_contiguous() \
            and y.is_contiguous():
        return torch.dot(x.view(-1), y.view(-1))
    return torch.sum(x.float() * y.float())


def joint_backward(batches: dict[str, dict], task_loss: Callable[[str, dict], torch.Tensor],
                   weight: Callable[[str], torch.Tensor | float], shared: list[torch.nn.Parameter],
                   balancer: Balancer | None) -> torch.Tensor:
    """The gradients of a step that trains every task on its own batch (`sampling="all"`).

    Each task's forward and backward run in turn (what DDP expects of a replicated model); their gradients add
    up in `.grad`, each loss times its weight (loss_weight x the balancer's factor). A balancer with `combine`
    (PCGrad) gets each task's gradient of the shared parameters separately and sets their sum.

    Args:
        batches: {task: batch}.
        task_loss: (task, batch) -> the task's loss [].
        weight: task -> the factor on its loss.
        shared: the backbone's parameters.
        balancer: the step's balancer (None: the plain sum).
    Returns:
        the sum of the tasks' (unweighted) losses [], detached.
    """
    combine = getattr(balancer, "combine", None)
    per_task: dict[str, list[torch.Tensor | None]] = {}
    total = None
    for task, batch in batches.items():
        loss = task_loss(task, batch)
        factor = weight(task)
        (loss * factor).backward()
        loss = loss.detach()
        if combine is not None:  # this task's backbone gradient, set aside; the heads keep theirs
            per_task[task] = [p.grad for p in shared]
            for p in shared:
                p.grad = None
        if balancer is not None:
            balancer.observe(task, loss, None, torch.as_tensor(factor, dtype=torch.float32))
        total = loss if total is None else total + loss
    if combine is not None:
        for p, g in zip(shared, combine(per_task)):
            p.grad = g
    return total


def corrected_params(backbone: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The backbone's parameters that protected_moments' correction reads and moves: all it trains but its
    token-embedding table (its largest `nn.Embedding`). A step moves only the rows of the batch's tokens, yet the
    table is up to half of an encoder's parameters (MiniLM: 11.7M of 22.7M): the dot products would read it
    every step for about 1% of the moments' squared norm (measured on ATIS; examples/multi_task/README.md, where
    leaving it out changed the joint results within the seeds' noise at half the cost)."""
    tables = [m.weight for m in backbone.modules() if isinstance(m, torch.nn.Embedding)]
    token_table = max(tables, key=lambda w: w.shape[0]) if tables else None
    return [p for p in backbone.parameters() if p.requires_grad and p is not token_table]


def make_balancer(balance: str | Balancer | None, tasks: Sequence[str], joint: bool) -> Balancer | None:
    """The balancer `MultiHeadTrainer(balance=...)` asks for.

    Args:
        balance: 'auto' (grad_scale with one task per step, loss_scale with a batch of every task per step),
            a name in METHODS, a `Balancer`, or None (PALM's plain sum).
        tasks: the task names in task-id order.
        joint: every step trains every task (sampling="all").
    """
    if balance is None:
        return None
    if isinstance(balance, Balancer):
        balancer = balance
    elif balance == "auto":
        balancer = LossScale(tasks) if joint else ProtectedMoments(tasks)
    elif balance in _CLASSES:
        balancer = _CLASSES[balance](tasks)
    else:
        raise ValueError(f"balance must be 'auto', None, a torchpalm.balancing.Balancer or one of "
                         f"{list(METHODS)}, got {balance!r}")
    if balancer.tasks != list(tasks):
        raise ValueError(f"the balancer was built for tasks {balancer.tasks}, the trainer has {list(tasks)}")
    if balancer.joint_only and not joint:
        raise ValueError(f"balance={balancer.name!r} combines the gradients of every task in a step: use it with "
                         f"sampling='all' (MultiHeadTrainer(sampling='all'); in a config, multi_task: "
                         f"{{sampling: all}})")
    if (balancer.needs_shared_norm or balancer.per_task_state) and joint:
        what = ("keeps an optimizer state per task" if balancer.per_task_state
                else "scales one task's gradient per step")
        raise ValueError(f"balance={balancer.name!r} {what}, for one task per step; with sampling='all' use "
                         f"'auto' (loss_scale), 'loss_scale', 'uncertainty' or 'pcgrad'")
    return balancer


def shared_norm(norm: torch.Tensor) -> torch.Tensor:
    """A gradient norm as a plain tensor (under FSDP the shards' norm is a DTensor: gathered, a collective)."""
    return fsdp.full(norm)


_CLASSES: dict[str, type[Balancer]] = {"protected_moments": ProtectedMoments, "task_moments": TaskMoments,
                                       "grad_scale": GradScale, "loss_scale": LossScale,
                                       "uncertainty": Uncertainty, "pcgrad": PCGrad}
