"""An independent, pure-Python port of PaddlePALM's FullTokenizer (spec §6), used only as a test reference."""

from __future__ import annotations

import unicodedata

NEVER_SPLIT = {"[UNK]", "[SEP]", "[PAD]", "[CLS]", "[MASK]"}


def _is_whitespace(c: str) -> bool:
    return c in " \t\n\r" or unicodedata.category(c) == "Zs"


def _is_control(c: str) -> bool:
    if c in "\t\n\r":
        return False
    return unicodedata.category(c).startswith("C")


def _is_punctuation(c: str) -> bool:
    cp = ord(c)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(c).startswith("P")


def _is_cjk(cp: int) -> bool:
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF
            or 0x2A700 <= cp <= 0x2B73F or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF
            or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F)


def basic_tokenize(text: str, do_lower_case: bool) -> list[str]:
    cleaned = []
    for c in text:
        if ord(c) == 0 or ord(c) == 0xFFFD or _is_control(c):
            continue
        cleaned.append(" " if _is_whitespace(c) else c)
    text = "".join(f" {c} " if _is_cjk(ord(c)) else c for c in "".join(cleaned))
    out = []
    for token in text.split():
        if token in NEVER_SPLIT:
            out.append(token)
            continue
        if do_lower_case:
            token = "".join(c for c in unicodedata.normalize("NFD", token.lower()) if unicodedata.category(c) != "Mn")
        pieces, current = [], []
        for c in token:
            if _is_punctuation(c):
                if current:
                    pieces.append("".join(current))
                    current = []
                pieces.append(c)
            else:
                current.append(c)
        if current:
            pieces.append("".join(current))
        out.extend(pieces)
    return " ".join(out).split()


def wordpiece(token: str, vocab: dict[str, int], max_chars: int = 100) -> list[str]:
    if len(token) > max_chars:
        return ["[UNK]"]
    pieces, start = [], 0
    while start < len(token):
        end, found = len(token), None
        while start < end:
            piece = token[start:end] if start == 0 else "##" + token[start:end]
            if piece in vocab:
                found = piece
                break
            end -= 1
        if found is None:
            return ["[UNK]"]
        pieces.append(found)
        start = end
    return pieces


def full_tokenize(text: str, vocab: dict[str, int], do_lower_case: bool) -> list[int]:
    return [vocab[p] for t in basic_tokenize(text, do_lower_case) for p in (
        [t] if t in NEVER_SPLIT else wordpiece(t, vocab))]
