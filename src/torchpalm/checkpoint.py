"""Reading weights safely and writing checkpoints atomically.

Weights are safetensors; anything else loads with `torch.load(weights_only=True)`, so no file can run code.
A checkpoint directory `ckpt.step<N>/` holds:
    model.safetensors   backbone parameters as `backbone.<name>`, each head's as `<task name>.<name>`
    optimizer.pt        the torch optimizer state (tensors and numbers only)
    rng.pt              the trainer's random stream (torch CPU generator state, and its CUDA device's)
    trainer_state.json  step, epoch, reader positions, configs of the backbone and heads
    complete.json       written last: the name and size of every other file (the completeness marker)
It is written to a temporary sibling directory `<name>.tmp-<random>`, fsynced, and renamed into place, so a crash
never leaves a half-written checkpoint under the final name. Loading checks the marker, so a folder that lost
files afterwards (a partial copy, a hand-made folder with only model.safetensors) is refused by name instead of
loading as step 0 with an empty optimizer. Folders written before the marker existed are accepted when they hold
model.safetensors and trainer_state.json (what every earlier save wrote), with a log line.

A save that was killed leaves `<name>.tmp-*` (or, when it replaced a checkpoint of the same name, `<name>.old`);
`remove_stale` deletes those of torchpalm's names (`ckpt.step<N>`, `pred.step<N>`, `best.<task>`) and never a
folder under its final name. `latest(save_path)` is the complete `ckpt.step<N>` with the largest N.

Tensor names (`backbone.<name>`, `<task>.<name>`, `ema.<name>`) are spelled in `state_keys` only.

`Checkpointer` is the training side: it decides when a run saves (`maybe_save`), writes training checkpoints
and 'predict' bundles, prunes old ones, and restores a loop's training state from a checkpoint.

A run holds an OS lock on its save folder from `set_saver` on (`disk.SaveFolderLock`), so a second run there is
refused instead of removing the first one's unfinished save; a write that fails for want of space, a file size
limit or a read-only file system is said in plain words (`disk.plain_write_error`). No checkpoint holds a
non-finite weight, EMA value or optimizer moment (`Checkpointer.ensure_finite_state`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable

import torch
from safetensors.torch import save_file

from . import distributed, fsdp

# `X as X`: re-exported where callers have always found them (`palm.checkpoint.load_backbone_weights`). Weight
# files are read in weights.py; the any-source backbone loader sits in convert/hf.py, beside the maps it uses.
from .convert.hf import load_backbone_weights as load_backbone_weights
from .convert.paddle import load_paddle_model, params_dir
from .disk import DISK_FULL as DISK_FULL
from .disk import SaveFolderBusy as SaveFolderBusy
from .disk import SaveFolderLock, plain_write_error, tensor_bytes
from .fsdp import shard_like
from .permissions import follow_umask
from .state_keys import EMA, prefixed, scoped
from .weights import find_weights_file as find_weights_file
from .weights import load_state_file as load_state_file
from .weights import read_safetensors, torch_load_safely

logger = logging.getLogger("torchpalm")

MARKER = "complete.json"
LEGACY_FILES = ("model.safetensors", "trainer_state.json")  # what every save wrote before the marker existed
# a periodic save's name, and what a killed save of one of torchpalm's names leaves behind
STEP_DIR = re.compile(r"(ckpt|pred)\.step(\d+)")
LEFTOVER = re.compile(r"((?:ckpt|pred)\.step\d+|best\.[^.]+)\.(?:tmp-\w+|old)")


def assign_state(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> list[str]:
    """Copies matching tensors into `module`; a shape mismatch is an error naming the tensor and file.

    Integer or bool tensors where the model holds floats (copying would silently cast them), and NaN or
    infinite values (every output would be NaN from the first step) are refused the same way.
    Returns the names of the module's parameters that `state` lacks.
    """
    own = module.state_dict()
    for name, value in state.items():
        if name not in own:
            continue
        if own[name].shape != value.shape:
            raise ValueError(f"{source}: parameter '{name}' has shape {tuple(value.shape)} in the file but "
                             f"{tuple(own[name].shape)} in the model (is the config right for this checkpoint?)")
        if own[name].is_floating_point() and not value.is_floating_point():
            raise TypeError(f"{source}: parameter '{name}' is {value.dtype} in the file but the model holds "
                            f"{own[name].dtype} weights there (a corrupt or mislabelled file?)")
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            bad = int((~torch.isfinite(value)).sum())
            raise ValueError(f"{source}: parameter '{name}' holds {bad} NaN or infinite value(s) of "
                             f"{value.numel()}; refusing weights that would make every output NaN")
    # under FSDP the model holds shards: each rank keeps its piece of the full tensor it read
    usable = {k: shard_like(v, own[k]) for k, v in state.items() if k in own}
    module.load_state_dict(usable, strict=False)
    return [k for k in own if k not in usable]


def check_writable(save_path: str | os.PathLike) -> None:
    """Creates `save_path` if needed and checks that a file can be written there (`set_saver` calls it, so a
    read-only or mistyped folder is an error at setup, not at the first save hours later)."""
    save_path = os.fspath(save_path)
    try:
        os.makedirs(save_path, exist_ok=True)
        with tempfile.TemporaryFile(dir=save_path):
            pass
    except OSError as e:
        raise PermissionError(f"cannot write checkpoints to the save folder {save_path}: "
                              f"{e.strerror or e}") from None


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: str) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _files_under(directory: str) -> list[str]:
    """Every file under `directory`, as sorted '/'-separated relative paths."""
    found = []
    for root, _, names in os.walk(directory):
        rel = os.path.relpath(root, directory)
        found += [name if rel == "." else f"{rel.replace(os.sep, '/')}/{name}" for name in names]
    return sorted(found)


def save_checkpoint(directory: str, model_state: dict[str, torch.Tensor], trainer_state: dict,
                    optimizer_state: dict | None = None, rng_state: dict | None = None,
                    write_extra: Callable[[str], None] | None = None) -> str:
    """Writes a checkpoint directory atomically (temporary directory, fsync, rename).

    `write_extra(tmp_dir)` adds files of its own (an inference bundle's description and tokenizer files); they
    are written before the marker, fsynced and listed in it like the others (files in subfolders too).
    """
    directory = os.path.abspath(directory)
    parent = os.path.dirname(directory)
    tmp = None
    try:
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=os.path.basename(directory) + ".tmp-", dir=parent)
        # safetensors needs contiguous, unshared tensors
        save_file({k: v.detach().contiguous().cpu() for k, v in model_state.items()},
                  os.path.join(tmp, "model.safetensors"))
        if optimizer_state is not None:
            torch.save(optimizer_state, os.path.join(tmp, "optimizer.pt"))
        if rng_state is not None:
            torch.save(rng_state, os.path.join(tmp, "rng.pt"))
        with open(os.path.join(tmp, "trainer_state.json"), "w", encoding="utf-8") as f:
            json.dump(trainer_state, f, indent=1)
        if write_extra is not None:
            write_extra(tmp)
        follow_umask(tmp)  # mkdtemp's 0700 and safetensors' 0600: shared like the user's other files
        files = _files_under(tmp)
        for name in files:
            _fsync_file(os.path.join(tmp, name))
        # the marker last, after the others are on disk: its presence means everything it lists was written
        sizes = {name: os.path.getsize(os.path.join(tmp, name)) for name in files}
        with open(os.path.join(tmp, MARKER), "w", encoding="utf-8") as f:
            json.dump({"files": sizes}, f, indent=1)
        _fsync_file(os.path.join(tmp, MARKER))
        if os.path.exists(directory):
            # Re-saving the same step: move the old one aside first so the name is never empty-handed long.
            old = directory + ".old"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(directory, old)
            os.replace(tmp, directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, directory)
        _fsync_dir(parent)
    except BaseException as e:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        plain = plain_write_error(e, parent, f"checkpoint {os.path.basename(directory)}",
                                  tensor_bytes((model_state, optimizer_state, rng_state)))
        if plain is not None:
            raise plain from e
        raise
    return directory


# ---------------------------------------------------------------- non-finite state
def nonfinite_tensors(tensors: dict[str, torch.Tensor]) -> list[str]:
    """The names of the floating-point tensors holding a NaN or an infinity (one `isfinite` pass over each and
    a single read-back; shards of a sharded tensor are checked where they are)."""
    names = [k for k, v in tensors.items() if torch.is_tensor(v) and v.is_floating_point() and v.numel()]
    if not names:
        return []
    local = [getattr(tensors[k], "to_local", lambda t=tensors[k]: t)() for k in names]
    flags = torch.stack([torch.isfinite(t).all().to(local[0].device) for t in local]).tolist()
    return [k for k, ok in zip(names, flags) if not ok]


def incomplete_reason(directory: str) -> str | None:
    """What a checkpoint directory lacks (None: it is complete, or a complete one written before the marker)."""
    marker = os.path.join(directory, MARKER)
    if not os.path.isfile(marker):
        missing = [n for n in LEGACY_FILES if not os.path.isfile(os.path.join(directory, n))]
        return f"no {MARKER} (written last by every save) and no {', '.join(missing)}" if missing else None
    try:
        with open(marker, encoding="utf-8") as f:
            sizes = dict(json.load(f)["files"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"{MARKER} is unreadable ({e})"
    missing = [n for n in sizes if not os.path.isfile(os.path.join(directory, n))]
    if missing:
        return f"missing {', '.join(missing)} (listed in {MARKER})"
    changed = [n for n, size in sizes.items() if os.path.getsize(os.path.join(directory, n)) != size]
    if changed:
        return f"{', '.join(changed)} differ in size from what {MARKER} records (truncated or overwritten)"
    return None


def is_complete(directory: str) -> bool:
    return os.path.isdir(directory) and incomplete_reason(directory) is None


def latest(save_path: str | os.PathLike) -> str | None:
    """The complete training checkpoint `save_path/ckpt.step<N>` with the largest N, or None.

    Leftovers of killed saves (`*.tmp-*`, `*.old`) and incomplete folders are never returned.
    """
    found = complete_checkpoints(save_path)
    return found[0] if found else None


def complete_checkpoints(save_path: str | os.PathLike) -> list[str]:
    """The complete training checkpoints `save_path/ckpt.step<N>`, newest (largest N) first."""
    save_path = os.fspath(save_path)
    if not os.path.isdir(save_path):
        return []
    steps = []
    for name in os.listdir(save_path):
        m = STEP_DIR.fullmatch(name)
        if m and m.group(1) == "ckpt" and is_complete(os.path.join(save_path, name)):
            steps.append((int(m.group(2)), os.path.join(save_path, name)))
    return [path for _, path in sorted(steps, reverse=True)]


def remove_stale(save_path: str | os.PathLike) -> list[str]:
    """Deletes what killed saves left in `save_path`; returns the removed folders.

    `<name>.tmp-*` is a save that never reached its rename: removed. `<name>.old` is the previous checkpoint of
    a save that replaced one of the same name (best.<task>): removed when `<name>` exists, otherwise the kill
    came between the two renames and it is put back. Only torchpalm's names are touched.
    """
    save_path = os.fspath(save_path)
    removed = []
    for name in sorted(os.listdir(save_path)) if os.path.isdir(save_path) else []:
        m = LEFTOVER.fullmatch(name)
        path = os.path.join(save_path, name)
        if not m or not os.path.isdir(path):
            continue
        final = os.path.join(save_path, m.group(1))
        if name.endswith(".old") and not os.path.exists(final) and is_complete(path):
            os.replace(path, final)
            logger.info("%s: restored from %s (a save was killed while replacing it)", final, name)
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    if removed:
        logger.info("removed %d unfinished save(s) in %s: %s", len(removed), save_path,
                    ", ".join(os.path.basename(p) for p in removed))
    return removed


def prune(save_path: str, kind: str, keep: int) -> list[str]:
    """Keeps the `keep` complete `<kind>.step<N>` folders with the largest N, deletes the older complete ones.

    Incomplete folders and anything not named like a periodic save (best.<task>, user folders) are left alone.
    """
    steps = []
    for name in os.listdir(save_path):
        m = STEP_DIR.fullmatch(name)
        if m and m.group(1) == kind and is_complete(os.path.join(save_path, name)):
            steps.append((int(m.group(2)), os.path.join(save_path, name)))
    old = [path for _, path in sorted(steps)[:-keep]]
    for path in old:
        shutil.rmtree(path)
    return old


def load_checkpoint_dir(directory: str) -> tuple[dict[str, torch.Tensor], dict, dict | None, dict | None]:
    """Reads a checkpoint directory: (model state, trainer state, optimizer state or None, rng or None).

    An incomplete directory is a `ValueError` naming it and what is missing."""
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"checkpoint directory not found: {directory}")
    if not os.path.isfile(os.path.join(directory, "model.safetensors")):
        if params_dir(directory) is not None:  # a PaddlePALM checkpoint or parameter directory: weights only
            logger.info("%s: a PaddlePALM (Paddle 1.x) directory: its backbone and head weights are loaded, its "
                        "optimizer moments and counters are not", directory)
            return load_paddle_model(directory), {"format": "paddle"}, None, None
    problem = incomplete_reason(directory)
    if problem is not None:
        raise ValueError(f"{directory}: incomplete checkpoint, refused: {problem}. Was the save interrupted or "
                         f"the folder copied in part? palm.checkpoint.latest(save_path) finds the last complete one")
    if not os.path.isfile(os.path.join(directory, MARKER)):
        logger.info("%s: no %s (saved before completeness markers); accepted since it holds %s", directory,
                    MARKER, " and ".join(LEGACY_FILES))
    model_state = read_safetensors(os.path.join(directory, "model.safetensors"))
    trainer_state: dict = {}
    state_path = os.path.join(directory, "trainer_state.json")
    if os.path.isfile(state_path):
        with open(state_path, encoding="utf-8") as f:
            try:
                trainer_state = json.load(f)
            except (ValueError, RecursionError) as e:
                raise ValueError(f"{state_path}: not a readable trainer state ({e})") from None
        if not isinstance(trainer_state, dict):
            raise ValueError(f"{state_path}: expected a JSON object, got {type(trainer_state).__name__}")
    opt_path, rng_path = os.path.join(directory, "optimizer.pt"), os.path.join(directory, "rng.pt")
    optimizer_state = torch_load_safely(opt_path) if os.path.isfile(opt_path) else None
    rng_state = torch_load_safely(rng_path) if os.path.isfile(rng_path) else None
    return model_state, trainer_state, optimizer_state, rng_state


class Checkpointer:
    """When and what a training run saves, and how it picks up again: the one place of the training save path.

    Periodic saves (`maybe_save`, every `save_steps` global steps and at the end of a run) write
    `<save_path>/ckpt.step<N>` (`save`: weights, EMA, optimizer, random stream, counters; for resuming) and/or
    `<save_path>/pred.step<N>` (an inference bundle with the EMA weights), then `prune` keeps the last
    `max_to_keep` of each. `load_training_state` puts a checkpoint's training state back into the loop.

    Args:
        loop: the `loop.TrainLoop` whose model, optimizer, EMA weights, counters and random stream are saved.

    Under torchrun every rank calls `save` and `maybe_save` at the same point: rank 0 writes (under DDP the ranks
    hold the same weights and optimizer state; under FSDP every rank first helps gather the full tensors) and
    the others wait until the checkpoint is complete.
    """

    def __init__(self, loop):
        self.loop = loop
        self.save_path: str | None = None
        self.save_steps: int | None = None
        self.save_types: tuple[str, ...] = ()
        self.max_to_keep: int | None = None
        self.last_saved_step = -1
        self.folder_lock: SaveFolderLock | None = None  # held from `configure` on
        # what a 'predict' save adds to the weights to make an inference bundle (`torchpalm.bundle`): set by the
        # trainer, which knows the readers; returns a `write_extra` for `save_checkpoint`
        self.bundle_files: Callable[[], Callable[[str], None]] | None = None

    def configure(self, save_path: str | None, save_steps: int | None, save_types: tuple[str, ...],
                  max_to_keep: int | None = None) -> None:
        """Saves every `save_steps` global steps to `save_path` (None: no periodic saving), keeping the last
        `max_to_keep` periodic saves of each type (None: all). Leftovers of killed saves there are removed."""
        if save_path is None or save_steps is None:
            self.save_path = self.save_steps = None
            return
        self.save_path, self.save_steps, self.save_types = os.fspath(save_path), int(save_steps), save_types
        self.max_to_keep = max_to_keep
        if distributed.is_main():  # the only rank that writes files
            os.makedirs(self.save_path, exist_ok=True)
            # one run per folder for this run's lifetime; clean-up only with the lock held (another live run's
            # unfinished save looks just like a killed one's)
            self.folder_lock = SaveFolderLock(self.save_path)
            remove_stale(self.save_path)

    def save(self, directory: str, trainer_state: dict) -> str:
        """Writes a full training checkpoint (weights, EMA, optimizer, RNG, counters) to `directory` atomically;
        `trainer_state` adds the trainer's part (reader positions, configs, ...). Returns the folder."""
        loop = self.loop
        loop.check_finite()  # a checkpoint never holds weights a non-finite step produced
        self.ensure_finite_state(os.path.basename(directory))  # nor ones a finite step made infinite
        if loop.sharded or distributed.is_main():  # (under FSDP a collective: every rank gathers)
            state = loop.state(full=True)
            if loop.ema is not None:
                state.update(prefixed(fsdp.full_state(loop.ema) if loop.sharded else loop.ema, EMA))
            opt_state = loop.optimizer_state()
            if loop.sharded:
                opt_state = fsdp.full_optimizer_state(opt_state)
        if not distributed.is_main():
            distributed.barrier()
            return directory
        trainer_state = {"step": loop.global_step, "nonfinite": loop.nonfinite_record(), **trainer_state}
        path = save_checkpoint(directory, state, trainer_state, opt_state, loop.rng)
        distributed.barrier()
        return path

    def save_bundle(self, directory: str, trainer_state: dict) -> None:
        """Writes an inference bundle of the model as it predicts (EMA weights swapped in) to `directory`."""
        loop = self.loop
        with loop.ema_weights():
            state = loop.state(full=True)  # (under FSDP every rank gathers)
            if distributed.is_main():
                extra = self.bundle_files() if self.bundle_files is not None else None
                save_checkpoint(directory, state, {"step": loop.global_step, **trainer_state}, write_extra=extra)

    def ensure_finite_state(self, name: str) -> None:
        """Before saving `name`: the weights, EMA and optimizer moments must be finite. A learning-rate spike
        can make them infinite while every loss and gradient was finite, and no checkpoint may hold that.
        Without `skip_nonfinite` it is a FloatingPointError (nothing is written); with it, weights, EMA and
        optimizer go back to the newest checkpoint and training goes on from the next batch."""
        loop = self.loop
        tensors = dict(loop.state())
        if loop.ema is not None:
            tensors.update(prefixed(loop.ema, EMA))
        names = {id(p): n for n, p in loop.model.named_parameters()}
        for task, param, moments in loop.optimizer_moments():
            of = f"{names.get(id(param), '?')}" + (f" (task {task})" if task else "")
            tensors.update({f"optimizer {k} of {of}": v for k, v in moments.items()})
        bad = nonfinite_tensors(tensors)
        if loop.sharded:  # each rank checked its shards: all must agree
            any_bad = distributed.mean(torch.tensor(float(len(bad)), device=loop.device)).item() > 0
            bad = bad or (["a shard on another process"] if any_bad else [])
        if not bad:
            return
        newest = latest(self.save_path) if self.save_path is not None else None
        what = (f"global step {loop.global_step}: {len(bad)} tensor(s) of the model, its EMA or optimizer moments "
                f"hold NaN or infinite values (e.g. {', '.join(bad[:3])}) though the losses and gradients were "
                f"finite (a learning rate too large?)")
        if not loop.skip_nonfinite or newest is None:
            where = (f"the newest checkpoint, {newest}, holds the last finite state: lower the learning rate and "
                     f"resume from it" + ("" if loop.skip_nonfinite else
                                          ", or pass Trainer(skip_nonfinite=True) to roll back to it and go on")
                     if newest else "there is no earlier checkpoint to go back to: lower the learning rate")
            raise FloatingPointError(f"{what}. {name} was not written, so no checkpoint holds them; {where}")
        state, _, opt_state, _ = load_checkpoint_dir(newest)
        with torch.no_grad():
            for k, v in loop.state().items():
                v.copy_(shard_like(state[k], v))
            for k, v in (loop.ema or {}).items():
                v.copy_(shard_like(state.get(f"{EMA}.{k}", state[k]), v))
        if loop.sharded:
            opt_state = fsdp.sharded_optimizer_state(opt_state, loop.torch_optimizer)
        loop.load_optimizer_state(opt_state, newest)
        logger.warning("%s; skip_nonfinite: rolled the weights, EMA and optimizer back to %s (the steps since are "
                       "lost) and training goes on from the next batch", what, newest)

    def maybe_save(self, trainer_state: Callable[[], dict], force: bool = False) -> None:
        """Saves when a periodic save is due (or, with `force`, now: the end of a run), once per step."""
        step = self.loop.global_step
        if self.save_path is None or self.last_saved_step == step:
            return
        if not force and step % self.save_steps:
            return
        self.last_saved_step = step
        if "ckpt" in self.save_types:
            path = self.save(os.path.join(self.save_path, f"ckpt.step{step}"), trainer_state())
            logger.info("checkpoint has been saved at %s", path)
        if "ckpt" not in self.save_types:  # (`save` checks for a ckpt)
            self.ensure_finite_state(f"pred.step{step}")
        if "predict" in self.save_types and (distributed.is_main() or self.loop.sharded):
            path = os.path.join(self.save_path, f"pred.step{step}")
            self.save_bundle(path, trainer_state())
            if distributed.is_main():
                for name in self.loop.tasks:
                    logger.info("%s: predict model saved at %s", name, path)
                logger.info("predict model has been saved at %s", path)
        self.prune()

    def prune(self) -> None:
        """Keeps the last `max_to_keep` periodic saves of each kind (rank 0; nothing with max_to_keep None)."""
        if self.max_to_keep is None or self.save_path is None or not distributed.is_main():
            return
        for kind in ("ckpt", "pred"):
            for path in prune(self.save_path, kind, self.max_to_keep):
                logger.info("removed %s (max_to_keep=%d)", path, self.max_to_keep)

    def load_training_state(self, state: dict, opt_state: dict | None, rng: dict | None,
                            tensors: dict[str, torch.Tensor], source: str) -> None:
        """Restores counters, optimizer, EMA and random stream from a checkpoint read by `load_checkpoint_dir`
        (`state`: its trainer_state.json, `tensors`: its weights; the model weights are loaded separately)."""
        loop = self.loop
        if state.get("format") == "paddle":
            logger.warning("%s: a PaddlePALM checkpoint: training starts at step 0 from its weights, with a fresh "
                           "optimizer (Paddle's Adam moments are not imported)", source)
            return
        if opt_state is None:
            # resuming from it would restart Adam's moments at the saved step: a different run, silently
            raise ValueError(f"{source}: no optimizer.pt, so it cannot resume training (a 'predict' export or a "
                             f"weights-only folder); load_ckpt(path, training_state=False) starts a new run from "
                             f"its weights")
        if loop.sharded:  # the file holds full moments: each rank keeps its parameters' shards
            opt_state = fsdp.sharded_optimizer_state(opt_state, loop.torch_optimizer)
        loop.load_optimizer_state(opt_state, source)
        loop.global_step = int(state.get("step", 0))
        loop.restore_nonfinite(state.get("nonfinite", {}))
        for name in loop.tasks:
            task_state = state.get("tasks", {}).get(name, {})
            loop.task_steps[name] = int(task_state.get("step", loop.global_step if len(loop.tasks) == 1 else 0))
        if loop.ema is not None:
            for k, v in scoped(tensors, EMA).items():
                if k in loop.ema:
                    loop.ema[k].copy_(shard_like(v, loop.ema[k]))
        if rng is not None:
            loop.rng = rng  # the stream the saved run's next step would have drawn from
        self.last_saved_step = loop.global_step
