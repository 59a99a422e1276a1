"""Masked-LM pretraining of a small Chinese BERT from scratch, then ChnSentiCorp fine-tuning: pretrained vs scratch.

No Chinese pretrained checkpoint can be had on these machines, so this example makes one:

stage 1  builds a text corpus from the Chinese data in ../shared/data (ChnSentiCorp *train* reviews, CMRC2018
         contexts, MSRA-NER training sentences), written to <out>/pretrain_corpus.tsv (header `text_a`), and
         trains BERT (hidden 256, 4 layers, 4 heads, FFN 1024, 512 positions, bert-base-chinese vocabulary;
         config written to <out>/pretrain_config.json) with MaskLMReader + MaskLM (dynamic 15% masking,
         80/10/10). The checkpoint is <out>/mlm/ckpt.final; held-out masked-token accuracy is printed.
stage 2  fine-tunes ClassifyReader + Classify on ChnSentiCorp twice with identical hyper-parameters and seeds:
         once starting from the stage-1 checkpoint (`trainer.load_pretrain(<ckpt dir>)`), once from random
         weights; prints test accuracy for both and writes <out>/pretraining_results.json.

Run with --help for the options; README.md lists the commands and what to expect.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
import zipfile

import numpy as np
import torch

import torchpalm as palm
from torchpalm.reader.base import read_tsv
from torchpalm.tokenizer import WordPieceTokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = os.path.normpath(os.path.join(HERE, "..", "..", "..", "shared", "data"))
SENTENCE_END = re.compile(r"(?<=[。！？!?；;])")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir", default=SHARED)
    p.add_argument("--vocab", default=os.path.join(SHARED, "vocab", "bert-base-chinese-vocab.txt"))
    p.add_argument("--save_path", default="./outputs/")
    p.add_argument("--stages", default="pretrain,finetune", help="comma-separated subset of pretrain,finetune; "
                   "'corpus' alone only writes the corpus, held-out lines and backbone config (for the torchpalm "
                   "CLI's config.yaml)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--lang", default="cn", help="'cn' deletes ASCII spaces from the texts of both stages")
    p.add_argument("--do_lower_case", type=int, default=1, help="bert-base-chinese has no upper-case letters")
    # model (written to <save_path>/pretrain_config.json)
    p.add_argument("--hidden_size", type=int, default=256)
    p.add_argument("--num_layers", type=int, default=4)
    p.add_argument("--num_heads", type=int, default=4)
    p.add_argument("--intermediate_size", type=int, default=1024)
    # stage 1: masked LM
    p.add_argument("--mlm_steps", type=int, default=4000)
    p.add_argument("--mlm_batch_size", type=int, default=64)
    p.add_argument("--mlm_max_seqlen", type=int, default=128)
    p.add_argument("--mlm_lr", type=float, default=5e-4)
    p.add_argument("--mlm_warmup", type=float, default=0.06, help="warmup fraction of --mlm_steps")
    p.add_argument("--whole_word_mask", type=int, default=0, help="(each CJK character is a word anyway)")
    p.add_argument("--sources", default="chnsenticorp_train,cmrc2018_contexts,msra_ner_train",
                   help="comma-separated corpus sources; 'chnsenticorp_train' alone is task-adaptive pretraining "
                        "(the fine-tuning task's own unlabelled training text)")
    p.add_argument("--corpus_lines", type=int, default=0, help="use only the first N corpus lines (0: all)")
    p.add_argument("--heldout_lines", type=int, default=1000, help="corpus lines kept out for MLM accuracy")
    p.add_argument("--mlm_save_steps", type=int, default=1000)
    p.add_argument("--mlm_resume", default=None, metavar="CKPT_DIR",
                   help="continue an MLM run from one of its checkpoints (weights, Adam state, reader position, RNG) "
                        "up to --mlm_steps in all; a larger --mlm_steps than the first run's stretches the schedule")
    p.add_argument("--mlm_checkpoint", default=None,
                   help="stage 2 starts from this checkpoint (default: <save_path>/mlm/ckpt.final)")
    # stage 2: ChnSentiCorp classification
    p.add_argument("--arms", default="pretrained,scratch",
                   help="which fine-tuning runs of stage 2 to make (the scratch arm does not depend on stage 1)")
    p.add_argument("--train_file", default=os.path.join(SHARED, "chnsenticorp", "train.tsv"))
    p.add_argument("--dev_file", default=os.path.join(SHARED, "chnsenticorp", "dev.tsv"),
                   help="scored too, for choosing fine-tuning settings without looking at the test set ('' skips it)")
    p.add_argument("--test_file", default=os.path.join(SHARED, "chnsenticorp", "test.tsv"))
    p.add_argument("--train_examples", type=int, default=0, help="use only the first N training rows (0: all)")
    p.add_argument("--max_seqlen", type=int, default=128, help="PALM used 256; 128 halves the CPU time")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--weight_decay", type=float, default=0.01)
    p.add_argument("--warmup", type=float, default=0.1)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--finetune_seeds", default="",
                   help="comma-separated seeds: stage 2 runs every arm once per seed and reports each arm's mean and "
                        "standard deviation and the paired differences (default: --seed only)")
    p.add_argument("--print_steps", type=int, default=100)
    return p.parse_args(argv)


# ---- stage 1 ----------------------------------------------------------------------------------------------
def chunks(text: str, max_chars: int) -> list[str]:
    """Splits a text at sentence ends and packs the sentences into pieces of at most ~max_chars characters
    (about one token per character in Chinese), so long documents are not cut off at max_seqlen."""
    text = re.sub(r"\s+", " ", text).strip()
    out, current = [], ""
    for sentence in SENTENCE_END.split(text):
        if current and len(current) + len(sentence) > max_chars:
            out.append(current)
            current = ""
        current += sentence
        while len(current) > max_chars:  # one very long sentence: hard cut
            out.append(current[:max_chars])
            current = current[max_chars:]
    if current.strip():
        out.append(current)
    return [c.strip() for c in out if c.strip()]


def corpus_texts(data_dir: str) -> dict[str, list[str]]:
    """The raw Chinese texts by source (training splits only where a split exists)."""
    sources: dict[str, list[str]] = {}
    rows = read_tsv(os.path.join(data_dir, "chnsenticorp", "train.tsv"), required=("text_a",))
    sources["chnsenticorp_train"] = [r["text_a"] for _, r in rows]
    contexts = []
    for name in ("cmrc2018_dev.json", "cmrc2018_trial.json"):
        with open(os.path.join(data_dir, "cmrc2018", name), encoding="utf-8") as f:
            for article in json.load(f)["data"]:
                contexts += [p["context"] for p in article["paragraphs"]]
    sources["cmrc2018_contexts"] = list(dict.fromkeys(contexts))
    with zipfile.ZipFile(os.path.join(data_dir, "msra_ner", "full_bio", "MSRA.zip")) as z:
        raw = z.read("msra_train_bio").decode("utf-8")
    sentences = []
    for block in raw.split("\n\n"):
        chars = [line.split("\t")[0] for line in block.splitlines() if line.strip()]
        if chars:
            sentences.append("".join(chars))
    sources["msra_ner_train"] = sentences
    return sources


def write_corpus(args) -> tuple[str, str, dict]:
    """Writes <save_path>/pretrain_corpus.tsv and a held-out file (header text_a); returns paths and counts."""
    sources = corpus_texts(args.data_dir)
    wanted = [name.strip() for name in args.sources.split(",") if name.strip()]
    unknown = sorted(set(wanted) - set(sources))
    if not wanted or unknown:
        sys.exit(f"--sources must name some of {', '.join(sources)}; got {args.sources!r}")
    sources = {name: sources[name] for name in wanted}
    lines = [c for texts in sources.values() for t in texts for c in chunks(t, args.mlm_max_seqlen - 2)]
    if args.lang in ("cn", "chinese"):  # as ClassifyReader(lang='cn') does to the fine-tuning text
        lines = [c.replace(" ", "") for c in lines]
    rng = np.random.default_rng(args.seed)
    lines = [lines[i] for i in rng.permutation(len(lines))]  # mix the sources before any --corpus_lines cut
    heldout, lines = lines[: args.heldout_lines], lines[args.heldout_lines:]
    if args.corpus_lines:
        lines = lines[: args.corpus_lines]
    os.makedirs(args.save_path, exist_ok=True)
    paths = []
    for name, part in (("pretrain_corpus.tsv", lines), ("pretrain_heldout.tsv", heldout)):
        path = os.path.join(args.save_path, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write("text_a\n")
            f.writelines(line.replace("\t", " ") + "\n" for line in part)
        paths.append(path)
    counts = {k: len(v) for k, v in sources.items()}
    counts.update(corpus_lines=len(lines), corpus_chars=sum(map(len, lines)), heldout_lines=len(heldout))
    return paths[0], paths[1], counts


def write_config(args) -> tuple[dict, str]:
    vocab_size = WordPieceTokenizer(args.vocab).vocab_size
    config = {"hidden_size": args.hidden_size, "num_hidden_layers": args.num_layers,
              "num_attention_heads": args.num_heads, "intermediate_size": args.intermediate_size,
              "vocab_size": vocab_size, "max_position_embeddings": 512, "type_vocab_size": 2,
              "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
              "initializer_range": 0.02, "layer_norm_eps": 1e-12}
    os.makedirs(args.save_path, exist_ok=True)
    path = os.path.join(args.save_path, "pretrain_config.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(config, f, indent=1)
    return config, path


def pretrain(args, config: dict) -> tuple[str, dict]:
    corpus, heldout, counts = write_corpus(args)
    print(f"corpus: {json.dumps(counts)}", flush=True)
    torch.manual_seed(args.seed)
    # steps 1-4: reader (cycles forever; we stop after --mlm_steps), backbone, registration, head
    reader = palm.reader.MaskLMReader(args.vocab, args.mlm_max_seqlen, seed=args.seed, lang=args.lang,
                                      do_lower_case=bool(args.do_lower_case),
                                      whole_word_mask=bool(args.whole_word_mask))
    reader.load_data(corpus, args.mlm_batch_size, num_epochs=None)
    backbone = palm.backbone.BERT.from_config(config)
    reader.register_with(backbone)
    head = palm.head.MaskLM(config["hidden_size"], config["vocab_size"], config["hidden_act"])
    # steps 5-6: trainer, optimizer with warmup and linear decay over exactly --mlm_steps updates
    trainer = palm.Trainer("mlm")
    loss_var = trainer.build_forward(backbone, head)
    sched = palm.lr_sched.TriangularSchedualer(int(args.mlm_warmup * args.mlm_steps), args.mlm_steps,
                                               decay_from_warmup_end=True)
    trainer.build_backward(palm.optimizer.Adam(loss_var, args.mlm_lr, sched), weight_decay=0.01)
    # steps 7-8: saver, then PALM's manual loop (train_one_step), stopping at --mlm_steps
    save_dir = os.path.join(args.save_path, "mlm")
    trainer.set_saver(save_dir, args.mlm_save_steps)
    if args.mlm_resume:  # the learning rate is a function of the step, so the schedule picks up where it was
        trainer.load_ckpt(args.mlm_resume)
        print(f"resumed from {args.mlm_resume} at step {trainer.cur_train_step}", flush=True)
    t0, losses, first = time.time(), [], trainer.cur_train_step + 1
    for step, batch in enumerate(trainer.fit_reader(reader), first):
        losses.append(float(trainer.train_one_step(batch)["mlm.loss"]))
        if step % args.print_steps == 0 or step == args.mlm_steps:
            print(f"mlm step {step}/{args.mlm_steps} (epoch {reader.state_dict()['epoch']}), "
                  f"loss: {np.mean(losses[-args.print_steps:]):.3f}, {(step - first + 1) / (time.time() - t0):.2f} steps/s",
                  flush=True)
        if step >= args.mlm_steps:
            break
    ckpt = trainer.save(os.path.join(save_dir, "ckpt.final"))
    print(f"MLM checkpoint saved at {ckpt}", flush=True)
    accuracy = heldout_mlm_accuracy(args, config, trainer, heldout)
    print(f"held-out masked-token accuracy: {accuracy:.4f}", flush=True)
    return ckpt, {"corpus": counts, "mlm_steps": args.mlm_steps, "final_loss": float(np.mean(losses[-100:])),
                  "heldout_masked_token_accuracy": accuracy, "seconds": time.time() - t0}


def heldout_mlm_accuracy(args, config: dict, trainer, heldout: str) -> float:
    """Masks the held-out lines as in training (mask_in_predict=True) and scores the argmax predictions."""
    reader = palm.reader.MaskLMReader(args.vocab, args.mlm_max_seqlen, seed=args.seed + 1, lang=args.lang,
                                      do_lower_case=bool(args.do_lower_case), phase="predict",
                                      mask_in_predict=True)
    reader.load_data(heldout, 128)
    pred_backbone = palm.backbone.BERT.from_config(config, phase="predict")
    reader.register_with(pred_backbone)
    reader.require_attr("mask_label")
    trainer.build_predict_forward(pred_backbone, palm.head.MaskLM(config["hidden_size"], config["vocab_size"],
                                                                  config["hidden_act"], phase="predict"))
    hits = total = 0
    for batch in trainer.fit_reader(reader, phase="predict"):
        word_ids = trainer.predict_one_batch(batch)["word_ids"]
        hits += int((word_ids == batch["mask_label"].numpy()).sum())
        total += len(word_ids)
    return hits / max(total, 1)


# ---- stage 2 ----------------------------------------------------------------------------------------------
def head_of_file(path: str, n: int, out_dir: str) -> str:
    os.makedirs(out_dir, exist_ok=True)
    target = os.path.join(out_dir, f"{os.path.splitext(os.path.basename(path))[0]}.first{n}.tsv")
    with open(path, encoding="utf-8") as f, open(target, "w", encoding="utf-8") as g:
        for i, line in enumerate(f):
            if i > n:
                break
            g.write(line)
    return target


def finetune(args, config: dict, init_from: str | None, train_file: str) -> dict[str, float]:
    """ChnSentiCorp classification (PALM's §14.1 steps); returns {'dev': accuracy, 'test': accuracy}."""
    name = "pretrained" if init_from else "scratch"
    print(f"=== fine-tuning from {init_from or 'random weights'}", flush=True)
    torch.manual_seed(args.seed)  # the same initial head (and backbone, before loading) for both runs
    reader = palm.reader.ClassifyReader(args.vocab, args.max_seqlen, seed=args.seed, lang=args.lang,
                                        do_lower_case=bool(args.do_lower_case))
    reader.load_data(train_file, args.batch_size, num_epochs=args.epochs)
    backbone = palm.backbone.BERT.from_config(config)
    reader.register_with(backbone)
    head = palm.head.Classify(2, config["hidden_size"], args.dropout)
    trainer = palm.Trainer(f"chnsenticorp_{name}")
    loss_var = trainer.build_forward(backbone, head)
    n_steps = reader.num_examples * args.epochs // args.batch_size
    sched = palm.lr_sched.TriangularSchedualer(int(args.warmup * n_steps), n_steps)
    trainer.build_backward(palm.optimizer.Adam(loss_var, args.lr, sched), weight_decay=args.weight_decay)
    trainer.fit_reader(reader)
    if init_from:
        trainer.load_pretrain(init_from)  # a torchpalm checkpoint dir: its backbone.* weights
    trainer.train(print_steps=args.print_steps)

    pred_reader = palm.reader.ClassifyReader(args.vocab, args.max_seqlen, lang=args.lang,
                                             do_lower_case=bool(args.do_lower_case), phase="predict")
    pred_backbone = palm.backbone.BERT.from_config(config, phase="predict")
    pred_reader.register_with(pred_backbone)
    trainer.build_predict_forward(pred_backbone, palm.head.Classify(2, config["hidden_size"], phase="predict"))
    accuracies = {}
    for split, path in (("dev", args.dev_file), ("test", args.test_file)):
        if not path:
            continue
        pred_reader.load_data(path, 64)
        trainer.fit_reader(pred_reader, phase="predict")
        out_dir = os.path.join(args.save_path, f"predict_{name}" + ("" if split == "test" else f"_{split}"))
        preds = [r["label"] for r in trainer.predict(output_dir=out_dir, print_steps=0)]
        gold = [int(r["label"]) for _, r in read_tsv(path, required=("label",))]
        accuracies[split] = palm.metrics.accuracy(preds, gold)
        print(f"{split} accuracy ({name}): {accuracies[split]:.4f}", flush=True)
    return accuracies


def seed_summary(by_seed: dict[int, dict[str, dict[str, float]]], arms: list[str]) -> dict:
    """Per split: each arm's mean and sample standard deviation over the seeds and, with both arms, the paired
    differences (pretrained - scratch, in points) with their mean and standard deviation."""
    summary = {}
    splits = sorted({split for runs in by_seed.values() for acc in runs.values() for split in acc})
    for split in splits:
        entry = {}
        for arm in arms:
            values = [by_seed[s][arm][split] for s in by_seed]
            entry[arm] = {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)), "values": values}
        if len(arms) == 2:
            diffs = [100 * (by_seed[s]["pretrained"][split] - by_seed[s]["scratch"][split]) for s in by_seed]
            entry["difference_points"] = {"mean": float(np.mean(diffs)), "std": float(np.std(diffs, ddof=1)),
                                          "values": diffs}
        summary[split] = entry
    return summary


def summary_lines(summary: dict) -> list[str]:
    lines = []
    for split, entry in summary.items():
        parts = [f"{arm} {e['mean']:.4f} ± {e['std']:.4f}" for arm, e in entry.items() if arm != "difference_points"]
        if "difference_points" in entry:
            d = entry["difference_points"]
            parts.append(f"paired difference {d['mean']:+.2f} ± {d['std']:.2f} points")
        lines.append(f"ChnSentiCorp {split} accuracy over {len(next(iter(entry.values()))['values'])} seeds: "
                     + ", ".join(parts))
    return lines


def main(argv=None):
    args = parse_args(argv)
    stages = {s.strip() for s in args.stages.split(",") if s.strip()}
    if stages == {"corpus"}:  # the files config.yaml trains on, without training
        write_config(args)
        print(f"corpus: {json.dumps(write_corpus(args)[2])}", flush=True)
        return {}
    if not stages or stages - {"pretrain", "finetune"}:
        sys.exit(f"--stages must be 'corpus' or a comma-separated subset of pretrain,finetune; got {args.stages!r}")
    config, config_path = write_config(args)
    print(f"backbone config written to {config_path}: {json.dumps(config)}", flush=True)
    results: dict = {"args": vars(args), "config": config}
    ckpt = args.mlm_checkpoint or os.path.join(args.save_path, "mlm", "ckpt.final")
    if "pretrain" in stages:
        ckpt, results["pretrain"] = pretrain(args, config)
    if "finetune" in stages:
        if "pretrained" in args.arms and not os.path.isdir(ckpt):
            sys.exit(f"no MLM checkpoint at {ckpt}: run the pretrain stage first or pass --mlm_checkpoint")
        train_file = args.train_file
        if args.train_examples:
            train_file = head_of_file(train_file, args.train_examples, args.save_path)
        arms = [a.strip() for a in args.arms.split(",") if a.strip()]
        if not arms or set(arms) - {"pretrained", "scratch"}:
            sys.exit(f"--arms must be a comma-separated subset of pretrained,scratch; got {args.arms!r}")
        seeds = [int(x) for x in args.finetune_seeds.split(",") if x.strip()] or [args.seed]
        by_seed = {}
        for seed in seeds:  # the pretraining stage above used --seed; each fine-tuning seed re-draws the head,
            # the data order and the dropout masks, identically for both arms
            by_seed[seed] = {arm: finetune(argparse.Namespace(**{**vars(args), "seed": seed}), config,
                                           ckpt if arm == "pretrained" else None, train_file) for arm in arms}
        runs = by_seed[seeds[0]]
        results["accuracy_by_arm"] = runs
        if len(seeds) > 1:
            results["accuracy_by_seed"] = by_seed
            results["summary"] = seed_summary(by_seed, arms)
            for line in summary_lines(results["summary"]):
                print(line, flush=True)
        for split in ("dev", "test"):
            if len(runs) == 2 and split in runs["pretrained"]:
                results[f"{split}_accuracy"] = {arm: acc[split] for arm, acc in runs.items()}
                acc = results[f"{split}_accuracy"]
                print(f"ChnSentiCorp {split} accuracy: from MLM pretraining {acc['pretrained']:.4f}, "
                      f"from scratch {acc['scratch']:.4f}, difference "
                      f"{100 * (acc['pretrained'] - acc['scratch']):+.2f} points", flush=True)
    with open(os.path.join(args.save_path, "pretraining_results.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1, ensure_ascii=False)
    return results


if __name__ == "__main__":
    main()
