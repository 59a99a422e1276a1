"""Backbone base class: what the trainers, readers and heads ask of an encoder."""

from __future__ import annotations

import copy

import torch
from torch import nn


class Backbone(nn.Module):
    """An encoder from a batch of token ids to named features, shared by every task's head.

    A backbone is a plain `nn.Module`; subclassing this class only makes the contract explicit. To write one
    (e.g. around any HuggingFace encoder, see docs/customizing.md), provide:

    * `inputs_attr`: `{name: (shape, dtype)}` of the batch fields `forward` reads, e.g. `{"token_ids": ([-1, -1],
      "int64"), "input_mask": ([-1, -1], "int64")}`. `reader.register_with(backbone)` makes the reader yield
      them and `fit_reader` checks that it can. The built-in readers yield `token_ids`, `position_ids`,
      `segment_ids`, `input_mask` (1 = token, 0 = padding) and `task_ids`, each `[batch, seq]` int64.
    * `outputs_attr`: `{name: (shape, dtype)}` of what `forward` returns; `build_forward` checks that it has
      what the head reads (`head.inputs_attrs["backbone"]`). The built-in heads read `sentence_embedding`
      `[batch, hidden]` (Classify), `sentence_pair_embedding` (Match), `encoder_outputs` `[batch, seq, hidden]`
      (SequenceLabel, MRC) and also `embedding_table` `[vocab, hidden]` (MaskLM).
    * `forward(batch) -> dict[str, Tensor]`: the features named in `outputs_attr`.
    * `hidden_size`: H, the width of those features (a YAML config's heads take it as `input_dim`); by default
      `config['hidden_size']`.

    Optional: `forward(batch, outputs=None)`: when forward takes `outputs`, the trainers pass the names the head
    will read (`head.inputs_attrs["backbone"]`), so the backbone may skip the rest (BERT runs its last layer on
    [CLS] alone for sentence-level heads); None means everything. `config`, a JSON-serialisable dict written into
    checkpoints (`trainer_state.json`) so a saved model can be rebuilt without the training script.
    `load_pretrain` assigns a weights file's tensors by these parameter names.

    For prediction, PALM's scripts build a second instance with the same structure and pass it to
    `build_predict_forward`. It says how to predict (what the reader must yield for it), not with which weights:
    once training was built, predictions run through the trained backbone in eval mode (`prediction.py`), and
    the second instance's own weights serve only a prediction-only script, where nothing was trained.
    """

    @property
    def inputs_attr(self) -> dict:
        raise NotImplementedError(f"{type(self).__name__} must define inputs_attr: {{name: (shape, dtype)}}")

    @property
    def outputs_attr(self) -> dict:
        raise NotImplementedError(f"{type(self).__name__} must define outputs_attr: {{name: (shape, dtype)}}")

    @property
    def hidden_size(self) -> int:
        """H, the width of the features the heads read (`encoder_outputs` [B, L, H], `sentence_embedding` [B, H]):
        what a head takes as `input_dim`. The built-in backbones' `config['hidden_size']`; a backbone whose
        config names it otherwise (HFEncoder: DistilBERT's `dim`) overrides this."""
        size = (getattr(self, "config", None) or {}).get("hidden_size")
        if size is None:
            raise NotImplementedError(f"{type(self).__name__} must define hidden_size (the width of its outputs) "
                                      f"or a config with 'hidden_size'")
        return int(size)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        raise NotImplementedError(f"{type(self).__name__} must implement forward(batch) -> dict of tensors")

    def refuse_oversized_reader(self, reader, vocab_size: int, max_positions: int | None) -> None:
        """Refuses a reader whose sequences or token ids this backbone cannot embed (PALM crashed at step 1 with
        an IndexError): `max_len` above `max_positions` (None: no absolute position table), or a vocabulary
        with more ids than `vocab_size`. For the backbones' `check_reader`, which `reader.register_with` and
        `Trainer.fit_reader` call; `self.config_source` names the backbone's config."""
        max_len = getattr(reader, "max_len", None)
        if max_positions is not None and max_len is not None and max_len > max_positions:
            raise ValueError(f"{type(reader).__name__} max_len={max_len} is above the backbone's "
                             f"'max_position_embeddings' {max_positions} ({self.config_source}): positions past "
                             f"{max_positions - 1} have no embedding; use max_len <= {max_positions}")
        tokenizer = getattr(reader, "tokenizer", None)
        size = getattr(tokenizer, "vocab_size", None)
        if size is not None and size > vocab_size:
            raise ValueError(f"the vocabulary {getattr(tokenizer, 'vocab_path', '')} has {size} ids but the "
                             f"backbone's 'vocab_size' is {vocab_size} ({self.config_source}): ids from "
                             f"{vocab_size} up have no embedding; is it the tokenizer (vocab.txt, tokenizer.json) "
                             f"that goes with this model?")

    def clone(self, phase: str) -> Backbone:
        """A copy of this backbone (same weights) for another phase."""
        new = copy.deepcopy(self)
        new.phase = phase
        new.train(phase == "train")
        return new

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
