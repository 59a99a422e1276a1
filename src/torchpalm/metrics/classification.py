"""Classification metrics: accuracy, precision/recall/F1 and PaddlePALM's legacy scorer."""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Sequence

_AVERAGES = ("binary", "macro", "micro")


def _check_pair(preds: Sequence, labels: Sequence) -> tuple[list, list]:
    """Return both inputs as lists after checking they are non-empty and equally long.

    Raises:
        ValueError: If the lengths differ or the inputs are empty.
    """
    preds, labels = list(preds), list(labels)
    if len(preds) != len(labels):
        raise ValueError(f"preds and labels differ in length: {len(preds)} != {len(labels)}")
    if not labels:
        raise ValueError("preds and labels are empty; cannot compute a metric")
    return preds, labels


def _safe_div(num: float, den: float) -> float:
    """Divide, returning 0.0 when the denominator is zero (sklearn's ``zero_division=0``)."""
    return num / den if den else 0.0


def _prf(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    """Precision, recall and F1 from counts; every undefined ratio is 0."""
    return _safe_div(tp, tp + fp), _safe_div(tp, tp + fn), _safe_div(2 * tp, 2 * tp + fp + fn)


def accuracy(preds: Sequence, labels: Sequence) -> float:
    """Fraction of positions where the prediction equals the label.

    Args:
        preds: Predicted labels.
        labels: Gold labels, same length as ``preds``.

    Returns:
        The accuracy in [0, 1].

    Raises:
        ValueError: If the lengths differ or the inputs are empty.
    """
    preds, labels = _check_pair(preds, labels)
    return sum(p == g for p, g in zip(preds, labels, strict=True)) / len(labels)


def precision_recall_f1(
    preds: Sequence[Hashable],
    labels: Sequence[Hashable],
    average: str = "binary",
    pos_label: Hashable = 1,
) -> dict[str, float]:
    """Precision, recall and F1 with scikit-learn semantics (``zero_division=0``).

    Args:
        preds: Predicted labels.
        labels: Gold labels, same length as ``preds``.
        average: ``'binary'`` scores only ``pos_label``; ``'macro'`` averages the per-class
            scores over the sorted union of the labels seen in gold and predictions;
            ``'micro'`` pools the counts of all classes (equal to accuracy for single-label
            multiclass data).
        pos_label: The positive class for ``average='binary'``.

    Returns:
        ``{'precision': float, 'recall': float, 'f1': float}``.

    Raises:
        ValueError: On length mismatch, empty inputs, an unknown ``average``, or more than
            two classes (or a ``pos_label`` absent from two present classes) with
            ``average='binary'``.
    """
    preds, labels = _check_pair(preds, labels)
    if average not in _AVERAGES:
        raise ValueError(f"average must be one of {_AVERAGES}, got {average!r}")
    classes = set(labels) | set(preds)
    if average == "binary":
        if len(classes) > 2:
            raise ValueError(
                f"average='binary' needs at most two classes, got {len(classes)}; "
                "use average='macro' or 'micro'"
            )
        if len(classes) == 2 and pos_label not in classes:
            raise ValueError(f"pos_label={pos_label!r} is not one of the labels {sorted(classes, key=repr)}")
        classes = {pos_label}

    correct = Counter(g for p, g in zip(preds, labels, strict=True) if p == g)
    n_pred, n_gold = Counter(preds), Counter(labels)
    counts = [(correct[c], n_pred[c] - correct[c], n_gold[c] - correct[c]) for c in sorted(classes, key=repr)]

    if average == "micro":
        p, r, f = _prf(*(sum(col) for col in zip(*counts, strict=True)))
    else:
        scores = [_prf(*c) for c in counts]
        p, r, f = (sum(col) / len(scores) for col in zip(*scores, strict=True))
    return {"precision": p, "recall": r, "f1": f}


def palm_classification_metrics(preds: Sequence, labels: Sequence) -> dict[str, float]:
    """PaddlePALM's legacy ``evaluate.py`` scores for binary classification/matching.

    Labels are compared as strings and the positive class is ``'1'``:
    ``TP = #(gold=='1' & pred=='1')``, ``FP = #(gold=='0' & pred=='1')``,
    ``FN = #(gold=='1' & pred=='0')``; ``P = TP/(TP+FP)``, ``R = TP/(TP+FN)``,
    ``F1 = 2PR/(P+R+1e-31)``. Zero denominators give 0 instead of NaN.

    Args:
        preds: Predicted labels (ints or strings).
        labels: Gold labels, same length as ``preds``.

    Returns:
        ``{'accuracy', 'precision', 'recall', 'f1'}`` as floats.

    Raises:
        ValueError: If the lengths differ or the inputs are empty.
    """
    preds, labels = _check_pair([str(p) for p in preds], [str(g) for g in labels])
    pairs = list(zip(labels, preds, strict=True))
    tp = pairs.count(("1", "1"))
    fp = pairs.count(("0", "1"))
    fn = pairs.count(("1", "0"))
    p = _safe_div(tp, tp + fp)
    r = _safe_div(tp, tp + fn)
    return {
        "accuracy": sum(g == p_ for g, p_ in pairs) / len(pairs),
        "precision": p,
        "recall": r,
        "f1": 2 * p * r / (p + r + 1e-31),
    }
