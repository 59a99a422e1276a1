"""Writes a randomly initialised BERT checkpoint folder (config.json, vocab.txt, model.safetensors) for a vocabulary
that has no pretrained weights on this machine, e.g. bert-base-chinese's for MSRA-NER (issue 30): MiniLM's English
uncased vocabulary turns most Chinese characters into [UNK], so a Chinese tagging regime needs a Chinese
vocabulary, and with no Chinese weights available every side of benchmarks/conll_vs_hf.py (`--model_dir`) starts
from the same random encoder written here.

The weights are HF's own `BertModel` initialisation (normal(0, initializer_range) linear and embedding weights,
zero biases, unit LayerNorms) drawn from `torch.manual_seed(--seed)`, so the same arguments write the same bytes.

Usage (from benchmarks/):
    python random_bert.py --out outputs/bert_zh_random    # vocab: ../shared/data/vocab/bert-base-chinese-vocab.txt
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil

import torch
from tagging_data import SHARED


def write_random_bert(vocab: str, out_dir: str, seed: int, layers: int, hidden: int, heads: int,
                      intermediate: int, max_positions: int = 512) -> str:
    """Saves `BertModel(config)` drawn from `seed` with `vocab` next to it; returns model.safetensors' sha256."""
    from transformers import BertConfig, BertModel

    with open(vocab, encoding="utf-8") as f:
        vocab_size = sum(1 for _ in f)
    config = BertConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=heads, intermediate_size=intermediate,
                        max_position_embeddings=max_positions)
    torch.manual_seed(seed)
    model = BertModel(config)
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    shutil.copyfile(vocab, os.path.join(out_dir, "vocab.txt"))
    with open(os.path.join(out_dir, "model.safetensors"), "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vocab", default=os.path.join(SHARED, "vocab", "bert-base-chinese-vocab.txt"),
                   help="a WordPiece vocab.txt, one token per line (default: bert-base-chinese's in the shared data)")
    p.add_argument("--out", required=True, help="the checkpoint folder to write")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--intermediate", type=int, default=1024)
    args = p.parse_args()
    if not os.path.isfile(args.vocab):
        p.error(f"--vocab {args.vocab}: no such file")
    if args.hidden % args.heads:
        p.error(f"--hidden {args.hidden} is not a multiple of --heads {args.heads}")
    digest = write_random_bert(args.vocab, args.out, args.seed, args.layers, args.hidden, args.heads,
                               args.intermediate)
    print(f"wrote {args.out}: model.safetensors sha256 {digest}")


if __name__ == "__main__":
    main()
