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
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable

import torch
from safetensors.torch import save_file

# `X as X`: re-exported where callers have always found them (`palm.checkpoint.load_backbone_weights`). Weight
# files are read in weights.py; the any-source backbone loader sits in convert/hf.py, beside the maps it uses.
from .convert.hf import load_backbone_weights as load_backbone_weights
from .convert.paddle import load_paddle_model, params_dir
from .fsdp import shard_like
from .permissions import follow_umask
from .weights import find_weights_file as find_weights_file
from .weights import load_state_file as load_state_file
from .weights import read_safetensors, torch_load_safely

logger = logging.getLogger("torchpalm")

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)  # "no space left" and "quota exceeded": the same advice
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
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=os.path.basename(directory) + ".tmp-", dir=parent)
    try:
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
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError) and e.errno in DISK_FULL:
            raise OSError(e.errno, f"the disk holding {parent} is full ({os.strerror(e.errno)}) while saving "
                                   f"checkpoint {os.path.basename(directory)}: the unfinished copy was removed and "
                                   f"earlier checkpoints are untouched. Free some space (or keep fewer "
                                   f"checkpoints: set_saver(..., max_to_keep=K)) and save again") from e
        raise
    return directory


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
    save_path = os.fspath(save_path)
    if not os.path.isdir(save_path):
        return None
    steps = []
    for name in os.listdir(save_path):
        m = STEP_DIR.fullmatch(name)
        if m and m.group(1) == "ckpt" and is_complete(os.path.join(save_path, name)):
            steps.append((int(m.group(2)), name))
    return os.path.join(save_path, max(steps)[1]) if steps else None


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
