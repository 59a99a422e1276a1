"""MRC head (spec §8.4): start/end logits over the sequence, and BERT's n-best answer extraction.

Two fixes over PALM: padding positions are masked out of the softmax (spec §17.6), and the answer text is the
exact slice of the original context between the first character of the start token and the last character of
the end token (the reader keeps character offsets), instead of BERT's `_get_final_text` re-alignment; answers
are therefore exact for Chinese too, without inserted spaces (§17.30). `max_ans_len` defaults to 30 (§17.35).
"""

from __future__ import annotations

import collections
import json
import logging
import math
import os

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .base import Head, truncated_normal_

logger = logging.getLogger("torchpalm")

# Logit given to padding positions: exp() of it underflows to exactly 0 in float32, and it stays finite so
# the logits remain printable JSON.
PAD_LOGIT = -1e9

_Candidate = collections.namedtuple("_Candidate", "feature_index start end start_logit end_logit")


class MRC(Head):
    """Extractive question answering: `Linear(H, 2)` on every token gives start and end logits.

    Args:
        max_query_len: kept for PALM's signature (the reader truncates queries).
        input_dim: H, the backbone's hidden size.
        pred_output_path: directory for the prediction files when `epoch_postprocess` gets no `output_dir`.
        verbose: log the questions that end with no valid span.
        with_negative: SQuAD 2.0: consider the null answer ([CLS]) and write `null_odds.json`.
        do_lower_case: kept for PALM's signature; answers are slices of the original context, so case never
            needs to be restored.
        max_ans_len: longest answer, in sub-tokens.
        null_score_diff_threshold: with `with_negative`, predict "" when
            `null_score - best_non_null_score > threshold`.
        n_best_size: start/end candidates per window, and length of the n-best lists.
        phase: 'train' or 'predict'.
        param_initializer_range: std of the truncated-normal weight init.

    Inputs: backbone `encoder_outputs [B, L, H]`; batch `input_mask [B, L]` and, in train, `start_positions [B]`
    and `end_positions [B]`, in predict `unique_ids [B]`.
    Outputs: `start_logits [B, L]`, `end_logits [B, L]` (padding set to -1e9), `unique_ids [B]` when given, and
    `loss = (CE(start) + CE(end)) / 2` when the positions are given.
    """

    def __init__(self, max_query_len: int, input_dim: int, pred_output_path: str | None = None,
                 verbose: bool = False, with_negative: bool = False, do_lower_case: bool = False,
                 max_ans_len: int = 30, null_score_diff_threshold: float = 0.0, n_best_size: int = 20,
                 phase: str = "train", param_initializer_range: float = 0.02):
        super().__init__(phase)
        if max_ans_len is None or max_ans_len < 1:
            raise ValueError(f"max_ans_len must be a positive number of sub-tokens, got {max_ans_len!r}")
        if n_best_size < 1:
            raise ValueError(f"n_best_size must be >= 1, got {n_best_size}")
        self.max_query_len, self.input_dim = max_query_len, input_dim
        self.pred_output_path, self.verbose = pred_output_path, verbose
        self.with_negative, self.do_lower_case = with_negative, do_lower_case
        self.max_ans_len, self.n_best_size = int(max_ans_len), int(n_best_size)
        self.null_score_diff_threshold = float(null_score_diff_threshold)
        self.param_initializer_range = param_initializer_range
        self.cls_squad_out = nn.Linear(input_dim, 2)
        truncated_normal_(self.cls_squad_out.weight, param_initializer_range)
        nn.init.zeros_(self.cls_squad_out.bias)
        self.train(phase == "train")

    def config(self):
        return {"max_query_len": self.max_query_len, "input_dim": self.input_dim,
                "pred_output_path": self.pred_output_path, "verbose": self.verbose,
                "with_negative": self.with_negative, "do_lower_case": self.do_lower_case,
                "max_ans_len": self.max_ans_len, "null_score_diff_threshold": self.null_score_diff_threshold,
                "n_best_size": self.n_best_size, "param_initializer_range": self.param_initializer_range}

    @property
    def inputs_attrs(self):
        reader = {"input_mask": ([-1, -1], "int64")}
        if self._phase == "train":
            reader.update(start_positions=([-1], "int64"), end_positions=([-1], "int64"))
        else:
            reader["unique_ids"] = ([-1], "int64")
        return {"reader": reader, "backbone": {"encoder_outputs": ([-1, -1, self.input_dim], "float32")}}

    @property
    def outputs_attr(self):
        if self._phase == "train":
            return {"loss": ([], "float32")}
        return {"start_logits": ([-1, -1], "float32"), "end_logits": ([-1, -1], "float32"),
                "unique_ids": ([-1], "int64")}

    @property
    def epoch_inputs_attrs(self):
        return {"reader": {"examples": None, "features": None}}

    def check_reader(self, reader):
        if self._phase == "predict" and not hasattr(reader, "get_epoch_outputs"):
            raise TypeError(f"MRC predict needs a reader with get_epoch_outputs() (an MRCReader), "
                            f"got {type(reader).__name__}")

    def forward(self, backbone_outputs, batch):
        logits = self.cls_squad_out(backbone_outputs["encoder_outputs"]).float()  # [B, L, 2]
        start_logits, end_logits = logits.unbind(-1)  # [B, L] each
        mask = batch.get("input_mask")
        if mask is not None:
            pad = (mask.reshape(start_logits.shape) == 0)  # PALM's [B, L, 1] float mask works too
            start_logits = start_logits.masked_fill(pad, PAD_LOGIT)
            end_logits = end_logits.masked_fill(pad, PAD_LOGIT)
        out = {"start_logits": start_logits, "end_logits": end_logits}
        if "unique_ids" in batch:
            out["unique_ids"] = batch["unique_ids"]
        if "start_positions" in batch and "end_positions" in batch:
            out["loss"] = (F.cross_entropy(start_logits, batch["start_positions"])
                           + F.cross_entropy(end_logits, batch["end_positions"])) / 2
            out["loss_count"] = start_logits.new_full((), start_logits.size(0))
        return out

    def export_output(self, backbone_outputs, batch):
        """Start and end logits stacked as [B, L, 2] (padding positions at `PAD_LOGIT`)."""
        out = self(backbone_outputs, batch)
        return torch.stack([out["start_logits"], out["end_logits"]], dim=-1)

    def batch_postprocess(self, outputs):
        if "unique_ids" not in outputs:
            raise KeyError("MRC.batch_postprocess needs 'unique_ids' in the outputs (register the predict reader "
                           "with phase='predict')")
        for uid, start, end in zip(outputs["unique_ids"], outputs["start_logits"], outputs["end_logits"]):
            self._results.append((int(uid), np.array(start, dtype=np.float32), np.array(end, dtype=np.float32)))

    def epoch_postprocess(self, post_inputs, output_dir=None):
        """Extracts the answers of the epoch's examples; writes the files to `output_dir` (or
        `pred_output_path`) when given; returns `{qas_id: answer_text}`."""
        reader_out = (post_inputs or {}).get("reader")
        if not reader_out or "examples" not in reader_out or "features" not in reader_out:
            raise ValueError("MRC.epoch_postprocess needs {'reader': reader.get_epoch_outputs()} (the examples and "
                             "features of the predict reader)")
        results, self._results = self._results, []
        predictions, nbest, null_odds = extract_answers(
            reader_out["examples"], reader_out["features"], results, n_best_size=self.n_best_size,
            max_ans_len=self.max_ans_len, with_negative=self.with_negative,
            null_score_diff_threshold=self.null_score_diff_threshold, verbose=self.verbose)
        output_dir = output_dir if output_dir is not None else self.pred_output_path
        if output_dir is not None:
            write_predictions(output_dir, predictions, nbest, null_odds if self.with_negative else None)
        return predictions


def _softmax(scores: list[float]) -> list[float]:
    if not scores:
        return []
    top = max(scores)
    exps = [math.exp(s - top) for s in scores]
    total = sum(exps)
    return [x / total for x in exps]


def _top_indices(logits: np.ndarray, n: int) -> np.ndarray:
    """Indices of the n largest values, largest first, ties in index order (as BERT's stable sort)."""
    return np.argsort(-logits, kind="stable")[:n]


def extract_answers(examples: list, features: list, results: list[tuple[int, np.ndarray, np.ndarray]],
                    n_best_size: int = 20, max_ans_len: int = 30, with_negative: bool = False,
                    null_score_diff_threshold: float = 0.0, verbose: bool = False
                    ) -> tuple[dict[str, str], dict[str, list[dict]], dict[str, float]]:
    """BERT's n-best answer selection (`write_predictions`, spec §8.4) with exact context slices as answers.

    Args:
        examples: `MRCExample`s (need `qas_id`, `context`).
        features: `MRCFeature`s (need `unique_id`, `example_index`, `token_ids`, `doc_offset`, `token_offsets`,
            `token_is_max_context`).
        results: `(unique_id, start_logits [L'], end_logits [L'])` per window, `L' >= len(token_ids)`.
        n_best_size: start and end candidates per window, and the n-best list length.
        max_ans_len: longest answer in sub-tokens (`e - s + 1`).
        with_negative: consider the null answer (the [CLS] score of the window with the lowest one).
        null_score_diff_threshold: predict "" when `null - best_non_null > threshold` (with `with_negative`).
        verbose: log the examples that have no valid span.

    Returns:
        `(predictions {qas_id: text}, nbest {qas_id: [{text, probability, start_logit, end_logit}]},
        null_odds {qas_id: null - best_non_null}` (empty without `with_negative`)). Examples without any
        result (not predicted) are left out.
    """
    by_uid = {uid: (start, end) for uid, start, end in results}
    per_example: dict[int, list] = collections.defaultdict(list)
    for f in features:
        if f.unique_id in by_uid:
            per_example[f.example_index].append(f)
    predictions: dict[str, str] = {}
    nbest_json: dict[str, list[dict]] = {}
    null_odds: dict[str, float] = {}
    for example_index, example in enumerate(examples):
        feats = per_example.get(example_index)
        if not feats:
            continue
        candidates: list[_Candidate] = []
        score_null, null_feature, null_start, null_end = math.inf, 0, 0.0, 0.0
        for fi, f in enumerate(feats):
            n = len(f.token_ids)
            start_logits, end_logits = by_uid[f.unique_id]
            start_logits = np.asarray(start_logits[:n], dtype=np.float64)
            end_logits = np.asarray(end_logits[:n], dtype=np.float64)
            if with_negative:
                null = start_logits[0] + end_logits[0]
                if null < score_null:
                    score_null, null_feature = null, fi
                    null_start, null_end = float(start_logits[0]), float(end_logits[0])
            doc_lo, doc_hi = f.doc_offset, f.doc_offset + len(f.token_offsets)
            for s in _top_indices(start_logits, n_best_size):
                if not (doc_lo <= s < doc_hi) or not f.token_is_max_context[s - doc_lo]:
                    continue
                for e in _top_indices(end_logits, n_best_size):
                    if not (doc_lo <= e < doc_hi) or e < s or e - s + 1 > max_ans_len:
                        continue
                    candidates.append(_Candidate(fi, int(s), int(e), float(start_logits[s]), float(end_logits[e])))
        if with_negative:
            candidates.append(_Candidate(null_feature, 0, 0, null_start, null_end))
        # Stable sort, as Python's sorted(reverse=True): equal scores keep their insertion order.
        candidates.sort(key=lambda c: c.start_logit + c.end_logit, reverse=True)

        nbest: list[tuple[str, float, float]] = []
        seen: set[str] = set()
        for c in candidates:
            if len(nbest) >= n_best_size:
                break
            if c.start > 0:
                f = feats[c.feature_index]
                char_start = int(f.token_offsets[c.start - f.doc_offset][0])
                char_end = int(f.token_offsets[c.end - f.doc_offset][1])
                text = example.context[char_start:char_end]
            else:
                text = ""
            if text in seen:
                continue
            seen.add(text)
            nbest.append((text, c.start_logit, c.end_logit))
        if with_negative:
            if "" not in seen:
                nbest.append(("", null_start, null_end))
            if len(nbest) == 1:  # only the null answer: BERT adds a placeholder so a non-null entry exists
                nbest.insert(0, ("empty", 0.0, 0.0))
        if not nbest:
            if verbose:
                logger.info("question %s: no valid answer span", example.qas_id)
            nbest.append(("empty", 0.0, 0.0))

        probs = _softmax([s + e for _, s, e in nbest])
        nbest_json[example.qas_id] = [
            {"text": t, "probability": p, "start_logit": s, "end_logit": e}
            for (t, s, e), p in zip(nbest, probs)]
        if not with_negative:
            predictions[example.qas_id] = nbest[0][0]
            continue
        best_non_null = next(entry for entry in nbest if entry[0])
        diff = float(score_null - best_non_null[1] - best_non_null[2])
        null_odds[example.qas_id] = diff
        predictions[example.qas_id] = "" if diff > null_score_diff_threshold else best_non_null[0]
    return predictions, nbest_json, null_odds


def write_predictions(output_dir: str, predictions: dict, nbest: dict, null_odds: dict | None = None) -> None:
    """Writes predictions.json, nbest_predictions.json and (when given) null_odds.json, UTF-8, indent 4."""
    os.makedirs(output_dir, exist_ok=True)
    files = [("predictions", "predictions.json", predictions), ("nbest", "nbest_predictions.json", nbest)]
    if null_odds is not None:
        files.append(("null odds", "null_odds.json", null_odds))
    for what, name, obj in files:
        path = os.path.join(output_dir, name)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=4, ensure_ascii=False)
            f.write("\n")
        logger.info("Writing %s to: %s", what, path)
