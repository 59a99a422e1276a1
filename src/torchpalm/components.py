"""Building PALM's components from a validated config (config.py): the backbone's files, the backbone, each
task's reader and head, as a script would build them; a constructor's complaint becomes a `ConfigError` naming
the config key its value came from. `torchpalm train|predict|evaluate|export` (cli.py) build through here.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from typing import Any

from . import backbone as backbones
from .config import BACKBONES, ConfigError, component_class, constructor_params
from .reader import DataError


def key_in(cfg: dict, key: str) -> str:
    """A config key as errors name it, after the config file it is in (when read from a file), as data errors
    put file before line: `run.yaml: tasks[0].train_file`."""
    return f"{cfg['config_file']}: {key}" if cfg.get("config_file") else key


@contextlib.contextmanager
def blame(where: str):
    """A constructor's complaint about a value (ValueError, ...), or a file it names that is missing, as a
    ConfigError naming the config key it came from; data errors already name their file and line and pass
    through."""
    try:
        yield
    except (ConfigError, DataError):
        raise
    except FileNotFoundError as e:  # (the data file, a label map file, ...): which key named it
        raise ConfigError(f"{where}: {e}") from e
    except (ValueError, TypeError, KeyError) as e:
        raise ConfigError(f"{where}: {e.args[0] if e.args else e}") from e


CONFIG_NAMES = ("config.json", "ernie_config.json", "bert_config.json")  # HF's name, then PaddlePALM's


def side_file(pretrained: str, names: tuple[str, ...]) -> str:
    """The first of `names` in the pretrained dir, or above it when that is PALM's `<model>/params` folder (the
    first name in the dir when none exists, for the not-found error)."""
    folders = [pretrained]
    if os.path.basename(os.path.normpath(pretrained)) == "params":
        folders.append(os.path.dirname(os.path.normpath(pretrained)))
    for folder in folders:
        for name in names:
            if os.path.isfile(os.path.join(folder, name)):
                return os.path.join(folder, name)
    return os.path.join(pretrained, names[0])


def backbone_files(cfg: dict) -> tuple[dict, str, str | None]:
    """(backbone config dict, vocab path, pretrained weights dir or None) of a validated config."""
    b = cfg["backbone"]
    pretrained = b["pretrained"]
    config = b["config"] if b["config"] is not None else side_file(pretrained, CONFIG_NAMES)
    vocab = b["vocab"]
    if vocab is None:  # from the model folder: its vocab.txt (BERT, ERNIE; PALM's layout), else the folder itself,
        # where the readers find the tokenizer the model ships (tokenizer.json, a SentencePiece model, vocab.json)
        vocab = side_file(pretrained, ("vocab.txt",))
        if b["type"] == "roberta" or not os.path.isfile(vocab):
            vocab = pretrained
    if not isinstance(config, dict):
        if not os.path.isfile(config):
            raise ConfigError(f"backbone.config: file not found: {config}")
        with open(config, encoding="utf-8") as f:
            config = json.load(f)
    if not os.path.exists(vocab):
        raise ConfigError(f"backbone.vocab: file not found: {vocab}")
    # a pairwise Match reader yields the negative pair too, which the backbone must encode
    if any(t["reader"].get("learning_strategy") == "pairwise" for t in cfg["tasks"]):
        config = {**config, "is_pairwise": True}
    return config, vocab, pretrained


def build_backbone(cfg: dict, config: dict, phase: str):
    """The config's backbone for `phase`, from the backbone config dict `backbone_files` read."""
    b = cfg["backbone"]
    cls = getattr(backbones, BACKBONES[b["type"]])
    # errors name the config file the values came from (backbone_files has parsed it into `config`)
    path = None if isinstance(b["config"], dict) else b["config"]
    if path is None and b["config"] is None and b["pretrained"] is not None:
        path = side_file(b["pretrained"], CONFIG_NAMES)
    with blame(f"backbone.config ({cls.__name__}{f', {path}' if path else ''})"):
        return cls.from_config(config, phase=phase)


def build_reader(task: dict, cfg: dict, vocab: str, phase: str, learned: Mapping[str, Any] | None = None):
    """The task's reader (not loaded); returns (reader, load_data options). `learned` are the options the
    training file decided (`Reader.data_options()`: a label map built from its labels, text pairs or not), for a
    predict reader; the config's own values come first."""
    cls = component_class("reader", task["reader"]["type"])
    ctor = constructor_params("reader", task["reader"]["type"])
    options = {k: v for k, v in task["reader"].items() if k != "type"}
    for key, value in (learned or {}).items():
        if key in ctor and options.get(key) is None and value is not None:
            options[key] = value
    options.setdefault("seed", cfg["train"]["seed"])
    if cfg["backbone"]["type"] == "roberta":  # RoBERTa's byte-level BPE, XLM-R's SentencePiece: what it ships
        options.setdefault("tokenizer", "auto")
    if cfg["train"]["max_len"] is not None:
        options.setdefault("max_len", cfg["train"]["max_len"])
    kwargs = {k: v for k, v in options.items() if k in ctor}
    load_kwargs = {k: v for k, v in options.items() if k not in ctor}
    with blame(f"{task['path']}.reader ({cls.__name__})"):
        return cls(vocab, phase=phase, **kwargs), load_kwargs


def build_head(task: dict, backbone, phase: str, label_map: Mapping[str, int] | None,
               num_classes: int | None = None):
    """The task's head on `backbone` (built by `build_backbone`): its `input_dim` is the backbone's
    `hidden_size`, the width of the features it yields (a config may name it otherwise, as DistilBERT's `dim`);
    `label_map` (the reader's), else `num_classes` (what training found), gives `num_classes` when the config
    does not."""
    cls = component_class("head", task["head"]["type"])
    params = constructor_params("head", task["head"]["type"])
    kwargs = {k: v for k, v in task["head"].items() if k != "type"}
    config = backbone.config
    implied = {"vocab_size": config.get("vocab_size"),
               "hidden_act": config.get("hidden_act", config.get("hidden_activation")),
               # ModernBERT's backbone yields its prediction head's outputs: MaskLM adds no transform of its own
               "transform": False if isinstance(backbone, backbones.ModernBERT) else None,
               "max_query_len": task["reader"].get("max_query_len"),
               "num_classes": max(label_map.values()) + 1 if label_map else num_classes}
    for name, value in implied.items():
        if name in params and name not in kwargs and value is not None:
            kwargs[name] = value
    with blame(f"{task['path']}.head ({cls.__name__})"):
        return cls(input_dim=backbone.hidden_size, phase=phase, **kwargs)


def reader_label_map(reader) -> dict[str, int] | None:
    """The `{label: id}` map a reader holds (given, or built from its training file), if any."""
    value = getattr(reader, "label_map", None)
    return dict(value) if value else None
