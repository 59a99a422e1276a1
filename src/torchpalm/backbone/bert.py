"""BERT encoder (spec §7): embeddings -> post-LN transformer layers -> pooled [CLS].

The whole forward pass is in this file. Config keys are the ones PALM's `bert_config.json` and HF's
`config.json` use, so both load as they are. Query/key/value are one fused linear layer (one matmul instead
of three); `torchpalm.convert` maps HF's separate q/k/v weights onto it.
"""

from __future__ import annotations

import copy
import json
import os

import torch
import torch.nn.functional as F
from torch import nn

from .packing import Packing, packed_attention

ACTIVATIONS = {
    "gelu": lambda x: F.gelu(x),  # exact erf form, as Paddle's and HF's "gelu"
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "tanh": torch.tanh,
    "silu": F.silu,
    "swish": F.silu,
}

BACKBONE_INPUTS = {
    "token_ids": ([-1, -1], "int64"),
    "position_ids": ([-1, -1], "int64"),
    "segment_ids": ([-1, -1], "int64"),
    "input_mask": ([-1, -1], "int64"),
}

BACKBONE_OUTPUTS = {
    "word_embedding": ([-1, -1, -1], "float32"),
    "embedding_table": ([-1, -1], "float32"),
    "encoder_outputs": ([-1, -1, -1], "float32"),
    "sentence_embedding": ([-1, -1], "float32"),
    "sentence_pair_embedding": ([-1, -1], "float32"),
}


def load_config(config: dict | str | os.PathLike) -> dict:
    """A config dict, or the parsed JSON file it names (with a clear error for a missing or broken file)."""
    if isinstance(config, dict):
        return config
    path = os.fspath(config)
    if os.path.isdir(path):
        path = os.path.join(path, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"backbone config file not found: {path}")
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{e.lineno}: invalid JSON in backbone config: {e.msg}") from None


def _require(config: dict, key: str, alternatives: tuple[str, ...] = ()):
    for k in (key, *alternatives):
        if k in config:
            return config[k]
    names = " or ".join(repr(k) for k in (key, *alternatives))
    raise KeyError(f"backbone config lacks {names}; present keys: {sorted(config)}")


class EncoderLayer(nn.Module):
    """One post-LN transformer layer: x = LN(x + Drop(Attn(x))); x = LN(x + Drop(FFN(x)))."""

    def __init__(self, hidden: int, heads: int, intermediate: int, act: str, hidden_dropout: float,
                 attn_dropout: float, eps: float):
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden_size {hidden} is not divisible by num_attention_heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.attn_out = nn.Linear(hidden, hidden)
        self.attn_norm = nn.LayerNorm(hidden, eps=eps)
        self.ffn_in = nn.Linear(hidden, intermediate)
        self.ffn_out = nn.Linear(intermediate, hidden)
        self.ffn_norm = nn.LayerNorm(hidden, eps=eps)
        self.act = ACTIVATIONS[act]
        self.hidden_dropout = hidden_dropout
        self.attn_dropout = attn_dropout

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor | None,
                packing: Packing | None = None) -> torch.Tensor:
        """x: [B, L, H], or the packed [T, H] with `packing` (see `torchpalm.backbone.packing`)."""
        dropout_p = self.attn_dropout if self.training else 0.0
        if packing is not None:
            ctx = packed_attention(self.qkv(x), packing, self.heads, attn_bias, dropout_p)
        else:
            b, length, h = x.shape
            # [B, L, 3H] -> 3 x [B, heads, L, d]
            q, k, v = self.qkv(x).view(b, length, 3, self.heads, h // self.heads).permute(2, 0, 3, 1, 4)
            ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias, dropout_p=dropout_p)
            ctx = ctx.transpose(1, 2).reshape(b, length, h)
        x = self.attn_norm(x + F.dropout(self.attn_out(ctx), self.hidden_dropout, self.training))
        f = self.ffn_out(self.act(self.ffn_in(x)))
        return self.ffn_norm(x + F.dropout(f, self.hidden_dropout, self.training))


class BERT(nn.Module):
    """BERT backbone.

    Args follow PALM's constructor (spec §7.1); `intermediate_size` (default 4H) and `layer_norm_eps`
    (default 1e-6, PALM's; HF configs say 1e-12) are read from HF configs when present.

    Inputs (a batch dict): token_ids, position_ids, segment_ids [B, L] int64; input_mask [B, L] (1 = token).
    Outputs (dict): word_embedding [B, L, H] (post-LN embedding sum), embedding_table [V, H],
    encoder_outputs [B, L, H], sentence_embedding [B, H] (tanh-pooled [CLS]), sentence_pair_embedding (same);
    with `is_pairwise`, the same four for the `*_neg` inputs when they are in the batch.

    Padded batches run packed by default: the dense layers see only the real tokens (`torchpalm.backbone.packing`),
    which gives the padded computation's outputs at every real position (padded positions of `encoder_outputs`
    and `word_embedding` are zeros instead of values no head reads). Set `pack_tokens = False` on the backbone
    for the padded computation (the reference the tests compare against).
    """

    pack_tokens = True
    # the [B, L] id inputs `embed` reads (packed along with the tokens)
    embedding_inputs = ("token_ids", "position_ids", "segment_ids")

    def __init__(
        self,
        hidden_size: int,
        num_hidden_layers: int,
        num_attention_heads: int,
        vocab_size: int,
        max_position_embeddings: int,
        type_vocab_size: int,
        hidden_act: str,
        hidden_dropout_prob: float,
        attention_probs_dropout_prob: float,
        initializer_range: float,
        is_pairwise: bool = False,
        phase: str = "train",
        intermediate_size: int | None = None,
        layer_norm_eps: float = 1e-6,
        pad_token_id: int = 0,
    ):
        super().__init__()
        if hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act {hidden_act!r} is not supported; choose one of {sorted(ACTIVATIONS)}")
        if phase not in ("train", "predict"):
            raise ValueError(f"phase must be 'train' or 'predict', got {phase!r}")
        self.config = {
            "hidden_size": hidden_size,
            "num_hidden_layers": num_hidden_layers,
            "num_attention_heads": num_attention_heads,
            "vocab_size": vocab_size,
            "max_position_embeddings": max_position_embeddings,
            "type_vocab_size": type_vocab_size,
            "hidden_act": hidden_act,
            "hidden_dropout_prob": hidden_dropout_prob,
            "attention_probs_dropout_prob": attention_probs_dropout_prob,
            "initializer_range": initializer_range,
            "intermediate_size": intermediate_size or 4 * hidden_size,
            "layer_norm_eps": layer_norm_eps,
            "pad_token_id": pad_token_id,
        }
        self.is_pairwise = is_pairwise
        self.phase = phase
        self.word_embeddings = nn.Embedding(vocab_size, hidden_size)
        self.position_embeddings = nn.Embedding(max_position_embeddings, hidden_size)
        self.token_type_embeddings = nn.Embedding(type_vocab_size, hidden_size)
        self.embed_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.hidden_dropout = hidden_dropout_prob
        self.layers = nn.ModuleList(
            EncoderLayer(hidden_size, num_attention_heads, self.config["intermediate_size"], hidden_act,
                         hidden_dropout_prob, attention_probs_dropout_prob, layer_norm_eps)
            for _ in range(num_hidden_layers)
        )
        self.pooler = nn.Linear(hidden_size, hidden_size)
        self.reset_parameters()
        # PALM's predict-phase backbone has its dropout off; train()/eval() switch it from then on.
        self.train(phase == "train")

    @classmethod
    def _kwargs_from_config(cls, config: dict | str | os.PathLike) -> dict:
        config = load_config(config)
        return {
            "hidden_size": _require(config, "hidden_size"),
            "num_hidden_layers": _require(config, "num_hidden_layers"),
            "num_attention_heads": _require(config, "num_attention_heads"),
            "vocab_size": _require(config, "vocab_size"),
            "max_position_embeddings": _require(config, "max_position_embeddings"),
            "type_vocab_size": _require(config, "sent_type_vocab_size", ("type_vocab_size",)),
            "hidden_act": _require(config, "hidden_act"),
            "hidden_dropout_prob": _require(config, "hidden_dropout_prob"),
            "attention_probs_dropout_prob": _require(config, "attention_probs_dropout_prob"),
            "initializer_range": config.get("initializer_range", 0.02),
            "is_pairwise": config.get("is_pairwise", False),
            "intermediate_size": config.get("intermediate_size"),
            "layer_norm_eps": config.get("layer_norm_eps", 1e-6),
            "pad_token_id": config.get("pad_token_id", 0),
        }

    @classmethod
    def from_config(cls, config: dict | str | os.PathLike, phase: str = "train") -> BERT:
        """Builds the backbone from a parsed `bert_config.json` / HF `config.json` (or its path)."""
        return cls(**cls._kwargs_from_config(config), phase=phase)

    def reset_parameters(self) -> None:
        """Truncated-normal(initializer_range) weights, zero biases, unit LayerNorms (spec §7.3)."""
        std = self.config["initializer_range"]
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.trunc_normal_(module.weight, std=std, a=-2 * std, b=2 * std)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    @property
    def inputs_attr(self) -> dict:
        attrs = dict(BACKBONE_INPUTS)
        if self.is_pairwise and self.phase == "train":
            attrs.update({f"{k}_neg": v for k, v in BACKBONE_INPUTS.items()})
        return attrs

    @property
    def outputs_attr(self) -> dict:
        attrs = dict(BACKBONE_OUTPUTS)
        if self.is_pairwise and self.phase == "train":
            attrs.update({f"{k}_neg": v for k, v in BACKBONE_OUTPUTS.items() if k != "embedding_table"})
        return attrs

    def embed(self, batch: dict[str, torch.Tensor], suffix: str = "") -> torch.Tensor:
        e = (self.word_embeddings(batch["token_ids" + suffix])
             + self.position_embeddings(batch["position_ids" + suffix])
             + self.token_type_embeddings(batch["segment_ids" + suffix]))
        return e

    def encode(self, batch: dict[str, torch.Tensor], suffix: str = "") -> dict[str, torch.Tensor]:
        """Runs one branch (the plain inputs, or the `_neg` ones) through the encoder."""
        mask = batch.get("input_mask" + suffix)
        packing = Packing.from_mask(mask) if mask is not None and self.pack_tokens else None
        # key-padding mask as an additive bias [B, 1, 1, L]; None when nothing is padded (faster kernels; on CPU
        # the check's read-back costs nothing, on CUDA it would stall the launch queue, so the bias is built)
        attn_bias = None
        if mask is not None and (packing is not None or mask.is_cuda or not bool(mask.all())):
            attn_bias = torch.zeros(mask.shape, dtype=self.embed_norm.weight.dtype, device=mask.device)
            attn_bias = attn_bias.masked_fill(mask == 0, torch.finfo(attn_bias.dtype).min)
            attn_bias = attn_bias.reshape(mask.shape[0], 1, 1, -1)
        if packing is not None:  # the id inputs as [T] vectors: everything up to attention sees real tokens only
            batch = {k + suffix: packing.pack(batch[k + suffix]) for k in self.embedding_inputs}
        # 1. embeddings: word + position + segment (+ task, ERNIE), then LayerNorm and dropout
        emb = F.dropout(self.embed_norm(self.embed(batch, suffix)), self.hidden_dropout, self.training)
        # 2. post-LN transformer layers
        x = emb
        for layer in self.layers:
            x = layer(x, attn_bias, packing)
        if packing is not None:
            emb, x = packing.unpack(emb), packing.unpack(x)
        # 3. pooled [CLS]
        pooled = torch.tanh(self.pooler(x[:, 0]))
        return {"word_embedding": emb, "encoder_outputs": x, "sentence_embedding": pooled,
                "sentence_pair_embedding": pooled}

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = self.encode(batch)
        out["embedding_table"] = self.word_embeddings.weight
        if self.is_pairwise and "token_ids_neg" in batch:
            out.update({f"{k}_neg": v for k, v in self.encode(batch, "_neg").items()})
        return out

    def clone(self, phase: str) -> BERT:
        """A copy of this backbone (same weights) for another phase."""
        new = copy.deepcopy(self)
        new.phase = phase
        new.train(phase == "train")
        return new

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

