"""Scores NER predictions against a gold tagging file (PALM's tagging/evaluate.py, spec §15.3, and more).

Prints the entity-level precision/recall/F1 (seqeval's default mode, `torchpalm.metrics.chunk_f1`; this is the
number NER papers report), the per-type scores, and PALM's legacy token "f1" (`palm_token_f1`: token accuracy
with `O` included), which is what the published MSRA 99.2 measures.

Predictions: one JSON list of tag ids per line and sentence, one id per word (torchpalm's SequenceLabel
output). Gold: a PALM TSV (`text_a<TAB>label`), one sentence per line (`tokens<TAB>tags`) or a CoNLL column
file (tag in the last column).
Usage: python evaluate.py outputs/predict/predictions.json path/to/test.txt outputs/label_map.json [--scheme BMES]
       [--mode strict]     (the scheme defaults to the one the label map's tags are written in)
"""

from __future__ import annotations

import argparse
import json
import os

from torchpalm.metrics import chunk_f1, infer_scheme, palm_token_f1
from torchpalm.reader.sequence_label import load_label_map, read_tagged_file


def read_predictions(path: str) -> list[list[int]]:
    preds = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            if not isinstance(row, list) or not all(isinstance(x, int) for x in row):
                raise SystemExit(f"{path}:{line_no}: expected a JSON list of tag ids, got {line.strip()[:80]!r}")
            preds.append(row)
    return preds


def evaluate(predictions_path: str, gold_path: str, label_map: str | dict, scheme: str | None = None,
             file_format: str | None = None, verbose: bool = True, mode: str = "default") -> dict:
    """Entity P/R/F1 (overall and per type) and PALM's legacy token f1 of a predictions file.

    Args:
        predictions_path: predictions.json (one list of tag ids per sentence).
        gold_path: the gold file the predictions were made on (same sentences, same order).
        label_map: the `{tag: id}` JSON file (or dict) the model was trained with.
        scheme: tagging scheme for entity decoding: 'IOB2' (CoNLL-2003 as shipped, MSRA BIO), 'IOB1', 'IOBES',
            'BMES', 'BILOU', or None to read it off the label map's tags (`torchpalm.metrics.infer_scheme`).
        file_format: 'tsv', 'lines', 'conll', 'jsonl' or None (detect).
        verbose: print PALM's lines and the entity scores.
        mode: 'default' (seqeval's default) or 'strict' (seqeval's strict mode).

    Returns:
        {'n', 'precision', 'recall', 'f1' (entity level), 'per_type', 'palm_token_f1'}.
    """
    label_map, source = load_label_map(label_map)
    id2label = {i: t for t, i in label_map.items()}
    _, sentences = read_tagged_file(gold_path, file_format, require_tags=True, tag_names=id2label)
    preds = read_predictions(predictions_path)
    if len(preds) != len(sentences):
        raise SystemExit(f"{predictions_path}: {len(preds)} predicted sentences for {len(sentences)} gold sentences "
                         f"in {gold_path}")
    gold_tags, pred_tags, gold_ids = [], [], []
    for k, (s, p) in enumerate(zip(sentences, preds, strict=True)):
        if len(p) != len(s.words):
            raise SystemExit(f"{predictions_path}:{k + 1}: {len(p)} predicted tags for the {len(s.words)} words of "
                             f"{gold_path}:{s.line}")
        unknown = [i for i in p if i not in id2label]
        if unknown:
            raise SystemExit(f"{predictions_path}:{k + 1}: tag id {unknown[0]} is not in the label map ({source})")
        gold_tags.append(s.tags)
        pred_tags.append([id2label[i] for i in p])
        # A gold tag the model never saw is no error: its words are simply never predicted right (id -1).
        gold_ids.append([label_map.get(t, -1) for t in s.tags])
    scheme = scheme or infer_scheme(label_map)
    scores = chunk_f1(gold_tags, pred_tags, scheme=scheme, mode=mode)
    legacy = palm_token_f1(gold_ids, preds)
    if verbose:
        print(f"data num: {len(sentences)}")
        print(f"f1: {legacy:.4f}   (PALM's legacy token-level score: token accuracy, O included)")
        print(f"entity precision: {scores['precision']:.4f}, entity recall: {scores['recall']:.4f}, "
              f"entity f1: {scores['f1']:.4f}   ({scheme}, seqeval {mode} mode)")
        for type_, s in scores["per_type"].items():
            print(f"  {type_:<8} precision {s['precision']:.4f}  recall {s['recall']:.4f}  f1 {s['f1']:.4f}  "
                  f"support {s['support']}")
    return {"n": len(sentences), **scores, "palm_token_f1": legacy}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("predictions")
    p.add_argument("gold")
    p.add_argument("label_map", nargs="?", default=None,
                   help="label map JSON (default: label_map.json next to the predictions' folder)")
    p.add_argument("--scheme", default=None, choices=["IOB1", "IOB2", "BIOES", "IOBES", "BMES", "BILOU"],
                   help="tagging scheme (default: read off the label map's tags)")
    p.add_argument("--mode", default="default", choices=["default", "strict"])
    p.add_argument("--file_format", default=None, choices=["tsv", "lines", "conll"])
    args = p.parse_args(argv)
    label_map = args.label_map
    if label_map is None:
        label_map = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(args.predictions))),
                                 "label_map.json")
    return evaluate(args.predictions, args.gold, label_map, args.scheme, args.file_format, mode=args.mode)


if __name__ == "__main__":
    main()
