"""Full-run parity of the softmax tagger: torchpalm's `SequenceLabel(use_crf=False)` and HF's
`BertForTokenClassification` trained side by side, step by step, over a whole run (issue 30).

Per-step parity tests (tests/parity/test_training_parity.py) show one step equals HF's; this shows whether a whole
run does, and if not, from which step the two part. Both sides start from the same weights (MiniLM, and the
classifier initialised once and copied into the other side), read the same sentences in the same order (each
epoch's order is the reader's documented `default_rng([seed, epoch]).permutation(n)`; every step checks that
the two sides' token ids and labels are the same), with dropout off and the same schedule (linear warmup over
10% then linear decay to 0), fp32, AdamW (0.9, 0.999, 1e-8) with weight decay 0.01 off biases and LayerNorms.
Each step's two losses are recorded; at the end both predict the test file and are scored by seqeval.

Then each difference a normal run has can be switched back on, one at a time (`--switch`):

* `packing`: our backbone runs its padded batches packed (its default; parity mode runs them padded);
* `order`:   each side draws its own batch order (ours from the reader, HF's as benchmarks/common.py does);
* `init`:    each side initialises its own classifier (both plain normal, std 0.02, bias 0; `--head_init`
             starts ours otherwise, e.g. `truncated`: PALM's normal clipped at +-2 std, the head's start before
             issue 30's fix);
* `dropout`: dropout 0.1 in the encoder and before the classifier, each side its own random stream.

Data (`--data`): conll (CoNLL-2003), atis (ATIS slots), atis_merged (ATIS slots with types merged into
fewer, longer spans), msra (MSRA-NER BIO), jointbert (`--data_dir`: any folder in JointBERT's seq.in/seq.out
layout, e.g. its SNIPS), or any CoNLL-format `--train_file` / `--test_file`.

Usage: python benchmarks/tagging_full_run.py --data atis --train_examples 3000 [--switch packing] [--seed 1]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch
from common import first_piece_targets, minilm_dir, results_header, tagger_batch
from tagging_data import add_data_args, check_data_args, read_conll, regime_files

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SWITCHES = ("packing", "order", "init", "dropout")
TRUNCATED_STD = 0.8796  # the std of N(0, 1) truncated at +-2, as a fraction of 1
# Our classifier's start (`--head_init`), std 0.02 nominal: the head's own (plain normal since issue 30), PALM's
# truncated normal, and the two that separate its parts: a plain normal as narrow as the truncated one, and a
# truncated normal widened to std 0.02.
HEAD_INITS = {
    "head": None,
    "normal": lambda w: torch.nn.init.normal_(w, std=0.02),
    "truncated": lambda w: torch.nn.init.trunc_normal_(w, std=0.02, a=-0.04, b=0.04),
    "normal_narrow": lambda w: torch.nn.init.normal_(w, std=0.02 * TRUNCATED_STD),
    "truncated_wide": lambda w: torch.nn.init.trunc_normal_(w, std=0.02 / TRUNCATED_STD, a=-0.04 / TRUNCATED_STD,
                                                            b=0.04 / TRUNCATED_STD),
}


# ---- the two sides ----
def build_ours(args, config: dict, model_dir: str, train_file: str, labels: list[str], n_steps: int):
    import torchpalm as palm

    torch.manual_seed(args.seed)
    reader = palm.reader.SequenceLabelReader(os.path.join(model_dir, "vocab.txt"), args.max_seqlen,
                                             {t: i for i, t in enumerate(labels)}, seed=args.seed,
                                             do_lower_case=True)
    reader.load_data(train_file, args.batch_size, num_epochs=args.epochs)
    backbone = palm.backbone.BERT.from_config(config)
    backbone.pack_tokens = "packing" in args.switch
    reader.register_with(backbone)
    head = palm.head.SequenceLabel(len(labels), config["hidden_size"], args.dropout, use_crf=False)
    if HEAD_INITS[args.head_init] is not None:
        HEAD_INITS[args.head_init](head.emission.weight.data)
    trainer = palm.Trainer(f"full_run_{args.data}")
    model = trainer.build_forward(backbone, head)
    sched = palm.lr_sched.TriangularSchedualer(int(0.1 * n_steps), n_steps, decay_from_warmup_end=True)
    trainer.build_backward(palm.optimizer.Adam(model, args.lr, sched), weight_decay=0.01)
    trainer.fit_reader(reader)
    trainer.load_pretrain(model_dir)
    return trainer, reader, backbone, head


def build_hf(args, model_dir: str, labels: list[str], n_steps: int, head):
    from transformers import BertForTokenClassification, get_linear_schedule_with_warmup

    torch.manual_seed(args.seed)
    model = BertForTokenClassification.from_pretrained(
        model_dir, num_labels=len(labels), attn_implementation="sdpa", hidden_dropout_prob=args.dropout,
        attention_probs_dropout_prob=args.dropout)
    if "init" not in args.switch:  # the same classifier start on both sides
        with torch.no_grad():
            model.classifier.weight.copy_(head.emission.weight)
            model.classifier.bias.copy_(head.emission.bias)
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias") or "LayerNorm" in n]
    decay = [p for n, p in model.named_parameters() if not (n.endswith("bias") or "LayerNorm" in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.999), eps=1e-8)
    sched = get_linear_schedule_with_warmup(opt, int(0.1 * n_steps), n_steps)
    model.train()
    return model, opt, sched


def same_data(ours: dict, hf: dict) -> bool:
    """Our batch and HF's hold the same token ids and the same label on each word's first sub-token."""
    ids = ours["token_ids"]
    if ids.shape != hf["input_ids"].shape or not torch.equal(ids, hf["input_ids"]):
        return False
    hf_labels = [row[row != -100] for row in hf["labels"]]
    our_labels = [row[row != -100] for row in ours["label_ids"]]
    return all(torch.equal(a, b) for a, b in zip(hf_labels, our_labels, strict=True))


def run(args) -> dict:
    from transformers import BertTokenizer

    import torchpalm as palm

    torch.set_num_threads(args.threads)
    model_dir = minilm_dir()
    train_file, test_file = regime_files(args)
    train_sents, train_tags = read_conll(train_file)
    test_sents, gold = read_conll(test_file)
    labels = sorted({t for ts in train_tags for t in ts})  # the reader's own default order
    config = json.load(open(os.path.join(model_dir, "config.json")))
    if "dropout" not in args.switch:
        config = dict(config, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    args.dropout = 0.1 if "dropout" in args.switch else 0.0
    n = len(train_sents)
    n_steps = n * args.epochs // args.batch_size

    trainer, reader, backbone, head = build_ours(args, config, model_dir, train_file, labels, n_steps)
    start = head.emission.weight.detach().clone()
    if args.ours_only:  # HF's losses and scores from its run of the same seed (`--hf_from`)
        recorded = json.load(open(args.hf_from))
        hf_losses = [b for _, b in recorded["losses"]]
    else:
        hf, opt, sched = build_hf(args, model_dir, labels, n_steps, head)
    tok = BertTokenizer.from_pretrained(model_dir)
    ids, targets = first_piece_targets(tok, train_sents, train_tags, labels, args.max_seqlen)
    own_rng = np.random.default_rng(args.seed)  # HF's own order (benchmarks/common.py), with `--switch order`

    losses, mismatched, t_ours, t_hf = [], 0, 0.0, 0.0
    steps_per_epoch = n // args.batch_size
    for epoch in range(args.epochs):
        order = (own_rng.permutation(n) if "order" in args.switch
                 else np.random.default_rng([args.seed, epoch]).permutation(n))
        for b in range(steps_per_epoch):
            t0 = time.perf_counter()
            batch = trainer.get_one_batch()
            ours = float(trainer.train_one_step(batch)[f"full_run_{args.data}.loss"])
            t1 = time.perf_counter()
            hb = tagger_batch(tok, ids, targets, order[b * args.batch_size:(b + 1) * args.batch_size])
            if "order" not in args.switch and not same_data(batch, hb):
                mismatched += 1
            t_ours += t1 - t0
            if args.ours_only:
                losses.append((ours, hf_losses[len(losses)]))
            else:
                loss = hf(**hb).loss
                loss.backward()
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
                t_hf += time.perf_counter() - t1
                losses.append((ours, loss.item()))
            step = len(losses)
            if args.print_steps and step % args.print_steps == 0:
                print(f"step {step}/{n_steps}: ours {ours:.6f} hf {losses[-1][1]:.6f} diff {ours - losses[-1][1]:+.2e}",
                      flush=True)

    # both sides predict the test file; words past max_len are O on both (as conll_vs_hf.py)
    from common import hf_predict_tags
    from conll_vs_hf import scores

    pred_reader = palm.reader.SequenceLabelReader(os.path.join(model_dir, "vocab.txt"), args.max_seqlen,
                                                  {t: i for i, t in enumerate(labels)}, do_lower_case=True,
                                                  phase="predict")
    pred_reader.load_data(test_file, 128)
    pred_backbone = palm.backbone.BERT.from_config(config, phase="predict")
    pred_backbone.pack_tokens = backbone.pack_tokens
    pred_reader.register_with(pred_backbone)
    trainer.build_predict_forward(pred_backbone, palm.head.SequenceLabel(len(labels), config["hidden_size"],
                                                                         phase="predict", use_crf=False))
    trainer.fit_reader(pred_reader, phase="predict")
    ours_tags = [[labels[i] for i in row] for row in trainer.predict(print_steps=0)]
    hf_tags = None if args.ours_only else hf_predict_tags(hf, tok, test_sents, labels, args.max_seqlen)
    moved = (head.emission.weight.detach() - start).norm() / start.norm()
    diffs = np.array([a - b for a, b in losses])
    rel = np.abs(diffs) / np.maximum(np.abs([b for _, b in losses]), 1e-8)
    words = sum(len(s) for s in gold)
    agree = None if args.ours_only else sum(a == b for p, q in zip(ours_tags, hf_tags, strict=True)
                                            for a, b in zip(p, q, strict=True)) / words
    result = {
        **results_header(args), "train_file": train_file, "test_file": test_file, "labels": len(labels),
        "steps": len(losses), "batches_not_equal": mismatched,
        "max_abs_loss_diff": float(np.abs(diffs).max()), "max_rel_loss_diff": float(rel.max()),
        "first_step_rel_diff_over_1e-3": next((i + 1 for i, r in enumerate(rel) if r > 1e-3), None),
        "mean_loss_diff_last_epoch": float(diffs[-steps_per_epoch:].mean()),
        "ours": scores(gold, ours_tags, ours=False),
        "hf": recorded["hf"] if args.ours_only else scores(gold, hf_tags, ours=False),
        "word_agreement": agree, "train_seconds": {"ours": t_ours, "hf": t_hf},
        # our classifier's start and how far training moved it (relative to the start's norm)
        "ours_start": {"std": float(start.std()), "max_over_std": float(start.abs().max() / start.std()),
                       "moved_over_start_norm": float(moved)},
        "losses": [[round(a, 7), round(b, 7)] for a, b in losses],
    }
    result["f1_diff_points"] = 100 * (result["ours"]["f1"] - result["hf"]["f1"])
    return result


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_args(p, default_train_examples=3000)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--max_seqlen", type=int, default=128)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--print_steps", type=int, default=50)
    p.add_argument("--head_init", default="head", choices=list(HEAD_INITS),
                   help="our classifier's start (with --switch init): the head's own (plain normal), PALM's "
                        "truncated normal, a plain normal of the truncated one's std, a truncated one of std 0.02")
    p.add_argument("--ours_only", action="store_true",
                   help="train and score our side only; HF's losses and scores are read from --hf_from (its side "
                        "of `--switch init` depends on the data and the seed alone)")
    p.add_argument("--hf_from", help="with --ours_only: a results JSON of this script, same data, seed and switches")
    p.add_argument("--switch", default="", help=f"comma-separated differences to switch on: {','.join(SWITCHES)}")
    p.add_argument("--out", help="results JSON (default benchmarks/results/tagging_full_run.<data>.<switch>.json)")
    args = p.parse_args()
    args.switch = [s for s in args.switch.split(",") if s]
    if unknown := set(args.switch) - set(SWITCHES):
        p.error(f"unknown --switch {sorted(unknown)}; choose from {SWITCHES}")
    check_data_args(p, args)
    if args.ours_only and not args.hf_from:
        p.error("--ours_only needs --hf_from")
    result = run(args)
    keys = ("steps", "batches_not_equal", "max_abs_loss_diff", "max_rel_loss_diff", "first_step_rel_diff_over_1e-3",
            "mean_loss_diff_last_epoch", "word_agreement", "f1_diff_points")
    print(json.dumps({k: result[k] for k in keys}))
    print(f"ours F1 {result['ours']['f1']:.4f} (P {result['ours']['precision']:.4f} R {result['ours']['recall']:.4f})"
          f" | hf F1 {result['hf']['f1']:.4f} (P {result['hf']['precision']:.4f} R {result['hf']['recall']:.4f})")
    out = args.out or os.path.join(ROOT, "benchmarks", "results",
                                   f"tagging_full_run.{args.data}.{'+'.join(args.switch) or 'parity'}"
                                   f".seed{args.seed}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
