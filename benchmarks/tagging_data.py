"""The tagging regimes of issue 30 as CoNLL files (one `word ... tag` per line, a blank line between sentences),
read by every side of benchmarks/conll_vs_hf.py and benchmarks/tagging_full_run.py from the same bytes.

`--data` (see `add_data_args`): conll (CoNLL-2003), atis (ATIS slots, JointBERT's split), atis_merged (ATIS slots
with types merged into fewer, longer spans: many multi-word entities), msra (MSRA-NER, BIO), jointbert
(`--data_dir`: any folder in JointBERT's seq.in/seq.out layout, e.g. its SNIPS), or file (`--train_file`,
`--test_file`: CoNLL-format files). The first `--train_examples` training and `--test_examples` test sentences.
"""

from __future__ import annotations

import os
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared", "data")
WORK = "/tmp/torchpalm_bench"
DATA = ("conll", "atis", "atis_merged", "msra", "jointbert", "file")


def read_conll(path: str, limit: int = 0) -> tuple[list[list[str]], list[list[str]]]:
    """Words and tags per sentence (independent of torchpalm's reader, so both sides see the same gold)."""
    sents, tags, words, cur = [], [], [], []
    with open(path, encoding="utf-8") as f:
        for line in [*f, "\n"]:
            line = line.strip()
            if not line or line.startswith("-DOCSTART-"):
                if words:
                    sents.append(words)
                    tags.append(cur)
                    words, cur = [], []
                continue
            fields = line.split()
            words.append(fields[0])
            cur.append(fields[-1])
    if limit:
        sents, tags = sents[:limit], tags[:limit]
    return sents, tags


def write_conll(path: str, sents: list[list[str]], tags: list[list[str]]) -> str:
    """Writes atomically (a temporary file renamed into place): runs with other seeds may read it meanwhile."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        for words, ts in zip(sents, tags, strict=True):
            f.writelines(f"{w} {t}\n" for w, t in zip(words, ts, strict=True))
            f.write("\n")
    os.replace(tmp, path)
    return path


def jointbert_sentences(root: str, split: str, merged: bool = False) -> tuple[list[list[str]], list[list[str]]]:
    """Words and slot tags of a dataset in JointBERT's layout (`<split>/seq.in`, `<split>/seq.out`: ATIS, SNIPS)."""
    base = os.path.join(root, split)
    with open(os.path.join(base, "seq.in"), encoding="utf-8") as f:
        sents = [line.split() for line in f]
    with open(os.path.join(base, "seq.out"), encoding="utf-8") as f:
        tags = [line.split() for line in f]
    if merged:
        tags = [merge_spans(t) for t in tags]
    return sents, tags


def merge_spans(tags: list[str]) -> list[str]:
    """ATIS tags merged into fewer, longer spans: the type is what precedes the first '.' (fromloc, toloc,
    depart_date, ...) and consecutive words of one type form one span ("B-depart_date.month_name
    B-depart_date.day_number" -> "B-depart_date I-depart_date")."""
    out, prev = [], None
    for t in tags:
        if t == "O":
            out.append("O")
            prev = None
            continue
        kind = t[2:].split(".")[0]
        out.append(("I-" if kind == prev else "B-") + kind)
        prev = kind
    return out


def msra_sentences(split: str) -> tuple[list[list[str]], list[list[str]]]:
    with zipfile.ZipFile(os.path.join(SHARED, "msra_ner", "full_bio", "MSRA.zip")) as z:
        name = next(n for n in z.namelist() if n.endswith(f"{split}.txt") or n.endswith(f"msra_{split}_bio"))
        text = z.read(name).decode("utf-8")
    sents, tags, words, cur = [], [], [], []
    for line in [*text.splitlines(), ""]:
        fields = line.split("\t")
        if len(fields) < 2 or not fields[0].strip():
            if words:
                sents.append(words)
                tags.append(cur)
                words, cur = [], []
            continue
        words.append(fields[0].strip())
        cur.append(fields[-1].strip())
    return sents, tags


def regime_files(args) -> tuple[str, str]:
    """(train, test) CoNLL files for `--data` (the first `--train_examples` training sentences)."""
    os.makedirs(WORK, exist_ok=True)
    if args.data == "file":
        train, test = read_conll(args.train_file), read_conll(args.test_file)
    elif args.data == "conll":
        train = read_conll(os.path.join(SHARED, "conll2003", "train.txt"))
        test = read_conll(os.path.join(SHARED, "conll2003", "test.txt"))
    elif args.data in ("atis", "atis_merged"):
        merged = args.data == "atis_merged"
        root = os.path.join(SHARED, "atis")
        train, test = jointbert_sentences(root, "train", merged), jointbert_sentences(root, "test", merged)
    elif args.data == "jointbert":
        train, test = jointbert_sentences(args.data_dir, "train"), jointbert_sentences(args.data_dir, "test")
    elif args.data == "msra":
        train, test = msra_sentences("train"), msra_sentences("test")
    else:
        raise SystemExit(f"unknown --data {args.data}")
    n = args.train_examples or len(train[0])
    train = (train[0][:n], train[1][:n])
    if args.test_examples:
        test = (test[0][: args.test_examples], test[1][: args.test_examples])
    tag = f"{args.data}_{os.path.basename(os.path.normpath(args.data_dir or ''))}_{n}_{args.test_examples or 'all'}"
    return (write_conll(f"{WORK}/full_run_{tag}.train.txt", *train),
            write_conll(f"{WORK}/full_run_{tag}.test.txt", *test))


def add_data_args(p, default_train_examples: int) -> None:
    """The data options shared by the tagging benchmarks (checked by `check_data_args`)."""
    p.add_argument("--data", default="conll", choices=DATA)
    p.add_argument("--data_dir", help="with --data jointbert: a folder in JointBERT's layout (e.g. its data/snips)")
    p.add_argument("--train_file", help="with --data file: a CoNLL-format training file (word ... tag per line)")
    p.add_argument("--test_file", help="with --data file: a CoNLL-format test file")
    p.add_argument("--train_examples", type=int, default=default_train_examples,
                   help="first N training sentences (0: all)")
    p.add_argument("--test_examples", type=int, default=0, help="first N test sentences (0: all)")


def check_data_args(p, args) -> None:
    if args.data == "file" and not (args.train_file and args.test_file):
        p.error("--data file needs --train_file and --test_file")
    if args.data == "jointbert" and not args.data_dir:
        p.error("--data jointbert needs --data_dir")
