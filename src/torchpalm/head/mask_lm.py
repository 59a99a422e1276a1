"""MaskLM head (spec §8.5): BERT's masked-LM prediction with output weights tied to the word embeddings.

encoder_outputs [B, L, H] -> rows at mask_pos [M, H] -> Linear(H, H) -> act -> LayerNorm
-> logits = h @ embedding_table.T + bias [M, V]; loss = mean cross-entropy over the M masked tokens.
With `transform=False` the rows go straight to the tied output layer: ModernBERT's backbone already applies
its prediction head (dense -> act -> LayerNorm, the transform of `ModernBertForMaskedLM`) to `encoder_outputs`.
PALM clamped `mask_pos` with a constant derived from static shapes, so every masked token read flat
position 0 (spec §17.1); here the true positions are gathered, after checking they are inside the batch.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..backbone.bert import ACTIVATIONS
from .base import Head, truncated_normal_

LAYER_NORM_EPS = 1e-6  # PALM's (spec §17.8)


class MaskLM(Head):
    """Masked-token prediction.

    Args:
        input_dim: H, the backbone's hidden size.
        vocab_size: V, rows of the backbone's word-embedding table (the tied output weights).
        hidden_act: activation of the transform layer (e.g. 'gelu'; the backbone's `hidden_act`).
        dropout_prob: accepted for PALM's signature; like PALM's and BERT's MLM heads, no dropout is applied.
        param_initializer_range: std of the truncated-normal init of the transform layer.
        phase: 'train' or 'predict'.
        transform: the Linear -> act -> LayerNorm before the output layer (BERT's); False for a backbone whose
            `encoder_outputs` have been through it already (ModernBERT: then this head is HF's tied decoder).

    Inputs: backbone `encoder_outputs [B, L, H]` and `embedding_table [V, H]`; reader `mask_pos [M]` (flat
    indices into `[B * L]`) and, for the loss, `mask_label [M]`.
    Outputs: logits [M, V], word_ids [M] (argmax); loss when the batch has `mask_label`.
    """

    def __init__(self, input_dim: int, vocab_size: int, hidden_act: str, dropout_prob: float = 0.0,
                 param_initializer_range: float = 0.02, phase: str = "train", transform: bool = True):
        super().__init__(phase)
        if hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act {hidden_act!r} is not supported; choose one of {sorted(ACTIVATIONS)}")
        self.input_dim, self.vocab_size, self.hidden_act = input_dim, vocab_size, hidden_act
        self.dropout_prob, self.param_initializer_range = dropout_prob, param_initializer_range
        self.use_transform = bool(transform)
        # PALM: <task>.mask_lm_trans_fc.w_0/b_0, mask_lm_trans_layer_norm_scale/_bias, mask_lm_out_fc.b_0
        if self.use_transform:
            self.transform = nn.Linear(input_dim, input_dim)
            self.act = ACTIVATIONS[hidden_act]
            self.layer_norm = nn.LayerNorm(input_dim, eps=LAYER_NORM_EPS)
            truncated_normal_(self.transform.weight, param_initializer_range)
            nn.init.zeros_(self.transform.bias)
        self.output_bias = nn.Parameter(torch.zeros(vocab_size))
        self.train(phase == "train")

    def config(self) -> dict:
        return {"input_dim": self.input_dim, "vocab_size": self.vocab_size, "hidden_act": self.hidden_act,
                "dropout_prob": self.dropout_prob, "param_initializer_range": self.param_initializer_range,
                "transform": self.use_transform}

    @property
    def inputs_attrs(self) -> dict:
        reader = {"mask_pos": ([-1], "int64")}
        if self._phase == "train":
            reader["mask_label"] = ([-1], "int64")
        backbone = {"encoder_outputs": ([-1, -1, self.input_dim], "float32"),
                    "embedding_table": ([self.vocab_size, self.input_dim], "float32")}
        return {"reader": reader, "backbone": backbone}

    @property
    def outputs_attr(self) -> dict:
        if self._phase == "train":
            return {"loss": ([], "float32")}
        return {"logits": ([-1, self.vocab_size], "float32"), "word_ids": ([-1], "int64")}

    def forward(self, backbone_outputs: dict[str, torch.Tensor],
                batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        enc = backbone_outputs["encoder_outputs"]
        table = backbone_outputs["embedding_table"]
        if table.shape[0] != self.vocab_size:
            raise ValueError(f"MaskLM was built for vocab_size {self.vocab_size} but the backbone's embedding table "
                             f"has {table.shape[0]} rows")
        b, length, h = enc.shape
        pos = batch["mask_pos"].reshape(-1).long()
        # An index outside [0, B*L) would be a silent wrong gather on CPU; on CUDA the gather itself asserts, and
        # checking here would stall the launch queue every step (a read-back), so only CPU checks.
        if pos.numel() and not pos.is_cuda and bool(((pos < 0) | (pos >= b * length)).any()):
            raise ValueError(f"mask_pos must be flat indices into the padded batch, 0 <= pos < B*L = {b}*{length} "
                             f"= {b * length}; got values from {int(pos.min())} to {int(pos.max())}")
        hidden = enc.reshape(b * length, h).index_select(0, pos)
        if self.use_transform:
            hidden = self.layer_norm(self.act(self.transform(hidden)))
        logits = (hidden @ table.t() + self.output_bias).float()
        out = {"logits": logits, "word_ids": logits.argmax(dim=-1)}
        if "mask_label" in batch:
            labels = batch["mask_label"].reshape(-1).long()
            if labels.shape != pos.shape:
                raise ValueError(f"mask_label has {labels.numel()} entries but mask_pos has {pos.numel()}")
            if pos.numel():
                out["loss"] = F.cross_entropy(logits, labels)
            else:  # nothing masked in this batch: a zero loss that still reaches the graph
                out["loss"] = enc.sum() * 0.0
            out["loss_count"] = logits.new_full((), pos.numel())  # a mean over the masked tokens
        return out

    def batch_postprocess(self, outputs: dict) -> None:
        word_ids = outputs.get("word_ids")
        if word_ids is None:
            word_ids = np.argmax(outputs["logits"], axis=-1)
        start = len(self._results)
        for i, w in enumerate(np.asarray(word_ids).reshape(-1)):
            self._results.append({"index": start + i, "word_id": int(w)})
