"""Scores classification predictions against the gold labels of a TSV (PALM's evaluate.py, spec §15.1).

Prints PALM's lines (`data num`, accuracy and the binary P/R/F1 on class '1') and macro P/R/F1.
Usage: python evaluate.py outputs/predict/predictions.json path/to/test.tsv
"""

import json
import sys

from torchpalm.metrics import palm_classification_metrics, precision_recall_f1
from torchpalm.reader.base import read_tsv


def evaluate(predictions_path: str, gold_tsv: str) -> dict:
    gold = [row["label"].strip() for _, row in read_tsv(gold_tsv, required=("label",))]
    with open(predictions_path, encoding="utf-8") as f:
        preds = [str(json.loads(line)["label"]) for line in f if line.strip()]
    if len(preds) != len(gold):
        raise SystemExit(f"{len(preds)} predictions for {len(gold)} gold labels")
    m = palm_classification_metrics(preds, gold)
    macro = precision_recall_f1(preds, gold, average="macro")
    print(f"data num: {len(gold)}")
    print(f"accuracy: {m['accuracy']:.4f}, precision: {m['precision']:.4f}, recall: {m['recall']:.4f}, "
          f"f1: {m['f1']:.4f}")
    print(f"macro precision: {macro['precision']:.4f}, macro recall: {macro['recall']:.4f}, "
          f"macro f1: {macro['f1']:.4f}")
    return {**m, "macro": macro, "n": len(gold)}


if __name__ == "__main__":
    evaluate(sys.argv[1], sys.argv[2])
