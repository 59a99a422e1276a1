"""The `torchpalm` command: train, predict, evaluate and convert, driven by a YAML config (torchpalm/config.py).

Each command runs PaddlePALM's flow on the objects a script would build (readers, backbone, heads, `Trainer` or
`MultiHeadTrainer`, Adam and a schedule), so a config run and the equivalent script do the same thing.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from collections.abc import Sequence

import torch

import torchpalm as palm

from . import config as C
from .config import ConfigError
from .reader import DataError

logger = logging.getLogger("torchpalm")

CONFIG_HELP = """\
config (YAML; relative paths are relative to the config file):
  backbone:   type (bert|ernie), pretrained (HF dir, torchpalm checkpoint, package:NAME or null),
              config (config.json path or inline mapping; default <pretrained>/config.json),
              vocab (default <pretrained>/vocab.txt)
  tasks:      a list (or one mapping) of: name, reader {type: classify|match|sequence_label|mrc|mask_lm,
              options = the reader class's constructor/load_data parameters}, head {type: the same kinds,
              options = the head class's constructor parameters}, train_file, dev_file, predict_file,
              mix_ratio, aux, loss_weight
  optimizer:  type (adam), lr, weight_decay
  schedule:   type (triangular|warmup|none), warmup (steps, or a float < 1: fraction of the run),
              decay_from_warmup_end
  train:      epochs, batch_size, max_len, seed, save_path, save_steps, print_steps, evaluate_every,
              device, precision, grad_clip
  multi_task: sampling, temperature, max_examples, anneal_to, seed, reference (several tasks only)
A misspelt, missing or mistyped key is an error naming its path, e.g. tasks[0].reader.max_len.
"""


# ---------------------------------------------------------------- building blocks
def make_schedule(cfg: dict):
    """The schedule, its length left to the trainer (it knows the exact number of steps it will run)."""
    s = cfg["schedule"]
    if s["type"] == "none":
        return None
    if s["type"] == "warmup":
        return palm.lr_sched.WarmupSchedualer(s["warmup"])
    return palm.lr_sched.TriangularSchedualer(s["warmup"], None, decay_from_warmup_end=s["decay_from_warmup_end"])


def need(task: dict, key: str, command: str, alternative: str = "") -> str:
    if task[key] is None:
        raise ConfigError(f"{task['path']}.{key}: missing, and `torchpalm {command}` needs it{alternative}")
    return task[key]


def train_label_map(task: dict, cfg: dict, vocab: str) -> dict | None:
    """The label map training used, for predict-phase readers: the config's, or (a sequence_label task whose
    map is built from its training tags) the one the train reader builds from train_file again."""
    given = C.label_map_option(task["reader"])
    if given is not None or task["reader"]["type"] != "sequence_label":
        return None
    need(task, "train_file", "predict/evaluate", " (its tags give the label map; or set reader.label_map_config)")
    reader, load_kwargs = C.build_reader(task, cfg, vocab, "train")
    with C.blame(f"{task['path']}.train_file"):
        reader.load_data(task["train_file"], cfg["train"]["batch_size"], **load_kwargs)
    return reader.label_map


def predict_trainer(task: dict, cfg: dict, files: tuple, data_file: str, checkpoint: str | None = None,
                    label_map: dict | None = None, trainer=None):
    """A Trainer named like the task with its predict side built over `data_file` (PALM's predict script):
    predict reader, predict backbone and head, then the checkpoint's weights; or, given the training `trainer`,
    its trained weights (evaluation during training). Returns (trainer, reader)."""
    config, vocab, _ = files
    reader, load_kwargs = C.build_reader(task, cfg, vocab, "predict", label_map)
    with C.blame(f"{task['path']} ({data_file})"):
        reader.load_data(data_file, cfg["train"]["batch_size"], **load_kwargs)
    backbone = C.build_backbone(cfg, config, "predict")
    reader.register_with(backbone)
    trainer = trainer or palm.Trainer(task["name"], device=cfg["train"]["device"],
                                      precision=cfg["train"]["precision"])
    trainer.build_predict_forward(backbone, C.build_head(task, config, "predict", C.reader_label_map(reader)))
    if checkpoint is not None:
        trainer.load_ckpt(checkpoint)
    return trainer, reader


# ---------------------------------------------------------------- commands
def train(cfg: dict, dry_run: bool = False, resume: bool = False) -> str | None:
    """PALM's 8 steps for one task (Trainer) or several (MultiHeadTrainer); returns the final checkpoint.
    `dry_run` builds everything (data read, weights loaded) and stops before the first step; `resume` continues
    from the latest complete checkpoint in train.save_path (from the start when there is none)."""
    files = config, vocab, pretrained = C.backbone_files(cfg)
    tr, tasks, multi = cfg["train"], cfg["tasks"], len(cfg["tasks"]) > 1
    if not multi and tr["epochs"] != int(tr["epochs"]):
        raise ConfigError(f"train.epochs: one task trains whole epochs, got {tr['epochs']!r}")
    torch.manual_seed(tr["seed"])  # head (and from-scratch backbone) initialisation and dropout
    # 1. readers (multi-task: they cycle; the trainer's step budgets end the run)
    readers = {}
    for t in tasks:
        readers[t["name"]], load_kwargs = C.build_reader(t, cfg, vocab, "train")
        with C.blame(f"{t['path']}.train_file"):
            readers[t["name"]].load_data(need(t, "train_file", "train"), tr["batch_size"],
                                         num_epochs=None if multi else int(tr["epochs"]), **load_kwargs)
    # 2. backbone  3. register every reader with it
    backbone = C.build_backbone(cfg, config, "train")
    for reader in readers.values():
        reader.register_with(backbone)
    # 4. heads  5. one trainer per task, all on the same backbone
    trainers = {}
    for t in tasks:
        with C.blame(t["path"]):
            trainer = trainers[t["name"]] = palm.Trainer(
                t["name"], mix_ratio=t["mix_ratio"], device=tr["device"], precision=tr["precision"],
                grad_clip=tr["grad_clip"], loss_weight=t["loss_weight"])
        if t["aux"]:
            trainer.set_as_aux()
        loss_var = trainer.build_forward(
            backbone, C.build_head(t, config, "train", C.reader_label_map(readers[t["name"]])))
    if multi:
        options = {k: v for k, v in cfg["multi_task"].items() if k != "reference"}
        with C.blame("multi_task"):
            runner = palm.MultiHeadTrainer(list(trainers.values()), **options)
        loss_var = runner.build_forward()
    else:
        runner = trainer
    # 6. optimizer, schedule, backward
    opt = cfg["optimizer"]
    runner.build_backward(palm.optimizer.Adam(loss_var, opt["lr"], make_schedule(cfg)),
                          weight_decay=opt["weight_decay"])
    # 7. fit the readers
    if multi:
        main_tasks = [t["name"] for t in tasks if not t["aux"]]
        reference = cfg["multi_task"].get("reference") or (main_tasks[0] if main_tasks else tasks[0]["name"])
        runner.fit_readers_with_mixratio(list(readers.values()), reference, tr["epochs"])
    else:
        runner.fit_reader(readers[tasks[0]["name"]])
    # 8. pretrained weights, saver, dev sets, train
    if pretrained is not None:
        runner.load_pretrain(pretrained)
    runner.set_saver(save_path=tr["save_path"], save_steps=tr["save_steps"], save_type="ckpt")
    if resume:
        runner.resume(tr["save_path"])
    dev_tasks = [t for t in tasks if t["dev_file"] is not None]
    for t in dev_tasks:
        trainer = trainers[t["name"]]
        # The predict modules' initialisation (then replaced by the trained weights) must not move the random
        # stream: a dev file changes nothing about training.
        with torch.random.fork_rng(devices=[]):
            _, dev_reader = predict_trainer(t, cfg, files, t["dev_file"], trainer=trainer,
                                            label_map=C.reader_label_map(readers[t["name"]]))
        trainer.set_dev(dev_reader)
    if dev_tasks and tr["evaluate_every"] is not None:
        runner.set_evaluation(every_steps=tr["evaluate_every"])
    if dry_run:
        print(f"dry run: {len(tasks)} task(s) built ({', '.join(readers)}); not training")
        return None
    runner.train(print_steps=tr["print_steps"])
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


def predict(cfg: dict, checkpoint: str, inputs: Sequence[str], output: str | None) -> dict[str, str]:
    """Predicts every task's predict file (or `--input`) with the checkpoint; returns {task: predictions.json}."""
    files = C.backbone_files(cfg)
    output = output or os.path.join(cfg["train"]["save_path"], "predict")
    overrides = input_files(cfg, inputs)
    written = {}
    for t in cfg["tasks"]:
        data_file = overrides.get(t["name"], t["predict_file"])
        if data_file is None:
            logger.info("task %s: no predict_file (nor --input): skipped", t["name"])
            continue
        trainer, reader = predict_trainer(t, cfg, files, data_file, checkpoint, train_label_map(t, cfg, files[1]))
        trainer.fit_reader(reader, phase="predict")
        out_dir = os.path.join(output, t["name"])
        trainer.predict(output_dir=out_dir, print_steps=0)
        written[t["name"]] = os.path.join(out_dir, "predictions.json")
        print(f"{t['name']}: {written[t['name']]}")
    if not written:
        raise ConfigError("no task has a predict_file: set tasks[i].predict_file or pass --input FILE")
    return written


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
    files = C.backbone_files(cfg)
    metrics = {}
    for t in cfg["tasks"]:
        if t["dev_file"] is None:  # (validation made sure a dev_file has a metric)
            logger.info("task %s: no dev_file: skipped", t["name"])
            continue
        trainer, reader = predict_trainer(t, cfg, files, t["dev_file"], checkpoint,
                                          train_label_map(t, cfg, files[1]))
        metrics[t["name"]] = trainer.evaluate(reader)
    if not metrics:
        raise ConfigError("no task has a dev_file (a labelled file) to evaluate on")
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
        print(f"{name}: " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))
    print(f"metrics written to {path}")


# ---------------------------------------------------------------- convert
def convert_hf_to_torchpalm(src: str, dst: str) -> str:
    """An HF BertModel directory -> `dst/model.safetensors` with torchpalm's `backbone.<name>` keys (what
    `load_pretrain` and checkpoints hold), plus its config.json and vocab.txt."""
    from safetensors.torch import save_file

    from . import checkpoint as ckpt
    from .convert import hf_to_torchpalm

    file = ckpt.find_weights_file(src)
    converted, unused = hf_to_torchpalm(ckpt.load_state_file(file))
    if not converted:
        raise ConfigError(f"{file}: no HF BERT parameters found")
    if unused:
        logger.info("%s: %d tensors without a torchpalm backbone counterpart were left out (e.g. %s)", file,
                    len(unused), unused[:3])
    os.makedirs(dst, exist_ok=True)
    save_file({f"backbone.{k}": v.contiguous() for k, v in converted.items()}, os.path.join(dst, "model.safetensors"))
    copy_side_files(src, dst)
    return dst


def convert_torchpalm_to_hf(src: str, dst: str) -> str:
    """A torchpalm checkpoint (or converted) directory -> an HF BertModel directory (model.safetensors,
    config.json, vocab.txt). Only the backbone is converted; parameters HF's BERT has no place for (an
    ERNIE's task embedding) are an error."""
    from safetensors.torch import save_file

    from . import checkpoint as ckpt
    from .convert import hf_to_torchpalm, torchpalm_to_hf

    state, file = ckpt.load_backbone_weights(src)
    hf = torchpalm_to_hf(state)
    lost = sorted(set(state) - set(hf_to_torchpalm(hf)[0]))
    if lost:
        raise ConfigError(f"{file}: {lost} have no HF BertModel counterpart; this backbone cannot be converted")
    os.makedirs(dst, exist_ok=True)
    save_file(hf, os.path.join(dst, "model.safetensors"))
    copy_side_files(src, dst)
    if not os.path.isfile(os.path.join(dst, "config.json")):
        write_hf_config(src, dst)
    return dst


def copy_side_files(src: str, dst: str) -> None:
    src_dir = src if os.path.isdir(src) else os.path.dirname(src)
    for name in ("config.json", "vocab.txt"):
        if os.path.isfile(os.path.join(src_dir, name)) and os.path.abspath(src_dir) != os.path.abspath(dst):
            shutil.copyfile(os.path.join(src_dir, name), os.path.join(dst, name))


def write_hf_config(src: str, dst: str) -> None:
    """config.json from the backbone record of a checkpoint's trainer_state.json (HF's key names)."""
    state_file = os.path.join(src, "trainer_state.json")
    if not os.path.isfile(state_file):
        logger.warning("%s has no config.json nor trainer_state.json: write %s/config.json yourself", src, dst)
        return
    with open(state_file, encoding="utf-8") as f:
        record = json.load(f).get("backbone", {})
    if record.get("class") != "BERT":
        raise ConfigError(f"{state_file}: the backbone is {record.get('class')!r}; only BERT converts to HF")
    config = {"architectures": ["BertModel"], "model_type": "bert", **record["config"]}
    with open(os.path.join(dst, "config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=1)


CONVERSIONS = {("hf", "torchpalm"): convert_hf_to_torchpalm, ("torchpalm", "hf"): convert_torchpalm_to_hf}


# ---------------------------------------------------------------- argument parsing
def parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(prog="torchpalm", description="PaddlePALM on PyTorch: train, predict, evaluate "
                                "and convert from a YAML config.", epilog=CONFIG_HELP, formatter_class=fmt)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(name: str, help_text: str) -> argparse.ArgumentParser:
        s = sub.add_parser(name, help=help_text, description=help_text, epilog=CONFIG_HELP, formatter_class=fmt)
        s.add_argument("config", help="the YAML config file")
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
                    "predictions.json.")
    s.add_argument("--checkpoint", required=True, help="checkpoint directory (e.g. outputs/ckpt.step100)")
    s.add_argument("--input", action="append", default=[], metavar="[TASK=]FILE",
                   help="predict FILE instead of the predict_file (TASK=FILE with several tasks); repeatable")
    s.add_argument("--output", default=None, help="output directory (default <train.save_path>/predict)")
    s = with_config("evaluate", "Score a checkpoint on each task's dev_file with its default metric "
                    "(accuracy, entity F1, answer F1); printed and written to <output>/metrics.json.")
    s.add_argument("--checkpoint", required=True, help="checkpoint directory")
    s.add_argument("--output", default=None, help="output directory (default <train.save_path>/evaluate)")
    s = sub.add_parser("convert", help="Convert BERT weights between HF and torchpalm.",
                       description="Convert a BERT backbone: --from hf --to torchpalm reads an HF BertModel "
                       "directory and writes model.safetensors with torchpalm names (backbone.*), loadable by "
                       "load_pretrain; --from torchpalm --to hf reads a torchpalm checkpoint and writes an HF "
                       "BertModel directory. config.json and vocab.txt are copied along.", formatter_class=fmt)
    s.add_argument("--from", dest="source_format", required=True, choices=["hf", "torchpalm"])
    s.add_argument("--to", dest="target_format", required=True, choices=["hf", "torchpalm"])
    s.add_argument("src", help="source model directory (or weights file)")
    s.add_argument("dst", help="output directory")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    try:
        if args.command == "convert":
            conversion = CONVERSIONS.get((args.source_format, args.target_format))
            if conversion is None:
                p.error(f"convert: --from {args.source_format} --to {args.target_format} is no conversion "
                        f"(available: hf -> torchpalm, torchpalm -> hf)")
            print(conversion(args.src, args.dst))
            return 0
        cfg = C.load(args.config, args.set)
        if args.command == "train":
            train(cfg, dry_run=args.dry_run, resume=args.resume)
        elif args.command == "predict":
            predict(cfg, args.checkpoint, args.input, args.output)
        else:
            evaluate(cfg, args.checkpoint, args.output)
    except (ConfigError, DataError, FileNotFoundError) as e:
        print(f"torchpalm {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
