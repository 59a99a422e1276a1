"""Learning-rate schedules (spec §9.4), as functions of the number of updates already applied.

`t` is 0 at the first training step. A schedule returns the factor applied to the optimizer's base rate;
it has no state of its own (the trainer's step counter is the state), so resuming cannot drift.
"""

from __future__ import annotations


class Schedualer:
    """Base schedule (PALM's spelling; `Scheduler` is the same class)."""

    def lr_factor(self, t: int) -> float:
        raise NotImplementedError

    def __call__(self, t: int) -> float:
        return self.lr_factor(t)

    def config(self) -> dict:
        return {"class": type(self).__name__, **vars(self)}


class TriangularSchedualer(Schedualer):
    """Linear warmup then linear decay to 0 at `num_train_steps` (ERNIE's "linear warmup decay").

    PALM's exact formula (default): `t/warmup` for `t < warmup`, else `1 - min(t, N)/N`: the decay counts from
    step 0, so the rate drops from ~1 to `1 - warmup/N` at the end of warmup (spec §17.19).
    `decay_from_warmup_end=True` gives the usual variant, `(N - t)/(N - warmup)`, as HF's linear schedule.
    """

    def __init__(self, warmup_steps: int, num_train_steps: int, decay_from_warmup_end: bool = False):
        if not num_train_steps > warmup_steps >= 0:
            raise ValueError(
                f"need num_train_steps > warmup_steps >= 0, got warmup_steps={warmup_steps}, "
                f"num_train_steps={num_train_steps}"
            )
        self.warmup_steps = int(warmup_steps)
        self.num_train_steps = int(num_train_steps)
        self.decay_from_warmup_end = decay_from_warmup_end

    def lr_factor(self, t: int) -> float:
        if t < self.warmup_steps:
            return t / self.warmup_steps
        if self.decay_from_warmup_end:
            return max(0.0, (self.num_train_steps - t) / (self.num_train_steps - self.warmup_steps))
        return 1.0 - min(t, self.num_train_steps) / self.num_train_steps


class WarmupSchedualer(Schedualer):
    """Linear warmup to the base rate over `warmup_steps`, then constant (broken in PALM, spec §17.14)."""

    def __init__(self, warmup_steps: int):
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        self.warmup_steps = int(warmup_steps)

    def lr_factor(self, t: int) -> float:
        return t / self.warmup_steps if t < self.warmup_steps else 1.0


# Correctly spelled aliases.
Scheduler = Schedualer
TriangularScheduler = TriangularSchedualer
WarmupScheduler = WarmupSchedualer

__all__ = ["Schedualer", "Scheduler", "TriangularSchedualer", "TriangularScheduler", "WarmupSchedualer",
           "WarmupScheduler"]
