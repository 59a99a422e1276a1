"""Toy labelled sentences for the unit tests: a classification TSV (label 1 iff the sentence contains "good")
and a tagging TSV (PALM's `\\x02`-joined words and tags, "good" tagged B-POS)."""

from __future__ import annotations

import numpy as np

WORDS = ["good", "bad", "movie", "plot", "actor", "film", "story", "great", "awful", "scene"]


def sentences(n: int, seed: int = 0, every: int = 2) -> list[tuple[int, list[str]]]:
    """(label, words): label 1 iff the sentence contains "good", which all but every `every`-th one do."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        words = [str(w) for w in rng.choice(WORDS[1:], size=int(rng.integers(2, 6)))]
        if i % every:
            words.insert(int(rng.integers(0, len(words) + 1)), "good")
        out.append((int(i % every != 0), words))
    return out


def write_cls(path, n, seed=0, every=2) -> str:
    rows = ["label\ttext_a"] + [f"{label}\t{' '.join(s)}" for label, s in sentences(n, seed, every)]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return str(path)


def write_tags(path, n, seed=0) -> str:
    rows = ["text_a\tlabel"]
    for _, s in sentences(n, seed):
        rows.append("\x02".join(s) + "\t" + "\x02".join("B-POS" if w == "good" else "O" for w in s))
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return str(path)
