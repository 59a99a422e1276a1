"""HuggingFace ModernBERT <-> torchpalm parameter names (an explicit map; every tensor keeps its shape).

HF's `ModernBertModel` saves without a prefix (`layers.0.attn.Wqkv.weight`); its task models put it under
`model.` and add `head.*` (the prediction head, which torchpalm's backbone owns: see backbone/modernbert.py),
`decoder.bias` (masked LM; the decoder weight is the tied token embeddings) or `classifier.*`.
"""

from __future__ import annotations

import re

import torch

from .name_map import NameMap

# torchpalm name -> HF name (without the task models' "model." prefix); {i} is the layer index
PLAIN = {
    "tok_embeddings.weight": "embeddings.tok_embeddings.weight",
    "embed_norm.weight": "embeddings.norm.weight",
    "embed_norm.bias": "embeddings.norm.bias",
    "final_norm.weight": "final_norm.weight",
    "final_norm.bias": "final_norm.bias",
}
# the prediction head sits beside `model.` in HF's task models, and is absent from a bare ModernBertModel
HEAD = {
    "head.dense.weight": "head.dense.weight",
    "head.dense.bias": "head.dense.bias",
    "head.norm.weight": "head.norm.weight",
    "head.norm.bias": "head.norm.bias",
}
LAYER = {
    "attn_norm.weight": "attn_norm.weight",
    "attn_norm.bias": "attn_norm.bias",
    "qkv.weight": "attn.Wqkv.weight",
    "qkv.bias": "attn.Wqkv.bias",
    "attn_out.weight": "attn.Wo.weight",
    "attn_out.bias": "attn.Wo.bias",
    "mlp_norm.weight": "mlp_norm.weight",
    "mlp_norm.bias": "mlp_norm.bias",
    "mlp_in.weight": "mlp.Wi.weight",
    "mlp_in.bias": "mlp.Wi.bias",
    "mlp_out.weight": "mlp.Wo.weight",
    "mlp_out.bias": "mlp.Wo.bias",
}
OPTIONAL = tuple(HEAD)  # a bare ModernBertModel checkpoint has no prediction head; the backbone keeps its own
MODERNBERT_NAMES = NameMap({**PLAIN, **HEAD}, LAYER, layers_at="layers.", unprefixed=OPTIONAL)


def is_modernbert_state(state: dict) -> bool:
    """Whether an HF state dict is a ModernBERT's (its names are unlike BERT's)."""
    return any(k.endswith(("embeddings.tok_embeddings.weight", "attn.Wqkv.weight")) for k in state)


def is_torchpalm_modernbert_state(state: dict) -> bool:
    """Whether a torchpalm state dict (or part of one) is a ModernBERT backbone's."""
    ours = {"tok_embeddings.weight", "final_norm.weight", "final_norm.bias", *HEAD}  # (BERT has embed_norm too)
    return any(k in ours or re.match(r"layers\.\d+\.mlp_(in|out|norm)\.", k) for k in state)


def modernbert_hf_to_torchpalm(hf_state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """HF ModernBERT names (with or without `model.`) -> torchpalm's; returns (converted, unused HF keys)."""
    out, used = MODERNBERT_NAMES.to_torchpalm({k.removeprefix("model."): v for k, v in hf_state.items()})
    return out, [k for k in hf_state if k.removeprefix("model.") not in used]


def modernbert_torchpalm_to_hf(state: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """torchpalm ModernBERT names -> HF's (`prefix` before the encoder's names, e.g. 'model.' for a task model;
    the prediction head's names never take it)."""
    return MODERNBERT_NAMES.to_hf(state, prefix)
