"""ERNIE = BERT plus a task-type embedding added to the input embeddings (spec §7)."""

from __future__ import annotations

import torch
from torch import nn

from .bert import BACKBONE_INPUTS, BERT, config_source, load_config


class ERNIE(BERT):
    """ERNIE backbone: BERT's encoder with `E_task[task_ids]` added to the embeddings.

    Args: PALM's (spec §7.1): `sent_type_vocab_size` rows of segment embeddings and `task_type_vocab_size`
    rows of task embeddings. The task table starts at zero (PALM initialised it randomly even when the
    checkpoint had none, adding noise to every token; spec §17.7), so a checkpoint without it is unchanged.
    """

    def __init__(self, hidden_size: int, num_hidden_layers: int, num_attention_heads: int, vocab_size: int,
                 max_position_embeddings: int, sent_type_vocab_size: int, task_type_vocab_size: int,
                 hidden_act: str, hidden_dropout_prob: float, attention_probs_dropout_prob: float,
                 initializer_range: float, is_pairwise: bool = False, use_task_emb: bool = True,
                 phase: str = "train", intermediate_size: int | None = None, layer_norm_eps: float = 1e-6,
                 pad_token_id: int = 0):
        self.use_task_emb = use_task_emb
        self._task_rows = task_type_vocab_size
        super().__init__(hidden_size, num_hidden_layers, num_attention_heads, vocab_size, max_position_embeddings,
                         sent_type_vocab_size, hidden_act, hidden_dropout_prob, attention_probs_dropout_prob,
                         initializer_range, is_pairwise=is_pairwise, phase=phase,
                         intermediate_size=intermediate_size, layer_norm_eps=layer_norm_eps,
                         pad_token_id=pad_token_id)
        self.config.update({"sent_type_vocab_size": sent_type_vocab_size,
                            "task_type_vocab_size": task_type_vocab_size, "use_task_emb": use_task_emb})
        if use_task_emb:
            self.task_embeddings = nn.Embedding(task_type_vocab_size, hidden_size)
            nn.init.zeros_(self.task_embeddings.weight)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if getattr(self, "task_embeddings", None) is not None:
            nn.init.zeros_(self.task_embeddings.weight)

    @classmethod
    def from_config(cls, config, phase: str = "train") -> ERNIE:
        """Builds ERNIE from a parsed `ernie_config.json` or HF `ErnieModel` `config.json` (or its path)."""
        source, config = config_source(config), load_config(config)
        kwargs = cls._kwargs_from_config(config)
        kwargs["sent_type_vocab_size"] = kwargs.pop("type_vocab_size")
        if "task_type_vocab_size" in config:
            kwargs["task_type_vocab_size"] = config["task_type_vocab_size"]
        elif "type_vocab_size" in config:
            kwargs["task_type_vocab_size"] = config["type_vocab_size"]
        else:
            raise KeyError(f"{source}: ERNIE config lacks 'task_type_vocab_size' (and 'type_vocab_size' to fall back on)")
        # PALM's configs say use_task_emb (default True); HF's ErnieConfig says use_task_id
        kwargs["use_task_emb"] = config.get("use_task_emb", config.get("use_task_id", True))
        return cls._build(kwargs, source, phase)

    @property
    def inputs_attr(self) -> dict:
        attrs = super().inputs_attr
        if self.use_task_emb:
            attrs["task_ids"] = BACKBONE_INPUTS["token_ids"]
            if self.is_pairwise and self.phase == "train":
                attrs["task_ids_neg"] = BACKBONE_INPUTS["token_ids"]
        return attrs

    @property
    def embedding_inputs(self) -> tuple[str, ...]:
        return BERT.embedding_inputs + (("task_ids",) if self.use_task_emb else ())

    def embed(self, batch: dict[str, torch.Tensor], suffix: str = "") -> torch.Tensor:
        e = super().embed(batch, suffix)
        if self.use_task_emb:
            e = e + self.task_embeddings(batch["task_ids" + suffix])
        return e
