"""MultiHeadTrainer: PaddlePALM's multi-task training (spec §4) on the shared training loop.

Several `Trainer`s, each one task (name, head, reader), built on ONE backbone object. The MultiHeadTrainer puts
their heads in one model, trains them with one optimizer, draws the task of every step with a `TaskSampler`,
and stops when every main task has trained its step budget (auxiliary tasks never block the end):

    t_slot.build_forward(backbone, slot_head); t_intent.build_forward(backbone, intent_head)
    mh = MultiHeadTrainer([t_slot, t_intent]); loss = mh.build_forward()
    mh.build_backward(palm.optimizer.Adam(loss, lr, sched), weight_decay=0.01)
    mh.fit_readers_with_mixratio([slot_reader, intent_reader], "slot", num_epochs=20)
    mh.load_pretrain(model_dir); mh.set_saver("outputs/", 300); mh.train(print_steps=10)

Multi-head inference: each trainer's `build_predict_forward(pred_backbone, pred_head)` on one predict backbone,
then `mh.build_predict_forward()`, `mh.merge_inference_readers(readers)` and `predict_one_batch(task, batch)`
(PALM), or `mh.predict()` for every task at once, which runs the backbone once for tasks that read the same text.

Fixed from PALM (spec §17): task draws use a seeded generator of their own (§17.22) and are part of the
checkpoint; the saver runs once per step (§17.17); the number of steps the run will take is computed exactly
before it starts, so the learning-rate schedule can match it; `reuse_head_with` really shares a head (§17.13);
dict readers work in `merge_inference_readers` and its generators stop cleanly (§17.39); `predict` exists (§17.38).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch

from . import balancing, bundle, distributed
from . import checkpoint as ckpt
from .loop import ALL_TASKS, TrainLoop, load_model_state
from .model import MultiTaskModel, backbone_record, head_record
from .optimizer import Optimizer
from .prediction import predict_tasks
from .process import prepare_process
from .sampling import TaskSampler, run_length, step_budgets
from .trainer import Trainer
from .trainer_core import TrainerCore, load_pretrained_backbone

logger = logging.getLogger("torchpalm")

TASK_ID = "__task_id"
ALL_BATCHES = "__batches"  # a sampling='all' step's {task: batch}


class MultiHeadTrainer:
    """Trains several tasks on one shared backbone.

    Args:
        trainers: the tasks' `Trainer`s; their order gives the task ids 0..n-1.
        sampling: how the task of each step is drawn: 'ratio' (each trainer's `mix_ratio`, PALM's rule, the
            default), 'proportional' (training-set sizes), 'temperature' (size^(1/temperature)), 'annealed'
            (from proportional towards uniform over the run) or 'uniform' (see `torchpalm.sampling`); or 'all':
            every step trains every task on a batch of its own (num_epochs epochs of the reference task each;
            one forward and backward per task; their gradients summed, or combined by balance='pcgrad').
        temperature: T of the 'temperature' strategy.
        max_examples: cap on a task's size before the temperature is applied (jiant's examples cap).
        anneal_to: the final size exponent of 'annealed' (0: uniform at the end).
        seed: seed of the task draws (None: derived from the readers' seeds, so seeded readers give a
            reproducible run, as PALM's examples intended).
        fsdp: shard the shared model with FSDP2 under torchrun (see `Trainer`; None: any trainer's `fsdp=`,
            else the TORCHPALM_FSDP environment variable).
        balance: how the tasks share the backbone's training (`torchpalm.balancing`): 'auto' (the default:
            'protected_moments' with one task per step: an optimizer state per main task, and each step's
            backbone update leaves out what works against another main task; auxiliary tasks step with the
            main task's state, as in PaddlePALM; with sampling='all', 'loss_scale'), None (PaddlePALM's plain sum
            of the losses on one optimizer state; what a checkpoint trained without balancing resumes with),
            'task_moments', 'grad_scale', 'loss_scale', 'uncertainty', 'pcgrad' (sampling='all') or a
            `torchpalm.balancing.Balancer`. Each trainer's `loss_weight` applies on top (with an optimizer state
            per task it scales the task's learning rate). Measurements: examples/multi_task/README.md, "Task
            balancing".
    """

    def __init__(self, trainers: Sequence[Trainer], sampling: str = "ratio", temperature: float = 2.0,
                 max_examples: int | None = None, anneal_to: float = 0.2, seed: int | None = None,
                 fsdp: bool | None = None, balance: str | balancing.Balancer | None = "auto"):
        trainers = list(trainers)
        if not trainers or not all(isinstance(t, Trainer) for t in trainers):
            raise TypeError("MultiHeadTrainer needs a non-empty list of palm.Trainer objects")
        names = [t.name for t in trainers]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"two tasks share the name(s) {duplicates}; every Trainer needs its own name")
        for t in trainers:
            owner = t.task.reuse_head_with
            if owner is not None and (owner not in names or owner == t.name):
                raise ValueError(f"task '{t.name}': reuse_head_with={owner!r} names no other task of this "
                                 f"MultiHeadTrainer (tasks: {names})")
            if owner is not None and trainers[names.index(owner)].task.reuse_head_with is not None:
                raise ValueError(f"task '{t.name}' reuses the head of '{owner}', which itself reuses another head")
        self._trainers = trainers
        self._by_name = dict(zip(names, trainers))
        # 'all': every step trains every task on a batch of its own (their gradients summed, or combined by
        # the balancer); the sampler then only does the bookkeeping of a uniform one
        self._all = sampling == "all"
        self._sampling = dict(strategy="uniform" if self._all else sampling, temperature=temperature,
                              max_examples=max_examples,
                              anneal_to=anneal_to)
        # a bad strategy or parameter is an error here, not after the readers were fitted
        TaskSampler(self._sampling["strategy"], [1] * len(names), [1.0] * len(names), 0, temperature, max_examples, anneal_to, 1)
        self._seed = seed
        self._max_steps: int | None = None
        self._balance = balance
        balancing.make_balancer(balance, names, joint=self._all)  # a bad name is an error here
        self._fsdp = fsdp if fsdp is not None else next((t.fsdp for t in trainers if t.fsdp is not None), None)
        self.device = trainers[0].device
        self._backbone = self._model = self._pred_backbone = None
        self._optimizer: Optimizer | None = None
        self._core = TrainerCore()  # the loop, saver settings and evaluator every member Trainer joins
        self._sampler: TaskSampler | None = None
        self._overall_train_steps: int | None = None
        self._joint: Iterator | None = None
        self._next_draw = 0
        self._pending_sampler: dict | None = None  # sampler state of a checkpoint loaded before fitting

    # ---- properties ----
    @property
    def trainers(self) -> list[Trainer]:
        return list(self._trainers)

    @property
    def tasks(self) -> dict:
        return {t.name: t.task for t in self._trainers}

    @property
    def overall_train_steps(self) -> int | None:
        """The exact number of global steps `train()` runs (known once the readers are fitted)."""
        return self._overall_train_steps

    @property
    def cur_train_step(self) -> int:
        return self._loop.global_step if self._loop is not None else 0

    @property
    def model(self) -> MultiTaskModel | None:
        return self._model

    @property
    def skipped_steps(self) -> int:
        """Steps not applied because their loss or gradient was NaN or infinite (the first trainer's
        `skip_nonfinite`, like its precision and grad_clip, applies to the joint loop)."""
        return self._loop.skipped_steps if self._loop is not None else 0

    @property
    def balancer(self) -> balancing.Balancer | None:
        """The task balancer the training step applies (None: PALM's plain sum; see `balance`)."""
        return self._loop.balancer if self._loop is not None else None

    @property
    def task_weights(self) -> dict[str, float] | None:
        """The factor the balancer puts on each task's loss now (None: no balancing; see `balance`)."""
        return self.balancer.weights() if self.balancer is not None else None

    @property
    def torch_optimizer(self) -> torch.optim.Optimizer | None:
        return self._loop.torch_optimizer if self._loop is not None else None

    @property
    def sampler(self) -> TaskSampler | None:
        return self._sampler

    # ---- building ----
    def _shared(self, attr: str, what: str):
        objects = [getattr(t, attr) for t in self._trainers]
        missing = [t.name for t, o in zip(self._trainers, objects) if o is None]
        if missing:
            raise RuntimeError(f"task(s) {missing}: call trainer.{what} before the MultiHeadTrainer's")
        first = objects[0]
        others = [t.name for t, o in zip(self._trainers, objects) if o is not first]
        if others:
            raise ValueError(f"all tasks must share ONE backbone object; task(s) {others} were built on a different "
                             f"backbone than task '{self._trainers[0].name}' ({what})")
        return first

    def build_forward(self) -> MultiTaskModel:
        """Joins the tasks' heads on their shared backbone; returns the joint model."""
        self._backbone = self._shared("backbone", "build_forward(backbone, head)")
        for t in self._trainers:
            owner = t.task.reuse_head_with
            if owner is not None:  # the same module, so the same parameters (PALM stored and ignored this)
                t.reuse_head_of(self._by_name[owner])
        self._model = MultiTaskModel(self._backbone, {t.name: t.head for t in self._trainers}).to(self.device)
        self._model.train()
        return self._model

    def build_backward(self, optimizer: Optimizer, weight_decay: float | None = None, use_ema: bool = False,
                       ema_decay: float | None = None) -> None:
        """One optimizer over the backbone and every head (see `Trainer.build_backward`)."""
        if self._model is None:
            raise RuntimeError("call build_forward() before build_backward")
        first = self._trainers[0]
        prepare_process(self.device)
        self._optimizer = optimizer
        self._core.build_loop(self._model, self.tasks, optimizer, weight_decay, use_ema, ema_decay, self.device,
                              first.precision, first.grad_clip, first.skip_nonfinite, self._fsdp,
                              bundle_files=lambda: bundle.periodic_writer(self))
        for t in self._trainers:
            t.join(self._core, self)
        balancer = balancing.make_balancer(self._balance, [t.name for t in self._trainers], joint=self._all)
        self._loop.balancer = balancer.to(self.device) if balancer is not None else None
        self._sync_schedule()

    def _sync_schedule(self) -> None:
        if self._loop is not None and self._overall_train_steps is not None:
            self._loop.set_total_steps(self._overall_train_steps)

    def _readers_by_task(self, readers, what: str) -> dict:
        names = [t.name for t in self._trainers]
        if isinstance(readers, dict):
            unknown = sorted(set(readers) - set(names))
            missing = [n for n in names if n not in readers]
            if unknown or missing:
                raise ValueError(f"{what}: the readers dict must name every task exactly: unknown {unknown}, "
                                 f"missing {missing} (tasks: {names})")
            return {n: readers[n] for n in names}
        readers = list(readers)
        if len(readers) != len(names):
            raise ValueError(f"{what}: got {len(readers)} readers for {len(names)} tasks {names}")
        return dict(zip(names, readers))

    def fit_readers_with_mixratio(self, readers, sampling_reference: str, num_epochs: float | None,
                                  phase: str = "train", max_steps: int | None = None) -> Iterator[dict]:
        """Fits each task's reader and plans the run (spec §4.2); returns the joint batch iterator.

        Args:
            readers: a list aligned with the trainers, or a dict {task name: reader}; each loaded with
                `num_epochs=None` (they cycle; the budgets decide the length).
            sampling_reference: the task whose epochs define the budgets.
            num_epochs: epochs of the reference task; task t trains `int(num_epochs * mix_ratio_t * steps per
                epoch of the reference)` steps (for strategies other than 'ratio': its share of such a run).
            phase: 'train', or 'predict' (the same as `merge_inference_readers(readers)`).
            max_steps: the run is exactly this many global steps (the schedule spans them), whatever the
                budgets (then only the expected share of each task); `num_epochs` may then be None (1 for the
                budgets).
        """
        if phase == "predict":
            return self.merge_inference_readers(readers)
        if phase != "train":
            raise ValueError(f"phase must be 'train' or 'predict', got {phase!r}")
        if self._model is None:
            raise RuntimeError("call build_forward() before fit_readers_with_mixratio")
        by_task = self._readers_by_task(readers, "fit_readers_with_mixratio")
        names = list(by_task)
        if sampling_reference not in by_task:
            raise ValueError(f"sampling_reference {sampling_reference!r} names no task (tasks: {names})")
        if max_steps is not None:
            if isinstance(max_steps, bool) or int(max_steps) != max_steps or max_steps < 1:
                raise ValueError(f"max_steps must be an integer >= 1 or None, got {max_steps!r}")
            num_epochs = num_epochs or 1
        self._max_steps = int(max_steps) if max_steps is not None else None
        if not num_epochs or num_epochs <= 0:
            raise ValueError(f"num_epochs must be > 0, got {num_epochs!r}")
        for name, reader in by_task.items():
            if reader.num_epochs is not None:
                raise ValueError(f"task '{name}': load its reader with num_epochs=None for multi-task training "
                                 f"(got num_epochs={reader.num_epochs}); the number of steps comes from "
                                 f"fit_readers_with_mixratio(num_epochs=...)")
        if all(self._by_name[n].is_aux for n in names):
            raise ValueError("every task is auxiliary (set_as_aux); at least one main task must decide the end")
        for name, reader in by_task.items():
            trainer = self._by_name[name]
            trainer.fit_reader(reader)
        self._reference, self._num_epochs = sampling_reference, num_epochs
        self._plan(by_task, sampling_reference, num_epochs)
        return self._joint

    fit_readers = fit_readers_with_mixratio

    def _plan(self, by_task: dict, reference: str, num_epochs: float) -> None:
        """Sampler, budgets and the exact run length (printed as PALM did)."""
        names = list(by_task)
        seed = self._seed
        if seed is None:
            seed = int(np.random.SeedSequence([r.seed for r in by_task.values()]).generate_state(1)[0])
        sizes = [r.num_examples for r in by_task.values()]
        ratios = [self._by_name[n].mix_ratio for n in names]
        self._sampler = TaskSampler(seed=seed, sizes=sizes, mix_ratios=ratios, **self._sampling)
        ref = names.index(reference)
        budgets = step_budgets(self._sampler, ref, by_task[reference].steps_per_epoch, num_epochs)
        if self._all:  # every task trains at every step: num_epochs epochs of the reference, mix ratios aside
            budgets = [int(num_epochs * by_task[reference].steps_per_epoch)] * len(names)
        if self._sampler.strategy == "annealed":
            self._sampler.total_steps = max(sum(budgets), 1)
        aux = [self._by_name[n].is_aux for n in names]
        for name, budget, is_aux in zip(names, budgets, aux):
            self._by_name[name].task.budget = budget
            if not is_aux:
                logger.info("%s: expected train steps %d.", name, budget)
        if self._pending_sampler is not None:
            self._sampler.load_state_dict(self._pending_sampler)
        steps = [self._loop.task_steps[n] for n in names] if self._loop is not None else None
        start = self._loop.global_step if self._loop is not None else 0
        if self._all:
            done = steps or [0] * len(names)
            self._overall_train_steps = start + max(max(b - d, 0) for b, d, a in zip(budgets, done, aux) if not a)
        else:
            self._overall_train_steps = run_length(self._sampler, budgets, aux, start, steps)
        if self._max_steps is not None:  # the run's length, whatever the budgets
            self._overall_train_steps = self._max_steps
            if self._sampler.strategy == "annealed":
                self._sampler.total_steps = self._max_steps
        logger.info("Estimated overall train steps %d.", self._overall_train_steps)
        self._sync_schedule()
        self._next_draw = start
        self._joint = self._joint_batches()
        self._pending_sampler = None

    def _joint_batches(self) -> Iterator[dict]:
        """Batches of the drawn task, each with `__task_id` [1] (spec §4.2); endless (the loop decides the end)."""
        iterators = [t.train_iterator for t in self._trainers]
        while self._all:  # a batch of every task, task id -1
            self._next_draw += 1
            yield {TASK_ID: torch.tensor([-1], dtype=torch.int64),
                   ALL_BATCHES: {t.name: next(it) for t, it in zip(self._trainers, iterators)}}
        while True:
            task_id = self._sampler.draw(self._next_draw)
            self._next_draw += 1
            batch = dict(next(iterators[task_id]))
            batch[TASK_ID] = torch.tensor([task_id], dtype=torch.int64)
            yield batch

    # ---- loading and saving ----
    def load_pretrain(self, model_path: str, convert: bool = False) -> None:
        """Loads pretrained weights into the shared backbone (heads keep their initialisation)."""
        backbone = self._backbone or self._pred_backbone
        if backbone is None:
            raise RuntimeError("call build_forward() or build_predict_forward() before load_pretrain")
        load_pretrained_backbone(backbone, model_path)

    def load_ckpt(self, model_path: str, training_state: bool = True) -> None:
        """Loads the backbone and every head; for training also the optimizer, counters, readers, sampler, RNG
        (`training_state=False`: the weights only).

        A checkpoint lacking one of the tasks' heads is an error naming it."""
        backbone = self._backbone or self._pred_backbone
        if backbone is None:
            raise RuntimeError("call build_forward() or build_predict_forward() before load_ckpt")
        state, trainer_state, opt_state, rng = ckpt.load_checkpoint_dir(model_path)
        training = self._backbone is not None
        heads = {t.name: (t.head if training else t.predict_head) for t in self._trainers}
        if training:
            logger.info("loading checkpoint into train program")
        load_model_state(backbone, heads, self.tasks, state, model_path)
        if training and training_state and self._loop is not None:
            # the balancer first: with balance='task_moments' it holds the optimizer's states
            self._load_balancer(trainer_state.get("balance"), model_path)
            self._core.restore(trainer_state, opt_state, rng, state, model_path)
            for t in self._trainers:
                t.restore_reader(trainer_state.get("tasks", {}).get(t.name, {}).get("reader"))
            self._pending_sampler = trainer_state.get("sampler")
            if self._sampler is not None:  # readers already fitted: re-plan from the restored position
                readers = {t.name: t.train_reader for t in self._trainers}
                self._plan(readers, self._reference, self._num_epochs)
        logger.info("Load model from %s", model_path)

    def set_saver(self, save_path: str, save_steps: int, save_type: str = "ckpt",
                  max_to_keep: int | None = None, tensorboard: bool | str = False, plot: bool | None = None) -> None:
        """Saves the backbone and every head every `save_steps` global steps; logs to metrics.jsonl, TensorBoard
        and metrics.png (see `Trainer.set_saver`)."""
        self._core.set_saver(save_path, save_steps, save_type, self._pred_backbone is not None, max_to_keep,
                             tensorboard, plot)

    def resume(self, save_path: str | None = None) -> str | None:
        """Continues from the latest complete checkpoint in `save_path` (default: the `set_saver` path); returns
        the folder loaded, or None when there is none yet (see `Trainer.resume`)."""
        return self._core.resume(self, save_path)

    def _trainer_state(self) -> dict:
        return {
            "epoch": 0,
            "tasks": {t.name: {**t.task_state(), "budget": t.task.budget, "is_aux": t.is_aux,
                               "head_owner": t.task.head_owner}
                      for t in self._trainers},
            "sampler": self._sampler.state_dict() if self._sampler is not None else None,
            "backbone": backbone_record(self._backbone),
            "heads": {t.name: head_record(t.head) for t in self._trainers if t.task.reuse_head_with is None},
            "evaluation": self._core.evaluation_state(),
            "balance": self._loop.balancer.state_dict() if self._loop.balancer is not None else None,
        }

    def _load_balancer(self, state: dict | None, source: str) -> None:
        """The balancer state of a checkpoint; one saved without balancing (None, or an earlier torchpalm
        version) resumes with PALM's plain sum, as it was trained."""
        if state is None:
            if self._loop.balancer is not None:
                logger.info("%s was trained without task balancing: resuming with the plain sum of the losses "
                            "(balance=None)", source)
            self._loop.balancer = None
            return
        if self._balance is None:
            raise ValueError(f"{source} was trained with balance={state['method']!r}, this trainer has "
                             f"balance=None; resume with balance='auto' (the checkpoint's method) or start a new "
                             f"run from its weights with load_ckpt(path, training_state=False)")
        if self._balance == "auto":  # the method the checkpoint was trained with
            self._loop.balancer = balancing.make_balancer(state["method"], [t.name for t in self._trainers],
                                                          joint=self._all).to(self.device)
        self._loop.balancer.load_state_dict(state)  # a different explicit method is an error naming both

    def save(self, directory: str) -> str:
        """Writes a full training checkpoint (backbone, every head, optimizer, counters, readers, sampler)."""
        return self._core.save(directory, self._trainer_state())

    # ---- training ----
    def _is_finished(self) -> bool:
        if self._max_steps is not None:
            return self._loop.global_step >= self._max_steps
        return all(self._loop.task_steps[t.name] >= t.task.budget for t in self._trainers if not t.is_aux)

    def _after_step(self, name: str) -> None:
        """After a `train_one_step`: the finish message and a due evaluation."""
        self._note_finish(name)
        self._core.maybe_evaluate()

    def _note_finish(self, name: str) -> None:
        """PALM's '<task> train finish!' when a main task reaches its budget (counts go up by one)."""
        for trainer in self._trainers if name == ALL_TASKS else [self._by_name[name]]:
            if not trainer.is_aux and self._loop.task_steps[trainer.name] == trainer.task.budget:
                logger.info("%s train finish!", trainer.name)

    def set_evaluation(self, every_steps: int, weights: dict[str, float] | None = None,
                       monitor: str = "aggregate", save_best: bool = True, patience: int | None = None,
                       min_delta: float = 0.0, save_dir: str | None = None) -> None:
        """Evaluates every task that has a dev set (`trainer.set_dev`) every `every_steps` global steps.

        Args:
            every_steps: how often (and once more at the end of training).
            weights: {task: weight} of the aggregate (default: equal weights over the tasks with dev sets).
            monitor: 'aggregate' or a task name: what early stopping follows.
            save_best: keep `<save_dir>/best.<task>` for every task and `best.aggregate`.
            patience: stop after this many evaluations without improvement of `monitor` (None: never).
            min_delta: the least increase that counts as an improvement.
            save_dir: where best checkpoints go (default: the `set_saver` path).
        """
        self._core.require_loop("set_evaluation")
        with_dev = [t for t in self._trainers if t.dev is not None]
        self._core.set_evaluation(with_dev, every_steps, weights, monitor, save_best, patience, min_delta, save_dir,
                                  self.save)

    @property
    def eval_history(self) -> list[dict]:
        """Every evaluation so far: {"step", "tasks": {task: metrics}, "aggregate"}."""
        return self._core.eval_history

    def _check_ready(self) -> None:
        if self._loop is None:
            raise RuntimeError("call build_backward(optimizer) before training")
        if self._joint is None:
            raise RuntimeError("call fit_readers_with_mixratio(readers, sampling_reference, num_epochs) first")

    def train_one_step(self, batch: dict) -> tuple[dict[str, np.ndarray], int]:
        """One step on a joint batch (its `__task_id` picks the head); returns ({"<task>.loss": loss}, task id),
        the loss being the global batch's, as `Trainer.train_one_step` returns (`TrainLoop.train_one_step`)."""
        self._check_ready()
        if TASK_ID not in batch:
            raise KeyError(f"a multi-task batch carries '{TASK_ID}'; get batches from get_one_batch() or the "
                           f"iterator fit_readers_with_mixratio returned")
        task_id = int(batch[TASK_ID].reshape(-1)[0])
        name, batch = self._step_of(batch)
        # finish messages and due evaluations (early stopping is train()'s to act on), then a due save
        loss = self._core.train_one_step(name, batch, self._trainer_state, after_step=self._after_step)
        return {f"{name}.loss": loss.float().cpu().numpy()}, task_id

    def get_one_batch(self, phase: str = "train") -> dict:
        if phase != "train":
            raise ValueError("multi-task predict batches come from merge_inference_readers(readers)(task_name)")
        if self._joint is None:
            raise RuntimeError("call fit_readers_with_mixratio(...) first")
        return next(self._joint)

    def train(self, print_steps: int = 5, log_totals: bool = False) -> None:
        """Trains until every main task has reached its budget; logs PALM's multi-task lines (spec §11), or with
        `log_totals` the global step / total steps and the task's epoch (as `Trainer.train`)."""
        self._check_ready()
        prepare_process(self.device)
        batches = (self._step_of(b) for b in self._joint)
        self._core.run(batches, self._is_finished, self._overall_train_steps, print_steps, self._trainer_state,
                       multi_task=True, log_totals=log_totals, after_step=self._note_finish, at_end=self._log_task_mix)

    def _step_of(self, batch: dict) -> tuple[str, dict]:
        """(task name, batch) of a joint batch; with sampling='all' (ALL_TASKS, {task: batch})."""
        task_id = int(batch[TASK_ID].reshape(-1)[0])
        if task_id < 0:
            return ALL_TASKS, batch[ALL_BATCHES]
        return self._trainers[task_id].name, batch

    def _log_task_mix(self) -> None:
        """The realised share of steps of each task next to the sampler's expectation."""
        total = max(self._loop.global_step, 1)
        expected = [1.0] * len(self._trainers) if self._all else self._sampler.mean_probabilities()
        parts = [f"{t.name} {self._loop.task_steps[t.name] / total:.3f} (expected {p:.3f})"
                 for t, p in zip(self._trainers, expected)]
        logger.info("task mix over %d steps: %s", self._loop.global_step, ", ".join(parts))

    # ---- multi-head inference ----
    def build_predict_forward(self) -> None:
        """Checks that every task built its predict side on ONE predict backbone (spec §4.4)."""
        self._pred_backbone = self._shared("predict_backbone", "build_predict_forward(pred_backbone, pred_head)")
        for t in self._trainers:
            owner = t.task.reuse_head_with
            if owner is not None:
                t.reuse_head_of(self._by_name[owner])

    def merge_inference_readers(self, readers) -> Callable[[str], Iterator[dict]]:
        """Fits each task's predict reader (a list aligned with the trainers, or a dict); returns a function
        `task name -> generator` of that task's batches (with `__task_id`), each one pass over its data."""
        if self._pred_backbone is None:
            raise RuntimeError("call build_predict_forward() before merge_inference_readers")
        by_task = self._readers_by_task(readers, "merge_inference_readers")
        for name, reader in by_task.items():
            if reader.phase != "predict":
                raise ValueError(f"task '{name}': merge_inference_readers needs predict-phase readers "
                                 f"(got phase {reader.phase!r})")
            self._by_name[name].fit_reader(reader, phase="predict")
        names = list(by_task)

        def batches(task_name: str) -> Iterator[dict]:
            if task_name not in self._by_name:
                raise KeyError(f"no task {task_name!r} (tasks: {names})")
            trainer = self._by_name[task_name]
            iterator = trainer.take_predict_iterator()
            task_id = names.index(task_name)
            for batch in iterator:
                yield {**batch, TASK_ID: torch.tensor([task_id], dtype=torch.int64)}

        return batches

    def predict_one_batch(self, task_name: str, batch: dict) -> dict[str, np.ndarray]:
        """That task's head outputs on one batch (no post-processing), from the model that predicts
        (`Trainer.predict_one_batch`: the trained one in eval mode, once training was built)."""
        if task_name not in self._by_name:
            raise KeyError(f"no task {task_name!r} (tasks: {list(self._by_name)})")
        return self._by_name[task_name].predict_one_batch(batch)

    @torch.no_grad()
    def predict(self, output_dir: str | None = None, print_steps: int = 1000) -> dict[str, list]:
        """Predicts every task whose predict reader is fitted; returns {task: results} and writes
        `output_dir/<task>/predictions.json`.

        Tasks whose readers give the same backbone inputs batch for batch (the same text, tokenised the same
        way) share one backbone pass per batch; the others run on their own.
        """
        active = [t for t in self._trainers if t.predict_reader is not None]
        if not active:
            raise RuntimeError("fit predict readers first: merge_inference_readers(readers)")
        with contextlib.ExitStack() as locks:  # the tasks' predict() calls share these readers and heads
            for t in active:
                locks.enter_context(t.predict_lock)
            return self._predict_locked(active, output_dir, print_steps)

    @property
    def _loop(self) -> TrainLoop | None:
        return self._core.loop

    @property
    def loop(self) -> TrainLoop | None:
        return self._core.loop

    def prediction_model(self) -> MultiTaskModel:
        """The model that predicts: the trained one (the loop's), else the predict-phase modules."""
        if self._loop is not None:
            return self._loop.model
        if self._model is not None:
            return self._model
        # a prediction-only script: the predict modules are the model
        return MultiTaskModel(self._pred_backbone, {t.name: t.predict_head for t in self._trainers})

    def predicting(self):
        """The weights predictions use, for a block (`TrainerCore.predicting`)."""
        return self._core.predicting()

    def _predict_locked(self, active: list[Trainer], output_dir: str | None, print_steps: int) -> dict[str, list]:
        model = self.prediction_model()
        tasks = [t.predict_task(output_dir=os.path.join(output_dir, t.name)
                                if output_dir is not None and distributed.is_main() else None) for t in active]
        backbone = self._pred_backbone or active[0].predict_backbone
        with self.predicting():  # the loop's EMA weights, gathered under FSDP
            done = predict_tasks(model, tasks, self.device, self._trainers[0].precision,
                                 list(backbone.inputs_attr), print_steps, spread=True)
        self.backbone_passes = done.backbone_passes
        for t in active:
            t.end_predict_pass()
        return done.results
