"""MRCReader: SQuAD-style extractive reading comprehension (spec §5.5), one tokenisation for train and predict.

PALM tokenised documents differently in train (three character chunks around the answer) and predict (CJK and
whitespace splitting), and projected answers back with BERT's `_get_final_text` string heuristic (spec §17.29,
§17.30). Here every context is encoded ONCE by the HF `tokenizers` WordPiece pipeline, which reports for every
sub-token its character span in the ORIGINAL context (BertNormalizer's lower-casing, accent stripping and CJK
spacing keep alignments). Answers map to sub-tokens by character overlap, and predicted spans map back to exact
slices of the context, so train and predict see the same tokens and Chinese answers come out without spaces.

File format (SQuAD v1.1 / v2.0, CMRC2018; a `.zip` holding one `.json` also works)::

    {"data": [{"title": ..., "paragraphs": [{"context": "...", "qas": [
        {"id": "...", "question": "...", "answers": [{"text": "...", "answer_start": <char offset>}],
         "is_impossible": false}]}]}]}

or one question per record, as HuggingFace `datasets` exports `squad` / `squad_v2` (JSON lines, one JSON
array, or the Hub's `.parquet` files): `{"id": ..., "title": ..., "context": ..., "question": ...,
"answers": {"text": [...], "answer_start": [...]}}` (or `answers` as a list of `{"text", "answer_start"}`
objects); empty answers mark an impossible question, as in `squad_v2`. Consecutive records with the same context become one paragraph.

Windows follow BERT (spec §5.5): the query is truncated to `max_query_len` sub-tokens, a window holds at most
`max_len - len(query) - 3` document sub-tokens, the next window starts `min(window_len, doc_stride)` later, and
the last window is the first that reaches the end of the document. Sequence: `[CLS] query [SEP] doc [SEP]`,
segment ids 0 up to the first [SEP], then 1; in general the model's pair template with the query as the first
text (RoBERTa's `<s> query </s></s> doc </s>`, one more special token, so a window holds one document token
less). A token's character span starts after any space it begins with ("▁word", "Ġword"), so answers are exact
slices of the context with every tokenizer.

Yields the common backbone inputs plus, in train, `start_positions [B]` and `end_positions [B]` (int64 positions
in the sequence; 0 = [CLS] for "no answer in this window"), and in predict `unique_ids [B]` (int64).
"""

from __future__ import annotations

import json
import logging
import os
import unicodedata
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .base import Reader
from .collate import collate_common
from .parsing import DataError, json_array_objects, json_lines_objects, read_parquet_objects

logger = logging.getLogger("torchpalm")

FIRST_UNIQUE_ID = 1000000000


@dataclass
class MRCExample:
    """One question over one context.

    Attributes:
        qas_id: the question id from the file.
        question_text: the question.
        context: the original context string (answers are slices of it).
        answers: every gold answer text (empty for impossible questions).
        is_impossible: SQuAD 2.0 no-answer question.
        orig_answer_text: the answer used for training (the first one), None in predict or when impossible.
        start_char: character offset of that answer in `context` (-1 if none).
        end_char: exclusive end offset of that answer (-1 if none).
    """

    qas_id: str
    question_text: str
    context: str
    answers: list[str]
    is_impossible: bool = False
    orig_answer_text: str | None = None
    start_char: int = -1
    end_char: int = -1


@dataclass
class MRCFeature:
    """One window of one example, as fed to the model.

    Attributes:
        unique_id: id of the window (from 1000000000 up, in order).
        example_index: index of its example in `get_epoch_outputs()['examples']`.
        doc_span_index: index of the window among its example's windows.
        token_ids: `[CLS] query [SEP] doc_window [SEP]` ids, shape [n].
        segment_ids: 0 up to and including the first [SEP], 1 after, shape [n].
        doc_offset: sequence position of the first document token (`len(query) + 2`; + 3 with RoBERTa's `</s></s>`).
        doc_start: index of the window's first sub-token among all sub-tokens of the context.
        token_offsets: [n_doc, 2] character (start, end) in the context of each document token of the window;
            sequence position `p` holds document token `p - doc_offset`.
        token_is_max_context: [n_doc] bool, True where this window gives the token its best context (BERT's
            `min(left, right) + 0.01 * window_len` score; ties go to the earlier window).
        start_position: sequence position of the answer's first sub-token (0 = [CLS]: no answer; -1: predict).
        end_position: sequence position of the answer's last sub-token (as `start_position`).
    """

    unique_id: int
    example_index: int
    doc_span_index: int
    token_ids: np.ndarray
    segment_ids: np.ndarray
    doc_offset: int
    doc_start: int
    token_offsets: np.ndarray
    token_is_max_context: np.ndarray
    start_position: int = -1
    end_position: int = -1

    @property
    def num_doc_tokens(self) -> int:
        return len(self.token_offsets)

    @property
    def token_to_orig_map(self) -> dict[int, int]:
        """Sequence position -> index of the document sub-token in the whole context (PALM's field name)."""
        return {self.doc_offset + i: self.doc_start + i for i in range(self.num_doc_tokens)}


def doc_spans(num_tokens: int, max_tokens_for_doc: int, doc_stride: int) -> list[tuple[int, int]]:
    """BERT's sliding windows over a document of `num_tokens` sub-tokens, as (start, length) pairs.

    Each window takes `min(remaining, max_tokens_for_doc)` tokens; the next starts `min(length, doc_stride)`
    later; the first window that reaches the end is the last. An empty document gets one empty window, so
    every question has at least one feature to predict from.
    """
    spans: list[tuple[int, int]] = []
    start = 0
    while start < num_tokens:
        length = min(num_tokens - start, max_tokens_for_doc)
        spans.append((start, length))
        if start + length == num_tokens:
            break
        start += min(length, doc_stride)
    return spans or [(0, 0)]


def max_context_flags(spans: list[tuple[int, int]], num_tokens: int) -> list[np.ndarray]:
    """For every window, a bool array over its tokens: does this window give the token its best context?

    Score of token `p` in window `(start, length)`: `min(p - start, end - p) + 0.01 * length` with
    `end = start + length - 1`; the best window is the first with the highest score (BERT's
    `_check_is_max_context`). One running best per token, updated window by window over that window's own
    tokens only, so the work is the total window length and the memory one array over the document: linear in
    the context (a windows x tokens score table made a 1 MB context take minutes and gigabytes).
    """
    best_score = np.full(num_tokens, -np.inf)
    best_window = np.zeros(num_tokens, dtype=np.int64)
    for w, (start, length) in enumerate(spans):
        p = np.arange(start, start + length)
        score = np.minimum(p - start, start + length - 1 - p) + 0.01 * length
        better = score > best_score[start:start + length]  # strict: ties stay with the earlier window
        best_score[start:start + length][better] = score[better]
        best_window[start:start + length][better] = w
    return [best_window[start:start + length] == w for w, (start, length) in enumerate(spans)]


def answer_token_span(offsets: np.ndarray, start_char: int, end_char: int) -> tuple[int, int] | None:
    """First and last sub-token whose character span overlaps `[start_char, end_char)`; None if none does."""
    if len(offsets) == 0:
        return None
    overlap = np.nonzero((offsets[:, 0] < end_char) & (offsets[:, 1] > start_char))[0]
    if len(overlap) == 0:
        return None
    return int(overlap[0]), int(overlap[-1])


def trim_leading_spaces(context: str, offsets: np.ndarray) -> np.ndarray:
    """Moves each token's start past the white space it begins with: a Metaspace piece ("▁word") or a byte-level
    one ("Ġword") spans the space before its word, and an answer cut out from its start must not begin with it.
    A piece that is all space ends up empty (start = end) and so never overlaps an answer."""
    if len(offsets) == 0:
        return offsets
    for i, (start, end) in enumerate(offsets.tolist()):
        while start < end and context[start].isspace():
            start += 1
        offsets[i, 0] = start
    return offsets


def attach_combining_marks(context: str, offsets: np.ndarray) -> np.ndarray:
    """Extends token spans over the combining marks (Unicode category Mn) that directly follow them.

    Accent stripping (do_lower_case) deletes combining marks written as separate characters (decomposed
    accents, Hebrew points), so the sub-token before them stops short of them; an answer ending there would
    lose its final mark. Marks that a token already covers are left alone.
    """
    if context.isascii() or len(offsets) == 0:
        return offsets
    n, last = len(context), len(offsets) - 1
    for i, end in enumerate(offsets[:, 1].tolist()):
        limit = offsets[i + 1, 0] if i < last else n
        j = end
        while j < limit and unicodedata.category(context[j]) == "Mn":
            j += 1
        offsets[i, 1] = j
    return offsets


def read_squad_json(path: str) -> dict:
    """Parses a SQuAD-style JSON file (or a .zip holding exactly one .json); errors name the file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"data file not found: {path}")
    if path.lower().endswith(".parquet"):  # the Hub's SQuAD files: one question per row
        return squad_from_records(path, read_parquet_objects(path))
    where = path
    if path.endswith(".zip"):
        try:
            with zipfile.ZipFile(path) as zf:
                names = [n for n in zf.namelist() if n.endswith(".json") and not n.startswith("__MACOSX")]
                if len(names) != 1:
                    raise DataError(f"{path}: the archive must hold exactly one .json file, found {names}")
                raw = zf.read(names[0])
                where = f"{path}!{names[0]}"
        except zipfile.BadZipFile as e:
            raise DataError(f"{path}: not a valid zip archive ({e})") from None
    else:
        with open(path, "rb") as f:
            raw = f.read()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{where}: invalid UTF-8 at byte {e.start}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # more than one JSON value: one record per line
            return squad_from_records(where, json_lines_objects(where, enumerate(text.split("\n"), 1)))
        raise DataError(f"{where}:{e.lineno}: invalid JSON: {e.msg} (column {e.colno})") from None
    except RecursionError:
        raise DataError(f"{where}: JSON nested too deeply to parse (a SQuAD file is a few levels deep: data, "
                        f"paragraphs, qas, answers)") from None
    if isinstance(data, list):
        return squad_from_records(where, json_array_objects(where, text))
    if isinstance(data, dict) and "data" not in data and "context" in data:  # JSON lines with a single record
        return squad_from_records(where, [(1 + text[:len(text) - len(text.lstrip())].count("\n"), data)])
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise DataError(f"{where}: expected a SQuAD-style object with a 'data' list of articles, or one question "
                        f"per record ({{'context', 'question', 'answers'}}, as HuggingFace datasets exports SQuAD)")
    return data


def squad_from_records(where: str, records: list[tuple[int, object]]) -> dict:
    """SQuAD's nested {'data': [...]} from one-question records (HuggingFace `datasets`' flat SQuAD); a record
    whose context repeats the previous one's joins its paragraph."""
    articles: list[dict] = []
    for line_no, rec in records:
        if not (isinstance(rec, dict) and isinstance(rec.get("context"), str) and isinstance(rec.get("question"), str)):
            keys = list(rec)[:10] if isinstance(rec, dict) else type(rec).__name__
            raise DataError(f"{where}:{line_no}: expected a question record with 'context' and 'question' strings "
                            f"(and 'answers'), got {keys}")
        answers = rec.get("answers", [])
        if isinstance(answers, dict):  # {"text": [...], "answer_start": [...]}
            texts, starts = answers.get("text", []), answers.get("answer_start", [])
            if not (isinstance(texts, list) and isinstance(starts, list) and len(texts) == len(starts)):
                raise DataError(f"{where}:{line_no}: 'answers' must hold lists 'text' and 'answer_start' of the same "
                                f"length, got {json.dumps(answers, ensure_ascii=False)[:80]}")
            answers = [{"text": t, "answer_start": a} for t, a in zip(texts, starts, strict=True)]
        qa = {"id": str(rec.get("id", line_no)), "question": rec["question"], "answers": answers,
              "is_impossible": bool(rec.get("is_impossible", isinstance(answers, list) and not answers))}
        last = articles[-1]["paragraphs"][-1] if articles else None
        if last is not None and last["context"] == rec["context"]:
            last["qas"].append(qa)
        else:
            articles.append({"title": rec.get("title", ""), "paragraphs": [{"context": rec["context"], "qas": [qa]}]})
    if not articles:
        raise DataError(f"{where}: no question records")
    return {"data": articles}


class MRCReader(Reader):
    """Reads SQuAD-style JSON into BERT windows for extractive question answering.

    Args:
        vocab_path: vocabulary file.
        max_len: maximum sequence length, [CLS]/[SEP] included.
        max_query_len: the question is truncated to this many sub-tokens.
        doc_stride: how far the next window starts after the previous one (at most the window length).
        tokenizer: 'wordpiece', or 'bpe' for RoBERTa (`<s> query </s></s> doc </s>`; offsets without the
            leading space of a piece, so answers are exact slices of the context).
        lang: accepted for PALM's signature; one tokenisation serves every language (spaces are kept, because
            answers are character slices of the original context).
        seed: seed of the shuffling RNG.
        do_lower_case: lower-case and strip accents (True for uncased vocabularies).
        remove_noanswer: train: drop windows that do not contain the answer (else they point to [CLS]).
        phase: 'train' (labels, shuffled windows) or 'predict' (all windows in order, `unique_ids`).
        with_negative: train: keep SQuAD 2.0 impossible questions, every window pointing to [CLS]; without it
            they are dropped.
        skip_bad_examples: train: skip (and count) questions whose answer text is not at `answer_start`,
            instead of raising DataError.
    """

    def __init__(
        self,
        vocab_path: str | os.PathLike,
        max_len: int,
        max_query_len: int,
        doc_stride: int,
        tokenizer: str = "wordpiece",
        lang: str = "en",
        seed: int | None = None,
        do_lower_case: bool = False,
        remove_noanswer: bool = True,
        phase: str = "train",
        with_negative: bool = False,
        skip_bad_examples: bool = False,
    ):
        if max_query_len < 0:
            raise ValueError(f"max_query_len must be >= 0, got {max_query_len}")
        if doc_stride < 1:
            raise ValueError(f"doc_stride must be >= 1, got {doc_stride}")
        self._max_query_len = max_query_len
        self._doc_stride = doc_stride
        self._remove_noanswer = remove_noanswer
        self._with_negative = with_negative
        self._skip_bad_examples = skip_bad_examples
        self._mrc_examples: list[MRCExample] = []
        self._dataset: dict | None = None
        super().__init__(vocab_path, max_len, tokenizer=tokenizer, lang=lang, seed=seed,
                         do_lower_case=do_lower_case, phase=phase)
        specials = self._tokenizer.template.num_special_pair  # [CLS] q [SEP] d [SEP], or <s> q </s></s> d </s>
        if max_len - max_query_len - specials < 1:
            raise ValueError(f"max_len ({max_len}) leaves no room for the document after a query of up to "
                             f"max_query_len={max_query_len} tokens and {specials} special tokens")

    # ---- register protocol ----
    def _task_outputs(self):
        outs = {"token_ids": ([-1, -1], "int64")}
        if self._phase == "train":
            outs["start_positions"] = ([-1], "int64")
            outs["end_positions"] = ([-1], "int64")
        else:
            outs["unique_ids"] = ([-1], "int64")
        return outs

    def _all_outputs(self):
        outs = {**super()._all_outputs(), "unique_ids": ([-1], "int64")}
        if self._phase == "train":
            outs["start_positions"] = ([-1], "int64")
            outs["end_positions"] = ([-1], "int64")
        return outs

    def load_data(self, input_file, batch_size, num_epochs=None, file_format="json", shuffle_train=True):
        """Reads the file and computes every window once (see `Reader.load_data`); `num_examples` counts windows."""
        super().load_data(input_file, batch_size, num_epochs, file_format, shuffle_train)

    # ---- parsing ----
    def _parse(self, path: str, data: dict) -> tuple[list[MRCExample], dict[str, int]]:
        """Examples in file order; in train, validates the training answer of each question."""
        train = self._phase == "train"
        examples: list[MRCExample] = []
        counts = {"bad": 0, "impossible_dropped": 0}
        for a_i, article in enumerate(data["data"]):
            paragraphs = article.get("paragraphs") if isinstance(article, dict) else None
            if not isinstance(paragraphs, list):
                raise DataError(f"{path}: article {a_i} has no 'paragraphs' list")
            for p_i, paragraph in enumerate(paragraphs):
                where = f"{path}: article {a_i}, paragraph {p_i}"
                if not isinstance(paragraph, dict) or not isinstance(paragraph.get("context"), str):
                    raise DataError(f"{where}: missing the 'context' string")
                if not isinstance(paragraph.get("qas", []), list):
                    raise DataError(f"{where}: 'qas' must be a list")
                context = paragraph["context"]
                for qa in paragraph.get("qas", []):
                    if not isinstance(qa, dict) or "id" not in qa:
                        raise DataError(f"{where}: a question has no 'id'")
                    qid = str(qa["id"])
                    if not isinstance(qa.get("question"), str):
                        raise DataError(f"{path}: question {qid!r}: missing the 'question' string")
                    answers = qa.get("answers", [])
                    if not isinstance(answers, list) or not all(
                            isinstance(a, dict) and isinstance(a.get("text"), str) for a in answers):
                        raise DataError(f"{path}: question {qid!r}: 'answers' must be a list of "
                                        f"{{'text': str, 'answer_start': int}} objects")
                    ex = MRCExample(qid, qa["question"], context, [a["text"] for a in answers],
                                    is_impossible=bool(qa.get("is_impossible", False)))
                    if train:
                        if ex.is_impossible:
                            if not self._with_negative:
                                counts["impossible_dropped"] += 1
                                continue
                        elif not self._set_training_answer(ex, answers[0] if answers else None, path):
                            counts["bad"] += 1
                            continue
                    examples.append(ex)
        return examples, counts

    def _set_training_answer(self, ex: MRCExample, answer: dict | None, path: str) -> bool:
        """Checks the first answer against the context; False (skip) or DataError when it does not match."""
        if answer is None:
            problem = "has no answer (training needs one, or 'is_impossible': true)"
        else:
            start, text = answer.get("answer_start"), answer["text"]
            if not isinstance(start, int) or isinstance(start, bool):
                problem = f"answer_start must be an integer, got {start!r}"
            elif not text.strip():
                problem = f"the answer text {text!r} is empty"
            elif ex.context[start:start + len(text)] != text:
                found = ex.context[max(start, 0):max(start, 0) + len(text)]
                problem = (f"answer {text!r} is not at answer_start {start} "
                           f"(the context there reads {found!r})")
            else:
                ex.orig_answer_text, ex.start_char, ex.end_char = text, start, start + len(text)
                return True
        if self._skip_bad_examples:
            logger.debug("%s: question %r %s; skipped", path, ex.qas_id, problem)
            return False
        raise DataError(f"{path}: question {ex.qas_id!r}: {problem} "
                        f"(pass skip_bad_examples=True to skip such questions)")

    # ---- features ----
    def export_options(self) -> dict:
        return {**self._base_options(), "max_query_len": self._max_query_len, "doc_stride": self._doc_stride,
                "with_negative": self._with_negative}

    def _examples_from_inputs(self, inputs: list) -> list[dict]:
        """(question, context) pairs, or dicts with 'question' and 'context'; question ids are "1", "2", ..."""
        qas = []
        for n, item in enumerate(inputs, 1):
            if isinstance(item, dict):
                item = (item.get("question"), item.get("context"))
            if not (isinstance(item, Sequence) and len(item) == 2 and all(isinstance(x, str) for x in item)):
                raise TypeError(f"input {n}: expected a (question, context) pair of strings, got {item!r:.80}")
            qas.append({"paragraphs": [{"context": item[1], "qas": [{"id": str(n), "question": item[0]}]}]})
        self._dataset = {"data": qas}
        return self._encode_dataset("<inputs>")

    def _load_examples(self, path):
        self._dataset = read_squad_json(path)
        return self._encode_dataset(path)

    def _encode_dataset(self, path: str) -> list[MRCFeature]:
        examples, counts = self._parse(path, self._dataset)
        tok = self._tokenizer
        logger.info("converting examples to features...")
        # Each context once (paragraphs have several questions); the Rust encoder runs them in parallel.
        contexts = list(dict.fromkeys(ex.context for ex in examples))
        context_index = {c: i for i, c in enumerate(contexts)}
        docs = [(ids, attach_combining_marks(c, trim_leading_spaces(c, offsets)))
                for c, (ids, offsets) in zip(contexts, tok.encode_with_offsets(contexts))]
        queries = [ids[:self._max_query_len] for ids in tok.encode_batch([ex.question_text for ex in examples])]

        train = self._phase == "train"
        template = tok.template  # the model's pair: [CLS] q [SEP] d [SEP], <s> q </s></s> d </s>, ...
        n_special = template.num_special_pair
        features: list[MRCFeature] = []
        kept: list[MRCExample] = []
        windows_dropped = 0
        for ex, query in zip(examples, queries):
            doc_ids, offsets = docs[context_index[ex.context]]
            answer_span = None
            if train and not ex.is_impossible:
                answer_span = answer_token_span(offsets, ex.start_char, ex.end_char)
                if answer_span is None:
                    if not self._skip_bad_examples:
                        raise DataError(f"{path}: question {ex.qas_id!r}: the answer {ex.orig_answer_text!r} "
                                        f"covers no token of the context (pass skip_bad_examples=True to skip)")
                    counts["bad"] += 1
                    continue
            example_index = len(kept)
            doc_offset = template.pair_offsets(len(query))[1]
            spans = doc_spans(len(doc_ids), self._max_len - len(query) - n_special, self._doc_stride)
            flags = max_context_flags(spans, len(doc_ids))
            n_before = len(features)
            for span_index, ((start, length), is_max) in enumerate(zip(spans, flags)):
                s_pos = e_pos = -1
                if train:
                    s_pos = e_pos = 0
                    if answer_span is not None:
                        tok_start, tok_end = answer_span
                        if start <= tok_start and tok_end < start + length:
                            s_pos, e_pos = tok_start - start + doc_offset, tok_end - start + doc_offset
                        elif self._remove_noanswer:
                            windows_dropped += 1
                            continue
                token_ids, segment_ids = template.build(query, doc_ids[start:start + length], self._max_len)
                features.append(MRCFeature(
                    unique_id=FIRST_UNIQUE_ID + len(features), example_index=example_index,
                    doc_span_index=span_index, token_ids=token_ids.astype(np.int64), segment_ids=segment_ids,
                    doc_offset=doc_offset, doc_start=start, token_offsets=offsets[start:start + length],
                    token_is_max_context=is_max, start_position=s_pos, end_position=e_pos))
            if len(features) > n_before:
                kept.append(ex)
        self._mrc_examples = kept
        if counts["bad"]:
            logger.warning("%s: skipped %d question(s) with an unusable training answer (missing, empty, not at "
                           "its answer_start, or covering no token)", path, counts["bad"])
        if counts["impossible_dropped"]:
            logger.info("%s: dropped %d impossible question(s) (with_negative=False)", path,
                        counts["impossible_dropped"])
        logger.info("%s: %d questions -> %d features (windows)%s", path, len(kept), len(features),
                    f", {windows_dropped} windows without the answer dropped" if windows_dropped else "")
        return features

    def _collate(self, examples, rng):
        batch = collate_common([f.token_ids for f in examples], [f.segment_ids for f in examples],
                               self._tokenizer.pad_id)
        batch["unique_ids"] = torch.tensor([f.unique_id for f in examples], dtype=torch.int64)
        if self._phase == "train":
            batch["start_positions"] = torch.tensor([f.start_position for f in examples], dtype=torch.int64)
            batch["end_positions"] = torch.tensor([f.end_position for f in examples], dtype=torch.int64)
        return batch

    # ---- what the head and the evaluation need ----
    def get_epoch_outputs(self) -> dict[str, list]:
        """`{'examples': [MRCExample], 'features': [MRCFeature]}` for the MRC head's answer extraction."""
        if self._examples is None:
            raise RuntimeError("MRCReader: call load_data() before get_epoch_outputs()")
        return {"examples": self._mrc_examples, "features": self._examples}

    @property
    def examples_json(self) -> dict:
        """The loaded file as parsed (SQuAD-style `{'data': [...]}`), with every gold answer, for evaluation."""
        if self._dataset is None:
            raise RuntimeError("MRCReader: call load_data() first")
        return self._dataset

    @property
    def examples(self) -> list[MRCExample]:
        return self._mrc_examples

    @property
    def features(self) -> list[MRCFeature]:
        return list(self._examples or [])
