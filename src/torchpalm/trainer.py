"""Trainer: PaddlePALM's single-task workflow (spec §3) on the shared training loop (`loop.TrainLoop`).

build_forward(backbone, head) -> build_backward(optimizer, weight_decay) -> fit_reader(reader) ->
load_pretrain / load_ckpt -> set_saver -> train(print_steps); then build_predict_forward(pred_backbone,
pred_head) -> fit_reader(pred_reader, 'predict') -> predict(output_dir).

A Trainer is one task (its name, head and readers) plus, once `build_backward` ran, a loop with that one task.
Inside a `MultiHeadTrainer` the task is one of several and the loop is the multi-task one: the Trainer's step
counters then read that loop's per-task counters, and `predict` still works on its own.

Prediction runs the trained model in eval mode (`prediction.predict_tasks`); the predict backbone and head of
`build_predict_forward` say what is read and how results are post-processed, so unlike PALM nothing is
re-initialised (spec §17.11). The CPU is one device (§17.37), and a checkpoint restores everything that decides
the next step (§17.18).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from . import bundle, distributed, process
from . import checkpoint as ckpt
from .evaluation import default_metric
from .loop import Task, TrainLoop, load_model_state
from .model import MultiTaskModel, backbone_record, default_device, head_record
from .optimizer import Optimizer
from .prediction import PredictTask, predict_one_batch, predict_tasks
from .prediction import finish_prediction as finish_prediction
from .trainer_core import (
    TrainerCore,
    assign_pretrained,
    check_head_fits,
    check_io,
    check_reader_fits,
    check_same_shapes,
    share_among_ranks,
    train_length,
)
from .trainer_core import backbone_config as backbone_config
from .trainer_core import load_pretrained_backbone as load_pretrained_backbone

logger = logging.getLogger("torchpalm")

__all__ = ["Trainer", "check_io"]


class Trainer:
    """Trains and runs one task.

    Args:
        name: task name; namespaces the head's parameters in checkpoints and appears in log lines.
        mix_ratio: sampling weight in multi-task training (`sampling="ratio"`).
        reuse_head_with: name of another task of the same MultiHeadTrainer whose head this one shares (the
            same module and parameters; stored once, under that task's name).
        device: torch device; default CUDA if available, else CPU (one device).
        precision: 'auto' (bf16 autocast on CUDA, fp32 on CPU), 'bf16', 'fp16' or 'fp32'.
        grad_clip: clip the global gradient norm to this value (None: no clipping, as PALM).
        loss_weight: factor on this task's loss before backpropagation (not in PALM). In multi-task training
            the tasks' losses can differ in scale by an order of magnitude (a CRF sums over a sentence's words,
            a classifier's cross-entropy is one number per sentence), and with Adam's shared second-moment
            estimate on the backbone the larger one sets the step size for both; weights rebalance that.
            Logged losses are unweighted. Under MultiHeadTrainer's default balancing and 'task_moments', where
            every task has its own Adam state and the loss's scale changes nothing, it scales the learning rate.
        skip_nonfinite: a step whose loss or gradient is NaN or infinite is never applied; by default training
            then stops with an error naming that step (at the next log line, checkpoint or the end, before
            anything is saved). True skips such steps and goes on, logging how many (`skipped_steps`).
        fsdp: under torchrun, shard the weights, gradients and optimizer state over the ranks with FSDP2
            instead of replicating them with DDP (`torchpalm.fsdp`); None: the TORCHPALM_FSDP environment
            variable decides (off by default). Nothing changes in one process.

    Building a Trainer changes nothing outside it. The process-level setup (under torchrun: joining the process
    group; with several GPUs and no launcher: re-running the script as one process per GPU; the stdout log
    handler) happens at the first `build_backward`, `fit_reader` or `train` (`process.prepare_process`).
    """

    def __init__(self, name: str, mix_ratio: float = 1.0, reuse_head_with: str | None = None,
                 device: str | torch.device | None = None, precision: str = "auto",
                 grad_clip: float | None = None, loss_weight: float = 1.0, skip_nonfinite: bool = False,
                 fsdp: bool | None = None):
        if not isinstance(name, str) or not name or "." in name:
            raise ValueError(f"task name must be a non-empty string without '.', got {name!r}")
        if precision not in ("auto", "bf16", "fp16", "fp32"):
            raise ValueError(f"precision must be 'auto', 'bf16', 'fp16' or 'fp32', got {precision!r}")
        if mix_ratio < 0:
            raise ValueError(f"mix_ratio must be >= 0, got {mix_ratio}")
        if not loss_weight > 0:
            raise ValueError(f"loss_weight must be > 0, got {loss_weight}")
        self._name = name
        self.device = torch.device(device) if device is not None else default_device()
        if distributed.launched() and self.device.type == "cuda":
            self.device = default_device()  # each rank its own GPU, whatever "cuda:N" the script names
        self._precision = precision
        self._grad_clip = grad_clip
        self._skip_nonfinite = bool(skip_nonfinite)
        self._fsdp = fsdp
        self._task = Task(name, head=None, mix_ratio=float(mix_ratio), reuse_head_with=reuse_head_with,
                          loss_weight=float(loss_weight))
        self._backbone = self._head = self._model = None
        self._pred_backbone = self._pred_head = None
        self._optimizer: Optimizer | None = None
        self._core = TrainerCore()  # loop, saver settings, evaluator: its own, or its MultiHeadTrainer's
        self._multi_task = None  # the MultiHeadTrainer this trainer belongs to, once it built
        self._train_reader = self._pred_reader = None
        self._train_iterator: Iterator | None = None
        self._pred_iterator: Iterator | None = None
        self._pending_reader_state: dict | None = None
        self._max_steps: int | None = None
        self._dev: tuple | None = None  # (dev reader, metric)
        # predict() calls share the reader's position, the head's buffer and the EMA swap: one at a time
        self._predict_lock = threading.RLock()

    # ---- properties (PALM names) ----
    @property
    def name(self) -> str:
        return self._name

    @property
    def mix_ratio(self) -> float:
        return self._task.mix_ratio

    @mix_ratio.setter
    def mix_ratio(self, value: float) -> None:
        self._task.mix_ratio = float(value)

    @property
    def is_aux(self) -> bool:
        return self._task.is_aux

    @property
    def num_examples(self) -> int:
        return self._train_reader.num_examples if self._train_reader is not None else 0

    @property
    def num_epochs(self) -> int | None:
        return self._train_reader.num_epochs if self._train_reader is not None else None

    @property
    def cur_train_step(self) -> int:
        """Steps this task has trained (inside a MultiHeadTrainer: its own count, not the global one)."""
        return self.loop.task_steps[self._name] if self.loop is not None else 0

    @property
    def cur_train_epoch(self) -> int:
        return self.loop.task_epoch(self._name) if self.loop is not None else 0

    @property
    def skipped_steps(self) -> int:
        """Steps not applied because their loss or gradient was NaN or infinite (`skip_nonfinite`)."""
        return self.loop.skipped_steps if self.loop is not None else 0

    @property
    def steps_per_epoch(self) -> int | None:
        return self._train_reader.steps_per_epoch if self._train_reader is not None else None

    steps_pur_epoch = steps_per_epoch  # PALM's spelling

    @property
    def num_train_steps(self) -> int | None:
        """The steps `train()` runs (the schedule's length when it was left open), once a reader is fitted."""
        return self._task.budget

    @property
    def model(self) -> MultiTaskModel | None:
        return self.loop.model if self.loop is not None else self._model

    @property
    def eval_history(self) -> list[dict]:
        """Every dev evaluation of `train()` so far: {"step", "tasks": {task: metrics}, "aggregate"}."""
        return self._core.eval_history

    @property
    def torch_optimizer(self) -> torch.optim.Optimizer | None:
        """The torch optimizer `build_backward` created (its param_groups carry weight_decay and lr_scale)."""
        return self.loop.torch_optimizer if self.loop is not None else None

    @property
    def task(self) -> Task:
        return self._task

    @property
    def loop(self) -> TrainLoop | None:
        """The training loop this task trains in (its own, or its MultiHeadTrainer's), once built."""
        return self._core.loop

    @property
    def backbone(self) -> nn.Module | None:
        """The trained backbone (`build_forward`)."""
        return self._backbone

    @property
    def head(self) -> nn.Module | None:
        """The trained head (`build_forward`; inside a MultiHeadTrainer the shared one for `reuse_head_with`)."""
        return self._head

    @property
    def predict_backbone(self) -> nn.Module | None:
        """The predict-phase backbone (`build_predict_forward`): what the backbone reads when predicting."""
        return self._pred_backbone

    @property
    def predict_head(self) -> nn.Module | None:
        """The predict-phase head: what it reads, its post-processing and results."""
        return self._pred_head

    @property
    def train_reader(self):
        return self._train_reader

    @property
    def train_iterator(self) -> Iterator | None:
        """The fitted training reader's batch iterator (`fit_reader`)."""
        return self._train_iterator

    @property
    def precision(self) -> str:
        return self._precision

    @property
    def grad_clip(self) -> float | None:
        return self._grad_clip

    @property
    def skip_nonfinite(self) -> bool:
        return self._skip_nonfinite

    @property
    def fsdp(self) -> bool | None:
        return self._fsdp

    @property
    def dev(self) -> tuple | None:
        """(dev reader, metric) of `set_dev`, or None."""
        return self._dev

    @property
    def predict_lock(self) -> threading.RLock:
        """Held by a prediction over this task's reader and head (they hold the position and the results)."""
        return self._predict_lock

    # ---- joining a MultiHeadTrainer ----
    def join(self, core: TrainerCore, multi_task) -> None:
        """Trains from now on as one task of `multi_task`, through its `core` (`MultiHeadTrainer.build_backward`):
        the step counters, checkpoints and predictions of this Trainer then go through that loop."""
        self._core, self._multi_task, self._optimizer = core, multi_task, core.loop.optimizer

    def reuse_head_of(self, owner: Trainer) -> None:
        """Uses `owner`'s head (`reuse_head_with`): the same module, so the same parameters, and its predict head
        once built."""
        if owner.head is not None:
            self._head = self._task.head = owner.head
        if owner.predict_head is not None:
            self._pred_head = owner.predict_head

    def take_predict_iterator(self) -> Iterator[dict]:
        """The fitted predict reader's iterator, refitted when used up; it is this caller's from now on."""
        if self._pred_iterator is None:
            self.fit_reader(self._pred_reader, phase="predict")
        iterator, self._pred_iterator = self._pred_iterator, None
        return iterator

    def end_predict_pass(self) -> None:
        """A whole prediction pass used up the fitted predict iterator (PALM: single use)."""
        self._pred_iterator = None

    @property
    def predict_reader(self):
        return self._pred_reader

    def set_as_aux(self) -> None:
        """Marks this task as auxiliary in multi-task training (it never blocks the end of training)."""
        self._task.is_aux = True

    # ---- building ----
    def build_forward(self, backbone: nn.Module, task_head: nn.Module) -> MultiTaskModel:
        """Connects backbone and head for training; returns the model (pass it to the optimizer)."""
        check_head_fits(backbone, task_head)
        self._backbone, self._head = backbone, task_head
        self._task.head = task_head
        self._model = MultiTaskModel(backbone, {self._name: task_head}).to(self.device)
        self._model.train()
        return self._model

    def build_predict_forward(self, pred_backbone: nn.Module, pred_head: nn.Module) -> dict:
        """Says how to predict: the reader fields and backbone features `pred_head` reads and how it
        post-processes results. The predictions are computed by the trained backbone and head (in eval mode),
        once training was built; by these modules themselves otherwise (a prediction-only script)."""
        check_head_fits(pred_backbone, pred_head)
        if self._backbone is not None:
            check_same_shapes(self._backbone, pred_backbone, "backbone")
            check_same_shapes(self._head, pred_head, "head")
        self._pred_backbone, self._pred_head = pred_backbone.to(self.device), pred_head.to(self.device)
        pred_backbone.eval()
        pred_head.eval()
        return dict(pred_head.outputs_attr)

    def build_backward(self, optimizer: Optimizer, weight_decay: float | None = None, use_ema: bool = False,
                       ema_decay: float | None = None) -> None:
        """Creates the torch optimizer over backbone + head (no re-initialisation of any weight).

        Args:
            optimizer: e.g. `palm.optimizer.Adam(loss, lr, sched)`.
            weight_decay: decoupled weight decay (None: off).
            use_ema: keep an exponential moving average of the weights, used for prediction and saved in
                checkpoints (PALM updated one and never used it, spec §17.16).
            ema_decay: the EMA decay (default 0.9999).
        """
        if self._backbone is None:
            raise RuntimeError("call build_forward(backbone, head) before build_backward")
        process.prepare_process(self.device)
        self._optimizer = optimizer
        self._core.build_loop(self._model, {self._name: self._task}, optimizer, weight_decay, use_ema, ema_decay,
                              self.device, self._precision, self._grad_clip, self._skip_nonfinite, self._fsdp,
                              bundle_files=lambda: bundle.periodic_writer(self))
        self._sync_schedule()

    def _sync_schedule(self) -> None:
        """The schedule learns the number of steps training runs from the same place the loop does."""
        if self._own_loop() is not None and self._task.budget is not None:
            # a reader loaded with num_epochs=None cycles forever: train() runs one epoch, but a script's own
            # train_one_step loop may run any number of steps, so a length the script gave is not second-guessed
            self.loop.set_total_steps(self._task.budget, certain=self._train_reader.num_epochs is not None
                                       or self._max_steps is not None)

    def _own_loop(self) -> TrainLoop | None:
        return self.loop if self._multi_task is None else None

    def fit_reader(self, reader, phase: str = "train", max_steps: int | None = None) -> Iterator[dict[str, torch.Tensor]]:
        """Binds a loaded reader, checks it against the backbone and head, and returns its batch iterator.

        `max_steps` (train): `train()` runs exactly this many steps, and a schedule left open spans them, instead
        of the reader's epochs (load it with `num_epochs=None` to cycle, or with enough epochs). Fractional
        epochs are `max_steps = ceil(epochs * reader.steps_per_epoch)` on a cycling reader."""
        if phase not in ("train", "predict"):
            raise ValueError(f"phase must be 'train' or 'predict', got {phase!r}")
        if max_steps is not None and (isinstance(max_steps, bool) or int(max_steps) != max_steps or max_steps < 1):
            raise ValueError(f"max_steps must be an integer >= 1 or None, got {max_steps!r}")
        backbone, head = (self._backbone, self._head) if phase == "train" else (self._pred_backbone, self._pred_head)
        if backbone is None:
            raise RuntimeError(f"call {'build_forward' if phase == 'train' else 'build_predict_forward'} "
                               f"before fit_reader(phase={phase!r})")
        check_reader_fits(reader, backbone, head)
        process.prepare_process(self.device)
        reader.reset()
        if phase == "train":
            share_among_ranks(reader)
            self._train_reader = self._task.reader = reader
            self._task.budget = train_length(reader, max_steps)
            self._max_steps = int(max_steps) if max_steps is not None else None
            if self._pending_reader_state is not None:
                reader.load_state_dict(self._pending_reader_state)
                self._pending_reader_state = None
            self._train_iterator = iter(reader)
            self._sync_schedule()
            iterator = self._train_iterator
        else:
            self._pred_reader, self._pred_iterator = reader, iter(reader)
            iterator = self._pred_iterator
        logger.info("ok!")
        return iterator

    # ---- loading ----
    def _weights(self) -> tuple[nn.Module, nn.Module]:
        """The backbone and head that hold this task's weights (the predict ones when training was not built)."""
        if self._backbone is not None:
            return self._backbone, self._head
        return self._pred_backbone, self._pred_head

    def load_pretrain(self, model_path: str, convert: bool = False) -> None:
        """Loads backbone weights from an HF model directory/file, a torchpalm checkpoint or a PaddlePALM/ERNIE
        Paddle parameter directory (`<model>/params`, as PALM's downloader left it) (non-strict)."""
        process.ensure_console_logging()
        backbone = self._weights()[0]
        if backbone is None:
            raise RuntimeError("call build_forward or build_predict_forward before load_pretrain")
        load_pretrained_backbone(backbone, model_path)

    def load_predict_model(self, model_path: str, convert: bool = False) -> None:
        """Pretrained weights into the predict backbone, which predicts only where no training was built."""
        if self._pred_backbone is None:
            raise RuntimeError("call build_predict_forward before load_predict_model")
        assign_pretrained(self._pred_backbone, model_path)

    def load_ckpt(self, model_path: str, training_state: bool = True) -> None:
        """Loads a checkpoint: weights, and for training also optimizer, step counters, reader position and the
        trainer's random stream.

        A checkpoint of a MultiHeadTrainer works too: this task's head and the shared backbone are read from it.
        `training_state=False` loads the weights only, to start a new training run from them (e.g. fine-tuning
        one task after multi-task training).
        """
        backbone, head = self._weights()
        if backbone is None:
            raise RuntimeError("call build_forward or build_predict_forward before load_ckpt")
        process.ensure_console_logging()
        state, trainer_state, opt_state, rng = ckpt.load_checkpoint_dir(model_path)
        if self._backbone is not None:
            logger.info("loading checkpoint into train program")
        # a task that shared another's head in multi-task training finds it under that task's name
        owner = trainer_state.get("tasks", {}).get(self._name, {}).get("head_owner", self._task.head_owner)
        task = dataclasses.replace(self._task, reuse_head_with=owner if owner != self._name else None)
        load_model_state(backbone, {self._name: head}, {self._name: task}, state, model_path)
        if training_state and self.loop is not None and self._own_loop() is not None:
            self._core.restore(trainer_state, opt_state, rng, state, model_path)
            self.restore_reader(trainer_state.get("tasks", {}).get(self._name, {}).get("reader"))
        logger.info("Load model from %s", model_path)

    def restore_reader(self, reader_state: dict | None) -> None:
        """Puts the training reader at a checkpoint's position (kept until a reader is fitted)."""
        if reader_state is None:
            return
        if self._train_reader is not None:
            self._train_reader.load_state_dict(reader_state)
            self._train_iterator = iter(self._train_reader)
        else:
            self._pending_reader_state = reader_state

    # ---- saving ----
    def set_saver(self, save_path: str, save_steps: int, save_type: str = "ckpt",
                  max_to_keep: int | None = None, tensorboard: bool | str = False, plot: bool | None = None) -> None:
        """Saves every `save_steps` steps to `save_path/ckpt.step<N>` ('ckpt': weights + training state,
        for resuming) and/or `save_path/pred.step<N>` ('predict': an inference bundle, `palm.Predictor.load`;
        see `torchpalm.bundle`).

        `max_to_keep`: keep only the last this many of each (None: all); `best.<task>` folders of
        `set_evaluation` are never removed. Unfinished saves of a killed run in `save_path` are removed here.

        The training log goes to `save_path/metrics.jsonl` (see `torchpalm.metrics_log`); `tensorboard=True`
        also writes TensorBoard scalars to `save_path/tensorboard` (or the directory given instead of True;
        needs the tensorboard package), and `plot` draws the curves into `save_path/metrics.png` at the end of
        `train()` (None: when matplotlib is installed; True: required; False: never).
        """
        self._core.set_saver(save_path, save_steps, save_type, self._pred_backbone is not None, max_to_keep,
                             tensorboard, plot)

    def resume(self, save_path: str | None = None) -> str | None:
        """Continues training from the latest complete checkpoint in `save_path` (default: the `set_saver`
        path): `load_ckpt(palm.checkpoint.latest(save_path))`. Returns the folder loaded, or None when there is
        none yet, so one script serves the first run and every restart."""
        if self.loop is None:
            raise RuntimeError("call build_backward(optimizer) before resume")
        if self._own_loop() is None:
            raise RuntimeError(f"task '{self._name}' belongs to a MultiHeadTrainer: call resume() on that")
        return self._core.resume(self, save_path)

    def _trainer_state(self) -> dict:
        return {
            "epoch": self.cur_train_epoch,
            "tasks": {self._name: self.task_state()},
            "backbone": backbone_record(self._backbone),
            "heads": {self._name: head_record(self._head)},
            "evaluation": self._core.evaluation_state(),
        }

    def task_state(self) -> dict:
        """This task's part of a checkpoint: its step, epoch and reader position."""
        return {"step": self.cur_train_step, "epoch": self.cur_train_epoch,
                "reader": self._train_reader.state_dict() if self._train_reader is not None else None}

    def save(self, directory: str) -> str:
        """Writes a full training checkpoint to `directory` (atomically)."""
        return self._core.save(directory, self._trainer_state())

    # ---- evaluation ----
    def set_dev(self, reader, metric=None) -> None:
        """Gives this task a dev set for evaluation during training (`set_evaluation`) and `evaluate()`.

        Args:
            reader: a predict-phase reader, loaded from a file WITH labels and registered with the predict
                backbone (`build_predict_forward` must have been called).
            metric: `fn(results, reader) -> {name: value}` (higher is better; the first key is compared);
                default by head: accuracy (Classify, Match), entity F1 (SequenceLabel), answer F1 (MRC).
        """
        if self._pred_backbone is None:
            raise RuntimeError("call build_predict_forward(pred_backbone, pred_head) before set_dev")
        if reader.phase != "predict":
            raise ValueError(f"task '{self._name}': the dev reader must be in the predict phase "
                             f"(got {reader.phase!r})")
        check_reader_fits(reader, self._pred_backbone, self._pred_head)
        self._dev = (reader, metric or default_metric(self._pred_head))

    def evaluate(self, reader=None, metric=None) -> dict[str, float]:
        """Predicts a labelled predict-phase reader (default: the dev set) and scores it; returns the metrics."""
        if reader is None:
            if self._dev is None:
                raise RuntimeError(f"task '{self._name}' has no dev set: call set_dev(reader) or pass a reader")
            reader, metric = self._dev[0], metric or self._dev[1]
        if self._pred_backbone is None:
            raise RuntimeError("call build_predict_forward(pred_backbone, pred_head) before evaluate")
        metric = metric or default_metric(self._pred_head)
        check_reader_fits(reader, self._pred_backbone, self._pred_head)
        return metric(self._predict_reader(reader, None, print_steps=0), reader)

    def set_evaluation(self, every_steps: int, save_best: bool = True, patience: int | None = None,
                       min_delta: float = 0.0, save_dir: str | None = None) -> None:
        """Evaluates the dev set every `every_steps` steps during `train()` (see `torchpalm.evaluation`).

        Args:
            every_steps: how often (and once more at the end).
            save_best: keep the best checkpoint as `<save_dir>/best.<task>`.
            patience: stop training after this many evaluations without improvement (None: never).
            min_delta: the least increase that counts as an improvement.
            save_dir: where best checkpoints go (default: the `set_saver` path).
        """
        if self._multi_task is not None:
            raise RuntimeError(f"task '{self._name}' belongs to a MultiHeadTrainer: call set_evaluation() on that")
        self._core.set_evaluation([self], every_steps, None, self._name, save_best, patience, min_delta, save_dir,
                                  self.save)

    # ---- training ----
    def train_one_step(self, batch: dict) -> dict[str, np.ndarray]:
        """One optimisation step on one batch; returns `{"<name>.loss": loss}` (PALM's fetch), the global batch's
        loss (`TrainLoop.train_one_step`; reads the loss back, so `train()` does not call this)."""
        if self.loop is None:
            raise RuntimeError("call build_backward(optimizer) before training")
        # (inside a MultiHeadTrainer, its saver runs in its own train_one_step)
        loss = self._core.train_one_step(self._name, batch, self._trainer_state if self._own_loop() else None)
        return {f"{self._name}.loss": loss.float().cpu().numpy()}

    def get_one_batch(self, phase: str = "train") -> dict:
        """The next batch of the fitted iterator of that phase (PALM's was broken, spec §17.12)."""
        iterator = self._train_iterator if phase == "train" else self._pred_iterator
        if iterator is None:
            raise RuntimeError(f"call fit_reader(reader, phase={phase!r}) first")
        return next(iterator)

    def train(self, print_steps: int = 5, log_totals: bool = False) -> None:
        """Runs training to the end of the fitted reader (one epoch if its num_epochs is None). Every
        `print_steps` steps a line is logged: PALM's (`step 23/77 (epoch 0), ...`, the step within the epoch) or,
        with `log_totals`, the run's (`step 23/308, cls (epoch 0: 23/77), ...`, as the command line logs)."""
        if self._train_iterator is None:
            raise RuntimeError("call fit_reader(reader) before train()")
        if self.loop is None:
            raise RuntimeError("call build_backward(optimizer) before train()")
        if self._own_loop() is None:
            raise RuntimeError(f"task '{self._name}' belongs to a MultiHeadTrainer: call train() on that")
        process.prepare_process(self.device)
        name, budget = self._name, self._task.budget
        batches = ((name, batch) for batch in self._train_iterator)
        self._core.run(batches, lambda: self.loop.task_steps[name] >= budget, budget, print_steps,
                       self._trainer_state, multi_task=False, log_totals=log_totals)

    # ---- prediction ----
    def prediction_model(self) -> MultiTaskModel:
        """The model that predicts this task: the training loop's (its heads keyed by task name), else the
        trained backbone and head, else the predict-phase ones (a prediction-only script)."""
        if self.loop is not None:
            return self.loop.model
        if self._backbone is not None:
            return MultiTaskModel(self._backbone, {self._name: self._head})
        return MultiTaskModel(self._pred_backbone, {self._name: self._pred_head})

    def predicting(self):
        """The weights predictions use, for a block (`TrainerCore.predicting`)."""
        return self._core.predicting()

    def predict_task(self, reader=None, output_dir: str | None = None) -> PredictTask:
        """This task as the prediction loop sees it: its predict head (what it reads, its post-processing and
        results) and a predict-phase reader (default: the fitted one)."""
        return PredictTask(self._name, self._pred_head, reader if reader is not None else self._pred_reader,
                           output_dir)

    def predict_one_batch(self, batch: dict) -> dict[str, np.ndarray]:
        """Runs the model on one batch as it predicts; returns the head's outputs as numpy arrays (not namespaced)."""
        if self._pred_backbone is None:
            raise RuntimeError("call build_predict_forward(pred_backbone, pred_head) before predicting")
        with self.predicting():
            return predict_one_batch(self.prediction_model(), self.predict_task(), batch, self.device,
                                     self._precision, list(self._pred_backbone.inputs_attr))

    def predict(self, output_dir: str | None = None, print_steps: int = 1000):
        """Predicts the fitted predict reader (one full, ordered pass); writes `output_dir/predictions.json`;
        returns the results.

        Safe to call from several threads: calls run one at a time (they share the reader's position, the
        head's results buffer and, with EMA, the weights swapped in), and each returns every result. For
        concurrent serving, `palm.Predictor` runs calls in parallel.
        """
        if self._pred_reader is None:
            raise RuntimeError("call fit_reader(pred_reader, phase='predict') before predict()")
        return self._predict_reader(self._pred_reader, output_dir, print_steps)

    def _predict_reader(self, reader, output_dir: str | None, print_steps: int):
        with self._predict_lock, self.predicting():
            out = output_dir if distributed.is_main() else None  # rank 0 writes the files
            done = predict_tasks(self.prediction_model(), [self.predict_task(reader, out)], self.device,
                                 self._precision, list(self._pred_backbone.inputs_attr), print_steps,
                                 spread=True)
        self.end_predict_pass()
        return done.results[self._name]

    def reset_buffer(self) -> None:
        if self._pred_head is not None:
            self._pred_head.reset()
