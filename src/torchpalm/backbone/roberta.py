"""RoBERTa = BERT's encoder with RoBERTa's embeddings (HF `RobertaModel`).

Two differences from BERT, both in the embeddings: position ids count from `pad_token_id + 1` and padding
tokens sit at `pad_token_id` (HF's `create_position_ids_from_input_ids`), and there is no segment input: the
single row of `token_type_embeddings` (type_vocab_size 1) is added to every token, as HF does with its default
all-zero token types. Everything after the embeddings is BERT's (post-LN layers, tanh pooler on `<s>`), so the
HF weight names map exactly as BERT's do (`torchpalm.convert`).
"""

from __future__ import annotations

import torch

from .bert import BACKBONE_INPUTS, BERT, config_source, load_config


def roberta_position_ids(token_ids: torch.Tensor, pad_id: int) -> torch.Tensor:
    """`pad_id + 1, pad_id + 2, ...` over real tokens, `pad_id` on padding: `[B, L]` (HF's rule)."""
    real = token_ids.ne(pad_id).long()
    return torch.cumsum(real, dim=1) * real + pad_id


class RoBERTa(BERT):
    """RoBERTa backbone for HF RoBERTa checkpoints (`config.json` + weights; tokenizer: readers' 'bpe').

    Args: as `BERT`'s; `pad_token_id` (default 1, RoBERTa's `<pad>`) is the padding index that positions are
    offset past, so a sequence holds at most `max_position_embeddings - pad_token_id - 1` tokens (512 for
    roberta-base's 514 rows).

    Inputs (a batch dict): token_ids [B, L] int64 padded with `pad_token_id`, input_mask [B, L]. Position ids
    are computed from token_ids and segment ids are not used (the reader's are ignored).
    Outputs: as `BERT`'s.
    """

    def __init__(self, hidden_size: int, num_hidden_layers: int, num_attention_heads: int, vocab_size: int,
                 max_position_embeddings: int, type_vocab_size: int, hidden_act: str, hidden_dropout_prob: float,
                 attention_probs_dropout_prob: float, initializer_range: float, is_pairwise: bool = False,
                 phase: str = "train", intermediate_size: int | None = None, layer_norm_eps: float = 1e-12,
                 pad_token_id: int = 1):
        super().__init__(hidden_size, num_hidden_layers, num_attention_heads, vocab_size, max_position_embeddings,
                         type_vocab_size, hidden_act, hidden_dropout_prob, attention_probs_dropout_prob,
                         initializer_range, is_pairwise=is_pairwise, phase=phase,
                         intermediate_size=intermediate_size, layer_norm_eps=layer_norm_eps,
                         pad_token_id=pad_token_id)
        # As HF: the padding rows get no gradient (and start at zero: reset_parameters, run by BERT's __init__).
        self.word_embeddings.padding_idx = pad_token_id
        self.position_embeddings.padding_idx = pad_token_id

    @classmethod
    def from_config(cls, config, phase: str = "train") -> RoBERTa:
        """Builds RoBERTa from an HF RoBERTa `config.json` (or its parsed dict); HF's defaults fill the gaps
        (pad_token_id 1, layer_norm_eps 1e-12)."""
        source, config = config_source(config), load_config(config)
        kwargs = cls._kwargs_from_config(config)
        kwargs["pad_token_id"] = config.get("pad_token_id") if config.get("pad_token_id") is not None else 1
        kwargs["layer_norm_eps"] = config.get("layer_norm_eps", 1e-12)
        return cls._build(kwargs, source, phase)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        pad = self.config["pad_token_id"]
        with torch.no_grad():
            for table in (self.word_embeddings, self.position_embeddings):
                if pad < table.num_embeddings:
                    table.weight[pad].zero_()

    @property
    def max_tokens(self) -> int:
        """The longest sequence the position table holds."""
        return self.config["max_position_embeddings"] - self.config["pad_token_id"] - 1

    @property
    def inputs_attr(self) -> dict:
        attrs = {k: BACKBONE_INPUTS[k] for k in ("token_ids", "input_mask")}
        if self.is_pairwise and self.phase == "train":
            attrs.update({f"{k}_neg": v for k, v in list(attrs.items())})
        return attrs

    # what packing gathers to real tokens: the ids and their positions (computed on the padded layout first)
    embedding_inputs = ("token_ids", "roberta_position_ids")

    def encode(self, batch: dict[str, torch.Tensor], suffix: str = "",
               sentence_only: bool = False) -> dict[str, torch.Tensor]:
        ids = batch["token_ids" + suffix]
        if ids.shape[1] > self.max_tokens:
            raise ValueError(f"RoBERTa takes at most {self.max_tokens} tokens per sequence "
                             f"(max_position_embeddings {self.config['max_position_embeddings']} minus the padding "
                             f"index {self.config['pad_token_id']} and 1), got {ids.shape[1]}: lower the reader's "
                             f"max_len")
        # HF's rule counts real tokens along each padded row, so the positions exist before any packing
        positions = roberta_position_ids(ids, self.config["pad_token_id"])
        return super().encode({**batch, "roberta_position_ids" + suffix: positions}, suffix, sentence_only)

    def embed(self, batch: dict[str, torch.Tensor], suffix: str = "") -> torch.Tensor:
        ids, positions = batch["token_ids" + suffix], batch["roberta_position_ids" + suffix]
        return self.word_embeddings(ids) + self.position_embeddings(positions) + self.token_type_embeddings.weight[0]
