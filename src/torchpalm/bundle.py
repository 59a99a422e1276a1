"""Inference bundles: a folder that rebuilds a trained model for prediction without the training script.

    palm.export(trainer, "bundle/")                # or a MultiHeadTrainer; or set_saver(..., save_type="predict")
    predictor = palm.Predictor.load("bundle/")
    predictor.predict(["a sentence", ...])

A bundle is a checkpoint folder (written atomically by `checkpoint.save_checkpoint`: temporary folder, fsync,
rename, `complete.json` marker) holding:

    model.safetensors    the weights: `backbone.<name>`, `<task>.<name>` (a shared head once, under its owner)
    trainer_state.json   the step and configs, as in every checkpoint (so `load_ckpt` reads a bundle too)
    bundle.json          format version, torchpalm version, backbone class + config, and per task: the head's
                         class + config, the task whose weights the head uses, the reader's class, options
                         (max_len, lower-casing, label map, ...) and its tokenizer's files
    reader.<task>/       the files each reader's tokenizer saved (`vocab.txt` for WordPiece)
    model.onnx           with `palm.export(..., onnx=True)`: backbone + every head, one output per task

Classes are looked up by name in `torchpalm.backbone`, `torchpalm.head` and `torchpalm.reader` only, so
loading a bundle never imports or runs code named by the file; weights are safetensors. Every file bundle.json
names lies inside the bundle folder (`file_in_bundle`: no absolute path, no `..`, no symbolic link leading out).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass

import torch
from torch import nn

from . import checkpoint as ckpt
from . import distributed, state_keys

logger = logging.getLogger("torchpalm")

FORMAT = "torchpalm-inference-bundle"
FORMAT_VERSION = 1  # raise when a reader of this version could not load what is written
BUNDLE_FILE = "bundle.json"
ONNX_FILE = "model.onnx"


@dataclass
class BundleTask:
    """One task of a bundle: its name, head, the reader that turns inputs into batches, and the task whose
    weights the head uses (itself, or the task it shares a head with)."""

    name: str
    head: nn.Module
    reader: object
    weights_of: str


def torchpalm_version() -> str:
    from . import __version__

    return __version__


def trainer_tasks(trainer) -> tuple[nn.Module, list[BundleTask]]:
    """The backbone and tasks of a `Trainer` or `MultiHeadTrainer`, for export (predict modules preferred:
    they share the trained weights; the predict reader, else the training one, gives the reader options)."""
    trainers = trainer.trainers if hasattr(trainer, "trainers") else [trainer]
    backbone, tasks = None, []
    for t in trainers:
        t_backbone, head = (t._pred_backbone, t._pred_head) if t._pred_head is not None else (t._backbone, t._head)
        if t_backbone is None:
            raise RuntimeError(f"task '{t.name}': nothing to export; call build_forward or build_predict_forward")
        if backbone is not None and t_backbone is not backbone and t._backbone is not backbone:
            raise ValueError(f"task '{t.name}' has a backbone of its own; a bundle holds one shared backbone")
        backbone = backbone or t_backbone
        reader = t._pred_reader if t._pred_reader is not None else t._train_reader
        if reader is None:
            raise RuntimeError(f"task '{t.name}' has no reader to export (its options and tokenizer files go into "
                               f"the bundle): fit_reader(reader) or fit_reader(pred_reader, phase='predict') first")
        tasks.append(BundleTask(t.name, head, reader, t.task.head_owner))
    return backbone, tasks


def describe(backbone: nn.Module, tasks: list[BundleTask], directory: str) -> dict:
    """Writes each reader's files under `directory/reader.<task>/`; returns the content of bundle.json."""
    if not isinstance(getattr(backbone, "config", None), dict):
        raise ValueError(f"backbone {type(backbone).__name__} has no `config` dict to rebuild it from")
    described = {}
    for t in tasks:
        folder = f"reader.{t.name}"
        reader = t.reader.export(os.path.join(directory, folder))
        reader["files"] = {arg: f"{folder}/{name}" for arg, name in reader["files"].items()}
        described[t.name] = {"head": {"class": type(t.head).__name__, "config": t.head.config()},
                             "weights_of": t.weights_of, "reader": reader}
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "torchpalm_version": torchpalm_version(),
            "backbone": {"class": type(backbone).__name__, "config": dict(backbone.config)}, "tasks": described}


def bundle_writer(backbone: nn.Module, tasks: list[BundleTask], onnx: bool = False):
    """`write_extra` for `checkpoint.save_checkpoint`: adds bundle.json, the readers' files and, with `onnx`,
    model.onnx (exported from the folder as written, so it is the model a Predictor of the bundle runs)."""

    def write(directory: str) -> None:
        spec = describe(backbone, tasks, directory)
        with open(os.path.join(directory, BUNDLE_FILE), "w", encoding="utf-8") as f:
            json.dump(spec, f, indent=1, ensure_ascii=False)
        if onnx:
            from .predictor import Predictor

            Predictor.load(directory, device="cpu", _unfinished=True).to_onnx(os.path.join(directory, ONNX_FILE))

    return write


def periodic_writer(trainer):
    """For a 'predict' save during training: the bundle writer, or None (weights and configs only, logged)
    when a task cannot be described (a reader of the user's own without `export_options`)."""
    try:
        backbone, tasks = trainer_tasks(trainer)
        for t in tasks:
            t.reader.export_options()
        if not isinstance(getattr(backbone, "config", None), dict):
            raise ValueError(f"backbone {type(backbone).__name__} has no `config` dict to rebuild it from")
    except (NotImplementedError, RuntimeError, ValueError) as e:
        logger.info("predict save without bundle.json (palm.Predictor cannot load it; load_ckpt can): %s", e)
        return None
    return bundle_writer(backbone, tasks)


def model_state(backbone: nn.Module, tasks: list[BundleTask]) -> dict[str, torch.Tensor]:
    """Weights under checkpoint names (as `TrainLoop.state`): a shared head is stored once, under its owner."""
    return state_keys.model_state(backbone, {t.name: t.head for t in tasks if t.weights_of == t.name})


def export(trainer, out_dir: str | os.PathLike, onnx: bool = False) -> str:
    """Writes an inference bundle of a `Trainer` or `MultiHeadTrainer` to `out_dir` (atomically); returns it.

    Uses the EMA weights when training keeps them (as predictions do). `onnx=True` adds `model.onnx`
    (see `Predictor.to_onnx`). `palm.Predictor.load(out_dir)` rebuilds the model. Under torchrun every rank
    calls it (under FSDP they gather the weights together) and rank 0 writes.
    """
    backbone, tasks = trainer_tasks(trainer)
    loop = getattr(trainer, "_loop", None)
    if loop is None:
        return write(backbone, tasks, out_dir, onnx)
    if onnx and loop.sharded and any(t._pred_backbone is None for t in getattr(trainer, "trainers", [trainer])):
        raise ValueError("onnx=True under FSDP traces the predict modules: call build_predict_forward first, or "
                         "export without onnx and convert the bundle in one process (Predictor.to_onnx)")
    path = os.path.abspath(out_dir)
    with loop.ema_weights():
        state = loop.state(full=True) if loop.sharded else None  # (a collective under FSDP)
        with loop.full_weights():  # the predict modules see whole weights (for tracing to ONNX)
            if distributed.is_main():
                path = write(backbone, tasks, out_dir, onnx, loop.global_step, state)
    distributed.barrier()
    return path


def write(backbone: nn.Module, tasks: list[BundleTask], out_dir: str | os.PathLike, onnx: bool = False,
          step: int = 0, state: dict[str, torch.Tensor] | None = None) -> str:
    """Writes the bundle of these modules and readers to `out_dir` atomically (see `export`); returns its path.
    `state`: the weights under checkpoint names (default: the modules' own)."""
    from .trainer import backbone_record, head_record

    record = {"step": step, "backbone": backbone_record(backbone),
              "heads": {t.name: head_record(t.head) for t in tasks}}
    ckpt.save_checkpoint(os.fspath(out_dir), state if state is not None else model_state(backbone, tasks), record,
                         write_extra=bundle_writer(backbone, tasks, onnx))
    return os.path.abspath(out_dir)


def read_spec(directory: str | os.PathLike, check_complete: bool = True) -> dict:
    """bundle.json of a bundle folder, checked: present, complete, and of a format version this torchpalm reads."""
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"inference bundle not found: {directory}")
    path = os.path.join(directory, BUNDLE_FILE)
    if not os.path.isfile(path):
        hint = (" (a training checkpoint, not a bundle: write one with palm.export(trainer, dir) or "
                "set_saver(..., save_type='predict'))" if os.path.isfile(os.path.join(directory, "optimizer.pt"))
                else "")
        raise FileNotFoundError(f"{directory}: no {BUNDLE_FILE}, so this is not an inference bundle{hint}")
    try:
        with open(path, encoding="utf-8") as f:
            spec = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
    except RecursionError:
        raise ValueError(f"{path}: JSON nested too deeply to parse (bundle.json is a few levels deep: tasks, "
                         f"head, config)") from None
    if not isinstance(spec, dict) or spec.get("format") != FORMAT:
        raise ValueError(f"{path}: not a torchpalm inference bundle (expected \"format\": \"{FORMAT}\")")
    version = spec.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(f"{path}: bundle format version {version!r} was written by torchpalm "
                         f"{spec.get('torchpalm_version', '?')}; this torchpalm ({torchpalm_version()}) reads format "
                         f"versions up to {FORMAT_VERSION}: upgrade torchpalm to load it")
    problem = ckpt.incomplete_reason(directory) if check_complete else None
    if problem is not None:
        raise ValueError(f"{directory}: incomplete inference bundle, refused: {problem}")
    for key in ("backbone", "tasks"):
        if not isinstance(spec.get(key), dict) or not spec[key]:
            raise ValueError(f"{path}: missing or empty {key!r}")
    return spec


def file_in_bundle(directory: str, name, where: str) -> str:
    """The path of a file `name` that a bundle names (relative to the bundle folder), refused unless it lies
    inside that folder: no absolute path, no `..`, and no symbolic link on the way that leads out, so a
    bundle cannot make a Predictor read files elsewhere on the machine. `where` names the key, for messages."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"{where}: expected a file name inside the bundle folder, got {name!r}")
    parts = name.replace("\\", "/").split("/")
    if os.path.isabs(name) or name.startswith(("/", "\\")) or ".." in parts:
        raise ValueError(f"{where}: {name!r} is not inside the bundle folder {directory} (absolute paths and "
                         f"'..' are refused: a bundle's files are its own)")
    path = os.path.join(directory, name)
    root = os.path.realpath(directory)
    if os.path.commonpath([root, os.path.realpath(path)]) != root:
        raise ValueError(f"{where}: {name!r} is a symbolic link leading out of the bundle folder {directory} (to "
                         f"{os.path.realpath(path)}); refused")
    return path
