"""Learning-rate schedules (spec §9.4), as functions of the number of updates already applied.

`t` is 0 at the first training step. A schedule returns the factor applied to the optimizer's base rate;
it has no state of its own (the trainer's step counter is the state), so resuming cannot drift.

A custom schedule subclasses `Schedualer` and implements `lr_factor(t)`; to let the trainer fill in the length of
the run, set `self.num_train_steps = None` in `__init__` and read it in `lr_factor` (`set_total_steps` fills it
before training starts). Any `torch.optim.lr_scheduler` works through `Torch`.
"""

from __future__ import annotations

import inspect
import logging

import torch

logger = logging.getLogger("torchpalm")


def _warmup_arg(warmup_steps: float) -> float:
    """An int number of steps, or a float in (0, 1): that fraction of the run (resolved by `set_total_steps`)."""
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if isinstance(warmup_steps, float) and 0 < warmup_steps < 1:
        return warmup_steps
    return int(warmup_steps)


class Schedualer:
    """Base schedule (PALM's spelling; `Scheduler` is the same class)."""

    num_train_steps: int | None = None

    def lr_factor(self, t: int) -> float:
        """The factor on the base learning rate of update number `t` (0-based)."""
        raise NotImplementedError

    def learning_rate(self, t: int, base_lr: float) -> float:
        """The learning rate of update `t` for an optimizer whose base rate is `base_lr`."""
        return base_lr * self.lr_factor(t)

    def set_total_steps(self, total: int, certain: bool = True) -> None:
        """Called by the trainer once it knows how many steps training runs (`fit_reader`), so the schedule
        and the loop agree: fills `num_train_steps` (and a fractional warmup) when they were left open (again
        if the plan changes, e.g. on resuming), and warns when a length given by the script differs.
        `certain=False` (a reader that cycles forever, stepped by the script's own loop): only fills what was
        left open, since the script decides when to stop."""
        fraction = vars(self).get("_warmup_fraction")
        if fraction is None and isinstance(getattr(self, "warmup_steps", 0), float):
            fraction = self._warmup_fraction = self.warmup_steps
        if fraction is not None:
            self.warmup_steps = int(fraction * total)
        if "num_train_steps" not in vars(self):  # a schedule without a length (warmup only)
            return
        if self.num_train_steps is None or vars(self).get("_length_from_trainer"):
            self.num_train_steps, self._length_from_trainer = int(total), True
            self._check()
        elif self.num_train_steps != total and certain:
            logger.warning("the learning-rate schedule decays over %d steps but training runs %d steps; pass "
                           "num_train_steps=None to let the trainer set it", self.num_train_steps, total)

    def _check(self) -> None:
        pass

    def __call__(self, t: int) -> float:
        return self.lr_factor(t)

    def config(self) -> dict:
        return {"class": type(self).__name__, **{k: v for k, v in vars(self).items() if not k.startswith("_")}}


class TriangularSchedualer(Schedualer):
    """Linear warmup then linear decay to 0 at `num_train_steps` (ERNIE's "linear warmup decay").

    PALM's exact formula (default): `t/warmup` for `t < warmup`, else `1 - min(t, N)/N`: the decay counts from
    step 0, so the rate drops from ~1 to `1 - warmup/N` at the end of warmup (spec §17.19).
    `decay_from_warmup_end=True` gives the usual variant, `(N - t)/(N - warmup)`, as HF's linear schedule.

    `num_train_steps=None` lets the trainer fill in the number of steps it will run (`fit_reader`), and a float
    `warmup_steps` in (0, 1) is that fraction of them.
    """

    def __init__(self, warmup_steps: float, num_train_steps: int | None = None,
                 decay_from_warmup_end: bool = False):
        self.warmup_steps = _warmup_arg(warmup_steps)
        self.num_train_steps = None if num_train_steps is None else int(num_train_steps)
        self.decay_from_warmup_end = decay_from_warmup_end
        if self.num_train_steps is not None:
            self._check()

    def _check(self) -> None:
        if isinstance(self.warmup_steps, float):
            self._warmup_fraction = self.warmup_steps
            self.warmup_steps = int(self.warmup_steps * self.num_train_steps)
        if not self.num_train_steps > self.warmup_steps >= 0:
            raise ValueError(
                f"need num_train_steps > warmup_steps >= 0, got warmup_steps={self.warmup_steps}, "
                f"num_train_steps={self.num_train_steps}"
            )

    def lr_factor(self, t: int) -> float:
        if self.num_train_steps is None:
            raise RuntimeError("the schedule's num_train_steps is not set yet: fit a reader to the trainer first")
        if t < self.warmup_steps:
            return t / self.warmup_steps
        if self.decay_from_warmup_end:
            return max(0.0, (self.num_train_steps - t) / (self.num_train_steps - self.warmup_steps))
        return 1.0 - min(t, self.num_train_steps) / self.num_train_steps


class WarmupSchedualer(Schedualer):
    """Linear warmup to the base rate over `warmup_steps`, then constant (broken in PALM, spec §17.14)."""

    def __init__(self, warmup_steps: float):
        self.warmup_steps = _warmup_arg(warmup_steps)

    def lr_factor(self, t: int) -> float:
        return t / self.warmup_steps if t < self.warmup_steps else 1.0


class _NumTrainSteps:
    def __repr__(self) -> str:
        return "palm.lr_sched.NUM_TRAIN_STEPS"


NUM_TRAIN_STEPS = _NumTrainSteps()
"""Placeholder for an argument of `Torch` that the trainer fills with the number of steps training runs."""


class Torch(Schedualer):
    """Any `torch.optim.lr_scheduler` schedule, e.g.

        palm.lr_sched.Torch(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=palm.lr_sched.NUM_TRAIN_STEPS)

    Args:
        scheduler: a scheduler class, or any callable `(optimizer, **kwargs) -> scheduler` (for schedules built
            from others, such as `SequentialLR`).
        **kwargs: its arguments (not the optimizer); `NUM_TRAIN_STEPS` in their place is replaced by the
            number of steps the trainer computes for the run (`fit_reader`), as `num_train_steps=None` does for
            `TriangularSchedualer`.

    The rate of step `t` is the rate torch's scheduler sets after `t` calls of `scheduler.step()`, replayed
    on a one-parameter twin optimizer whose base rate is the real optimizer's (so absolute rates such as
    `eta_min` or OneCycleLR's `max_lr` mean what they mean in torch). The replay is cached, and being a
    function of the step, the schedule resumes exactly with no state of its own in checkpoints. Heads'
    `param_lr_scales()` multiply the scheduled rate of their groups. Schedules that follow a metric
    (`ReduceLROnPlateau`) or change momentum (`cycle_momentum=True`) cannot be replayed and are refused.
    """

    def __init__(self, scheduler, **kwargs):
        if not callable(scheduler) or isinstance(scheduler, torch.optim.lr_scheduler.LRScheduler):
            raise TypeError(f"palm.lr_sched.Torch takes a scheduler class or factory (e.g. "
                            f"torch.optim.lr_scheduler.CosineAnnealingLR), not {scheduler!r}")
        if isinstance(scheduler, type) and issubclass(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            raise ValueError("ReduceLROnPlateau follows a metric, not the step count: it cannot be a torchpalm "
                             "schedule (use evaluation with early stopping, or a step-based schedule)")
        try:
            accepted = inspect.signature(scheduler).parameters
        except (TypeError, ValueError):
            accepted = {}
        if "cycle_momentum" in accepted and kwargs.get("cycle_momentum", True):
            raise ValueError(f"{getattr(scheduler, '__name__', scheduler)}: pass cycle_momentum=False (only the "
                             f"learning rate is scheduled; cycling the momentum is not replayed)")
        self.scheduler, self.kwargs = scheduler, kwargs
        if any(v is NUM_TRAIN_STEPS for v in kwargs.values()):
            self.num_train_steps = None  # filled by the trainer (set_total_steps)
        self._replay_key = None

    def learning_rate(self, t: int, base_lr: float) -> float:
        key = (float(base_lr), self.num_train_steps)
        if key != self._replay_key:
            self._start_replay(*key)
        while len(self._lrs) <= t:
            self._twin.step()  # no gradient: a no-op that keeps torch's "optimizer.step() first" check quiet
            self._twin_scheduler.step()
            self._lrs.append(self._twin.param_groups[0]["lr"])
        return self._lrs[t]

    def lr_factor(self, t: int) -> float:
        return self.learning_rate(t, 1.0)

    def _start_replay(self, base_lr: float, num_train_steps: int | None) -> None:
        if "num_train_steps" in vars(self) and num_train_steps is None:
            raise RuntimeError("the schedule's NUM_TRAIN_STEPS is not known yet: fit a reader to the trainer first")
        kwargs = {k: num_train_steps if v is NUM_TRAIN_STEPS else v for k, v in self.kwargs.items()}
        self._twin = torch.optim.SGD([torch.nn.Parameter(torch.zeros(()))], lr=base_lr)
        self._twin_scheduler = self.scheduler(self._twin, **kwargs)
        self._lrs = [self._twin.param_groups[0]["lr"]]
        self._replay_key = (base_lr, num_train_steps)

    def config(self) -> dict:
        name = getattr(self.scheduler, "__qualname__", repr(self.scheduler))
        return {"class": "Torch", "scheduler": name, **{k: v if v is not NUM_TRAIN_STEPS else "NUM_TRAIN_STEPS"
                                                        for k, v in self.kwargs.items()}}


# Correctly spelled aliases.
Scheduler = Schedualer
TriangularScheduler = TriangularSchedualer
WarmupScheduler = WarmupSchedualer

__all__ = ["NUM_TRAIN_STEPS", "Schedualer", "Scheduler", "Torch", "TriangularSchedualer", "TriangularScheduler",
           "WarmupSchedualer", "WarmupScheduler"]
