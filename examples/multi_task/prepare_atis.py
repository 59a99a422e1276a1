"""Converts JointBERT's ATIS folder into the files of PaddlePALM's multi-task example (spec §14.7).

Input (`--atis_dir`, e.g. ../shared/data/atis): `{train,dev,test}/{seq.in,seq.out,label}` -- one utterance per
line, space-separated words in seq.in, one BIO slot tag per word in seq.out, the intent name in label -- and
`intent_label.txt` (the intent names, one per line, `UNK` first).

Output (`--out_dir`):

    intent/{train,dev,test}.tsv   header `label<TAB>text_a`; label = integer intent id, text_a = the words
    intent/label_map.json         {intent name: id}: intent_label.txt in its order (UNK = 0)
    slot/{train,dev,test}.tsv     header `text_a<TAB>label`; words and tag NAMES each joined by \\x02
    slot/label_map.json           {tag: id} over every tag of train, dev and test ("O" included)

Intents are handled as JointBERT does: an intent missing from intent_label.txt (the test set's `atis_day_name`
and a few multi-intents such as `atis_airfare#atis_flight`) gets the UNK id. No training example is UNK, so
those test rows can never be predicted right (JointBERT scores them the same way).

Slot tags keep their names. The SequenceLabelReader rejects a tag missing from its label map (a DataError naming
file:line), so the map covers the tags of all three splits: first the training tags, sorted, then the few tags
that occur only in dev/test (e.g. `B-booking_class`), sorted. Those ids are never trained, so gold entities of
such types count as misses, which is also what JointBERT's UNK mapping amounts to.

Usage: python prepare_atis.py [--atis_dir ../../../shared/data/atis] --out_dir /tmp/atis_palm
"""

from __future__ import annotations

import argparse
import json
import os

SPLITS = ("train", "dev", "test")
UNK = "UNK"


class AtisFormatError(ValueError):
    """A malformed ATIS folder; the message names file:line."""


def read_lines(path: str) -> list[str]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"ATIS file not found: {path}")
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\r\n") for line in f]


def read_split(atis_dir: str, split: str) -> tuple[list[list[str]], list[list[str]], list[str]]:
    """Words, tags and intent names of one split, after checking that the three files line up."""
    paths = {name: os.path.join(atis_dir, split, name) for name in ("seq.in", "seq.out", "label")}
    lines = {name: read_lines(p) for name, p in paths.items()}
    counts = {name: len(v) for name, v in lines.items()}
    if len(set(counts.values())) != 1:
        raise AtisFormatError(f"{os.path.join(atis_dir, split)}: the files have different line counts "
                              f"({', '.join(f'{k} {v}' for k, v in counts.items())})")
    sents, tags, intents = [], [], []
    for no, (text, tag_line, intent) in enumerate(zip(lines["seq.in"], lines["seq.out"], lines["label"]), 1):
        words, ts = text.split(), tag_line.split()
        if not words:
            raise AtisFormatError(f"{paths['seq.in']}:{no}: empty utterance")
        if len(ts) != len(words):
            raise AtisFormatError(f"{paths['seq.out']}:{no}: {len(ts)} tags for the {len(words)} words of "
                                  f"{paths['seq.in']}:{no}; every word needs exactly one tag")
        if not intent.strip():
            raise AtisFormatError(f"{paths['label']}:{no}: empty intent")
        sents.append(words)
        tags.append(ts)
        intents.append(intent.strip())
    return sents, tags, intents


def write_text(path: str, text: str) -> str:
    """Writes a file atomically (a temporary sibling renamed into place), so that runs preparing the same
    folder at once never read a half-written file."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)
    return path


def write_json(path: str, obj) -> str:
    return write_text(path, json.dumps(obj, indent=1) + "\n")


def prepare(atis_dir: str, out_dir: str) -> dict:
    """Writes the intent and slot files; returns their paths, the label maps and per-split counts.

    Returns:
        {"intent": {"train"|"dev"|"test": tsv path, "label_map": json path},
         "slot": {... the same ...},
         "counts": {split: number of utterances},
         "unk_intents": {split: number of utterances whose intent is not in intent_label.txt},
         "eval_only_tags": tags that occur in dev/test but not in train,
         "intent_label_map": {name: id}, "slot_label_map": {tag: id}}

    Raises:
        FileNotFoundError: a missing input file.
        AtisFormatError: line counts that differ within a split, or a seq.out line whose tag count differs from
            its seq.in line (the message names file:line).
    """
    data = {split: read_split(atis_dir, split) for split in SPLITS}
    intent_names = [x.strip() for x in read_lines(os.path.join(atis_dir, "intent_label.txt")) if x.strip()]
    if UNK not in intent_names:
        raise AtisFormatError(f"{os.path.join(atis_dir, 'intent_label.txt')}: no {UNK!r} entry to map unseen "
                              f"intents to")
    intent_map = {name: i for i, name in enumerate(intent_names)}
    train_tags = sorted({t for ts in data["train"][1] for t in ts})
    eval_only = sorted({t for split in ("dev", "test") for ts in data[split][1] for t in ts} - set(train_tags))
    slot_map = {t: i for i, t in enumerate(train_tags + eval_only)}
    if "O" not in slot_map:
        raise AtisFormatError(f"{atis_dir}: no 'O' tag in any seq.out file")

    out = {"intent": {}, "slot": {}, "counts": {}, "unk_intents": {}, "eval_only_tags": eval_only,
           "intent_label_map": intent_map, "slot_label_map": slot_map}
    for task in ("intent", "slot"):
        os.makedirs(os.path.join(out_dir, task), exist_ok=True)
    for split, (sents, tags, intents) in data.items():
        ids = [intent_map.get(name, intent_map[UNK]) for name in intents]
        out["counts"][split] = len(sents)
        out["unk_intents"][split] = sum(name not in intent_map for name in intents)
        path = out["intent"][split] = os.path.join(out_dir, "intent", f"{split}.tsv")
        write_text(path, "label\ttext_a\n" + "".join(f"{i}\t{' '.join(words)}\n"
                                                     for i, words in zip(ids, sents, strict=True)))
        path = out["slot"][split] = os.path.join(out_dir, "slot", f"{split}.tsv")
        write_text(path, "text_a\tlabel\n" + "".join(f"{chr(2).join(words)}\t{chr(2).join(ts)}\n"
                                                     for words, ts in zip(sents, tags, strict=True)))
    out["intent"]["label_map"] = write_json(os.path.join(out_dir, "intent", "label_map.json"), intent_map)
    out["slot"]["label_map"] = write_json(os.path.join(out_dir, "slot", "label_map.json"), slot_map)
    return out


def main(argv=None):
    here = os.path.dirname(os.path.abspath(__file__))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--atis_dir", default=os.path.normpath(os.path.join(here, "..", "..", "..", "shared", "data",
                                                                       "atis")))
    p.add_argument("--out_dir", required=True, help="where intent/ and slot/ are written (keep it outside the "
                   "repository, e.g. /tmp/atis_palm)")
    args = p.parse_args(argv)
    out = prepare(args.atis_dir, args.out_dir)
    for split in SPLITS:
        print(f"{split}: {out['counts'][split]} utterances ({out['unk_intents'][split]} with an intent outside "
              f"intent_label.txt -> {UNK})")
    print(f"intent: {len(out['intent_label_map'])} classes -> {os.path.join(args.out_dir, 'intent')}")
    print(f"slot: {len(out['slot_label_map'])} tags ({len(out['eval_only_tags'])} only in dev/test: "
          f"{', '.join(out['eval_only_tags'])}) -> {os.path.join(args.out_dir, 'slot')}")
    return out


if __name__ == "__main__":
    main()
