"""The one training loop that `Trainer` (one task) and `MultiHeadTrainer` (several) both run.

A task is a name, a head and a reader (`Task`). The loop owns everything else: the model (one backbone and an
`nn.ModuleDict` of heads keyed by task name), the torch optimizer and the schedule, the EMA weights, the step
counters (global and per task), the random stream of its steps, and the progress log; its `checkpointer`
(`checkpoint.Checkpointer`) saves and restores all that. A step is

    batch of task t -> backbone -> head t -> loss -> backward -> gradient norm -> (clip) -> optimizer step -> (EMA)

and nothing in it waits for the device: the loss stays a tensor. A step whose loss or gradient is NaN or
infinite is never applied: the gradient's global norm (one read of the gradients, shared with clipping) gives a
flag on the device, and the fused optimizer (CUDA) skips its update on that flag, as it does under torch's
GradScaler; the unfused one (CPU, where reading a tensor costs nothing) is not called. The flag is read back at
the next log line, checkpoint or the end of training (the only places that read values back): an error naming
the first such step, raised before anything is saved (so the last checkpoint predates it), or, with
`skip_nonfinite`, a count of the skipped steps.

Tensors are named as in checkpoints (`checkpoint.model_state`); a head shared through `reuse_head_with` is
stored once, under its owner.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from . import balancing, distributed, fsdp, state_keys
from . import checkpoint as ckpt
from .disk import plain_write_error
from .metrics_log import MetricsLog
from .model import MultiTaskModel as MultiTaskModel
from .model import autocast, to_device
from .model import backbone_features as backbone_features
from .model import default_device as default_device
from .optimizer import Optimizer, param_groups
from .prediction import progress_bar
from .process import deferred_signals, logging_above

logger = logging.getLogger("torchpalm")

ALL_TASKS = "*"  # the task name of a step that trains every task (MultiHeadTrainer(sampling="all"))


@dataclass
class Task:
    """One task: what it is called, its head, the reader it trains on, and how multi-task training treats it.

    `budget` is the number of steps the task trains (its finish line), set when a reader is fitted.
    `loss_weight` scales the loss this task backpropagates (the logged loss is unscaled).
    """

    name: str
    head: nn.Module
    reader: object = None
    mix_ratio: float = 1.0
    is_aux: bool = False
    reuse_head_with: str | None = None
    budget: int | None = None
    loss_weight: float = 1.0

    @property
    def steps_per_epoch(self) -> int:
        return self.reader.steps_per_epoch if self.reader is not None else 0

    @property
    def head_owner(self) -> str:
        """The task under whose name the head's parameters are stored."""
        return self.reuse_head_with or self.name


def load_model_state(backbone: nn.Module, heads: dict[str, nn.Module], tasks: dict[str, Task],
                     state: dict[str, torch.Tensor], source: str) -> None:
    """Assigns a checkpoint's backbone and head tensors; a head the checkpoint lacks is an error naming it."""
    head_states = {}
    for name, head in heads.items():
        owner = tasks[name].head_owner
        head_states[name] = state_keys.scoped(state, owner)
        if not head_states[name] and any(p.numel() for p in head.parameters()):
            raise KeyError(f"{source}: no parameters for task '{owner}' (tasks in the checkpoint: "
                           f"{state_keys.head_scopes(state)}); name the Trainer like the task that was trained")
    for name in ckpt.assign_state(backbone, state_keys.scoped(state, state_keys.BACKBONE), source):
        logger.info("Warning: backbone.%s not found in %s.", name, source)
    for name, head in heads.items():
        for missing in ckpt.assign_state(head, head_states[name], source):
            logger.info("Warning: %s.%s not found in %s.", tasks[name].head_owner, missing, source)


# torch's default generators are one per process: trainers in several threads take turns at them (each swaps
# its own stream in for a forward pass, `TrainLoop.own_rng`), or one thread's dropout draws from another's
GLOBAL_RNG_LOCK = threading.RLock()


def rng_state(device: torch.device) -> dict:
    """The state of torch's default generators that a step on `device` draws from (dropout): CPU and, on CUDA,
    that device's."""
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        cuda = state["cuda"]
        if isinstance(cuda, (list, tuple)):  # checkpoints before per-trainer streams held every device's state
            cuda = cuda[device.index if device.index is not None else torch.cuda.current_device()]
        torch.cuda.set_rng_state(cuda, device)


class TrainLoop:
    """Trains one backbone and the heads of `tasks` with one optimizer.

    Args:
        model: the backbone and the heads (keyed like `tasks`).
        tasks: the tasks, in task-id order.
        optimizer: a `torchpalm.optimizer` (learning rate, schedule, update rule).
        weight_decay: decoupled weight decay (None: off); biases, norms and each head's `no_weight_decay()`
            are never decayed, and each head's `param_lr_scales()` become their groups' `lr_scale`.
        use_ema, ema_decay: keep an exponential moving average of the weights (used for prediction).
        device, precision, grad_clip, skip_nonfinite: see `Trainer`.
        shard: under torchrun, shard the model with FSDP2 instead of replicating it with DDP (`torchpalm.fsdp`).
    """

    def __init__(self, model: MultiTaskModel, tasks: dict[str, Task], optimizer: Optimizer,
                 weight_decay: float | None, use_ema: bool, ema_decay: float | None, device: torch.device,
                 precision: str, grad_clip: float | None, skip_nonfinite: bool = False, shard: bool = False):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"build_backward(optimizer=...) takes a torchpalm optimizer, got {optimizer!r}; wrap a "
                            f"torch one as palm.optimizer.Torch(torch.optim.SGD, lr=..., momentum=...)")
        self.model, self.tasks, self.optimizer = model, tasks, optimizer
        self.device, self.precision, self.grad_clip = device, precision, grad_clip
        self.skip_nonfinite = skip_nonfinite
        # FSDP replaces the parameters by their shards, so it comes before the optimizer is built over them
        self.sharded = shard and distributed.active()
        if self.sharded:
            fsdp.shard_model(model)
        elif shard:
            logger.info("fsdp: one process, nothing to shard; training as usual")
        no_decay, lr_scales = set(), {}
        for name, head in model.heads.items():
            no_decay |= {f"heads.{name}.{n}" for n in head.no_weight_decay()}
            lr_scales.update({f"heads.{name}.{n}": s for n, s in head.param_lr_scales().items()})
        self.torch_optimizer = optimizer.build(param_groups(model, weight_decay, no_decay, lr_scales), device)
        # Under torchrun the model runs through DDP, which averages gradients over the ranks during backward
        # (and starts every rank from rank 0's weights). A step trains one task, so the other heads (and, for
        # token-level heads, the pooler) get no gradient: DDP has to look for unused parameters.
        self._forward: nn.Module = model
        if distributed.active() and not self.sharded:
            self._forward = nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False,
                find_unused_parameters=True)
        self._params = [p for p in model.parameters() if p.requires_grad]
        self._shared_params = [p for p in model.backbone.parameters() if p.requires_grad]
        self._corrected_params = balancing.corrected_params(model.backbone)  # what protected_moments corrects
        self._head_params = [p for p in model.heads.parameters() if p.requires_grad]
        # multi-task balancing: a factor per task on its loss (`torchpalm.balancing`; set by MultiHeadTrainer)
        self.balancer = None
        # fused torch optimizers take GradScaler's `found_inf` flag and skip the update on the device
        self._skips_on_device = getattr(self.torch_optimizer, "_step_supports_amp_scaling", False)
        self.ema: dict[str, torch.Tensor] | None = None
        self.ema_decay = 0.0
        if use_ema:
            self.ema_decay = 0.9999 if ema_decay is None else float(ema_decay)
            live = self.state()
            self.ema = {k: v.detach().clone() for k, v in live.items() if v.dtype.is_floating_point}
            # (EMA tensor, live tensor) pairs, built once: checkpoints load in place, so the live tensors stay
            self._ema_pairs = [(self.ema[k], live[k]) for k in self.ema]
        self.global_step = 0
        self.task_steps = dict.fromkeys(tasks, 0)
        # Dropout draws from torch's default generators, which every model in the process shares: a second model
        # built or trained in between would change this one's losses. The loop keeps a stream of its own, swapped
        # in for its steps only (`own_rng`) and saved in checkpoints. It starts as a copy of the global state
        # now, so a script seeded with `torch.manual_seed` draws the very numbers it drew before streams were
        # per trainer. (The global RNG is not advanced, so a module built later initialises from the numbers
        # this trainer's dropout uses; weights and dropout masks of different models sharing draws is harmless,
        # and advancing it would change every seeded script's results.)
        self.rng = rng_state(device)
        self._stepping = threading.Lock()  # held during a training step (see train_step)
        # [first global step whose loss or gradient was not finite (0: none), number of such steps]
        self._nonfinite = torch.zeros(2, dtype=torch.int64, device=device)
        self._skipped_reported = 0
        self.metrics_log: MetricsLog | None = None
        self.checkpointer = ckpt.Checkpointer(self)
        self._predicting_depth = 0

    # ---- state ----
    def state(self, full: bool = False) -> dict[str, torch.Tensor]:
        """The model's tensors under checkpoint names (a shared head once, under its owner); `full`: whole
        tensors under FSDP (a collective: every rank calls it)."""
        heads = {name: self.model.heads[name] for name, task in self.tasks.items() if task.reuse_head_with is None}
        state = state_keys.model_state(self.model.backbone, heads)
        return fsdp.full_state(state) if full and self.sharded else state

    def nonfinite_record(self) -> dict[str, int]:
        """{"first": first global step whose loss or gradient was not finite (0: none), "skipped": how many}."""
        first, skipped = self._nonfinite.tolist()
        return {"first": first, "skipped": skipped}

    def restore_nonfinite(self, record: dict) -> None:
        """Puts a checkpoint's `nonfinite_record` back (a resumed run reports the steps of the first part too)."""
        self._nonfinite.copy_(torch.tensor([record.get("first", 0), record.get("skipped", 0)]))
        self._skipped_reported = int(record.get("skipped", 0))

    def optimizer_state(self) -> dict:
        """The torch optimizer's `state_dict()`; with a state per task (`balancing.TaskMoments`) every task's,
        under "task_states" (what a checkpoint's optimizer.pt holds)."""
        if self._per_task_state:
            return self.balancer.optimizer_state_dict(self.torch_optimizer)
        return self.torch_optimizer.state_dict()

    def load_optimizer_state(self, state: dict, source: str) -> None:
        """Puts an `optimizer_state()` back (the balancer must be the checkpoint's: set before)."""
        per_task = "task_states" in state
        if per_task != self._per_task_state:
            raise ValueError(f"{source}: its optimizer holds {'a state per task' if per_task else 'one state'}, "
                             f"this trainer {'a state per task' if self._per_task_state else 'one state'} "
                             f"(balance={self.balancer.name if self.balancer is not None else None!r}); resume "
                             f"with the balance it was trained with")
        if per_task:
            self.balancer.load_optimizer_state_dict(self.torch_optimizer, state)
        else:
            self.torch_optimizer.load_state_dict(state)

    def optimizer_moments(self) -> list[tuple[str, nn.Parameter, dict]]:
        """(label, parameter, its optimizer state) for every state the optimizer keeps (one per task with
        `balancing.TaskMoments`; the label names the task then, else it is empty)."""
        if self._per_task_state:
            return self.balancer.moments()
        return [("", p, s) for p, s in self.torch_optimizer.state.items()]

    def set_total_steps(self, total: int, certain: bool = True) -> None:
        """Tells the learning-rate schedule how many steps the run takes (see `Schedualer.set_total_steps`)."""
        if self.optimizer.schedule is not None and hasattr(self.optimizer.schedule, "set_total_steps"):
            self.optimizer.schedule.set_total_steps(total, certain)

    def task_epoch(self, name: str) -> int:
        spe = self.tasks[name].steps_per_epoch
        return (self.task_steps[name] - 1) // spe if spe and self.task_steps[name] else 0

    # ---- one step ----
    @contextlib.contextmanager
    def own_rng(self):
        """Runs the block on this loop's random stream, leaving the process's global one as it was.

        Costs two state copies each way per step (5 KB on CPU, 16 bytes per CUDA device): nothing next to a step.
        """
        with GLOBAL_RNG_LOCK:  # another thread's trainer must not swap its stream in meanwhile
            outside = rng_state(self.device)
            set_rng_state(self.rng, self.device)
            try:
                yield
            finally:
                self.rng = rng_state(self.device)
                set_rng_state(outside, self.device)

    def train_step(self, task: str, batch: dict) -> torch.Tensor:
        """One optimisation step of `task` on `batch`; returns the loss (a detached device tensor). Two trainers
        may train in two threads; one trainer in two threads at once is refused (its data and state would mix)."""
        if not self._stepping.acquire(blocking=False):
            raise RuntimeError(f"task '{task}': this trainer is already taking a training step in another thread; "
                               f"a trainer trains in one thread at a time (separate trainers may train in parallel)")
        try:
            return self._train_step(task, batch)
        finally:
            self._stepping.release()

    def _task_loss(self, task: str, batch: dict) -> torch.Tensor:
        """Forward of `task` on `batch`: its loss, as this rank's part of the global batch's mean []."""
        with autocast(self.device, self.precision), self.own_rng():
            out = self._forward(task, to_device(batch, self.device))
        loss = out["loss"]
        share = distributed.loss_share(out.get("loss_count"))
        if share is not None:  # this rank's part of the global mean (ranks may count different tokens)
            loss = loss * share
        return loss

    def _weight(self, task: str) -> torch.Tensor | float:
        if self._per_task_state:  # Adam ignores the loss's scale: loss_weight scales the step instead (_step_scale)
            return 1.0
        weight = self.tasks[task].loss_weight
        if self.balancer is not None:  # multi-task balancing (`torchpalm.balancing`), on top of loss_weight
            weight = weight * self.balancer.factor(task)
        return weight

    @property
    def _per_task_state(self) -> bool:
        return self.balancer is not None and self.balancer.per_task_state

    def _step_scale(self, task: str) -> float:
        """The factor on the learning rate of a step of `task`: its loss_weight when every task has an optimizer
        state of its own (`balancing.TaskMoments`), else 1 (loss_weight scales the loss, `_weight`)."""
        return self.tasks[task].loss_weight if self._per_task_state and task != ALL_TASKS else 1.0

    def _train_step(self, task: str, batch: dict) -> torch.Tensor:
        self._forward.train()
        lr = self.optimizer.lr_at(self.global_step) * self._step_scale(task)
        for group in self.torch_optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        if self._per_task_state:  # the task's own moments and step count (`balancing.TaskMoments`)
            self.balancer.use(task, self.torch_optimizer, [n for n, t in self.tasks.items() if not t.is_aux])
            self.balancer.before_step(self._corrected_params)
        if task == ALL_TASKS:  # a batch of every task (`sampling="all"`): their gradients, combined
            loss = balancing.joint_backward(batch, self._task_loss, self._weight, self._shared_params, self.balancer)
            norm, _ = self._grad_norm(shared=False)
        else:
            loss = self._task_loss(task, batch)
            weight = self._weight(task)
            (loss * weight if not isinstance(weight, float) or weight != 1.0 else loss).backward()
            loss = loss.detach()
            # one pass over the gradients, shared with clipping (a NaN or inf anywhere makes the norm non-finite;
            # so does a finite gradient too large for the norm's float32, which no update should apply either)
            norm, shared = self._grad_norm()
            if self.balancer is not None:
                self.balancer.observe(task, loss, shared, torch.as_tensor(weight, dtype=torch.float32))
        if self.grad_clip is not None:
            torch.nn.utils.clip_grads_with_norm_(self._params, self.grad_clip, norm)
        bad = ~(torch.isfinite(fsdp.full(norm)) & torch.isfinite(loss))  # (a sharded norm is a DTensor)
        self._nonfinite[0].masked_fill_(bad & (self._nonfinite[0] == 0), self.global_step + 1)
        self._nonfinite[1] += bad
        if self._skips_on_device:
            self.torch_optimizer.found_inf = bad.float()  # the fused kernel leaves weights and moments as they are
            self.torch_optimizer.step()
        elif not bool(bad):  # unfused optimizers cannot skip on the device; on CPU this read costs nothing
            self.torch_optimizer.step()
        if self._per_task_state:  # before the EMA, which must follow the weights as the step leaves them
            self.balancer.after_step(self._corrected_params)
        if self.ema is not None and (self._skips_on_device or not bool(bad)):
            self._update_ema(keep=bad if self._skips_on_device else None)
        self.torch_optimizer.zero_grad(set_to_none=True)
        self.global_step += 1
        for name in self.tasks if task == ALL_TASKS else [task]:
            self.task_steps[name] += 1
        return loss

    def _grad_norm(self, shared: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The gradient's global norm and, when the balancer wants it, its norm on the backbone alone (whole
        tensors under FSDP), in the same one pass over the gradients."""
        if not shared or self.balancer is None or not self.balancer.needs_shared_norm:
            return torch.nn.utils.get_total_norm([p.grad for p in self._params if p.grad is not None]), None
        shared = torch.nn.utils.get_total_norm([p.grad for p in self._shared_params if p.grad is not None])
        heads = torch.nn.utils.get_total_norm([p.grad for p in self._head_params if p.grad is not None])
        return torch.nn.utils.get_total_norm([shared, heads]), fsdp.full(shared)

    def train_one_step(self, task: str, batch: dict) -> torch.Tensor:
        """PALM's `train_one_step` for either trainer: one step, the non-finite check, and the global batch's
        loss (every rank's share-weighted loss averaged: the same number on every rank, a collective)."""
        loss = self.train_step(task, batch)
        self.check_finite()
        return distributed.mean(loss)

    @property
    def skipped_steps(self) -> int:
        """Steps not applied because their loss or gradient was NaN or infinite (reads back from the device)."""
        return int(self._nonfinite[1])

    def check_finite(self) -> None:
        """Raises naming the first step whose loss or gradient was NaN or infinite (that step was not applied);
        with `skip_nonfinite`, logs how many were skipped instead. Reads two numbers back from the device."""
        first, skipped = self._nonfinite.tolist()
        if not first:
            return
        if not self.skip_nonfinite:
            raise FloatingPointError(
                f"global step {first}: the loss or a gradient was NaN or infinite; that update was not applied, "
                f"and nothing was saved from that step on (the last checkpoint predates it). Lower the learning "
                f"rate, set Trainer(grad_clip=...), or pass Trainer(skip_nonfinite=True) to skip such steps")
        if skipped > self._skipped_reported:
            logger.warning("skipped %d step(s) so far whose loss or gradient was NaN or infinite (the first at "
                           "global step %d)", skipped, first)
            self._skipped_reported = skipped

    @torch.no_grad()
    def _update_ema(self, keep: torch.Tensor | None = None) -> None:
        """Moves the EMA towards the live weights; not at all where `keep` (a device flag) is set."""
        rate = 1.0 - self.ema_decay
        if keep is not None:
            rate = (~keep).float() * rate
        for ema, live in self._ema_pairs:
            ema.lerp_(live, rate if keep is None else rate.to(ema.dtype))  # a tensor weight must match the dtype

    @contextlib.contextmanager
    def ema_weights(self):
        """Swaps the EMA weights in (for prediction and 'predict' exports), then restores the live ones."""
        if self.ema is None:
            yield
            return
        live = self.state()
        saved = {k: live[k].detach().clone() for k in self.ema}
        with torch.no_grad():
            for k, v in self.ema.items():
                live[k].copy_(v)
        try:
            yield
        finally:
            with torch.no_grad():
                for k, v in saved.items():
                    live[k].copy_(v)

    @contextlib.contextmanager
    def predicting(self):
        """The weights predictions and exports use, for the block: the EMA ones when kept (the one place they
        are swapped in) and, under FSDP, the full weights gathered on every rank (a collective), so that each
        rank then predicts its own batches without communicating. Restored afterwards. Nests."""
        if self._predicting_depth:
            self._predicting_depth += 1
            try:
                yield
            finally:
                self._predicting_depth -= 1
            return
        gathered = fsdp.unsharded(self.model) if self.sharded else contextlib.nullcontext()
        with self.ema_weights(), gathered:
            self._predicting_depth += 1
            try:
                yield
            finally:
                self._predicting_depth -= 1

    # ---- saving and the training log ----
    def set_saver(self, save_path: str | None, save_steps: int | None, save_types: tuple[str, ...],
                  max_to_keep: int | None = None, tensorboard_dir: str | None = None,
                  plot: bool | None = None) -> None:
        """Periodic saves (`Checkpointer.configure`) and the training log: `<save_path>/metrics.jsonl` and,
        given `tensorboard_dir`, TensorBoard there; `plot` draws `<save_path>/metrics.png` at the end of
        training (None: if matplotlib is there). The log and the curves need only the folder: they are written
        without `save_steps` (no periodic saves) too."""
        if save_path is None and tensorboard_dir is not None:
            raise ValueError("TensorBoard logging goes with the saver: set_saver(save_path, save_steps, "
                             "tensorboard=True)")
        self.checkpointer.configure(save_path, save_steps, save_types, max_to_keep)
        if self.metrics_log is not None:
            self.metrics_log.close()
        self.metrics_log = None
        if save_path is not None and distributed.is_main():  # the only rank that writes files
            os.makedirs(save_path, exist_ok=True)
            self.metrics_log = MetricsLog(save_path, tensorboard_dir=tensorboard_dir, plot=plot)

    def log_metrics(self, record: dict) -> None:
        """Appends a record to `<save_path>/metrics.jsonl` and TensorBoard (when a saver is set)."""
        if self.metrics_log is not None:
            try:
                self.metrics_log.write(record)
            except OSError as e:  # a disk that filled up, or was remounted read-only, mid-run
                plain = plain_write_error(e, self.checkpointer.save_path, "the training log (metrics.jsonl)")
                if plain is None:
                    raise
                raise plain from e

    def finish_logs(self) -> None:
        """End of `train()`: flushes TensorBoard and draws the curves (`<save_path>/metrics.png`)."""
        if self.metrics_log is not None:
            self.metrics_log.finish()

    # ---- the loop ----
    def run(self, batches: Iterator[tuple[str, dict]], finished: Callable[[], bool], total_steps: int,
            print_steps: int, trainer_state: Callable[[], dict], multi_task: bool,
            after_step: Callable[[str], bool] | None = None, log_totals: bool = False) -> None:
        """Trains until `finished()` or the batches run out.

        Args:
            batches: yields (task name, batch).
            finished: the finish rule, asked after every step.
            total_steps: the expected global step count at the end (for the progress bar).
            print_steps: log a line every this many global steps (0: never).
            trainer_state: the reader positions etc. to write into checkpoints.
            multi_task: use the multi-task log line (spec §11).
            after_step: called with the task name after each step (finish messages, evaluation); returning
                True stops training early.
            log_totals: log the run's global step / total steps and the task's epoch (`step 23/308, cls
                (epoch 0: 23/77), loss: ...`) instead of PALM's lines (spec §11), whose step counts within
                the epoch.
        """
        if self.metrics_log is not None:  # the history continues from this step (a fresh run: from 0); lines a
            self.metrics_log.drop_after(self.global_step)  # killed run wrote after its last checkpoint go
        progress = progress_bar(total_steps, self.global_step, "train")
        width = max(len(n) for n in self.tasks)
        last_time, last_step = time.time(), self.global_step
        with deferred_signals() as interrupted, logging_above(progress):
            try:
                while not finished() and not interrupted:
                    try:
                        task, batch = next(batches)
                    except StopIteration:
                        break
                    loss = self.train_step(task, batch)
                    progress.update(1)
                    if print_steps > 0 and self.global_step % print_steps == 0:
                        self.check_finite()
                        now = time.time()
                        speed = (self.global_step - last_step) / max(now - last_time, 1e-9)
                        last_time, last_step = now, self.global_step
                        value = float(distributed.mean(loss))  # the global batch's loss
                        shown = next(iter(self.tasks)) if task == ALL_TASKS else task  # (all: the first's epoch)
                        spe = max(self.tasks[shown].steps_per_epoch, 1)
                        step = self.task_steps[shown]
                        in_epoch = f"{(step - 1) % spe + 1}/{spe}"
                        end = f"loss: {value:.3f}, speed: {speed:.2f} steps/s"
                        if log_totals:
                            total = f"/{total_steps}" if total_steps and math.isfinite(total_steps) else ""
                            line = (f"step {self.global_step}{total}, {task:>{width}} (epoch {(step - 1) // spe}: "
                                    f"{in_epoch}), {end}")
                        elif multi_task:
                            line = (f"global step: {self.global_step}, {task:>{width}}: step {in_epoch} "
                                    f"(epoch {(step - 1) // spe}), {end}")
                        else:
                            line = f"step {in_epoch} (epoch {(step - 1) // spe}), {end}"
                        logger.info("%s", line)
                        lr = self.optimizer.lr_at(self.global_step)
                        progress.set_postfix(**({"task": task} if multi_task else {}),
                                             epoch=f"{(step - 1) // spe}: {in_epoch}", loss=f"{value:.3f}",
                                             lr=f"{lr:.2e}")
                        record = {"step": self.global_step, "task": task, "task_step": step,
                                  "epoch": (step - 1) // spe, "loss": value,
                                  "lr": self.optimizer.lr_at(self.global_step - 1),
                                  "steps_per_second": speed, "time": now}
                        if self.balancer is not None:  # the factors the next steps apply, and what it did
                            record["task_weights"] = self.balancer.weights()
                            stats = self.balancer.stats()
                            if stats:
                                record["balance_stats"] = stats
                        self.log_metrics(record)
                    stop = after_step(task) if after_step is not None else False  # PALM: after the log line
                    self.checkpointer.maybe_save(trainer_state)
                    if stop:
                        break
            finally:
                progress.close()
            self.check_finite()
            self.checkpointer.maybe_save(trainer_state, force=True)  # also the checkpoint of an interrupted run
        if interrupted:
            logger.info("training stopped by %s after global step %d%s", interrupted.name, self.global_step,
                        "" if self.checkpointer.save_path is not None else " (no saver set: nothing saved)")
            raise interrupted.exception()
