"""Scores classification predictions against gold labels (PALM's evaluate.py, spec §15.1).

Prints PALM's lines (`data num`, accuracy and the binary P/R/F1 on class '1') and macro P/R/F1.
Usage: python evaluate.py outputs/predict/predictions.json path/to/test.tsv   (a TSV, CSV or JSON file; label ids,
       or label names compared with the predictions' label_name)
"""

import json
import sys

from torchpalm.metrics import palm_classification_metrics, precision_recall_f1
from torchpalm.reader.base import read_table


def evaluate(predictions_path: str, gold: str | list[int]) -> dict:
    """`gold`: the gold file, or the class ids in order (`ClassifyReader.gold_labels()` of the predict reader,
    -1 for a label the model does not know, which scores as a miss)."""
    if isinstance(gold, str):
        gold = [row["label"].strip() for _, row in read_table(gold, required=("label",))]
    else:
        gold = [str(g) for g in gold]
    by_name = not all(g.lstrip("-").isdigit() for g in gold)  # a gold file with label names
    with open(predictions_path, encoding="utf-8") as f:
        preds = [str(json.loads(line)["label_name" if by_name else "label"]) for line in f if line.strip()]
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
