"""Where a model's special tokens go around one text or a pair: `[CLS] a [SEP] b [SEP]`, `<s> a </s></s> b </s>`.

An `InputTemplate` is what a Hugging Face tokenizer's post-processor says (`TemplateProcessing`,
`RobertaProcessing`, `BertProcessing`, none), read from its `tokenizer.json`: the special token ids and the
segment (token type) id of every part, for a single text and for a pair. Readers build every sequence with it,
truncating the texts first so that the whole sequence fits `max_len` (PALM's longest-first rule for pairs).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# A template part: (token id, segment id); the texts are the parts with these placeholder ids.
TEXT_A, TEXT_B = -1, -2
Part = tuple[int, int]


def truncate_pair(len_a: int, len_b: int, max_tokens: int) -> tuple[int, int]:
    """PALM/BERT longest-first truncation of a pair, in closed form.

    Repeatedly drops the last token of the longer sequence (of b when equal) until `len_a + len_b <=
    max_tokens`; returns the kept lengths.
    """
    excess = len_a + len_b - max_tokens
    if excess <= 0:
        return len_a, len_b
    # Trim the longer one down to the shorter's length first, then alternate (b first when equal).
    diff = abs(len_a - len_b)
    take = min(diff, excess)
    if len_a > len_b:
        len_a -= take
    else:
        len_b -= take
    excess -= take
    if excess > 0:
        len_b -= (excess + 1) // 2
        len_a -= excess // 2
    return len_a, len_b


@dataclass(frozen=True)
class InputTemplate:
    """The special tokens around one text (`single`) and a pair (`pair`), as (token id, segment id) parts with
    `TEXT_A` / `TEXT_B` standing for the texts (a before b)."""

    single: tuple[Part, ...]
    pair: tuple[Part, ...]

    def __post_init__(self):
        for name, parts, texts in (("single", self.single, [TEXT_A]), ("pair", self.pair, [TEXT_A, TEXT_B])):
            if [t for t, _ in parts if t < 0] != texts:
                raise ValueError(f"the {name} template must hold {' then '.join(['$A', '$B'][:len(texts)])} once "
                                 f"each, got {parts}")

    @classmethod
    def bert(cls, cls_id: int, sep_id: int, pair_separators: int = 1, pair_segments: bool = True) -> InputTemplate:
        """`[CLS] a [SEP]` and `[CLS] a [SEP] b [SEP]` (`pair_separators=2`: RoBERTa's `<s> a </s></s> b </s>`);
        segment 1 from b on when `pair_segments` (BERT), else 0 throughout (RoBERTa)."""
        b_seg = 1 if pair_segments else 0
        return cls(single=((cls_id, 0), (TEXT_A, 0), (sep_id, 0)),
                   pair=((cls_id, 0), (TEXT_A, 0), *[(sep_id, 0)] * pair_separators, (TEXT_B, b_seg), (sep_id, b_seg)))

    @classmethod
    def from_post_processor(cls, spec: dict | None, where: str) -> InputTemplate:
        """The template of a `tokenizer.json` post-processor (its JSON object; None: no special tokens).

        Raises:
            ValueError: naming `where` for a post-processor that adds no recognisable template.
        """
        if spec is None or spec.get("type") == "ByteLevel":  # ByteLevel only trims offsets
            return cls(single=((TEXT_A, 0),), pair=((TEXT_A, 0), (TEXT_B, 1)))
        kind = spec.get("type")
        if kind == "Sequence":  # e.g. [ByteLevel (offsets), TemplateProcessing (specials)]: the last that adds any
            templates = [cls.from_post_processor(p, where) for p in spec.get("processors", [])]
            with_specials = [t for t in templates if len(t.pair) > 2]
            return with_specials[-1] if with_specials else cls.from_post_processor(None, where)
        if kind in ("RobertaProcessing", "BertProcessing"):
            (_, cls_id), (_, sep_id) = spec["cls"], spec["sep"]
            roberta = kind == "RobertaProcessing"
            return cls.bert(cls_id, sep_id, pair_separators=2 if roberta else 1, pair_segments=not roberta)
        if kind == "TemplateProcessing":
            specials = spec.get("special_tokens", {})

            def parts(items: list[dict]) -> tuple[Part, ...]:
                out: list[Part] = []
                for item in items:
                    if "Sequence" in item:
                        seq = item["Sequence"]
                        out.append((TEXT_A if seq["id"] == "A" else TEXT_B, int(seq.get("type_id", 0))))
                    else:
                        tok = item["SpecialToken"]
                        if tok["id"] not in specials:
                            raise ValueError(f"{where}: the post-processor's template names {tok['id']!r}, which its "
                                             f"special_tokens do not define")
                        out.extend((int(i), int(tok.get("type_id", 0))) for i in specials[tok["id"]]["ids"])
                return tuple(out)

            try:
                return cls(single=parts(spec["single"]), pair=parts(spec["pair"]))
            except ValueError as e:
                raise ValueError(f"{where}: post-processor TemplateProcessing: {e}") from None
        raise ValueError(f"{where}: post-processor {kind!r} is not understood (expected TemplateProcessing, "
                         f"RobertaProcessing, BertProcessing, ByteLevel or a Sequence of them)")

    @property
    def num_special(self) -> int:
        """Special tokens around one text."""
        return len(self.single) - 1

    @property
    def num_special_pair(self) -> int:
        """Special tokens around a pair."""
        return len(self.pair) - 2

    @property
    def single_offset(self) -> int:
        """Position of a single text's first token (the special tokens before it)."""
        return [t for t, _ in self.single].index(TEXT_A)

    def pair_offsets(self, len_a: int) -> tuple[int, int]:
        """Positions of the first tokens of a and of b in a pair whose a keeps `len_a` tokens."""
        ids = [t for t, _ in self.pair]
        a, b = ids.index(TEXT_A), ids.index(TEXT_B)
        return a, b - 1 + len_a

    def build(self, ids_a: Sequence[int], ids_b: Sequence[int] | None, max_len: int) -> tuple[np.ndarray, np.ndarray]:
        """The sequence of one text or a pair, truncated to `max_len` (pairs longest-first, b first when equal):
        (token ids `[n]`, segment ids `[n]`), both int64."""
        return self.arrange(ids_a, ids_b, max_len)

    def arrange(self, values_a: Sequence, values_b: Sequence | None, max_len: int, special=None
                ) -> tuple[np.ndarray, np.ndarray]:
        """`build` for any per-token values (e.g. word-start flags): the texts' values truncated and placed as
        their tokens would be, `special` at the special tokens (None: their ids). Returns (values, segments)."""
        if values_b is None:
            texts, parts = {TEXT_A: list(values_a[: max(max_len - self.num_special, 0)])}, self.single
        else:
            la, lb = truncate_pair(len(values_a), len(values_b), max(max_len - self.num_special_pair, 0))
            texts, parts = {TEXT_A: list(values_a[:la]), TEXT_B: list(values_b[:lb])}, self.pair
        values: list = []
        segments: list[int] = []
        for token, segment in parts:
            seq = texts[token] if token < 0 else (token if special is None else special,)
            values.extend(seq)
            segments.extend([segment] * len(seq))
        return np.asarray(values, dtype=np.int64), np.asarray(segments, dtype=np.int64)
