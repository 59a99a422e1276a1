"""HuggingFace DeBERTa-v2/v3 <-> torchpalm `DeBERTaV2`: explicit parameter name maps.

HF keeps query/key/value as three linears (`query_proj`, `key_proj`, `value_proj`); torchpalm fuses them into
one `qkv` linear (rows q, then k, then v). Every other name maps one to one. `DebertaV2Model` has no pooler; the
`ContextPooler` of `DebertaV2ForSequenceClassification` (`pooler.dense`, outside the `deberta.` prefix) maps to
the backbone's `pooler`, which heads read as `sentence_embedding`.
"""

from __future__ import annotations

import torch

from .name_map import NameMap

# torchpalm name -> HF name (without the optional "deberta." prefix)
PLAIN = {
    "word_embeddings.weight": "embeddings.word_embeddings.weight",
    "position_embeddings.weight": "embeddings.position_embeddings.weight",
    "token_type_embeddings.weight": "embeddings.token_type_embeddings.weight",
    "embed_proj.weight": "embeddings.embed_proj.weight",
    "embed_norm.weight": "embeddings.LayerNorm.weight",
    "embed_norm.bias": "embeddings.LayerNorm.bias",
    "rel_embeddings.weight": "encoder.rel_embeddings.weight",
    "rel_norm.weight": "encoder.LayerNorm.weight",
    "rel_norm.bias": "encoder.LayerNorm.bias",
    "conv.weight": "encoder.conv.conv.weight",
    "conv.bias": "encoder.conv.conv.bias",
    "conv_norm.weight": "encoder.conv.LayerNorm.weight",
    "conv_norm.bias": "encoder.conv.LayerNorm.bias",
    "pooler.weight": "pooler.dense.weight",
    "pooler.bias": "pooler.dense.bias",
}
LAYER = {
    "pos_key_proj.weight": "attention.self.pos_key_proj.weight",
    "pos_key_proj.bias": "attention.self.pos_key_proj.bias",
    "pos_query_proj.weight": "attention.self.pos_query_proj.weight",
    "pos_query_proj.bias": "attention.self.pos_query_proj.bias",
    "attn_out.weight": "attention.output.dense.weight",
    "attn_out.bias": "attention.output.dense.bias",
    "attn_norm.weight": "attention.output.LayerNorm.weight",
    "attn_norm.bias": "attention.output.LayerNorm.bias",
    "ffn_in.weight": "intermediate.dense.weight",
    "ffn_in.bias": "intermediate.dense.bias",
    "ffn_out.weight": "output.dense.weight",
    "ffn_out.bias": "output.dense.bias",
    "ffn_norm.weight": "output.LayerNorm.weight",
    "ffn_norm.bias": "output.LayerNorm.bias",
}
QKV = ("query_proj", "key_proj", "value_proj")
PREFIX = "deberta."
# The pooler is not in DebertaV2Model checkpoints (only in sequence classifiers): loading one leaves it as is.
OPTIONAL = ("pooler.weight", "pooler.bias")
DEBERTA_NAMES = NameMap(PLAIN, LAYER, qkv=QKV, unprefixed=OPTIONAL)


def is_deberta_state(hf_state: dict[str, torch.Tensor]) -> bool:
    """Whether an HF state dict is DeBERTa's (its attention names, `query_proj`, are its own)."""
    return any(".attention.self.query_proj." in k for k in hf_state)


def deberta_hf_to_torchpalm(hf_state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """An HF DeBERTa-v2 state dict (with or without `deberta.`) in torchpalm names, and the HF keys left out
    (MLM heads, classifiers)."""
    out, used = DEBERTA_NAMES.to_torchpalm({k.removeprefix(PREFIX): v for k, v in hf_state.items()})
    unused = [k for k in hf_state if k.removeprefix(PREFIX) not in used and not k.endswith("position_ids")]
    return out, unused


def deberta_torchpalm_to_hf(state: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """torchpalm `DeBERTaV2` names back to HF `DebertaV2Model`'s (optionally prefixed, e.g. 'deberta.'; the
    pooler is HF's top-level `pooler.dense`, never prefixed)."""
    return DEBERTA_NAMES.to_hf(state, prefix)
