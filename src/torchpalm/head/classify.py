"""Classify head (spec §8.1): dropout -> Linear(H, C) on the pooled [CLS] embedding; cross-entropy loss."""

from __future__ import annotations

import numpy as np
import torch.nn.functional as F
from torch import nn

from .base import Head, add_label_names, truncated_normal_, write_json_lines


class Classify(Head):
    """Sentence (or sentence-pair) classification.

    Args:
        num_classes: C.
        input_dim: H, the backbone's hidden size.
        dropout_prob: dropout on the pooled embedding in training (PALM computed it and then ignored it;
            spec §17.2; here it is applied).
        param_initializer_range: std of the truncated-normal weight init.
        phase: 'train' or 'predict'.

    Outputs: logits [B, C], probs [B, C], and loss (mean CE) when the batch has `label_ids [B]`.
    Predictions: `{"index", "label" (the class id), "logits", "probs"}` per example, plus `"label_name"` when the
    reader was given a `label_map`.
    """

    backbone_input = "sentence_embedding"

    def __init__(self, num_classes: int, input_dim: int, dropout_prob: float = 0.0,
                 param_initializer_range: float = 0.02, phase: str = "train"):
        super().__init__(phase)
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.num_classes, self.input_dim = num_classes, input_dim
        self.dropout_prob, self.param_initializer_range = dropout_prob, param_initializer_range
        self.dropout = nn.Dropout(dropout_prob)
        self.classifier = nn.Linear(input_dim, num_classes)
        truncated_normal_(self.classifier.weight, param_initializer_range)
        nn.init.zeros_(self.classifier.bias)
        self.train(phase == "train")

    def config(self):
        return {"num_classes": self.num_classes, "input_dim": self.input_dim, "dropout_prob": self.dropout_prob,
                "param_initializer_range": self.param_initializer_range}

    @property
    def inputs_attrs(self):
        reader = {"label_ids": ([-1], "int64")} if self._phase == "train" else {}
        return {"reader": reader, "backbone": {self.backbone_input: ([-1, self.input_dim], "float32")}}

    @property
    def outputs_attr(self):
        if self._phase == "train":
            return {"loss": ([], "float32")}
        return {"logits": ([-1, self.num_classes], "float32"), "probs": ([-1, self.num_classes], "float32")}

    @property
    def epoch_inputs_attrs(self):
        return {"reader": {"id2label": None}}

    def check_reader(self, reader):
        if hasattr(reader, "check_num_classes"):
            reader.check_num_classes(self.num_classes)

    def forward(self, backbone_outputs, batch):
        logits = self.classifier(self.dropout(backbone_outputs[self.backbone_input])).float()
        out = {"logits": logits, "probs": F.softmax(logits, dim=-1)}
        if "label_ids" in batch:
            out["loss"] = F.cross_entropy(logits, batch["label_ids"])
            out["loss_count"] = logits.new_full((), logits.size(0))  # a mean over the batch's examples
        return out

    def batch_postprocess(self, outputs):
        logits, probs = outputs["logits"], outputs["probs"]
        start = len(self._results)
        for i, (lg, pr) in enumerate(zip(logits, probs)):
            self._results.append({"index": start + i, "label": int(np.argmax(lg)),
                                  "logits": lg.tolist(), "probs": pr.tolist()})

    def epoch_postprocess(self, post_inputs, output_dir=None):
        results, self._results = add_label_names(self._results, post_inputs), []
        if output_dir is not None:
            write_json_lines(results, output_dir, ensure_ascii=False)
        return results
