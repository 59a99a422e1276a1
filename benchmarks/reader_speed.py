"""Reader speed: WordPiece tokens/s of torchpalm's fast path, its pure-Python reference path, the same pipeline in
HF `tokenizers` (Rust, as the MRC reader uses it) and HF's `BertTokenizerFast`, on the same real files; and how
much faster a reader reloads an already-encoded file from the cache than it encodes it.

    python benchmarks/reader_speed.py [--repeats 3] [--reference_lines 5000] [--out benchmarks/results/reader_speed.json]

Every timing is the best of `--repeats` runs, as wall-clock seconds and as CPU seconds of this process (on a
shared machine the CPU figure is the steadier one; `BertTokenizerFast` may use several threads, so its CPU time
can exceed its wall time). The fast path is timed cold (a new tokenizer: empty memo) and warm (second pass).
The reference path, about 10 times slower, is timed on the first `--reference_lines` texts. Ids are checked to
be equal across the sides before anything is reported.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import minilm_dir, results_header  # noqa: E402

import torchpalm as palm  # noqa: E402
from torchpalm.tokenizer import WordPieceTokenizer  # noqa: E402

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data")


def cpu_seconds() -> float:
    """User + system CPU seconds of this process, all threads (what `BertTokenizerFast`'s Rust threads use)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def timed(fn, repeats: int):
    """(result, best wall seconds, best CPU seconds) over `repeats` calls."""
    best_wall = best_cpu = float("inf")
    result = None
    for _ in range(repeats):
        w, c = time.perf_counter(), cpu_seconds()
        result = fn()
        best_wall, best_cpu = min(best_wall, time.perf_counter() - w), min(best_cpu, cpu_seconds() - c)
    return result, best_wall, best_cpu


def tsv_columns(path: str, *names: str) -> list[str]:
    with open(path, encoding="utf-8-sig") as f:
        header = f.readline().rstrip("\n").split("\t")
        idx = [header.index(n) for n in names]
        return [row[i] for line in f if line.strip() for row in [line.rstrip("\n").split("\t")] for i in idx]


def datasets() -> list[dict]:
    uncased = os.path.join(minilm_dir(), "vocab.txt")
    chinese = os.path.join(DATA, "vocab", "bert-base-chinese-vocab.txt")
    return [
        {"name": "SST-2 train", "file": os.path.join(DATA, "sst2", "train.tsv"), "columns": ["sentence"],
         "vocab": uncased, "lang": "en"},
        {"name": "MRPC train (both texts)", "file": os.path.join(DATA, "mrpc", "train.tsv"),
         "columns": ["#1 String", "#2 String"], "vocab": uncased, "lang": "en"},
        {"name": "ChnSentiCorp train", "file": os.path.join(DATA, "chnsenticorp", "train.tsv"),
         "columns": ["text_a"], "vocab": chinese, "lang": "cn"},
    ]


def tokenizer_rows(d: dict, args) -> list[dict]:
    from transformers import BertTokenizerFast

    texts = tsv_columns(d["file"], *d["columns"])
    ours, cold_wall, cold_cpu = timed(lambda: WordPieceTokenizer(d["vocab"], True).encode_batch(texts), args.repeats)
    warm_tok = WordPieceTokenizer(d["vocab"], True)
    warm_tok.encode_batch(texts)
    _, warm_wall, warm_cpu = timed(lambda: warm_tok.encode_batch(texts), args.repeats)
    n_tokens = sum(map(len, ours))

    sample = texts[: args.reference_lines]
    ref, ref_wall, ref_cpu = timed(lambda: [warm_tok.encode_reference(t) for t in sample], 1)
    assert ref == ours[: len(sample)], "the fast path differs from the reference path"
    ref_tokens = sum(map(len, ref))

    rust_tok = WordPieceTokenizer(d["vocab"], True)._tok
    rust, rust_wall, rust_cpu = timed(
        lambda: [e.ids for e in rust_tok.encode_batch(texts, add_special_tokens=False)], args.repeats)
    hf = BertTokenizerFast(d["vocab"], do_lower_case=True)
    hf_ids, hf_wall, hf_cpu = timed(lambda: hf(texts, add_special_tokens=False)["input_ids"], args.repeats)
    mismatches = {"rust pipeline": sum(a != b for a, b in zip(ours, rust)),
                  "BertTokenizerFast": sum(a != b for a, b in zip(ours, hf_ids))}

    def row(side, tokens, wall, cpu, note=""):
        return {"data": d["name"], "side": side, "texts": len(texts), "tokens": tokens, "wall_s": round(wall, 4),
                "cpu_s": round(cpu, 4), "tokens_per_s": round(tokens / wall), "tokens_per_cpu_s": round(tokens / cpu),
                "note": note}

    return [
        row("torchpalm fast path, cold", n_tokens, cold_wall, cold_cpu, "new tokenizer, empty memo"),
        row("torchpalm fast path, warm", n_tokens, warm_wall, warm_cpu, "second pass over the same texts"),
        row("torchpalm reference (pure Python)", ref_tokens, ref_wall, ref_cpu, f"first {len(sample)} texts"),
        row("same pipeline in HF tokenizers (Rust)", n_tokens, rust_wall, rust_cpu,
            f"{mismatches['rust pipeline']} texts differ from ours"),
        row("HF BertTokenizerFast", n_tokens, hf_wall, hf_cpu,
            f"{mismatches['BertTokenizerFast']} texts differ from ours"),
    ]


def cache_rows(d: dict, args, cache_dir: str) -> list[dict]:
    reader_file = d["file"]
    if d["name"].startswith("MRPC"):
        return []  # a pair file; SST-2 and ChnSentiCorp show the cache well enough

    def load(cache):
        reader = palm.reader.ClassifyReader(d["vocab"], 128, lang=d["lang"], do_lower_case=True)
        reader.set_cache_dir(cache)
        reader.load_data(reader_file, 32)
        return reader

    fresh, enc_wall, enc_cpu = timed(lambda: load(False), args.repeats)
    load(cache_dir)  # writes the entry
    cached, hit_wall, hit_cpu = timed(lambda: load(cache_dir), args.repeats)
    assert cached.cache_hit and len(cached._examples) == len(fresh._examples)
    return [{"data": d["name"], "examples": fresh.num_examples, "encode_wall_s": round(enc_wall, 4),
             "encode_cpu_s": round(enc_cpu, 4), "reload_wall_s": round(hit_wall, 4), "reload_cpu_s": round(hit_cpu, 4),
             "speedup_wall": round(enc_wall / hit_wall, 1), "speedup_cpu": round(enc_cpu / hit_cpu, 1)}]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--reference_lines", type=int, default=5000)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                      "reader_speed.json"))
    args = parser.parse_args()
    tok_rows, load_rows = [], []
    with tempfile.TemporaryDirectory() as cache_dir:
        for d in datasets():
            tok_rows += tokenizer_rows(d, args)
            load_rows += cache_rows(d, args, cache_dir)

    print("| data | side | tokens | wall s | tokens/s | tokens/CPU-s | note |")
    print("|---|---|---|---|---|---|---|")
    for r in tok_rows:
        print(f"| {r['data']} | {r['side']} | {r['tokens']:,} | {r['wall_s']:.3f} | {r['tokens_per_s'] / 1e6:.2f}M | "
              f"{r['tokens_per_cpu_s'] / 1e6:.2f}M | {r['note']} |")
    print()
    print("| data | examples | encode s (wall / CPU) | reload from cache s (wall / CPU) | speed-up (wall / CPU) |")
    print("|---|---|---|---|---|")
    for r in load_rows:
        print(f"| {r['data']} | {r['examples']:,} | {r['encode_wall_s']:.3f} / {r['encode_cpu_s']:.3f} | "
              f"{r['reload_wall_s']:.3f} / {r['reload_cpu_s']:.3f} | {r['speedup_wall']}x / {r['speedup_cpu']}x |")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump({**results_header(args), "tokenize": tok_rows, "cache": load_rows}, f, indent=1)
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
