"""Optimizers (spec §9.1-9.2): Adam with PALM's decoupled weight decay, and any `torch.optim` optimizer.

An `Optimizer` here is a recipe, not the torch object: it holds the base learning rate and the schedule, and
`build(param_groups, device)` makes the torch optimizer once the trainer knows the parameters. The trainer
groups them (`param_groups`): which are weight-decayed (PALM's rule: never biases, norms, 1-D tensors or what a
head lists in `no_weight_decay()`) and which take a learning-rate factor (a head's `param_lr_scales()`, e.g. a
CRF's transitions). Before every step the loop sets each group's `"lr"` to `lr_at(step) * group["lr_scale"]`.

To use another update rule, either wrap a torch optimizer class,

    palm.optimizer.Torch(torch.optim.SGD, lr=0.1, lr_schedualer=sched, momentum=0.9)

or subclass `Optimizer` and implement `build` (see its docstring).
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

from .lr_sched import Schedualer


class Optimizer:
    """Holds the base learning rate, the schedule and the update rule; the trainer builds the torch optimizer.

    Args:
        loss_var: what `Trainer.build_forward` returned (kept for PALM's signature; the trainer supplies the
            parameters).
        lr: base learning rate.
        lr_schedualer: a schedule from `torchpalm.lr_sched` (including `lr_sched.Torch`, any
            `torch.optim.lr_scheduler`), or None for a constant rate.

    Subclasses implement `build`. The learning rate of each step is this object's (`lr_at`), not the torch
    optimizer's default, and the torch optimizer's `state_dict()` is what checkpoints save and restore.
    """

    def __init__(self, loss_var, lr: float, lr_schedualer: Schedualer | None = None):
        if lr <= 0:
            raise ValueError(f"learning rate must be positive, got {lr}")
        if isinstance(lr_schedualer, (torch.optim.lr_scheduler.LRScheduler, torch.optim.Optimizer)):
            raise TypeError(f"lr_schedualer must be a torchpalm.lr_sched schedule, got a torch "
                            f"{type(lr_schedualer).__name__} object; pass the class instead, as "
                            f"palm.lr_sched.Torch(torch.optim.lr_scheduler.{type(lr_schedualer).__name__}, ...)")
        self._loss_var = loss_var
        self._lr = float(lr)
        self._sched = lr_schedualer

    @property
    def lr(self) -> float:
        """The base learning rate."""
        return self._lr

    @property
    def schedule(self) -> Schedualer | None:
        return self._sched

    def lr_at(self, t: int) -> float:
        """The learning rate of update number `t` (0-based)."""
        if self._sched is None:
            return self._lr
        if hasattr(self._sched, "learning_rate"):
            return self._sched.learning_rate(t, self._lr)
        return self._lr * self._sched(t)  # a plain function of the step: the factor on the base rate

    def get_cur_learning_rate(self, t: int = 0) -> float:
        return self.lr_at(t)

    def build(self, param_groups: list[dict], device: torch.device) -> torch.optim.Optimizer:
        """Makes the torch optimizer over `param_groups` (what a custom optimizer implements).

        Args:
            param_groups: torch parameter groups, each `{"params", "weight_decay", "lr_scale"}`; pass them on
                as they are (the weight decay is per group, and `lr_scale` is read back by the loop).
            device: where the parameters live (e.g. to choose a fused CUDA kernel).

        Returns:
            a `torch.optim.Optimizer`. Its per-group `"lr"` is overwritten before every step, so the
            constructor's `lr` only matters for schedulers' bookkeeping.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement build(param_groups, device)")


class Adam(Optimizer):
    """Adam (beta1 0.9, beta2 0.999, eps 1e-8) with decoupled weight decay `p <- p(1 - wd * lr_t)`.

    Weight decay is set by `Trainer.build_backward(optimizer, weight_decay)` and skips biases and LayerNorm
    parameters (PALM's rule) and anything a head lists in `no_weight_decay()`. PALM applied the decay to the
    post-Adam value, AdamW to the pre-update value (the ERNIE original); the difference is O(lr^2).
    """

    def __init__(self, loss_var, lr: float, lr_schedualer: Schedualer | None = None,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        super().__init__(loss_var, lr, lr_schedualer)
        self.betas, self.eps = betas, eps

    def build(self, param_groups, device):
        # The fused kernel: one launch per step on CUDA, one pass over memory on CPU (6x faster than torch's
        # default per-tensor loop on a MiniLM-sized model; same update to float32 rounding), and it skips a
        # non-finite step on the device. HF Trainer's default optimizer (adamw_torch_fused) is the same kernel.
        fused = device.type in ("cuda", "cpu")
        return torch.optim.AdamW(param_groups, lr=self._lr, betas=self.betas, eps=self.eps, fused=fused)


class Torch(Optimizer):
    """Any `torch.optim` optimizer class (or a callable `(param_groups, lr=..., **kwargs) -> Optimizer`).

        palm.optimizer.Torch(torch.optim.SGD, lr=0.1, lr_schedualer=sched, momentum=0.9, nesterov=True)

    The trainer's parameter groups still apply: `build_backward(weight_decay=...)` sets the decay of the
    decayed group (with the optimizer's own meaning of it: decoupled for AdamW, an L2 term for SGD and Adam),
    biases, norms and heads' `no_weight_decay()` get none, and heads' `param_lr_scales()` scale their groups'
    rate. The schedule is torchpalm's (`lr_schedualer`, e.g. `palm.lr_sched.Torch(...)`).

    Args:
        optimizer: e.g. `torch.optim.SGD`.
        lr: base learning rate.
        lr_schedualer: a torchpalm schedule, or None for a constant rate.
        loss_var: PALM's first argument (unused), accepted for symmetry with `Adam`.
        **kwargs: the optimizer's other arguments (`momentum`, `betas`, `fused`, ...).
    """

    def __init__(self, optimizer, lr: float, lr_schedualer: Schedualer | None = None, loss_var=None, **kwargs):
        super().__init__(loss_var, lr, lr_schedualer)
        if isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError("palm.optimizer.Torch takes the optimizer CLASS (e.g. torch.optim.SGD), not an "
                            "instance: the trainer builds it over its parameter groups")
        if not callable(optimizer):
            raise TypeError(f"optimizer must be a torch.optim optimizer class, got {optimizer!r}")
        for key, why in (("weight_decay", "pass build_backward(optimizer, weight_decay=...) so biases, norms "
                          "and heads' no_weight_decay() are left out"), ("params", "the trainer supplies them")):
            if key in kwargs:
                raise ValueError(f"palm.optimizer.Torch: do not pass {key}= ({why})")
        self.optimizer, self.kwargs = optimizer, kwargs

    def build(self, param_groups, device):
        try:
            return self.optimizer(param_groups, lr=self._lr, **self.kwargs)
        except TypeError as e:
            name = getattr(self.optimizer, "__name__", repr(self.optimizer))
            try:
                accepted = sorted(inspect.signature(self.optimizer).parameters)
            except (TypeError, ValueError):
                accepted = "?"
            raise TypeError(f"palm.optimizer.Torch({name}, **{self.kwargs}): {e} (it accepts {accepted})") from e


def param_groups(model: nn.Module, weight_decay: float | None, no_decay: set[str] = frozenset(),
                 lr_scales: dict[str, float] | None = None) -> list[dict]:
    """Groups parameters by (decayed or not, learning-rate scale).

    Not decayed: biases, norms, 1-D tensors and the `no_decay` names. `lr_scales` maps parameter names to a
    factor on the scheduled rate (e.g. a CRF's transitions); the trainer applies it as the group's `lr_scale`.
    """
    lr_scales = lr_scales or {}
    groups: dict[tuple[bool, float], list] = {}
    seen: set[int] = set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        skip = p.ndim < 2 or "norm" in name.lower() or name.endswith("bias") or name in no_decay
        groups.setdefault((not skip, float(lr_scales.get(name, 1.0))), []).append(p)
    wd = weight_decay or 0.0
    return [{"params": params, "weight_decay": wd if decayed else 0.0, "lr_scale": scale}
            for (decayed, scale), params in sorted(groups.items(), key=lambda kv: (not kv[0][0], kv[0][1]))]
