"""Checks of issue 30 that need no training: for one tagging regime (benchmarks/tagging_data.py), whether the two
sides of benchmarks/conll_vs_hf.py could differ in three places other than training itself.

* label alignment under truncation: how many training sentences are longer than `--max_seqlen` sub-tokens, how
  many words that cuts, and whether torchpalm's `SequenceLabelReader` gives every training sentence the same
  token ids and the same label on each kept word's first sub-token as HF's run_ner-style encoding
  (benchmarks/common.py `first_piece_targets`);
* gold tags unseen in training: the test entities whose type no training tag has (neither side can predict
  them), and the recall they cap; and whether torchpalm's `chunk_f1` and seqeval score the same predictions
  alike (checked in conll_vs_hf.py's results: `f1` against `seqeval_f1`);
* the schedule: torchpalm's `TriangularSchedualer(decay_from_warmup_end=True)` against HF's
  `get_linear_schedule_with_warmup`, the learning rate of every step of the regime's run.

Usage: python benchmarks/tagging_checks.py --data msra --train_examples 1000 [--test_examples 1000]
"""

from __future__ import annotations

import argparse
import json
import os

import torch
from common import checkpoint_dir, first_piece_targets
from tagging_data import add_data_args, check_data_args, read_conll, regime_files


def alignment(model_dir: str, train_file: str, labels: list[str], max_len: int) -> dict:
    """Our reader's ids and first-piece labels against HF's, sentence by sentence, in file order."""
    from transformers import BertTokenizer

    import torchpalm as palm

    sents, tags = read_conll(train_file)
    tok = BertTokenizer.from_pretrained(model_dir)
    ids, targets = first_piece_targets(tok, sents, tags, labels, max_len)
    reader = palm.reader.SequenceLabelReader(os.path.join(model_dir, "vocab.txt"), max_len,
                                             {t: i for i, t in enumerate(labels)}, do_lower_case=True)
    reader.load_data(train_file, 1, num_epochs=1, shuffle_train=False)
    differ, cut_sentences, cut_words = 0, 0, 0
    for i, batch in enumerate(reader):
        ours_ids = batch["token_ids"][0][: int(batch["token_ids"].ne(0).sum())].tolist()
        ours_labels = [t for t in batch["label_ids"][0].tolist() if t != -100]
        hf_labels = [t for t in targets[i] if t != -100]
        differ += ours_ids != ids[i] or ours_labels != hf_labels
        cut = len(sents[i]) - len(hf_labels)
        cut_sentences += cut > 0
        cut_words += cut
    return {"sentences": len(sents), "sentences_cut": cut_sentences, "words_cut": cut_words,
            "words": sum(len(s) for s in sents), "sentences_where_ids_or_labels_differ": differ}


def unseen(labels: list[str], test_file: str) -> dict:
    """Gold test entities whose type has no tag in training: missed by both sides alike."""
    from seqeval.metrics.sequence_labeling import get_entities

    _, gold = read_conll(test_file)
    types = {t[2:] for t in labels if t != "O"}
    entities = get_entities(gold)
    missing = [e for e in entities if e[0] not in types]
    return {"test_entities": len(entities), "entities_of_unseen_types": len(missing),
            "unseen_types": sorted({e[0] for e in missing}), "recall_cap": 1 - len(missing) / max(len(entities), 1)}


def schedule(n_steps: int, lr: float = 1e-4) -> dict:
    """Both schedules' rate at every step of an n_steps run, 10% warmup."""
    from transformers import get_linear_schedule_with_warmup

    import torchpalm as palm

    ours = palm.lr_sched.TriangularSchedualer(int(0.1 * n_steps), n_steps, decay_from_warmup_end=True)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    hf = get_linear_schedule_with_warmup(opt, int(0.1 * n_steps), n_steps)
    worst = 0.0
    for t in range(n_steps):
        worst = max(worst, abs(lr * ours.lr_factor(t) - hf.get_last_lr()[0]))
        opt.step()
        hf.step()
    return {"steps": n_steps, "max_abs_lr_diff": worst}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_args(p, default_train_examples=3000)
    p.add_argument("--max_seqlen", type=int, default=128)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--model_dir", help="a local HF BERT checkpoint folder instead of MiniLM (its vocab.txt is used)")
    args = p.parse_args()
    check_data_args(p, args)
    model_dir = checkpoint_dir(p, args.model_dir)
    train_file, test_file = regime_files(args)
    _, train_tags = read_conll(train_file)
    labels = sorted({t for ts in train_tags for t in ts})
    result = {"data": args.data, "train_examples": args.train_examples, "labels": len(labels),
              "alignment": alignment(model_dir, train_file, labels, args.max_seqlen),
              "unseen": unseen(labels, test_file),
              "schedule": schedule(len(train_tags) * args.epochs // args.batch_size)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
