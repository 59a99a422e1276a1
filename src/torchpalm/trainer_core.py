"""What `Trainer` and `MultiHeadTrainer` share, in one place both use: `TrainerCore`, and the checks and loaders
both call (`check_reader_fits`, `load_pretrained_backbone`).

A core holds the training loop once `build_backward` made it, the saver's settings (given before or after the
loop exists), and the dev evaluator; it saves, resumes, restores a checkpoint's training state, evaluates when
due, takes PALM's `train_one_step` and runs a whole `train()`. A `Trainer` has its own core (one task); inside a
`MultiHeadTrainer` every member Trainer uses the MultiHeadTrainer's core (`Trainer.join`), so their step
counters, checkpoints and predictions go through the one loop. What differs stays with each trainer: which
tasks and batches, the finish rule, and what a checkpoint records about the tasks (`trainer_state`).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator

import torch
from torch import nn

from . import checkpoint as ckpt
from . import distributed
from .evaluation import Evaluator, best_checkpoint_dir
from .fsdp import wanted as fsdp_wanted
from .loop import Task, TrainLoop
from .metrics_log import check_extras
from .model import MultiTaskModel
from .optimizer import Optimizer

logger = logging.getLogger("torchpalm")


def check_same_shapes(trained: nn.Module, declared: nn.Module, what: str) -> None:
    """The predict-phase module must describe the trained one (its settings are what a bundle records)."""
    theirs = declared.state_dict()
    for name, value in trained.state_dict().items():
        if name not in theirs or theirs[name].shape != value.shape:
            raise ValueError(f"the predict {what} differs from the trained one at '{name}' (build them with the "
                             f"same configuration)")


def check_io(provider: dict, consumer: dict, what: str) -> None:
    missing = sorted(set(consumer) - set(provider))
    if missing:
        raise ValueError(f"{what}: {missing} required but not provided (provided: {sorted(provider)})")


def check_head_fits(backbone: nn.Module, head: nn.Module) -> None:
    """The head reads only what the backbone gives (PALM's build-time check)."""
    check_io(backbone.outputs_attr, head.inputs_attrs["backbone"], f"head {type(head).__name__} needs backbone outputs")


def check_reader_fits(reader, backbone: nn.Module, head: nn.Module) -> None:
    """PALM's fit-time checks (spec §2.6): the reader yields what backbone and head read; the data suits the head."""
    if reader.batch_size is None:
        raise RuntimeError(f"{type(reader).__name__}: call load_data() before fit_reader()")
    if hasattr(backbone, "check_reader"):
        backbone.check_reader(reader)  # max_len and vocabulary within the backbone's tables
    provided = reader.outputs_attr
    check_io(provided, backbone.inputs_attr, f"backbone {type(backbone).__name__} needs reader outputs "
             f"(did you call reader.register_with(backbone)?)")
    check_io(provided, head.inputs_attrs["reader"], f"head {type(head).__name__} needs reader outputs")
    head.check_reader(reader)


def share_among_ranks(reader) -> None:
    """Under torchrun, a training reader gives each rank its part of the same run: every rank walks rank 0's
    shuffled order (seed=None draws a different seed in each process) and takes its own slice of each global
    batch (`Reader.shard`). Nothing in one process."""
    if distributed.active():
        reader.seed = distributed.broadcast_object(reader.seed)
        reader.shard(distributed.rank(), distributed.world_size())


def train_length(reader, max_steps: int | None) -> int:
    """The steps `train()` runs over a fitted training reader: `max_steps` when given (within the reader's
    epochs, unless it cycles), else its epochs of `steps_per_epoch` (one epoch when num_epochs is None, as PALM)."""
    epochs = reader.num_epochs if reader.num_epochs is not None else 1
    budget = epochs * reader.steps_per_epoch
    if max_steps is None:
        return budget
    if reader.num_epochs is not None and max_steps > budget:
        raise ValueError(f"max_steps={max_steps} is more than the reader's {reader.num_epochs} epoch(s) of "
                         f"{reader.steps_per_epoch} steps give ({budget}): load it with num_epochs=None (it "
                         f"cycles) or more epochs")
    return int(max_steps)


class TrainerCore:
    """The loop, the saver's settings and the evaluator of a trainer (see the module docstring)."""

    def __init__(self):
        self.loop: TrainLoop | None = None
        self.saver_args: tuple | None = None  # set_saver before build_backward: applied when the loop exists
        self.evaluator: Evaluator | None = None

    def build_loop(self, model: MultiTaskModel, tasks: dict[str, Task], optimizer: Optimizer,
                   weight_decay: float | None, use_ema: bool, ema_decay: float | None, device: torch.device,
                   precision: str, grad_clip: float | None, skip_nonfinite: bool, fsdp: bool | None,
                   bundle_files: Callable) -> TrainLoop:
        """The training loop over `model` (`TrainLoop`), with the saver settings given so far."""
        self.loop = TrainLoop(model, tasks, optimizer, weight_decay, use_ema, ema_decay, device, precision,
                              grad_clip, skip_nonfinite, shard=fsdp_wanted(fsdp))
        self.loop.checkpointer.bundle_files = bundle_files
        if self.saver_args is not None:
            self.loop.set_saver(*self.saver_args)
        return self.loop

    def require_loop(self, before: str) -> TrainLoop:
        if self.loop is None:
            raise RuntimeError(f"call build_backward{'' if before in ('save', 'set_evaluation') else '(optimizer)'} "
                               f"before {before}")
        return self.loop

    def predicting(self):
        """The weights predictions use, for a block: the loop's (`TrainLoop.predicting`: EMA ones when kept, whole
        under FSDP); the model's own without a training loop."""
        return self.loop.predicting() if self.loop is not None else contextlib.nullcontext()

    # ---- saving ----
    def set_saver(self, save_path, save_steps, save_type: str, can_export: bool, max_to_keep: int | None,
                  tensorboard: bool | str, plot: bool | None) -> None:
        """Checks `set_saver`'s arguments (`saver_args`) and applies them (now, or when the loop is built)."""
        self.saver_args = saver_args(save_path, save_steps, save_type, can_export, max_to_keep, tensorboard, plot)
        if self.loop is not None:
            self.loop.set_saver(*self.saver_args)

    def save(self, directory: str, trainer_state: dict) -> str:
        """A full training checkpoint (`Checkpointer.save`) with the trainer's part `trainer_state`."""
        return self.require_loop("save").checkpointer.save(directory, trainer_state)

    def resume(self, trainer, save_path: str | None) -> str | None:
        """`trainer.load_ckpt` of the latest complete checkpoint (`resume_latest`)."""
        self.require_loop("resume")
        return resume_latest(trainer, save_path, self.saver_args)

    def restore(self, trainer_state: dict, opt_state: dict | None, rng: dict | None,
                tensors: dict[str, torch.Tensor], source: str) -> None:
        """A checkpoint's training state: the loop's (`Checkpointer.load_training_state`) and the evaluator's."""
        self.loop.checkpointer.load_training_state(trainer_state, opt_state, rng, tensors, source)
        if self.evaluator is not None and trainer_state.get("evaluation"):
            self.evaluator.load_state_dict(trainer_state["evaluation"])

    # ---- evaluation ----
    def set_evaluation(self, trainers: list, every_steps: int, weights: dict[str, float] | None, monitor: str,
                       save_best: bool, patience: int | None, min_delta: float, save_dir: str | None,
                       save: Callable[[str], str]) -> None:
        """Evaluates the dev sets of `trainers` every `every_steps` global steps (`evaluation.Evaluator`)."""
        loop = self.require_loop("set_evaluation")
        self.evaluator = Evaluator(trainers, every_steps, weights, monitor,
                                   best_checkpoint_dir(save_best, save_dir, self.saver_args), patience, min_delta,
                                   save, on_record=loop.log_metrics)

    def maybe_evaluate(self, final: bool = False) -> bool:
        """Runs the dev evaluation when it is due (or at the end); True means stop early."""
        return self.evaluator is not None and self.evaluator.maybe_evaluate(self.loop.global_step, final)

    def evaluation_state(self) -> dict | None:
        return self.evaluator.state_dict() if self.evaluator is not None else None

    @property
    def eval_history(self) -> list[dict]:
        return self.evaluator.history if self.evaluator is not None else []

    # ---- training ----
    def train_one_step(self, task: str, batch: dict, trainer_state: Callable[[], dict] | None,
                       after_step: Callable[[str], object] | None = None) -> torch.Tensor:
        """PALM's `train_one_step`: one step, `after_step(task)`, then a due periodic save (none without
        `trainer_state`); returns the global batch's loss (`TrainLoop.train_one_step`)."""
        loss = self.require_loop("training").train_one_step(task, batch)
        if after_step is not None:
            after_step(task)
        if trainer_state is not None:
            self.loop.checkpointer.maybe_save(trainer_state)
        return loss

    def run(self, batches: Iterator[tuple[str, dict]], finished: Callable[[], bool], total_steps: int,
            print_steps: int, trainer_state: Callable[[], dict], multi_task: bool, log_totals: bool,
            after_step: Callable[[str], None] | None = None, at_end: Callable[[], None] | None = None) -> None:
        """`train()`: the loop's run (`TrainLoop.run`; after each step `after_step(task)`, then the evaluation
        when due, which may stop early), the final evaluation, `at_end()`, and the training log's end."""

        def step_done(task: str) -> bool:
            if after_step is not None:
                after_step(task)
            return self.maybe_evaluate()

        self.loop.run(batches, finished, total_steps, print_steps, trainer_state, multi_task=multi_task,
                      after_step=step_done, log_totals=log_totals)
        self.maybe_evaluate(final=True)
        if at_end is not None:
            at_end()
        self.loop.finish_logs()


def resume_latest(trainer, save_path: str | None, saver_args: tuple | None) -> str | None:
    """`trainer.load_ckpt` of the latest complete checkpoint in `save_path` or the saver's path (None: none)."""
    save_path = save_path if save_path is not None else (saver_args[0] if saver_args else None)
    if save_path is None:
        raise ValueError("resume() needs save_path, or set_saver(save_path, ...) first")
    skipped = []
    for path in ckpt.complete_checkpoints(save_path):  # newest first: the newest that loads
        try:
            trainer.load_ckpt(path)
        except (ValueError, TypeError, KeyError, OSError) as e:  # corrupt, non-finite, unreadable: the next one
            skipped.append(f"{os.path.basename(path)} ({e})")
            logger.warning("resume: skipped %s, which does not load: %s", path, e)
            continue
        if skipped:
            logger.warning("resumed from %s, the newest checkpoint that loads (skipped: %s)", path,
                           "; ".join(skipped))
        return path
    if skipped:
        raise ValueError(f"{save_path}: no checkpoint there loads, so training cannot resume: {'; '.join(skipped)}")
    logger.info("no complete checkpoint in %s: training starts from the beginning", save_path)
    return None


def saver_args(save_path, save_steps, save_type: str, can_export: bool, max_to_keep: int | None = None,
               tensorboard: bool | str = False, plot: bool | None = None) -> tuple:
    """Checks `set_saver`'s arguments (PALM's README order `(save_steps, save_path)` is accepted too) and returns
    `(save_path, save_steps, save types, max_to_keep, tensorboard_dir, plot)` for `TrainLoop.set_saver`."""
    if isinstance(save_path, int) and isinstance(save_steps, (str, os.PathLike)):
        save_path, save_steps = save_steps, save_path
    types = tuple(t.strip() for t in str(save_type).split(",") if t.strip())
    if any(t not in ("ckpt", "predict") for t in types):
        raise ValueError(f"save_type must be a comma-separated subset of 'ckpt,predict', got {save_type!r}")
    if save_steps is not None and int(save_steps) < 1:
        raise ValueError(f"save_steps must be >= 1, got {save_steps}")
    if save_path is not None and "predict" in types and not can_export:
        raise RuntimeError("save_type 'predict' needs build_predict_forward(pred_backbone, pred_head) first")
    if max_to_keep is not None and (isinstance(max_to_keep, bool) or int(max_to_keep) != max_to_keep
                                    or max_to_keep < 1):
        raise ValueError(f"max_to_keep must be an integer >= 1 or None (keep all), got {max_to_keep!r}")
    if tensorboard is True:
        tensorboard_dir = os.path.join(os.fspath(save_path), "tensorboard") if save_path is not None else None
    elif tensorboard is False or tensorboard is None:
        tensorboard_dir = None
    elif isinstance(tensorboard, (str, os.PathLike)):
        tensorboard_dir = os.fspath(tensorboard)
    else:
        raise ValueError(f"tensorboard must be True, False or a directory, got {tensorboard!r}")
    if plot not in (None, True, False):
        raise ValueError(f"plot must be None (when matplotlib is installed), True or False, got {plot!r}")
    check_extras(tensorboard_dir is not None, plot)
    if save_path is not None:
        ckpt.check_writable(save_path)
    return save_path, save_steps, types, max_to_keep, tensorboard_dir, plot


def backbone_config(backbone: nn.Module) -> dict | None:
    """The backbone's config dict (hidden_size, ...), against which a Paddle parameter directory is checked."""
    config = getattr(backbone, "config", None)
    return config if isinstance(config, dict) else None


def pretrained_weights(backbone: nn.Module, model_path: str) -> tuple[dict, str]:
    """(tensors in the backbone's parameter names, the file read): the backbone's own `pretrained_state` when it
    has one (HFEncoder keeps HF's names), else torchpalm's converters (HF, torchpalm or Paddle files)."""
    if hasattr(backbone, "pretrained_state"):
        return backbone.pretrained_state(model_path)
    return ckpt.load_backbone_weights(model_path, backbone_config(backbone))


def assign_pretrained(backbone: nn.Module, model_path: str) -> None:
    """Pretrained weights into `backbone` (non-strict): a `Warning: <name> not found in <path>.` line for each
    parameter the file does not have (it keeps its initialisation)."""
    state, file = pretrained_weights(backbone, model_path)
    for name in ckpt.assign_state(backbone, state, file):
        logger.info("Warning: %s not found in %s.", name, model_path)


def load_pretrained_backbone(backbone: nn.Module, model_path: str) -> None:
    """PALM's `load_pretrain`: `assign_pretrained` between its two log lines."""
    logger.info("Loading pretraining parameters from %s...", model_path)
    assign_pretrained(backbone, model_path)
    logger.info("")
