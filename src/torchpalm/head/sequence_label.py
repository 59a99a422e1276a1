"""SequenceLabel head (spec §8.3): word emissions from the encoder, a linear-chain CRF (or softmax) on top.

Per word (not per sub-token, spec §17.10): the encoder state of each word's first sub-token (`word_starts`
from `SequenceLabelReader`) goes through dropout and Linear(H, C) to give emissions [B, W, C]. Training
minimises the CRF negative log-likelihood (mean over sentences, as PALM) or, with `use_crf=False`, the token
cross-entropy; prediction is Viterbi decoding (PALM trained a CRF and then predicted by argmax, §17.4) or argmax.

Differences from PALM, on purpose:
* dropout is applied (PALM ignored `dropout_prob`, §17.33);
* the CRF transitions learn at `crf_lr_multiplier` x the scheduled rate (default 1.0) and are not
  weight-decayed; PALM multiplied their rate by `learning_rate` (default 1e-3) while decaying them at the full
  rate, so they barely moved (§17.5). Pass `crf_lr_multiplier=learning_rate` to reproduce PALM;
* no extra L2 term on the emission weight (PALM added 1e-4 to its gradient); use the trainer's weight decay;
* transitions are stored as start [C], end [C] and [C, C] (PALM packed them in one [C+2, C] `crfw`);
* the emission weight starts from a plain normal (std `param_initializer_range`), as HF's token classifier,
  not PALM's truncated normal (issue 30: the truncated start cost softmax tagging 1-3 F1 points).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from .base import Head, write_json_lines
from .crf import IGNORE_INDEX, LinearChainCRF

logger = logging.getLogger("torchpalm")

CRF_PARAMS = ("crf.start_transitions", "crf.end_transitions", "crf.transitions")


class SequenceLabel(Head):
    """Word-level sequence labelling.

    Args:
        num_classes: C, the number of tags (every id of the reader's label map must be < C).
        input_dim: H, the backbone's hidden size.
        dropout_prob: dropout on the word states in training.
        learning_rate: kept for PALM's signature; PALM used it as the CRF transitions' learning-rate
            multiplier. Here that is `crf_lr_multiplier` (pass `crf_lr_multiplier=learning_rate` for PALM's rule).
        param_initializer_range: std of the normal init of the emission weight (PALM: truncated normal).
        phase: 'train' or 'predict' (dropout off).
        use_crf: CRF loss and Viterbi decoding (default) or per-word softmax and argmax.
        crf_lr_multiplier: factor on the scheduled learning rate for the CRF transitions (`param_lr_scales`).

    Reads `encoder_outputs [B, L, H]` from the backbone, and `word_starts [B, W]`, `seq_lens [B]` and (train)
    `label_ids [B, W]` (padded with -100) from the reader. Returns `loss` when labels are in the batch; otherwise
    (and in eval mode) `logits [B, W, C]` (word emissions), `predictions [B, W]` int64 (-1 past each length)
    and `seq_lens [B]`.
    """

    def __init__(self, num_classes: int, input_dim: int, dropout_prob: float = 0.0, learning_rate: float = 1e-3,
                 param_initializer_range: float = 0.02, phase: str = "train", use_crf: bool = True,
                 crf_lr_multiplier: float = 1.0):
        super().__init__(phase)
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if crf_lr_multiplier < 0:
            raise ValueError(f"crf_lr_multiplier must be >= 0, got {crf_lr_multiplier}")
        self.num_classes, self.input_dim = num_classes, input_dim
        self.dropout_prob, self.learning_rate = dropout_prob, learning_rate
        self.param_initializer_range = param_initializer_range
        self.use_crf, self.crf_lr_multiplier = bool(use_crf), float(crf_lr_multiplier)
        self.dropout = nn.Dropout(dropout_prob)
        self.emission = nn.Linear(input_dim, num_classes)
        # HF's start (plain normal, zero bias), not PALM's truncated normal: with everything else equal, the
        # truncated start (clipped at +-2 std: std 0.88x) trained measurably worse (docs/palm-differences.md).
        nn.init.normal_(self.emission.weight, std=param_initializer_range)
        nn.init.zeros_(self.emission.bias)
        self.crf = LinearChainCRF(num_classes) if self.use_crf else None
        # Set from the reader by `check_reader`: the id that pads predictions of words cut by truncation.
        self.no_entity_id: int | None = None
        self.train(phase == "train")

    def config(self):
        return {"num_classes": self.num_classes, "input_dim": self.input_dim, "dropout_prob": self.dropout_prob,
                "learning_rate": self.learning_rate, "param_initializer_range": self.param_initializer_range,
                "use_crf": self.use_crf, "crf_lr_multiplier": self.crf_lr_multiplier}

    @property
    def inputs_attrs(self):
        reader = {"word_starts": ([-1, -1], "int64"), "seq_lens": ([-1], "int64")}
        if self._phase == "train":
            reader["label_ids"] = ([-1, -1], "int64")
        return {"reader": reader, "backbone": {"encoder_outputs": ([-1, -1, self.input_dim], "float32")}}

    @property
    def outputs_attr(self):
        if self._phase == "train":
            return {"loss": ([], "float32")}
        return {"logits": ([-1, -1, self.num_classes], "float32"), "predictions": ([-1, -1], "int64"),
                "seq_lens": ([-1], "int64")}

    @property
    def epoch_inputs_attrs(self):
        return {"reader": {"word_counts": None}}

    def no_weight_decay(self):
        return set(CRF_PARAMS) if self.use_crf else set()

    def param_lr_scales(self):
        """{relative parameter name: factor on the scheduled learning rate}: the CRF transitions'
        `crf_lr_multiplier`. The trainer puts them in their own optimizer group with that `lr_scale`."""
        return dict.fromkeys(CRF_PARAMS, self.crf_lr_multiplier) if self.use_crf else {}

    def check_reader(self, reader):
        if hasattr(reader, "check_num_classes"):
            reader.check_num_classes(self.num_classes)
        if getattr(reader, "no_entity_id", None) is not None:
            self.no_entity_id = int(reader.no_entity_id)

    def forward(self, backbone_outputs, batch):
        """Emissions, and the loss and/or the decoded tags.

        Shapes: encoder_outputs [B, L, H], word_starts [B, W], seq_lens [B], label_ids [B, W] ->
        logits [B, W, C], predictions [B, W], loss [].
        """
        logits = self.export_output(backbone_outputs, batch)
        lengths = batch["seq_lens"].to(logits.device)
        mask = torch.arange(logits.size(1), device=logits.device)[None, :] < lengths[:, None]
        out = {"logits": logits, "seq_lens": lengths}
        labels = batch.get("label_ids")
        if labels is not None:
            if self.use_crf:
                # sentences always have >= 1 word in train (the reader checks); the mask must be a prefix
                out["loss"] = self.crf(logits, labels, mask, reduction="mean")
                out["loss_count"] = logits.new_full((), logits.size(0))  # a mean over sentences
            else:
                out["loss"] = F.cross_entropy(logits.reshape(-1, self.num_classes), labels.reshape(-1),
                                              ignore_index=IGNORE_INDEX)
                out["loss_count"] = (labels != IGNORE_INDEX).sum().float()  # a mean over the labelled words
        if labels is None or not self.training:  # decoding is wasted work inside a training step
            out["predictions"] = self.decode(logits, mask)
        return out

    def export_output(self, backbone_outputs, batch):
        """Emission scores [B, W, C] of each word's first sub-token (a CRF's Viterbi search runs on these with
        the `crf.*_transitions` weights; without a CRF their argmax is the prediction)."""
        enc = backbone_outputs["encoder_outputs"]
        starts = batch["word_starts"]
        # gather each word's first sub-token state: [B, W] -> [B, W, H]
        words = enc.gather(1, starts.unsqueeze(-1).expand(-1, -1, enc.size(-1)))
        return self.emission(self.dropout(words)).float()

    @torch.no_grad()
    def decode(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Best tags [B, W] (int64, -1 past each length) by Viterbi (CRF) or argmax."""
        if self.use_crf:
            # the CRF needs one real step per sequence; empty sentences (predict only) get -1 everywhere below
            crf_mask = mask.clone()
            crf_mask[:, 0] = True
            paths = self.crf.decode_tensor(logits, crf_mask, pad_value=-1)
        else:
            paths = logits.argmax(-1)
        return paths.masked_fill(~mask, -1)

    def batch_postprocess(self, outputs):
        preds, lengths = outputs["predictions"], outputs["seq_lens"]
        for row, n in zip(preds, lengths, strict=True):
            self._results.append([int(x) for x in row[: int(n)]])

    def epoch_postprocess(self, post_inputs, output_dir=None):
        """One list of tag ids per sentence, one id per input word (cut words get the no-entity id).

        Writes them to `output_dir/predictions.json`, one JSON list per line (PALM's format, minus the
        [CLS] position PALM included), and returns them. Each returned list is a `TagSequence`: still the
        list of ids, and also `.words` and `.tags` (tag names) when the reader gave them (PALM#85); those
        go to `output_dir/predictions_tagged.json` as `{"index", "words", "tags"}` lines.
        """
        results, self._results = self._results, []
        reader_out = (post_inputs or {}).get("reader") or {}
        counts = reader_out.get("word_counts")
        if counts is not None:
            if len(counts) != len(results):
                raise ValueError(f"the reader has {len(counts)} sentences but {len(results)} were predicted")
            cut = sum(n > len(r) for r, n in zip(results, counts, strict=True))
            if cut and self.no_entity_id is None:
                raise ValueError(f"{cut} sentences were truncated and the no-entity id is unknown; fit the head "
                                 "with a SequenceLabelReader (check_reader) or set head.no_entity_id")
            results = [r + [self.no_entity_id] * (n - len(r)) for r, n in zip(results, counts, strict=True)]
        else:
            logger.warning("SequenceLabel: no per-sentence word counts from the reader; predictions cover the "
                           "words kept after truncation only")
        words, id2label = reader_out.get("words"), reader_out.get("id2label")
        results = [TagSequence(r, words[i] if words is not None else None,
                               [id2label[t] for t in r] if id2label is not None else None)
                   for i, r in enumerate(results)]
        if output_dir is not None:
            write_json_lines(results, output_dir)
            if words is not None and id2label is not None:
                write_json_lines([{"index": i, "words": r.words, "tags": r.tags} for i, r in enumerate(results)],
                                 output_dir, name="predictions_tagged.json", ensure_ascii=False)
        return results


class TagSequence(list):
    """A sentence's predicted tag ids (a plain list, as before) with its `words` and tag names `tags`."""

    def __init__(self, ids, words: list[str] | None = None, tags: list[str] | None = None):
        super().__init__(ids)
        self.words, self.tags = words, tags


def tags_of(predictions: list[list[int]], id2label: dict[int, str]) -> list[list[str]]:
    """Maps predicted ids to tag strings (e.g. for `torchpalm.metrics.chunk_f1`)."""
    return [[id2label[int(i)] for i in row] for row in predictions]


__all__ = ["SequenceLabel", "TagSequence", "tags_of"]
