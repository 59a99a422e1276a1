"""Scores matching predictions against the gold labels of a TSV (PALM's evaluate.py, spec §15.1).

Prints PALM's lines: `data num`, then accuracy and precision/recall/F1 of the positive class '1'. For MRPC
these are the standard GLUE metrics (accuracy, and F1 of the paraphrase class).
Usage: python evaluate.py outputs/predict_dev/predictions.json ../../../shared/data/mrpc/dev.tsv
"""

import json
import sys

from torchpalm.metrics import palm_classification_metrics
from torchpalm.reader.base import read_table


def evaluate(predictions_path: str, gold: str | list[int]) -> dict:
    """Reads `label` (or GLUE's `Quality`/`is_duplicate`) from the gold file `gold` (TSV, CSV or JSON; label ids,
    or names compared with the predictions' `label_name`), or takes the class ids in order (the predict reader's
    `gold_labels()`, -1 for a label the model does not know); returns {'accuracy', 'precision', 'recall', 'f1',
    'n'}."""
    source = gold if isinstance(gold, str) else "the predict reader"
    if isinstance(gold, str):
        gold = [row["label"].strip() for _, row in read_table(gold, required=("label",))]
    else:
        gold = [str(g) for g in gold]
    by_name = not all(g.lstrip("-").isdigit() for g in gold)
    with open(predictions_path, encoding="utf-8") as f:
        preds = [str(json.loads(line)["label_name" if by_name else "label"]) for line in f if line.strip()]
    if len(preds) != len(gold):
        raise SystemExit(f"{predictions_path}: {len(preds)} predictions for {len(gold)} gold labels in {source}")
    m = palm_classification_metrics(preds, gold)
    print(f"data num: {len(gold)}")
    print(f"accuracy: {m['accuracy']:.4f}, precision: {m['precision']:.4f}, recall: {m['recall']:.4f}, "
          f"f1: {m['f1']:.4f}")
    return {**m, "n": len(gold)}


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    evaluate(sys.argv[1], sys.argv[2])
