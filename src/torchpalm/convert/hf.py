"""HuggingFace `BertModel` <-> torchpalm BERT/ERNIE parameter names.

HF keeps query/key/value as three linears; torchpalm fuses them into one `qkv` linear (rows q, then k, then v),
so those three are concatenated on the way in and split on the way out. Every other name maps one to one.
"""

from __future__ import annotations

import re

import torch

# torchpalm name -> HF name (without the optional "bert." prefix); {i} is the layer index.
_PLAIN = {
    "word_embeddings.weight": "embeddings.word_embeddings.weight",
    "position_embeddings.weight": "embeddings.position_embeddings.weight",
    "token_type_embeddings.weight": "embeddings.token_type_embeddings.weight",
    "embed_norm.weight": "embeddings.LayerNorm.weight",
    "embed_norm.bias": "embeddings.LayerNorm.bias",
    "pooler.weight": "pooler.dense.weight",
    "pooler.bias": "pooler.dense.bias",
}
_LAYER = {
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
_QKV = ("query", "key", "value")
# Old TF-converted checkpoints name LayerNorm parameters gamma/beta.
_LEGACY = {".gamma": ".weight", ".beta": ".bias"}


def _strip(name: str) -> str:
    for old, new in _LEGACY.items():
        if name.endswith(old):
            name = name[: -len(old)] + new
    return name[len("bert."):] if name.startswith("bert.") else name


def hf_to_torchpalm(hf_state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Converts an HF BERT state dict (with or without the `bert.` prefix) to torchpalm names.

    Returns the converted dict and the HF keys that have no torchpalm counterpart (e.g. MLM/NSP heads).
    """
    state = {_strip(k): v for k, v in hf_state.items()}
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for ours, theirs in _PLAIN.items():
        if theirs in state:
            out[ours] = state[theirs]
            used.add(theirs)
    layer_ids = sorted({int(m.group(1)) for k in state if (m := re.match(r"encoder\.layer\.(\d+)\.", k))})
    for i in layer_ids:
        prefix = f"encoder.layer.{i}."
        for ours, theirs in _LAYER.items():
            if prefix + theirs in state:
                out[f"layers.{i}.{ours}"] = state[prefix + theirs]
                used.add(prefix + theirs)
        for kind in ("weight", "bias"):
            keys = [f"{prefix}attention.self.{p}.{kind}" for p in _QKV]
            if all(k in state for k in keys):
                out[f"layers.{i}.qkv.{kind}"] = torch.cat([state[k] for k in keys], dim=0)
                used.update(keys)
    unused = [k for k in hf_state if _strip(k) not in used and not _strip(k).endswith("position_ids")]
    return out, unused


def torchpalm_to_hf(state: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """Converts torchpalm BERT names back to HF `BertModel` names (optionally prefixed, e.g. 'bert.')."""
    out: dict[str, torch.Tensor] = {}
    for ours, theirs in _PLAIN.items():
        if ours in state:
            out[prefix + theirs] = state[ours]
    for name, value in state.items():
        m = re.match(r"layers\.(\d+)\.(.+)$", name)
        if not m:
            continue
        i, rest = m.group(1), m.group(2)
        hf_prefix = f"{prefix}encoder.layer.{i}."
        if rest in _LAYER:
            out[hf_prefix + _LAYER[rest]] = value
        elif rest.startswith("qkv."):
            kind = rest.split(".", 1)[1]
            for part, tensor in zip(_QKV, value.chunk(3, dim=0)):
                out[f"{hf_prefix}attention.self.{part}.{kind}"] = tensor.contiguous()
    return out
