"""Entity-level (chunk) F1 for sequence labelling, identical to seqeval in both of its modes.

**Default mode** (seqeval's default, conlleval-compatible) decodes every tagging scheme with one permissive
set of rules, reproduced here by :func:`get_entities`:

* a chunk ends before the current tag when the previous tag is ``E`` or ``S``; when the
  previous tag is ``B`` or ``I`` and the current one is ``B``, ``S`` or ``O``; or when the
  previous tag is not ``O`` and the entity type changes;
* a chunk starts at the current tag when it is ``B`` or ``S``; when it is ``I`` or ``E``
  following ``O``, ``E`` or ``S`` (so a stray ``I-`` after ``O`` opens a chunk); or when it
  is not ``O`` and the type changes.

These rules decode IOB1, IOB2 and IOBES alike, so there ``scheme`` only selects which tag prefixes are accepted.

**Strict mode** (seqeval's ``mode="strict"``) keeps only chunks that are well formed in the given scheme, e.g.
``B I* E | S`` in IOBES: a chunk must start, continue and end with the prefixes (and the same type) the scheme
allows, and anything else is no entity at all. It follows seqeval's start / inside / end patterns.

Schemes: ``IOB1``, ``IOB2``, ``IOBES`` (alias ``BIOES``), ``BMES`` and ``BILOU``. BMES (Chinese NER's
B-/M-/E-/S-/O) is IOBES with ``M`` for ``I``, and BILOU is IOBES with ``L`` for ``E`` and ``U`` for ``S``: both are
decoded as IOBES after renaming those prefixes, which is exactly seqeval's behaviour for BILOU in strict mode
(its default mode does not know M, L or U).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence

# scheme -> (accepted prefixes, renaming into the canonical scheme, the canonical scheme whose rules apply)
_SCHEMES = {
    "IOB1": ("BIO", {}, "IOB1"),
    "IOB2": ("BIO", {}, "IOB2"),
    "IOBES": ("BIOES", {}, "IOBES"),
    "BIOES": ("BIOES", {}, "IOBES"),
    "BMES": ("BMESO", {"M": "I"}, "IOBES"),
    "BILOU": ("BILOU", {"L": "E", "U": "S"}, "IOBES"),
}
MODES = ("default", "strict")

Entity = tuple[str, int, int]


def _scheme(scheme: str) -> tuple[frozenset[str], dict[str, str], str]:
    """(accepted prefixes, prefix renaming, canonical scheme) of ``scheme`` (case-insensitive)."""
    try:
        prefixes, rename, canonical = _SCHEMES[scheme.upper()]
    except (KeyError, AttributeError):
        raise ValueError(f"unknown scheme {scheme!r}; expected one of {sorted(_SCHEMES)}") from None
    return frozenset(prefixes), rename, canonical


def _check_prefix(tag: str, allowed: frozenset[str], scheme: str) -> str:
    if not tag or tag[0] not in allowed:
        raise ValueError(f"tag {tag!r} is not valid in the {scheme} scheme: prefixes allowed are {sorted(allowed)}")
    return tag[0]


def infer_scheme(tags: Iterable[str]) -> str:
    """The scheme a tag set is written in, from the prefixes it uses: any ``M-`` -> BMES, any ``L-``/``U-`` ->
    BILOU, any ``E-``/``S-`` -> IOBES, else IOB2 (e.g. for a label map whose scheme nobody named)."""
    prefixes = {t[0] for t in tags if t}
    if "M" in prefixes:
        return "BMES"
    if prefixes & {"L", "U"}:
        return "BILOU"
    if prefixes & {"E", "S"}:
        return "IOBES"
    return "IOB2"


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


def _default_entities(tokens: list[tuple[str, str]]) -> list[Entity]:
    prev_tag, prev_type, begin = "O", "", 0
    chunks: list[Entity] = []
    for i, (tag, type_) in enumerate([*tokens, ("O", "_")]):
        if _end_of_chunk(prev_tag, tag, prev_type, type_):
            chunks.append((prev_type, begin, i - 1))
        if _start_of_chunk(prev_tag, tag, prev_type, type_):
            begin = i
        prev_tag, prev_type = tag, type_
    return chunks


# seqeval's strict patterns per canonical scheme: (previous prefixes, current prefixes, types must be the same
# (True), differ (False) or anything (None)). "start": a chunk starts at the current token; "inside": the current
# token continues it; "end": the chunk that runs up to the previous token is complete (well formed).
_ANY = "BIOES"
_STRICT = {
    "IOB1": {"start": [("OB", "I", None), ("I", "I", False), ("IB", "B", True)],
             "inside": [("BI", "I", True)],
             "end": [("IB", "I", False), ("IB", "O", None), ("I", "B", None), ("B", "B", True)]},
    "IOB2": {"start": [(_ANY, "B", None)],
             "inside": [("BI", "I", True)],
             "end": [("BI", "OB", None), ("BI", "I", False)]},
    "IOBES": {"start": [(_ANY, "BS", None)],
              "inside": [("BI", "IE", True)],
              "end": [("SE", _ANY, None)]},
}


def _matches(patterns: list, prev: tuple[str, str], cur: tuple[str, str]) -> bool:
    return any(prev[0] in p and cur[0] in c and (same is None or (prev[1] == cur[1]) == same)
               for p, c, same in patterns)


def _strict_entities(tokens: list[tuple[str, str]], canonical: str) -> list[Entity]:
    """seqeval's ``Tokens.entities``: from each start, follow inside tokens; keep the chunk if it ends well."""
    rules = _STRICT[canonical]
    ext = [*tokens, ("O", "_")]
    chunks: list[Entity] = []
    prev, i = ("O", "_"), 0
    while i < len(ext):
        if _matches(rules["start"], prev, ext[i]):
            end = i + 1
            while _matches(rules["inside"], ext[end - 1], ext[end]):  # the final 'O' is never inside
                end += 1
            if _matches(rules["end"], ext[end - 1], ext[end]):
                chunks.append((ext[i][1], i, end - 1))
            i = end
        else:
            i += 1
        prev = ext[i - 1]
    return chunks


def get_entities(seq: Sequence[str], scheme: str = "IOB2", mode: str | None = "default") -> list[Entity]:
    """Extract entity chunks from one tag sequence, as seqeval does in the given mode.

    Args:
        seq: Tag strings such as ``['B-PER', 'I-PER', 'O']``.
        scheme: ``'IOB1'``, ``'IOB2'``, ``'IOBES'`` (or ``'BIOES'``), ``'BMES'`` or ``'BILOU'``.
        mode: ``'default'`` (or None) for seqeval's permissive decoding, ``'strict'`` for well-formed chunks
            only (see the module docstring).

    Returns:
        ``(type, start, end)`` triples with inclusive ``end``, in order.

    Raises:
        ValueError: For an unknown scheme or mode, or a tag whose prefix the scheme does not allow.

    Example:
        >>> get_entities(['B-PER', 'I-PER', 'O', 'I-LOC'])
        [('PER', 0, 1), ('LOC', 3, 3)]
        >>> get_entities(['B-PER', 'I-PER', 'O', 'I-LOC'], mode='strict')
        [('PER', 0, 1)]
    """
    allowed, rename, canonical = _scheme(scheme)
    mode = _mode(mode)
    tokens = []
    for tag in seq:
        prefix = _check_prefix(tag, allowed, scheme)
        # The two modes read the type as seqeval's two code paths do ('B--X': '-X' by default, 'X' strict).
        type_ = tag[1:].strip("-") if mode == "strict" else tag[1:].split("-", maxsplit=1)[-1]
        tokens.append((rename.get(prefix, prefix), type_ or "_"))
    return _strict_entities(tokens, canonical) if mode == "strict" else _default_entities(tokens)


def _mode(mode: str | None) -> str:
    mode = "default" if mode is None else mode
    if mode not in MODES:
        raise ValueError(f"mode must be 'default' (or None) or 'strict', got {mode!r}")
    return mode


def _prf(tp: int, n_pred: int, n_true: int) -> dict[str, float]:
    """Precision, recall and F1 from counts; undefined ratios are 0 (seqeval's default)."""
    p = tp / n_pred if n_pred else 0.0
    r = tp / n_true if n_true else 0.0
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0}


def chunk_f1(
    true_seqs: Sequence[Sequence[str]],
    pred_seqs: Sequence[Sequence[str]],
    scheme: str = "IOB2",
    mode: str | None = "default",
) -> dict:
    """Micro-averaged entity precision/recall/F1, equal to seqeval's in the same mode and scheme.

    An entity counts as correct only if type, start and end all match the gold one.

    Args:
        true_seqs: Gold tag sequences, one list of tag strings per sentence.
        pred_seqs: Predicted tag sequences, same shape as ``true_seqs``.
        scheme: ``'IOB1'``, ``'IOB2'``, ``'IOBES'`` (or ``'BIOES'``), ``'BMES'`` or ``'BILOU'``.
        mode: ``'default'`` (seqeval's default, conlleval-like) or ``'strict'`` (seqeval's
            ``mode="strict"``: only chunks well formed in ``scheme`` count, in gold and predictions alike).

    Returns:
        ``{'precision', 'recall', 'f1', 'per_type'}`` where ``per_type`` maps every entity
        type seen in gold or predictions to ``{'precision', 'recall', 'f1', 'support'}``
        (``support`` is the number of gold entities of that type).

    Raises:
        ValueError: If the number of sentences or any sentence length differs, or a tag
            is invalid for ``scheme``.
    """
    _mode(mode)
    if len(true_seqs) != len(pred_seqs):
        raise ValueError(f"got {len(true_seqs)} gold sentences but {len(pred_seqs)} predicted")
    gold: dict[str, set] = defaultdict(set)
    pred: dict[str, set] = defaultdict(set)
    for n, (t_seq, p_seq) in enumerate(zip(true_seqs, pred_seqs, strict=True)):
        if len(t_seq) != len(p_seq):
            raise ValueError(f"sentence {n}: gold has {len(t_seq)} tags, prediction {len(p_seq)}")
        for type_, start, end in get_entities(t_seq, scheme, mode):
            gold[type_].add((n, start, end))
        for type_, start, end in get_entities(p_seq, scheme, mode):
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
