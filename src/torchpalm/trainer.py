"""Trainer: PaddlePALM's single-task workflow (spec §3) as a plain PyTorch loop.

build_forward(backbone, head) -> build_backward(optimizer, weight_decay) -> fit_reader(reader) ->
load_pretrain / load_ckpt -> set_saver -> train(print_steps); then build_predict_forward(pred_backbone,
pred_head) -> fit_reader(pred_reader, 'predict') -> predict(output_dir).

Unlike PALM, the predict modules share the trained parameters (no re-initialisation, spec §17.11), the CPU is
one device (§17.37), and a checkpoint restores everything that decides the next step (§17.18).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import time
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from . import checkpoint as ckpt
from .optimizer import Optimizer, param_groups

logger = logging.getLogger("torchpalm")


class _StdoutHandler(logging.StreamHandler):
    """Writes to whatever `sys.stdout` is at the time (so redirection and capture keep working)."""

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value):
        pass


def _ensure_console_logging() -> None:
    """PALM printed its progress lines; show ours on stdout unless the user configured logging."""
    if not logger.handlers and not logging.getLogger().handlers:
        handler = _StdoutHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


class TaskModel(nn.Module):
    """Backbone + head: `forward(batch)` returns the head's outputs (with `loss` when labels are present)."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.head(self.backbone(batch), batch)


def share_parameters(src: nn.Module, dst: nn.Module) -> None:
    """Makes every parameter and buffer of `dst` the very tensor of `src` with the same name.

    This is how a predict-phase backbone/head sees the trained weights, as PALM's graphs shared variables by
    name in one scope, but without PALM's re-initialisation.
    """
    src_modules = dict(src.named_modules())
    for name, module in dst.named_modules():
        if name not in src_modules:
            raise ValueError(f"cannot share weights: {type(src).__name__} has no submodule '{name}'")
        other = src_modules[name]
        for pname in list(module._parameters):
            theirs = other._parameters.get(pname)
            mine = module._parameters[pname]
            if mine is None or theirs is None or mine.shape != theirs.shape:
                raise ValueError(f"cannot share weights: '{name}.{pname}' differs between the train and predict "
                                 f"modules (build them with the same configuration)")
            module._parameters[pname] = theirs
        for bname in list(module._buffers):
            if other._buffers.get(bname) is not None:
                module._buffers[bname] = other._buffers[bname]


def _check_io(provider: dict, consumer: dict, what: str) -> None:
    missing = sorted(set(consumer) - set(provider))
    if missing:
        raise ValueError(f"{what}: {missing} required but not provided (provided: {sorted(provider)})")


class Trainer:
    """Trains and runs one task.

    Args:
        name: task name; namespaces the head's parameters in checkpoints and appears in log lines.
        mix_ratio: sampling weight in multi-task training.
        reuse_head_with: name of another task whose head this one shares (multi-task).
        device: torch device; default CUDA if available, else CPU (one device).
        precision: 'auto' (bf16 autocast on CUDA, fp32 on CPU), 'bf16', 'fp16' or 'fp32'.
        grad_clip: clip the global gradient norm to this value (None: no clipping, as PALM).
    """

    def __init__(self, name: str, mix_ratio: float = 1.0, reuse_head_with: str | None = None,
                 device: str | torch.device | None = None, precision: str = "auto",
                 grad_clip: float | None = None):
        if not isinstance(name, str) or not name or "." in name:
            raise ValueError(f"task name must be a non-empty string without '.', got {name!r}")
        if precision not in ("auto", "bf16", "fp16", "fp32"):
            raise ValueError(f"precision must be 'auto', 'bf16', 'fp16' or 'fp32', got {precision!r}")
        _ensure_console_logging()
        self._name = name
        self._mix_ratio = float(mix_ratio)
        self._reuse_head_with = reuse_head_with
        self.device = torch.device(device) if device is not None else default_device()
        self._precision = precision
        self._grad_clip = grad_clip
        self._is_aux = False
        self._backbone = self._head = self._model = None
        self._pred_backbone = self._pred_head = self._pred_model = None
        self._optimizer: Optimizer | None = None
        self._torch_optimizer: torch.optim.Optimizer | None = None
        self._ema: dict[str, torch.Tensor] | None = None
        self._ema_decay = 0.0
        self._train_reader = self._pred_reader = None
        self._train_iterator: Iterator | None = None
        self._pred_iterator: Iterator | None = None
        self._num_epochs: int | None = None
        self._steps_per_epoch: int | None = None
        self._cur_train_step = 0
        self._cur_train_epoch = 0
        self._save_path: str | None = None
        self._save_steps: int | None = None
        self._save_types: tuple[str, ...] = ()
        self._last_saved_step = -1
        self._pending_reader_state: dict | None = None

    # ---- properties (PALM names) ----
    @property
    def name(self) -> str:
        return self._name

    @property
    def mix_ratio(self) -> float:
        return self._mix_ratio

    @mix_ratio.setter
    def mix_ratio(self, value: float) -> None:
        self._mix_ratio = float(value)

    @property
    def num_examples(self) -> int:
        return self._train_reader.num_examples if self._train_reader is not None else 0

    @property
    def num_epochs(self) -> int | None:
        return self._num_epochs

    @property
    def cur_train_step(self) -> int:
        return self._cur_train_step

    @property
    def cur_train_epoch(self) -> int:
        return self._cur_train_epoch

    @property
    def steps_per_epoch(self) -> int | None:
        return self._steps_per_epoch

    steps_pur_epoch = steps_per_epoch  # PALM's spelling

    @property
    def model(self) -> TaskModel | None:
        return self._model

    def set_as_aux(self) -> None:
        """Marks this task as auxiliary in multi-task training (it never blocks the end of training)."""
        self._is_aux = True

    # ---- building ----
    def build_forward(self, backbone: nn.Module, task_head: nn.Module) -> TaskModel:
        """Connects backbone and head for training; returns the model (pass it to the optimizer)."""
        _check_io(backbone.outputs_attr, task_head.inputs_attrs["backbone"],
                  f"head {type(task_head).__name__} needs backbone outputs")
        self._backbone, self._head = backbone, task_head
        self._model = TaskModel(backbone, task_head).to(self.device)
        self._model.train()
        return self._model

    def build_predict_forward(self, pred_backbone: nn.Module, pred_head: nn.Module) -> dict:
        """Connects predict-phase modules; they share the trained weights if training was built."""
        _check_io(pred_backbone.outputs_attr, pred_head.inputs_attrs["backbone"],
                  f"head {type(pred_head).__name__} needs backbone outputs")
        if self._backbone is not None:
            share_parameters(self._backbone, pred_backbone)
            share_parameters(self._head, pred_head)
        self._pred_backbone, self._pred_head = pred_backbone, pred_head
        self._pred_model = TaskModel(pred_backbone, pred_head).to(self.device)
        self._pred_model.eval()
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
        if self._model is None:
            raise RuntimeError("call build_forward(backbone, head) before build_backward")
        self._optimizer = optimizer
        no_decay = {f"head.{n}" for n in self._head.no_weight_decay()}
        lr_scales = {f"head.{n}": s for n, s in self._head.param_lr_scales().items()}
        groups = param_groups(self._model, weight_decay, no_decay, lr_scales)
        self._torch_optimizer = optimizer._build(groups, self.device)
        if use_ema:
            self._ema_decay = 0.9999 if ema_decay is None else float(ema_decay)
            self._ema = {k: v.detach().clone() for k, v in self._model.state_dict().items()
                         if v.dtype.is_floating_point}

    def fit_reader(self, reader, phase: str = "train") -> Iterator[dict[str, torch.Tensor]]:
        """Binds a loaded reader, checks it against the backbone and head, and returns its batch iterator."""
        if phase not in ("train", "predict"):
            raise ValueError(f"phase must be 'train' or 'predict', got {phase!r}")
        if reader.batch_size is None:
            raise RuntimeError(f"{type(reader).__name__}: call load_data() before fit_reader()")
        backbone, head = (self._backbone, self._head) if phase == "train" else (self._pred_backbone, self._pred_head)
        if backbone is None:
            raise RuntimeError(f"call {'build_forward' if phase == 'train' else 'build_predict_forward'} "
                               f"before fit_reader(phase={phase!r})")
        provided = reader.outputs_attr
        _check_io(provided, backbone.inputs_attr, f"backbone {type(backbone).__name__} needs reader outputs "
                  f"(did you call reader.register_with(backbone)?)")
        _check_io(provided, head.inputs_attrs["reader"], f"head {type(head).__name__} needs reader outputs")
        head.check_reader(reader)
        reader.reset()
        if phase == "train":
            self._train_reader = reader
            self._num_epochs = reader.num_epochs
            self._steps_per_epoch = reader.steps_per_epoch
            if self._pending_reader_state is not None:
                reader.load_state_dict(self._pending_reader_state)
                self._pending_reader_state = None
            self._train_iterator = iter(reader)
            iterator = self._train_iterator
        else:
            self._pred_reader = reader
            self._pred_iterator = iter(reader)
            iterator = self._pred_iterator
        logger.info("ok!")
        return iterator

    # ---- loading ----
    def load_pretrain(self, model_path: str, convert: bool = False) -> None:
        """Loads backbone weights from an HF model directory/file or a torchpalm checkpoint (non-strict)."""
        backbone = self._backbone if self._backbone is not None else self._pred_backbone
        if backbone is None:
            raise RuntimeError("call build_forward or build_predict_forward before load_pretrain")
        logger.info("Loading pretraining parameters from %s...", model_path)
        state, file = ckpt.load_backbone_weights(model_path)
        missing = ckpt.assign_state(backbone, state, file)
        for name in missing:
            logger.info("Warning: %s not found in %s.", name, model_path)
        logger.info("")

    def load_predict_model(self, model_path: str, convert: bool = False) -> None:
        """Loads pretrained backbone weights into the predict backbone (head stays as initialised)."""
        if self._pred_backbone is None:
            raise RuntimeError("call build_predict_forward before load_predict_model")
        state, file = ckpt.load_backbone_weights(model_path)
        for name in ckpt.assign_state(self._pred_backbone, state, file):
            logger.info("Warning: %s not found in %s.", name, model_path)

    def _model_state(self) -> dict[str, torch.Tensor]:
        """Parameters under checkpoint names: `backbone.<name>` and `<task>.<name>`."""
        backbone = self._backbone if self._backbone is not None else self._pred_backbone
        head = self._head if self._head is not None else self._pred_head
        state = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
        state.update({f"{self._name}.{k}": v for k, v in head.state_dict().items()})
        return state

    def _load_model_state(self, state: dict[str, torch.Tensor], source: str) -> None:
        backbone = self._backbone if self._backbone is not None else self._pred_backbone
        head = self._head if self._head is not None else self._pred_head
        head_state = {k[len(self._name) + 1:]: v for k, v in state.items() if k.startswith(self._name + ".")}
        if not head_state and any(p.numel() for p in head.parameters()):
            tasks = sorted({k.split(".", 1)[0] for k in state if not k.startswith(("backbone.", "ema."))})
            raise KeyError(f"{source}: no parameters for task '{self._name}' (tasks in the checkpoint: {tasks}); "
                           f"name the Trainer like the task that was trained")
        bb_state = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
        for name in ckpt.assign_state(backbone, bb_state, source):
            logger.info("Warning: backbone.%s not found in %s.", name, source)
        for name in ckpt.assign_state(head, head_state, source):
            logger.info("Warning: %s.%s not found in %s.", self._name, name, source)

    def load_ckpt(self, model_path: str) -> None:
        """Loads a checkpoint: weights, and for training also optimizer, step counters, reader position, RNG."""
        if self._backbone is None and self._pred_backbone is None:
            raise RuntimeError("call build_forward or build_predict_forward before load_ckpt")
        model_state, trainer_state, opt_state, rng_state = ckpt.load_checkpoint_dir(model_path)
        if self._backbone is not None:
            logger.info("loading checkpoint into train program")
        self._load_model_state(model_state, model_path)
        if self._backbone is not None:
            self._load_training_state(trainer_state, opt_state, rng_state, model_path)
        if self._ema is not None:  # EMA weights are stored in model.safetensors under "ema." names
            ema_state = {k[len("ema."):]: v for k, v in model_state.items() if k.startswith("ema.")}
            for k, v in ema_state.items():
                if k in self._ema:
                    self._ema[k].copy_(v)
        logger.info("Load model from %s", model_path)

    def _load_training_state(self, state: dict, opt_state: dict | None, rng_state: dict | None,
                             source: str) -> None:
        if opt_state is not None and self._torch_optimizer is not None:
            self._torch_optimizer.load_state_dict(opt_state)
        task = state.get("tasks", {}).get(self._name, {})
        self._cur_train_step = int(state.get("step", task.get("step", 0)))
        self._cur_train_epoch = int(task.get("epoch", state.get("epoch", 0)))
        reader_state = task.get("reader")
        if reader_state is not None:
            if self._train_reader is not None:
                self._train_reader.load_state_dict(reader_state)
                self._train_iterator = iter(self._train_reader)
            else:
                self._pending_reader_state = reader_state
        if rng_state is not None:
            torch.set_rng_state(rng_state["torch"])
            if torch.cuda.is_available() and "cuda" in rng_state:
                torch.cuda.set_rng_state_all(rng_state["cuda"])

    # ---- saving ----
    def set_saver(self, save_path: str, save_steps: int, save_type: str = "ckpt") -> None:
        """Saves every `save_steps` steps to `save_path/ckpt.step<N>` ('ckpt': weights + training state,
        for resuming) and/or `save_path/pred.step<N>` ('predict': weights + configs, for inference)."""
        if isinstance(save_path, int) and isinstance(save_steps, (str, os.PathLike)):
            save_path, save_steps = save_steps, save_path  # accept PALM's README argument order too
        types = tuple(t.strip() for t in str(save_type).split(",") if t.strip())
        unknown = [t for t in types if t not in ("ckpt", "predict")]
        if unknown:
            raise ValueError(f"save_type must be a comma-separated subset of 'ckpt,predict', got {save_type!r}")
        if save_path is None or save_steps is None:
            self._save_path = self._save_steps = None
            return
        if int(save_steps) < 1:
            raise ValueError(f"save_steps must be >= 1, got {save_steps}")
        if "predict" in types and self._pred_model is None:
            raise RuntimeError("save_type 'predict' needs build_predict_forward(pred_backbone, pred_head) first")
        os.makedirs(save_path, exist_ok=True)
        self._save_path, self._save_steps, self._save_types = os.fspath(save_path), int(save_steps), types

    def _trainer_state(self) -> dict:
        return {
            "step": self._cur_train_step,
            "epoch": self._cur_train_epoch,
            "tasks": {self._name: {
                "step": self._cur_train_step,
                "epoch": self._cur_train_epoch,
                "reader": self._train_reader.state_dict() if self._train_reader is not None else None,
            }},
            "backbone": {"class": type(self._backbone).__name__, "config": getattr(self._backbone, "config", {})},
            "heads": {self._name: {"class": type(self._head).__name__, "config": self._head.config()}},
        }

    def _rng_state(self) -> dict:
        state = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def save(self, directory: str) -> str:
        """Writes a full training checkpoint to `directory` (atomically)."""
        model_state = self._model_state()
        if self._ema is not None:
            model_state.update({f"ema.{k}": v for k, v in self._ema.items()})
        opt = self._torch_optimizer.state_dict() if self._torch_optimizer is not None else None
        return ckpt.save_checkpoint(directory, model_state, self._trainer_state(), opt, self._rng_state())

    def _maybe_save(self, force: bool = False) -> None:
        if self._save_path is None or self._last_saved_step == self._cur_train_step:
            return
        if not force and self._cur_train_step % self._save_steps:
            return
        self._last_saved_step = self._cur_train_step
        if "ckpt" in self._save_types:
            path = self.save(os.path.join(self._save_path, f"ckpt.step{self._cur_train_step}"))
            logger.info("checkpoint has been saved at %s", path)
        if "predict" in self._save_types:
            path = os.path.join(self._save_path, f"pred.step{self._cur_train_step}")
            with self._ema_weights():
                ckpt.save_checkpoint(path, self._model_state(), self._trainer_state())
            logger.info("%s: predict model saved at %s", self._name, path)
            logger.info("predict model has been saved at %s", path)

    # ---- training ----
    def _autocast(self):
        precision = self._precision
        if precision == "auto":
            precision = "bf16" if self.device.type == "cuda" else "fp32"
        if precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def _to_device(self, batch: dict) -> dict:
        return {k: v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v
                for k, v in batch.items()}

    def train_one_step(self, batch: dict) -> dict[str, np.ndarray]:
        """One optimisation step on one batch; returns `{"<name>.loss": loss}` (and any other head outputs)."""
        if self._torch_optimizer is None:
            raise RuntimeError("call build_backward(optimizer) before training")
        self._model.train()
        lr = self._optimizer.lr_at(self._cur_train_step)
        for group in self._torch_optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        with self._autocast():
            outputs = self._model(self._to_device(batch))
        loss = outputs["loss"]
        if not torch.isfinite(loss):
            raise FloatingPointError(f"task '{self._name}': loss is {loss.item()} at step {self._cur_train_step + 1}")
        loss.backward()
        if self._grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self._model.parameters(), self._grad_clip)
        self._torch_optimizer.step()
        self._torch_optimizer.zero_grad(set_to_none=True)
        if self._ema is not None:
            self._update_ema()
        self._cur_train_step += 1
        self._cur_train_epoch = (self._cur_train_step - 1) // self._steps_per_epoch if self._steps_per_epoch else 0
        self._maybe_save()
        return {f"{self._name}.loss": loss.detach().float().cpu().numpy()}

    @torch.no_grad()
    def _update_ema(self) -> None:
        for k, v in self._model.state_dict().items():
            if k in self._ema:
                self._ema[k].lerp_(v, 1.0 - self._ema_decay)

    @contextlib.contextmanager
    def _ema_weights(self):
        """Swaps the EMA weights in (for prediction and 'predict' exports), then restores the live ones."""
        if self._ema is None:
            yield
            return
        live = {k: v.detach().clone() for k, v in self._model.state_dict().items() if k in self._ema}
        self._model.load_state_dict(self._ema, strict=False)
        try:
            yield
        finally:
            self._model.load_state_dict(live, strict=False)

    def get_one_batch(self, phase: str = "train") -> dict:
        """The next batch of the fitted iterator of that phase (PALM's was broken, spec §17.12)."""
        iterator = self._train_iterator if phase == "train" else self._pred_iterator
        if iterator is None:
            raise RuntimeError(f"call fit_reader(reader, phase={phase!r}) first")
        return next(iterator)

    def _total_train_steps(self) -> int:
        if self._num_epochs is None:
            return self._steps_per_epoch
        return self._num_epochs * self._steps_per_epoch

    def train(self, print_steps: int = 5) -> None:
        """Runs training to the end of the fitted reader (one epoch if its num_epochs is None)."""
        if self._train_iterator is None:
            raise RuntimeError("call fit_reader(reader) before train()")
        total = self._total_train_steps()
        progress = _progress_bar(total, self._cur_train_step, self._name)
        last_time, last_step = time.time(), self._cur_train_step
        try:
            while self._cur_train_step < total:
                try:
                    batch = next(self._train_iterator)
                except StopIteration:
                    break
                outputs = self.train_one_step(batch)
                loss = float(np.mean(outputs[f"{self._name}.loss"]))
                progress.update(1)
                progress.set_postfix(loss=f"{loss:.3f}", lr=f"{self._optimizer.lr_at(self._cur_train_step):.2e}")
                if print_steps > 0 and self._cur_train_step % print_steps == 0:
                    now = time.time()
                    speed = (self._cur_train_step - last_step) / max(now - last_time, 1e-9)
                    last_time, last_step = now, self._cur_train_step
                    spe = self._steps_per_epoch
                    logger.info("step %d/%d (epoch %d), loss: %.3f, speed: %.2f steps/s",
                                (self._cur_train_step - 1) % spe + 1, spe, (self._cur_train_step - 1) // spe,
                                loss, speed)
        finally:
            progress.close()
        self._maybe_save(force=True)

    # ---- prediction ----
    @torch.no_grad()
    def predict_one_batch(self, batch: dict) -> dict[str, np.ndarray]:
        """Runs the predict model on one batch; returns the head's outputs as numpy arrays (not namespaced)."""
        if self._pred_model is None:
            raise RuntimeError("call build_predict_forward(pred_backbone, pred_head) before predicting")
        self._pred_model.eval()
        with self._autocast():
            outputs = self._pred_model(self._to_device(batch))
        return {k: v.detach().float().cpu().numpy() if v.is_floating_point() else v.detach().cpu().numpy()
                for k, v in outputs.items() if k != "loss"}

    def predict(self, output_dir: str | None = None, print_steps: int = 1000):
        """Predicts over the fitted predict reader; writes `output_dir/predictions.json`; returns the results."""
        if self._pred_iterator is None:
            raise RuntimeError("call fit_reader(pred_reader, phase='predict') before predict()")
        if output_dir is not None:
            os.makedirs(output_dir, exist_ok=True)
        reader, head = self._pred_reader, self._pred_head
        head.reset()
        total = reader.steps_per_epoch
        progress = _progress_bar(total, 0, f"{self._name} predict")
        last_time = time.time()
        with self._ema_weights():
            for k, batch in enumerate(self._pred_iterator, 1):
                head.batch_postprocess(self.predict_one_batch(batch))
                progress.update(1)
                if print_steps > 0 and k % print_steps == 0:
                    now = time.time()
                    logger.info("batch %d/%d, speed: %.2f steps/s", k, total, print_steps / max(now - last_time, 1e-9))
                    last_time = now
        progress.close()
        post = {"reader": reader.get_epoch_outputs()} if head.epoch_inputs_attrs else {"reader": None}
        results = head.epoch_postprocess(post, output_dir=output_dir)
        self._pred_iterator = None  # a reader is single-use for predict, as in PALM
        return results

    def reset_buffer(self) -> None:
        if self._pred_head is not None:
            self._pred_head.reset()


def _progress_bar(total: int, initial: int, desc: str):
    from tqdm.auto import tqdm

    # disable=None hides the bar when stderr is not a terminal (logs, CI)
    return tqdm(total=total if total and math.isfinite(total) else None, initial=initial, desc=desc,
                disable=None, leave=False, dynamic_ncols=True)
