"""Scores matching predictions against the gold labels of a TSV (PALM's evaluate.py, spec §15.1).

Prints PALM's lines: `data num`, then accuracy and precision/recall/F1 of the positive class '1'. For MRPC
these are the standard GLUE metrics (accuracy, and F1 of the paraphrase class).
Usage: python evaluate.py outputs/predict_dev/predictions.json ../../../shared/data/mrpc/dev.tsv
"""

import json
import sys

from torchpalm.metrics import palm_classification_metrics
from torchpalm.reader.base import read_tsv


def evaluate(predictions_path: str, gold_tsv: str) -> dict:
    """Reads `label` (or GLUE's `Quality`/`is_duplicate`) from `gold_tsv` and each line's `label` from the
    predictions (JSON lines); returns {'accuracy', 'precision', 'recall', 'f1', 'n'}."""
    gold = [row["label"].strip() for _, row in read_tsv(gold_tsv, required=("label",))]
    with open(predictions_path, encoding="utf-8") as f:
        preds = [str(json.loads(line)["label"]) for line in f if line.strip()]
    if len(preds) != len(gold):
        raise SystemExit(f"{predictions_path}: {len(preds)} predictions for {len(gold)} gold labels in {gold_tsv}")
    m = palm_classification_metrics(preds, gold)
    print(f"data num: {len(gold)}")
    print(f"accuracy: {m['accuracy']:.4f}, precision: {m['precision']:.4f}, recall: {m['recall']:.4f}, "
          f"f1: {m['f1']:.4f}")
    return {**m, "n": len(gold)}


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    evaluate(sys.argv[1], sys.argv[2])
