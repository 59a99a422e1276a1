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
Reading a bundle is `predictor.py`'s (`read_spec`, `Predictor.load`); this module writes them.
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
from .model import backbone_record, head_record
from .predictor import BUNDLE_FILE, FORMAT, FORMAT_VERSION, ONNX_FILE, Predictor, torchpalm_version
from .predictor import file_in_bundle as file_in_bundle
from .predictor import read_spec as read_spec

logger = logging.getLogger("torchpalm")



@dataclass
class BundleTask:
    """One task of a bundle: its name, head, the reader that turns inputs into batches, and the task whose
    weights the head uses (itself, or the task it shares a head with)."""

    name: str
    head: nn.Module
    reader: object
    weights_of: str


def trainer_tasks(trainer) -> tuple[nn.Module, list[BundleTask]]:
    """The backbone and tasks of a `Trainer` or `MultiHeadTrainer` as a bundle describes them: the predict
    backbone and heads when built (they say how to predict), else the training ones; the predict reader, else
    the training one, gives the reader options. The weights are the trained model's (`export`)."""
    trainers = trainer.trainers if hasattr(trainer, "trainers") else [trainer]
    backbone, tasks = None, []
    for t in trainers:
        if t.predict_head is not None:
            t_backbone, head = t.predict_backbone, t.predict_head
        else:
            t_backbone, head = t.backbone, t.head
        if t_backbone is None:
            raise RuntimeError(f"task '{t.name}': nothing to export; call build_forward or build_predict_forward")
        if backbone is not None and t_backbone is not backbone and t.backbone is not backbone:
            raise ValueError(f"task '{t.name}' has a backbone of its own; a bundle holds one shared backbone")
        backbone = backbone or t_backbone
        reader = t.predict_reader if t.predict_reader is not None else t.train_reader
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

    The weights are those predictions use: the trained model's, with the EMA weights when training keeps them
    (`trainer.predicting()`). `onnx=True` adds `model.onnx` (see `Predictor.to_onnx`).
    `palm.Predictor.load(out_dir)` rebuilds the model. Under torchrun every rank calls it (under FSDP they
    gather the weights together) and rank 0 writes.
    """
    backbone, tasks = trainer_tasks(trainer)
    loop, path = trainer.loop, os.path.abspath(out_dir)
    with trainer.predicting():
        if loop is not None:
            state, step = loop.state(full=True), loop.global_step  # (a collective under FSDP)
        else:
            model = trainer.prediction_model()
            heads = [BundleTask(t.name, model.heads[t.name], t.reader, t.weights_of) for t in tasks]
            state, step = model_state(model.backbone, heads), 0
        if distributed.is_main():
            path = write(backbone, tasks, out_dir, onnx, step, state)
    distributed.barrier()
    return path


def write(backbone: nn.Module, tasks: list[BundleTask], out_dir: str | os.PathLike, onnx: bool = False,
          step: int = 0, state: dict[str, torch.Tensor] | None = None) -> str:
    """Writes the bundle of these modules and readers to `out_dir` atomically (see `export`); returns its path.
    `state`: the weights under checkpoint names (default: the modules' own)."""
    record = {"step": step, "backbone": backbone_record(backbone),
              "heads": {t.name: head_record(t.head) for t in tasks}}
    ckpt.save_checkpoint(os.fspath(out_dir), state if state is not None else model_state(backbone, tasks), record,
                         write_extra=bundle_writer(backbone, tasks, onnx))
    return os.path.abspath(out_dir)
