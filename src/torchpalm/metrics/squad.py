"""SQuAD exact match and token F1, as in the official evaluate-v1.1.py / evaluate-v2.0.py."""

from __future__ import annotations

import json
import logging
import re
import string
import zipfile
from collections import Counter
from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path

logger = logging.getLogger(__name__)

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_VERSIONS = ("1.1", "2.0")

Dataset = Mapping | Sequence | str | PathLike


def load_squad_articles(dataset: Dataset) -> list[dict]:
    """Return the list of articles (``data``) of a SQuAD-style dataset.

    Args:
        dataset: The parsed JSON (a dict with ``'data'``), its ``data`` list, or a path to
            a ``.json`` file or to a ``.zip`` archive holding exactly one ``.json`` file.

    Returns:
        The articles, each a dict with ``'paragraphs'``.

    Raises:
        ValueError: If a zip archive does not contain exactly one JSON file.
    """
    if isinstance(dataset, (str, PathLike)):
        path = Path(dataset)
        if path.suffix == ".zip":
            with zipfile.ZipFile(path) as zf:
                names = [n for n in zf.namelist() if n.endswith(".json")]
                if len(names) != 1:
                    raise ValueError(f"{path} must contain exactly one .json file, found {names}")
                dataset = json.loads(zf.read(names[0]).decode("utf-8"))
        else:
            dataset = json.loads(path.read_text(encoding="utf-8"))
    return list(dataset["data"]) if isinstance(dataset, Mapping) else list(dataset)


def normalize_answer(s: str) -> str:
    """Lower-case, drop ASCII punctuation, drop the articles a/an/the, collapse whitespace."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", s).split())


def _check_version(version: str) -> None:
    if version not in _VERSIONS:
        raise ValueError(f"version must be one of {_VERSIONS}, got {version!r}")


def _golds(gold: str | Sequence[str]) -> list[str]:
    return [gold] if isinstance(gold, str) else list(gold)


def _em(pred: str, gold: str) -> float:
    return float(normalize_answer(pred) == normalize_answer(gold))


def _f1(pred: str, gold: str, version: str) -> float:
    pred_toks = normalize_answer(pred).split()
    gold_toks = normalize_answer(gold).split()
    if version == "2.0" and (not pred_toks or not gold_toks):
        return float(pred_toks == gold_toks)  # no-answer: 1 if both are empty
    num_same = sum((Counter(pred_toks) & Counter(gold_toks)).values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(pred_toks)
    recall = num_same / len(gold_toks)
    return 2 * precision * recall / (precision + recall)


def squad_exact_match(pred: str, gold: str | Sequence[str]) -> float:
    """Exact match after :func:`normalize_answer`, maximised over the gold answers.

    Args:
        pred: The predicted answer.
        gold: One gold answer or a list of them.

    Returns:
        1.0 or 0.0 (0.0 for an empty gold list).
    """
    return max((_em(pred, g) for g in _golds(gold)), default=0.0)


def squad_f1(pred: str, gold: str | Sequence[str], version: str = "1.1") -> float:
    """Bag-of-tokens F1 after :func:`normalize_answer`, maximised over the gold answers.

    Args:
        pred: The predicted answer.
        gold: One gold answer or a list of them.
        version: ``'1.1'`` (empty token lists score 0) or ``'2.0'`` (if either side is
            empty, the score is 1 when both are empty, else 0).

    Returns:
        The F1 in [0, 1] (0.0 for an empty gold list).
    """
    _check_version(version)
    return max((_f1(pred, g, version) for g in _golds(gold)), default=0.0)


def squad_em_f1(
    dataset_or_json_path: Dataset,
    predictions: Mapping[str, str],
    version: str = "1.1",
) -> dict[str, float | int]:
    """Score predictions on a SQuAD dataset like the official evaluation scripts.

    Every question of the dataset counts; one without a prediction scores 0 and is
    logged as ``Unanswered question <id> will receive score 0.`` (the official v2.0
    script instead leaves it out of the totals). For v2.0 a question whose ``answers``
    list is empty is unanswerable and its only gold is ``''``; gold answers that
    normalise to ``''`` are ignored as in the official script. No no-answer threshold is
    applied (as if every ``na_prob`` were 0).

    Args:
        dataset_or_json_path: Parsed SQuAD JSON (dict with ``'data'``), its ``data`` list,
            or a path to the ``.json`` (or a ``.zip`` holding it).
        predictions: Maps question id to the predicted answer string.
        version: ``'1.1'`` or ``'2.0'``.

    Returns:
        ``exact_match`` and ``f1`` in percent (0-100), ``total`` (questions) and
        ``unanswered``; for v2.0 also ``exact`` (the official name of ``exact_match``) and,
        when such questions exist, ``HasAns_exact``/``HasAns_f1``/``HasAns_total`` and
        ``NoAns_exact``/``NoAns_f1``/``NoAns_total``.

    Raises:
        ValueError: For an unknown version or a dataset without questions.
    """
    _check_version(version)
    scores: list[tuple[bool, float, float]] = []  # (has_answer, em, f1) per question
    unanswered = 0
    for article in load_squad_articles(dataset_or_json_path):
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                golds = [a["text"] for a in qa["answers"]]
                has_ans = bool(golds)
                if version == "2.0":
                    golds = [g for g in golds if normalize_answer(g)] or [""]
                if qa["id"] not in predictions:
                    logger.warning("Unanswered question %s will receive score 0.", qa["id"])
                    unanswered += 1
                    scores.append((has_ans, 0.0, 0.0))
                    continue
                pred = predictions[qa["id"]]
                scores.append((has_ans, squad_exact_match(pred, golds), squad_f1(pred, golds, version)))
    if not scores:
        raise ValueError("the dataset contains no questions")

    def summary(rows: list[tuple[bool, float, float]]) -> tuple[float, float, int]:
        n = len(rows)
        return 100.0 * sum(r[1] for r in rows) / n, 100.0 * sum(r[2] for r in rows) / n, n

    exact, f1, total = summary(scores)
    result: dict[str, float | int] = {
        "exact_match": exact,
        "f1": f1,
        "total": total,
        "unanswered": unanswered,
    }
    if version == "2.0":
        result["exact"] = exact
        for name, flag in (("HasAns", True), ("NoAns", False)):
            rows = [r for r in scores if r[0] is flag]
            if rows:
                s = summary(rows)
                result.update({f"{name}_exact": s[0], f"{name}_f1": s[1], f"{name}_total": s[2]})
    return result
