"""Predictor: a model rebuilt from an inference bundle (`torchpalm.bundle`), safe to call from many threads.

    predictor = palm.Predictor.load("bundle/")
    predictor.predict(["a sentence", "another"])          # classification: label names and probabilities
    predictor.predict([("a", "b")])                         # matching: pairs
    predictor.predict([["New", "York"], "a sentence"])      # tagging: words (or sentences split on spaces)
    predictor.predict([("question?", "context ...")])       # MRC: answers
    predictor.predict("test.tsv")                           # a file in the reader's format
    predictor.predict(texts, task="intent")                 # one task of a multi-head bundle
    predictor.to_onnx("model.onnx")

Prediction runs the one prediction loop (`prediction.predict_tasks`) over the bundle's `MultiTaskModel`.
Reading a bundle (`read_spec`, `file_in_bundle`) lives here; writing one is `torchpalm.bundle`'s.

Thread safety: a call never writes to anything another call reads. The model is in eval mode and only read
(under `torch.no_grad`); each call encodes its inputs with its own shallow copy of the task's reader (the
tokenizer is shared; encoding only reads it) and collects results in its own copy of the head (the head's
parameters are shared, its results buffer is not).
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import types
import typing
from collections.abc import Sequence

import torch
from torch import nn

from . import backbone as backbone_module
from . import checkpoint as ckpt
from . import head as head_module
from . import reader as reader_module
from . import state_keys
from .head.base import Head
from .limits import short_repr
from .model import MultiTaskModel, default_device
from .prediction import PredictTask, predict_tasks
from .reader.base import Reader
from .weights import read_safetensors

FORMAT = "torchpalm-inference-bundle"
FORMAT_VERSION = 1  # raise when a reader of this version could not load what is written
BUNDLE_FILE = "bundle.json"
ONNX_FILE = "model.onnx"

# inputs the exported graph never needs (bookkeeping the reader passes through to post-processing)
NOT_MODEL_INPUTS = ("unique_ids",)


def torchpalm_version() -> str:
    from . import __version__

    return __version__


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


def _lookup(module, name: str, base: type, what: str, source: str) -> type:
    """A class named in bundle.json, found in torchpalm's own package only (loading never imports other code);
    the abstract base itself (`Backbone`, `Head`, `Reader`) builds nothing and is refused too."""
    cls = getattr(module, str(name), None) if not str(name).startswith("_") else None
    if not (isinstance(cls, type) and issubclass(cls, base)) or cls is base:
        known = sorted(n for n in getattr(module, "__all__", ())
                       if isinstance(getattr(module, n, None), type) and getattr(module, n) is not base)
        raise ValueError(f"{source}: unknown {what} class {short_repr(name)} (torchpalm knows {known})")
    return cls


@contextlib.contextmanager
def _blame(where: str):
    """A constructor's complaint about a bundle's config (an unknown option, a wrong value) as a ValueError
    naming bundle.json and the key it came from."""
    try:
        yield
    except (TypeError, ValueError, KeyError) as e:
        raise ValueError(f"{where}: {e.args[0] if e.args else e}") from e


def _takes_path(hint) -> bool:
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    return any((typing.get_origin(o) or o) is os.PathLike for o in options)


def _path_options(reader_cls: type, options: dict, directory: str, where: str) -> dict:
    """Reader options that name a file (a `label_map` path: a str where the constructor takes a path) are
    confined to the bundle folder like its `files`."""
    if not isinstance(options, dict):
        raise ValueError(f"{where}: expected a mapping of the reader's options, got {short_repr(options)}")
    hints = typing.get_type_hints(reader_cls.__init__)
    return {key: file_in_bundle(directory, value, f"{where}.{key}")
            if isinstance(value, str) and _takes_path(hints.get(key)) else value for key, value in options.items()}


class Predictor:
    """A backbone and one or more task heads with their readers, for prediction only. Build with `load`."""

    def __init__(self, backbone: nn.Module, heads: dict[str, nn.Module], readers: dict[str, Reader],
                 device: torch.device, precision: str = "fp32", source: str = "<modules>"):
        self.model = MultiTaskModel(backbone, heads).to(device).eval()
        self.backbone = self.model.backbone
        self.heads = dict(self.model.heads)
        self.readers = readers
        self.device, self.precision, self.source = device, precision, source

    @classmethod
    def load(cls, bundle_dir: str | os.PathLike, device: str | torch.device | None = None,
             precision: str = "fp32", _unfinished: bool = False) -> Predictor:
        """Rebuilds the model of an inference bundle written by `palm.export` or `set_saver(save_type='predict')`.

        Args:
            bundle_dir: the bundle folder.
            device: default CUDA if available, else CPU.
            precision: 'fp32' (default: outputs as the training run's evaluation on CPU), 'bf16', 'fp16' or
                'auto' (bf16 autocast on CUDA).

        Raises:
            FileNotFoundError: the folder, bundle.json, the weights or a reader's file is missing (named).
            ValueError: a bundle of a newer format version (both versions named), an incomplete bundle, an
                unknown class, or weights that do not fit the configs.
        """
        directory = os.fspath(bundle_dir)
        spec = read_spec(directory, check_complete=not _unfinished)
        where = os.path.join(directory, BUNDLE_FILE)
        bb = spec["backbone"]
        backbone_cls = _lookup(backbone_module, bb.get("class"), backbone_module.Backbone, "backbone", where)
        with _blame(f"{where}: backbone.config ({backbone_cls.__name__})"):
            backbone = backbone_cls.from_config(bb["config"], phase="predict")
        heads, readers, owners = {}, {}, {}
        for name, task in spec["tasks"].items():
            key = f"{where}: tasks.{name}"
            try:
                head_spec, reader_spec = task["head"], task["reader"]
                config = dict(head_spec["config"])
                owners[name] = task.get("weights_of", name)
            except (KeyError, TypeError) as e:
                raise ValueError(f"{where}: task {name!r} lacks {e} (expected head, reader and weights_of)") from None
            if "pred_output_path" in config:  # a training run's output folder means nothing here
                config["pred_output_path"] = None
            head_cls = _lookup(head_module, head_spec.get("class"), Head, "head", where)
            with _blame(f"{key}.head.config ({head_cls.__name__})"):
                heads[name] = head_cls(**config, phase="predict")
            files = {}
            for arg, rel in reader_spec.get("files", {}).items():
                files[arg] = file_in_bundle(directory, rel, f"{key}.reader.files.{arg}")
                if not os.path.isfile(files[arg]):
                    raise FileNotFoundError(f"{directory}: missing {rel} (task {name!r}: its reader's {arg}, "
                                            f"listed in {BUNDLE_FILE})")
            reader_cls = _lookup(reader_module, reader_spec.get("class"), Reader, "reader", where)
            options = _path_options(reader_cls, reader_spec.get("options", {}), directory,
                                    f"{key}.reader.options")
            with _blame(f"{key}.reader.options ({reader_cls.__name__})"):
                readers[name] = reader_cls(**files, **options, phase="predict")
            readers[name].register_with(backbone)
            heads[name].check_reader(readers[name])  # label-map size; the tagger's no-entity id
        weights = file_in_bundle(directory, "model.safetensors", f"{directory}: the weights")
        if not os.path.isfile(weights):
            raise FileNotFoundError(f"{directory}: missing model.safetensors (the weights)")
        state = read_safetensors(weights)  # a truncated or corrupt file is an error naming it
        parts = [(state_keys.BACKBONE, backbone), *((owners[name], head) for name, head in heads.items())]
        missing = [f"{scope}.{k}" for scope, module in parts
                   for k in ckpt.assign_state(module, state_keys.scoped(state, scope), weights)]
        if missing:
            raise ValueError(f"{weights}: lacks {len(missing)} tensor(s) the bundle's model needs, e.g. {missing[:5]}")
        device = torch.device(device) if device is not None else default_device()
        return cls(backbone, heads, readers, device, precision, directory)

    @property
    def tasks(self) -> list[str]:
        return list(self.heads)

    def _task_names(self, task: str | None) -> list[str]:
        if task is None:
            return self.tasks
        if task not in self.heads:
            raise KeyError(f"no task {task!r} in {self.source} (tasks: {self.tasks})")
        return [task]

    @torch.no_grad()
    def predict(self, inputs: Sequence | str | os.PathLike, task: str | None = None, batch_size: int = 32):
        """Predicts `inputs`: a list (texts, (text_a, text_b) pairs, word lists, (question, context) pairs, as
        each task's reader takes them) or the path of a file in the reader's format.

        Returns the task's results (a bundle with one task, or `task=`), else `{task: results}`. Results, one
        per input in order: classification and matching `{"index", "label", "label_name" (with a label map),
        "probs", "logits"}`; tagging `{"index", "words", "tags", "tag_ids"}`; MRC the answer text (a file:
        `{question id: answer}`). Tasks that read the same text share one backbone pass per batch.
        """
        names = self._task_names(task)
        # this call's own readers and results buffers (copies of the heads: parameters shared, buffers not)
        tasks = [PredictTask(n, copy.copy(self.heads[n]), self.reader_for(n, inputs, batch_size)) for n in names]
        done = predict_tasks(self.model, tasks, self.device, self.precision, list(self.backbone.inputs_attr))
        results = {n: self._plain(done.results[n], inputs) for n in names}
        return results[names[0]] if len(names) == 1 and (task is not None or len(self.heads) == 1) else results

    def reader_for(self, name: str, inputs, batch_size: int) -> Reader:
        """A copy of the task's reader loaded with `inputs` (a list, or a file's path), for one call."""
        reader = copy.copy(self.readers[name])  # this call's own position, examples and epoch outputs
        if isinstance(inputs, str | os.PathLike):
            reader.load_data(inputs, batch_size)
        else:
            reader.load_inputs(inputs, batch_size)
        return reader

    @staticmethod
    def _plain(results, inputs):
        """Plain Python values: tag sequences as dicts; MRC answers of a list of inputs as a list in order."""
        if isinstance(results, dict):
            if isinstance(inputs, str | os.PathLike):
                return results
            return [results.get(str(n), "") for n in range(1, len(inputs) + 1)]
        return [{"index": i, "words": r.words, "tags": r.tags, "tag_ids": list(r)} if hasattr(r, "tags") else r
                for i, r in enumerate(results)]

    # ---- ONNX ----
    def to_onnx(self, path: str | os.PathLike, tasks: Sequence[str] | None = None) -> str:
        """Exports the backbone and the heads of `tasks` (default all) as one ONNX graph (`torch.onnx.export`,
        dynamo): one backbone pass, one output per task named after it (`Head.export_output`: logits;
        emission scores for a tagger; [B, L, 2] start/end logits for MRC), batch and sequence axes dynamic.

        Inputs are the backbone's (`token_ids`, `position_ids`, `segment_ids`, `input_mask`, ERNIE's
        `task_ids`) and the heads' (`word_starts`, `seq_lens` for tagging), int64, as the readers yield them.
        """
        from .onnx_export import export_onnx

        names = list(tasks) if tasks is not None else self.tasks
        for n in names:
            self._task_names(n)
        return export_onnx(self, names, os.fspath(path))

