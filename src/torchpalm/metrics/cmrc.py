"""CMRC 2018 exact match and F1 ("Evaluation script for CMRC 2018, version v5").

This is the scorer PaddlePALM's ``examples/mrc/evaluate.py`` uses: answers are split into
Chinese characters, punctuation marks and English/number words, F1 is computed from the
longest common contiguous run of segments, and EM compares the answers with punctuation
and spaces removed. Scores are fractions in [0, 1].
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence

from torchpalm.metrics.squad import Dataset, load_squad_articles

logger = logging.getLogger(__name__)

# The official list, kept as is: the two-character '……' never equals a single character.
_SP_CHARS = frozenset(
    ["-", ":", "_", "*", "^", "/", "\\", "~", "`", "+", "=", "，", "。", "：", "？", "！", "“", "”",
     "；", "’", "《", "》", "……", "·", "、", "「", "」", "（", "）", "－", "～", "『", "』", " "]
)  # fmt: skip
_CJK = re.compile(r"[\u4e00-\u9fa5]")

# NLTKWordTokenizer (nltk.word_tokenize, NLTK 3.8) regexes, applied in this order.
_STARTING_QUOTES = [
    (re.compile(r"([«“‘„]|[`]+)"), r" \1 "),
    (re.compile(r'^"'), r"``"),
    (re.compile(r"(``)"), r" \1 "),
    (re.compile(r"([ \(\[{<])(\"|\'{2})"), r"\1 `` "),
    (re.compile(r"(?i)(\')(?!re|ve|ll|m|t|s|d|n)(\w)\b"), r"\1 \2"),
]
_PUNCTUATION = [
    (re.compile(r'([^\.])(\.)([\]\)}>"\'»”’ ]*)\s*$'), r"\1 \2 \3 "),
    (re.compile(r"([:,])([^\d])"), r" \1 \2"),
    (re.compile(r"([:,])$"), r" \1 "),
    (re.compile(r"\.{2,}"), r" \g<0> "),
    (re.compile(r"[;@#$%&]"), r" \g<0> "),
    (re.compile(r'([^\.])(\.)([\]\)}>"\']*)\s*$'), r"\1 \2\3 "),
    (re.compile(r"[?!]"), r" \g<0> "),
    (re.compile(r"([^'])' "), r"\1 ' "),
    (re.compile(r"[*]"), r" \g<0> "),
    (re.compile(r"[\]\[\(\)\{\}\<\>]"), r" \g<0> "),  # parentheses and brackets
    (re.compile(r"--"), r" -- "),  # double dash
]
_ENDING_QUOTES = [
    (re.compile(r"([»”’])"), r" \1 "),
    (re.compile(r"''"), " '' "),
    (re.compile(r'"'), " '' "),
    (re.compile(r"([^' ])('[sS]|'[mM]|'[dD]|') "), r"\1 \2 "),
    (re.compile(r"([^' ])('ll|'LL|'re|'RE|'ve|'VE|n't|N'T) "), r"\1 \2 "),
]
_CONTRACTIONS = [
    re.compile(p)
    for p in (
        r"(?i)\b(can)(?#X)(not)\b",
        r"(?i)\b(d)(?#X)('ye)\b",
        r"(?i)\b(gim)(?#X)(me)\b",
        r"(?i)\b(gon)(?#X)(na)\b",
        r"(?i)\b(got)(?#X)(ta)\b",
        r"(?i)\b(lem)(?#X)(me)\b",
        r"(?i)\b(more)(?#X)('n)\b",
        r"(?i)\b(wan)(?#X)(na)(?=\s)",
        r"(?i) ('t)(?#X)(is)\b",
        r"(?i) ('t)(?#X)(was)\b",
    )
]


def _word_tokenize(text: str) -> list[str]:
    """Regex port of ``nltk.word_tokenize`` (the NLTK Treebank-style word tokenizer).

    It splits off punctuation such as ``, . ; ? ! ' " ( )`` (a period only at the end,
    commas not between digits) and clitics such as ``'s``, ``n't``, ``'ll``. NLTK first
    runs the Punkt sentence splitter, which needs trained data that is not available
    here; this port treats the whole text as one sentence. That is exact for the
    whitespace-free runs :func:`mixed_segmentation` passes in (the space is a split
    character there), since Punkt only breaks sentences at whitespace.
    """
    for pattern, repl in _STARTING_QUOTES + _PUNCTUATION:
        text = pattern.sub(repl, text)
    text = f" {text} "
    for pattern, repl in _ENDING_QUOTES:
        text = pattern.sub(repl, text)
    for pattern in _CONTRACTIONS:
        text = pattern.sub(r" \1 \2 ", text)
    return text.split()


def mixed_segmentation(text: str, rm_punc: bool = False) -> list[str]:
    """Split mixed Chinese/English text into segments like the CMRC 2018 script.

    The text is lower-cased and stripped. Every CJK character (``[\\u4e00-\\u9fa5]``) and
    every punctuation mark of the official list (the ASCII space included) becomes its own
    segment; maximal runs of other characters are tokenised with ``nltk.word_tokenize`` in
    the original script and with the regex port :func:`_word_tokenize` here (NLTK and its
    data are not required).

    Args:
        text: The answer text.
        rm_punc: Drop the listed punctuation marks (they then do not split runs either, so
            ``'ab cd'`` yields the single run ``'abcd'``, as in the original).

    Returns:
        The list of segments.
    """
    segs: list[str] = []
    run = ""
    for ch in text.lower().strip():
        if rm_punc and ch in _SP_CHARS:
            continue
        if _CJK.match(ch) or ch in _SP_CHARS:
            if run:
                segs.extend(_word_tokenize(run))
                run = ""
            segs.append(ch)
        else:
            run += ch
    if run:
        segs.extend(_word_tokenize(run))
    return segs


def remove_punctuation(text: str) -> str:
    """Lower-case and strip ``text``, then delete the listed punctuation marks and spaces."""
    return "".join(ch for ch in text.lower().strip() if ch not in _SP_CHARS)


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common contiguous run of ``a`` and ``b``."""
    best = 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0] * (len(b) + 1)
        for j, y in enumerate(b):
            if x == y:
                cur[j + 1] = prev[j] + 1
                best = max(best, cur[j + 1])
        prev = cur
    return best


def _golds(golds: str | Sequence[str]) -> list[str]:
    return [golds] if isinstance(golds, str) else list(golds)


def cmrc_f1(pred: str, golds: str | Sequence[str]) -> float:
    """CMRC 2018 F1 of one prediction, maximised over the gold answers.

    With ``l`` the longest common contiguous run of segments (punctuation removed),
    ``P = l / len(pred_segments)``, ``R = l / len(gold_segments)`` and ``F1 = 2PR/(P+R)``;
    ``l == 0`` scores 0.

    Args:
        pred: The predicted answer.
        golds: One gold answer or a list of them.

    Returns:
        The F1 in [0, 1] (0.0 for an empty gold list).
    """
    pred_segs = mixed_segmentation(pred, rm_punc=True)
    best = 0.0
    for gold in _golds(golds):
        gold_segs = mixed_segmentation(gold, rm_punc=True)
        lcs = _lcs_length(gold_segs, pred_segs)
        if lcs:
            precision, recall = lcs / len(pred_segs), lcs / len(gold_segs)
            best = max(best, 2 * precision * recall / (precision + recall))
    return best


def cmrc_exact_match(pred: str, golds: str | Sequence[str]) -> float:
    """1.0 if ``pred`` equals a gold answer after :func:`remove_punctuation`, else 0.0."""
    pred = remove_punctuation(pred)
    return float(any(remove_punctuation(g) == pred for g in _golds(golds)))


def cmrc_em_f1(dataset_or_json_path: Dataset, predictions: Mapping[str, str]) -> dict[str, float | int]:
    """Score predictions on a CMRC 2018 (SQuAD-style) dataset like PaddlePALM's evaluate.py.

    Question ids are stripped before the lookup. A question without a prediction scores 0
    and is logged as ``Unanswered question: <id>``.

    Args:
        dataset_or_json_path: Parsed JSON (dict with ``'data'``), its ``data`` list, or a
            path to the ``.json`` file.
        predictions: Maps question id to the predicted answer string.

    Returns:
        ``exact_match`` (PALM's ``em_sroce``), ``f1`` and ``average`` (their mean) as
        fractions in [0, 1], plus ``total`` questions and ``unanswered`` ones.

    Raises:
        ValueError: If the dataset contains no questions.
    """
    em = f1 = 0.0
    total = unanswered = 0
    for article in load_squad_articles(dataset_or_json_path):
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                total += 1
                qid = qa["id"].strip()
                if qid not in predictions:
                    logger.warning("Unanswered question: %s", qid)
                    unanswered += 1
                    continue
                golds = [a["text"] for a in qa["answers"]]
                f1 += cmrc_f1(predictions[qid], golds)
                em += cmrc_exact_match(predictions[qid], golds)
    if not total:
        raise ValueError("the dataset contains no questions")
    em, f1 = em / total, f1 / total
    return {"exact_match": em, "f1": f1, "average": (em + f1) * 0.5, "total": total, "unanswered": unanswered}
