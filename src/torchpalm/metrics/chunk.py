"""Entity-level (chunk) F1 for sequence labelling, identical to seqeval's default mode.

seqeval's default (non-strict, conlleval-compatible) mode decodes every tagging scheme with
one permissive set of rules, reproduced here by :func:`get_entities`:

* a chunk ends before the current tag when the previous tag is ``E`` or ``S``; when the
  previous tag is ``B`` or ``I`` and the current one is ``B``, ``S`` or ``O``; or when the
  previous tag is not ``O`` and the entity type changes;
* a chunk starts at the current tag when it is ``B`` or ``S``; when it is ``I`` or ``E``
  following ``O``, ``E`` or ``S`` (so a stray ``I-`` after ``O`` opens a chunk); or when it
  is not ``O`` and the type changes.

These rules decode IOB1, IOB2 and BIOES alike, so ``scheme`` only selects which tag
prefixes are accepted.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

_PREFIXES = {
    "IOB1": frozenset("BIO"),
    "IOB2": frozenset("BIO"),
    "BIOES": frozenset("BIOES"),
    "IOBES": frozenset("BIOES"),
}

Entity = tuple[str, int, int]


def _allowed_prefixes(scheme: str) -> frozenset[str]:
    """Return the tag prefixes valid for ``scheme`` (case-insensitive)."""
    try:
        return _PREFIXES[scheme.upper()]
    except KeyError:
        raise ValueError(f"unknown scheme {scheme!r}; expected one of {sorted(_PREFIXES)}") from None


def _split_tag(tag: str, allowed: frozenset[str]) -> tuple[str, str]:
    """Split ``'B-PER'`` into ``('B', 'PER')`` exactly as seqeval does (missing type -> ``'_'``)."""
    if not tag or tag[0] not in allowed:
        raise ValueError(f"tag {tag!r} is not valid: prefixes allowed are {sorted(allowed)}")
    return tag[0], tag[1:].split("-", maxsplit=1)[-1] or "_"


def _end_of_chunk(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    """seqeval's ``end_of_chunk``: did a chunk end just before the current token?"""
    if prev_tag in ("E", "S"):
        return True
    if prev_tag in ("B", "I") and tag in ("B", "S", "O"):
        return True
    return prev_tag not in ("O", ".") and prev_type != type_


def _start_of_chunk(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    """seqeval's ``start_of_chunk``: does a chunk start at the current token?"""
    if tag in ("B", "S"):
        return True
    if prev_tag in ("E", "S", "O") and tag in ("E", "I"):
        return True
    return tag not in ("O", ".") and prev_type != type_


def get_entities(seq: Sequence[str], scheme: str = "IOB2") -> list[Entity]:
    """Extract entity chunks from one tag sequence with seqeval's default-mode rules.

    Args:
        seq: Tag strings such as ``['B-PER', 'I-PER', 'O']``.
        scheme: ``'IOB1'``, ``'IOB2'``, ``'BIOES'`` or its alias ``'IOBES'``; it only
            restricts the accepted prefixes (see the module docstring).

    Returns:
        ``(type, start, end)`` triples with inclusive ``end``, in order of their end.

    Raises:
        ValueError: For an unknown scheme or a tag whose prefix the scheme does not allow.

    Example:
        >>> get_entities(['B-PER', 'I-PER', 'O', 'I-LOC'])
        [('PER', 0, 1), ('LOC', 3, 3)]
    """
    allowed = _allowed_prefixes(scheme)
    prev_tag, prev_type, begin = "O", "", 0
    chunks: list[Entity] = []
    for i, raw in enumerate([*seq, "O"]):
        tag, type_ = _split_tag(raw, allowed)
        if _end_of_chunk(prev_tag, tag, prev_type, type_):
            chunks.append((prev_type, begin, i - 1))
        if _start_of_chunk(prev_tag, tag, prev_type, type_):
            begin = i
        prev_tag, prev_type = tag, type_
    return chunks


def _prf(tp: int, n_pred: int, n_true: int) -> dict[str, float]:
    """Precision, recall and F1 from counts; undefined ratios are 0 (seqeval's default)."""
    p = tp / n_pred if n_pred else 0.0
    r = tp / n_true if n_true else 0.0
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0}


def chunk_f1(
    true_seqs: Sequence[Sequence[str]],
    pred_seqs: Sequence[Sequence[str]],
    scheme: str = "IOB2",
) -> dict:
    """Micro-averaged entity precision/recall/F1, equal to seqeval's default mode.

    An entity counts as correct only if type, start and end all match the gold one.

    Args:
        true_seqs: Gold tag sequences, one list of tag strings per sentence.
        pred_seqs: Predicted tag sequences, same shape as ``true_seqs``.
        scheme: ``'IOB1'``, ``'IOB2'``, ``'BIOES'`` or ``'IOBES'``.

    Returns:
        ``{'precision', 'recall', 'f1', 'per_type'}`` where ``per_type`` maps every entity
        type seen in gold or predictions to ``{'precision', 'recall', 'f1', 'support'}``
        (``support`` is the number of gold entities of that type).

    Raises:
        ValueError: If the number of sentences or any sentence length differs, or a tag
            is invalid for ``scheme``.
    """
    if len(true_seqs) != len(pred_seqs):
        raise ValueError(f"got {len(true_seqs)} gold sentences but {len(pred_seqs)} predicted")
    gold: dict[str, set] = defaultdict(set)
    pred: dict[str, set] = defaultdict(set)
    for n, (t_seq, p_seq) in enumerate(zip(true_seqs, pred_seqs, strict=True)):
        if len(t_seq) != len(p_seq):
            raise ValueError(f"sentence {n}: gold has {len(t_seq)} tags, prediction {len(p_seq)}")
        for type_, start, end in get_entities(t_seq, scheme):
            gold[type_].add((n, start, end))
        for type_, start, end in get_entities(p_seq, scheme):
            pred[type_].add((n, start, end))

    per_type = {}
    totals = [0, 0, 0]
    for type_ in sorted(gold.keys() | pred.keys()):
        counts = (len(gold[type_] & pred[type_]), len(pred[type_]), len(gold[type_]))
        per_type[type_] = {**_prf(*counts), "support": counts[2]}
        totals = [a + b for a, b in zip(totals, counts, strict=True)]
    return {**_prf(*totals), "per_type": per_type}


def palm_token_f1(true_ids: Sequence[Sequence], pred_ids: Sequence[Sequence]) -> float:
    """PaddlePALM's legacy NER "f1" (``examples/tagging/evaluate.py``): token accuracy.

    Per sentence, a prediction longer than the gold is taken as ``pred[1:1 + len(gold)]``
    (dropping the ``[CLS]`` position); a shorter one truncates the gold to its length.
    Positions are then pooled, and every mismatch is both a false positive and a false
    negative, so precision = recall = F1 = the fraction of equal positions (``O`` included).

    Args:
        true_ids: Gold label ids (or tags), one sequence per sentence.
        pred_ids: Predicted label ids, one sequence per sentence.

    Returns:
        The legacy F1, ``2PR/(P+R)``, in [0, 1]; 0.0 when there are no positions.

    Raises:
        ValueError: If the number of sentences differs.
    """
    if len(true_ids) != len(pred_ids):
        raise ValueError(f"got {len(true_ids)} gold sentences but {len(pred_ids)} predicted")
    correct = total = 0
    for gold, pred in zip(true_ids, pred_ids, strict=True):
        gold, pred = list(gold), list(pred)
        if len(pred) > len(gold):
            pred = pred[1 : 1 + len(gold)]
        else:
            gold = gold[: len(pred)]
        correct += sum(g == p for g, p in zip(gold, pred, strict=True))
        total += len(gold)
    p = r = correct / total if total else 0.0
    return 2 * p * r / (p + r) if p + r else 0.0
