"""Match head (spec §8.2): text-pair matching on the pooled pair embedding, pointwise or pairwise.

pointwise: dropout -> Linear(H, C) -> softmax; mean cross-entropy against `label_ids`.
pairwise:  s = sigmoid(Linear(H, 1)(dropout(e))) for the positive pair and, with the same layer, for the
           negative pair; hinge loss mean(max(0, margin - s_pos + s_neg)).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .base import Head, add_label_names, truncated_normal_, write_json_lines

STRATEGIES = ("pointwise", "pairwise")


class Match(Head):
    """Text-pair matching.

    Args:
        num_classes: C (pointwise); ignored by pairwise, which outputs one score.
        input_dim: H, the backbone's hidden size.
        dropout_prob: dropout on the pair embedding(s) in training.
        param_initializer_range: std of the truncated-normal weight init.
        learning_strategy: 'pointwise' or 'pairwise'. Pairwise training needs a backbone built with
            `is_pairwise=True` (or `config['is_pairwise'] = True`) and a pairwise `MatchReader`.
        margin: the hinge margin of the pairwise loss.
        phase: 'train' or 'predict'.

    Outputs:
        pointwise: logits [B, C], probs [B, C]; loss (mean CE) when the batch has `label_ids [B]`.
        pairwise: probs [B, 1] (the positive pair's score); loss when the backbone outputs the `_neg` branch.
    Pointwise predictions carry `"label_name"` beside the class id `"label"` when the reader had a `label_map`.
    """

    backbone_input = "sentence_pair_embedding"

    def __init__(self, num_classes: int, input_dim: int, dropout_prob: float = 0.0,
                 param_initializer_range: float = 0.02, learning_strategy: str = "pointwise",
                 margin: float = 0.5, phase: str = "train"):
        super().__init__(phase)
        if learning_strategy not in STRATEGIES:
            raise ValueError(f"learning_strategy must be 'pointwise' or 'pairwise', got {learning_strategy!r}")
        if learning_strategy == "pointwise" and num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 for pointwise matching, got {num_classes}")
        self.num_classes, self.input_dim = num_classes, input_dim
        self.dropout_prob, self.param_initializer_range = dropout_prob, param_initializer_range
        self.learning_strategy, self.margin = learning_strategy, float(margin)
        self.dropout = nn.Dropout(dropout_prob)
        # PALM: <task>.cls_out_w/_b (pointwise) or <task>.cls_out_w_pr/_b_pr (pairwise, shared by pos and neg)
        out_dim = num_classes if learning_strategy == "pointwise" else 1
        self.classifier = nn.Linear(input_dim, out_dim)
        truncated_normal_(self.classifier.weight, param_initializer_range)
        nn.init.zeros_(self.classifier.bias)
        self.train(phase == "train")

    @property
    def pairwise(self) -> bool:
        return self.learning_strategy == "pairwise"

    def config(self) -> dict:
        return {"num_classes": self.num_classes, "input_dim": self.input_dim, "dropout_prob": self.dropout_prob,
                "param_initializer_range": self.param_initializer_range,
                "learning_strategy": self.learning_strategy, "margin": self.margin}

    @property
    def inputs_attrs(self) -> dict:
        emb = ([-1, self.input_dim], "float32")
        backbone = {self.backbone_input: emb}
        reader = {}
        if self._phase == "train":
            if self.pairwise:
                backbone[self.backbone_input + "_neg"] = emb
            else:
                reader["label_ids"] = ([-1], "int64")
        return {"reader": reader, "backbone": backbone}

    @property
    def outputs_attr(self) -> dict:
        if self._phase == "train":
            return {"loss": ([], "float32")}
        if self.pairwise:
            return {"probs": ([-1, 1], "float32")}
        return {"logits": ([-1, self.num_classes], "float32"), "probs": ([-1, self.num_classes], "float32")}

    @property
    def epoch_inputs_attrs(self) -> dict:
        return {} if self.pairwise else {"reader": {"id2label": None}}

    def check_reader(self, reader) -> None:
        strategy = getattr(reader, "learning_strategy", None)
        if strategy is not None and strategy != self.learning_strategy:
            raise ValueError(f"the Match head is {self.learning_strategy} but the reader is {strategy}; "
                             f"build both with the same learning_strategy")
        if self.pairwise and self._phase == "train":
            backbone = reader.get_registered_backbone() if hasattr(reader, "get_registered_backbone") else None
            if backbone is not None and not getattr(backbone, "is_pairwise", False):
                raise ValueError(_NOT_PAIRWISE)
        if not self.pairwise and hasattr(reader, "check_num_classes"):
            reader.check_num_classes(self.num_classes)

    def _score(self, embedding: torch.Tensor) -> torch.Tensor:
        """[B, H] -> sigmoid score [B, 1]."""
        return torch.sigmoid(self.classifier(self.dropout(embedding)).float())

    def forward(self, backbone_outputs: dict[str, torch.Tensor],
                batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if not self.pairwise:
            logits = self.classifier(self.dropout(backbone_outputs[self.backbone_input])).float()
            out = {"logits": logits, "probs": F.softmax(logits, dim=-1)}
            if "label_ids" in batch:
                out["loss"] = F.cross_entropy(logits, batch["label_ids"])
                out["loss_count"] = logits.new_full((), logits.size(0))
            return out
        s_pos = self._score(backbone_outputs[self.backbone_input])
        out = {"probs": s_pos}
        neg = backbone_outputs.get(self.backbone_input + "_neg")
        if neg is not None:
            s_neg = self._score(neg)
            out["loss"] = torch.clamp(self.margin - s_pos + s_neg, min=0.0).mean()
            out["loss_count"] = s_pos.new_full((), s_pos.size(0))
        elif self._phase == "train" and self.training:
            raise ValueError(_NOT_PAIRWISE)
        return out

    def batch_postprocess(self, outputs: dict) -> None:
        start = len(self._results)
        if self.pairwise:
            for i, p in enumerate(np.asarray(outputs["probs"]).reshape(-1)):
                self._results.append({"index": start + i, "probs": float(p)})
            return
        for i, (lg, pr) in enumerate(zip(outputs["logits"], outputs["probs"])):
            self._results.append({"index": start + i, "label": int(np.argmax(lg)),
                                  "logits": lg.tolist(), "probs": pr.tolist()})

    def epoch_postprocess(self, post_inputs: dict | None, output_dir: str | None = None) -> list:
        results, self._results = self._results, []
        if not self.pairwise:
            results = add_label_names(results, post_inputs)
        if output_dir is not None:
            write_json_lines(results, output_dir, ensure_ascii=False)
        return results


_NOT_PAIRWISE = ("pairwise Match training needs the negative branch 'sentence_pair_embedding_neg': build the "
                 "backbone with is_pairwise=True (config['is_pairwise'] = True, or BERT(..., is_pairwise=True)) "
                 "and feed it a MatchReader(..., learning_strategy='pairwise')")
