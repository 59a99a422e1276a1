"""DeBERTa v2 / v3 encoder (HF `DebertaV2Model`): disentangled attention over relative positions.

What differs from BERT (bert.py), all in this file:

* embeddings: word (+ absolute position when `position_biased_input`, off in v3) (+ segment when
  `type_vocab_size` > 0, 0 in v3), an optional `embed_proj` when `embedding_size` != `hidden_size`, LayerNorm,
  then zeroed at padding (as HF does: only an optional convolution after layer 0 ever reads those rows);
* attention scores are content-to-content plus content-to-position (`c2p`: each query against the relative
  position embedding of its key's distance) plus position-to-content (`p2c`: each key against the embedding of
  the query's distance), divided by sqrt(head_size * (1 + number of relative terms)). Distances are log-bucketed
  beyond `position_buckets / 2` (v3: 256 buckets) and clamped to the `max_relative_positions` span. The relative
  embeddings are one table shared by all layers (LayerNorm-ed in v3, `norm_rel_ebd`), projected by each layer's
  own key/query weights (`share_att_key`, v3) or by separate `pos_key_proj` / `pos_query_proj`;
* the pooled output is HF's `ContextPooler` (`pooler_hidden_act`, default gelu, on the first token), what
  `DebertaV2ForSequenceClassification` puts under its classifier; heads read it as `sentence_embedding`.

Relative positions are per row of the padded batch, so every sequence counts them from its own first token.
The scores only need the distances -(L-1)..L-1 of a batch of length L, so each layer projects only the relative
embedding rows those distances reach (at most 2L-1 of v3's 512) instead of the whole table, as HF does.

Padded batches run packed by default, as BERT's do (`torchpalm.backbone.packing`): the dense layers see the real
tokens only, and attention runs per group of similar lengths, each group padded to its own longest sequence
(positions still restart at every sequence). `pack_tokens = False` gives the plain padded computation.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from .base import Backbone
from .bert import ACTIVATIONS, BACKBONE_OUTPUTS, check_config, config_source, load_config, refuse_unknown_keys
from .packing import Packing

INPUTS = {"token_ids": ([-1, -1], "int64"), "segment_ids": ([-1, -1], "int64"), "input_mask": ([-1, -1], "int64")}
TOKEN_OUTPUTS = ("encoder_outputs", "word_embedding")
RELATIVE_TERMS = ("c2p", "p2c")

# The model settings this backbone reads from a config.json (with HF's defaults); a key neither here nor in
# bert.NEUTRAL_KEYS is refused with the file's name (`refuse_unknown_keys`).
DEFAULTS = {
    "hidden_size": None, "num_hidden_layers": None, "num_attention_heads": None, "vocab_size": None,
    "intermediate_size": None, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1, "max_position_embeddings": 512, "type_vocab_size": 0,
    "initializer_range": 0.02, "layer_norm_eps": 1e-7, "relative_attention": False, "max_relative_positions": -1,
    "position_buckets": -1, "pos_att_type": None, "position_biased_input": True, "share_att_key": False,
    "norm_rel_ebd": "none", "embedding_size": None, "pad_token_id": 0, "pooler_hidden_size": None,
    "pooler_hidden_act": "gelu", "pooler_dropout": 0.0, "conv_kernel_size": 0, "conv_groups": 1,
    "conv_act": "tanh", "attention_head_size": None, "is_pairwise": False,
}


def parse_pos_att_type(value) -> tuple[str, ...]:
    """HF's `pos_att_type`: a list, or a string such as "p2c|c2p" (deberta-v3's config.json); None: none."""
    if value is None:
        return ()
    items = value.lower().split("|") if isinstance(value, str) else list(value)
    return tuple(str(x).strip() for x in items if str(x).strip())


def log_bucket(relative: torch.Tensor, buckets: int, max_position: int) -> torch.Tensor:
    """DeBERTa's relative position buckets: distances below `buckets // 2` kept, longer ones log-spaced up to
    `max_position`. The float operations are HF's `make_log_bucket_position`, in the same order and dtypes, so
    a distance at a rounding edge of `ceil` falls in the same bucket."""
    sign = torch.sign(relative)
    mid = buckets // 2
    inside = (relative < mid) & (relative > -mid)
    absolute = torch.where(inside, torch.tensor(mid - 1).type_as(relative), torch.abs(relative))
    log_pos = (torch.ceil(torch.log(absolute / mid) / torch.log(torch.tensor((max_position - 1) / mid))
                          * (mid - 1)) + mid)
    return torch.where(absolute <= mid, relative.type_as(log_pos), log_pos * sign).long()


class DisentangledLayer(nn.Module):
    """One post-LN DeBERTa layer: x = LN(x + Drop(Attn(x, rel))); x = LN(x + Drop(FFN(x))).

    `qkv` fuses HF's query_proj / key_proj / value_proj (rows q, k, v); `pos_key_proj` / `pos_query_proj`
    exist only without `share_att_key`, for the relative terms they serve."""

    def __init__(self, hidden: int, heads: int, intermediate: int, act: str, hidden_dropout: float,
                 attn_dropout: float, eps: float, terms: tuple[str, ...], share_att_key: bool, relative: bool):
        super().__init__()
        self.heads, self.terms, self.share_att_key = heads, terms if relative else (), share_att_key
        # HF divides by sqrt(head_size * (1 + the listed terms)) even when relative_attention is off
        self.scale_factor = 1 + len(terms)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        if relative and not share_att_key:
            if "c2p" in terms:
                self.pos_key_proj = nn.Linear(hidden, hidden)
            if "p2c" in terms:
                self.pos_query_proj = nn.Linear(hidden, hidden)
        self.attn_out = nn.Linear(hidden, hidden)
        self.attn_norm = nn.LayerNorm(hidden, eps=eps)
        self.ffn_in = nn.Linear(hidden, intermediate)
        self.ffn_out = nn.Linear(intermediate, hidden)
        self.ffn_norm = nn.LayerNorm(hidden, eps=eps)
        self.act = ACTIVATIONS[act]
        self.hidden_dropout, self.attn_dropout = hidden_dropout, attn_dropout

    def position_projections(self, rel: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The relative embedding rows `rel` [R, H] as keys (for c2p) and queries (for p2c): [heads, R, d] each,
        or None for a term the model does not use."""
        h = rel.shape[-1]
        d = h // self.heads
        rel = F.dropout(rel, self.hidden_dropout, self.training)  # a mask of its own in every layer, as HF
        w, b = self.qkv.weight, self.qkv.bias
        pos_key = pos_query = None
        if "c2p" in self.terms:
            pos_key = (F.linear(rel, w[h:2 * h], b[h:2 * h]) if self.share_att_key else self.pos_key_proj(rel))
            pos_key = pos_key.view(-1, self.heads, d).transpose(0, 1)
        if "p2c" in self.terms:
            pos_query = F.linear(rel, w[:h], b[:h]) if self.share_att_key else self.pos_query_proj(rel)
            pos_query = pos_query.view(-1, self.heads, d).transpose(0, 1)
        return pos_key, pos_query

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor,
                  rel: torch.Tensor | None, index: torch.Tensor | None) -> torch.Tensor:
        """q, k, v [n, heads, l, d]; key_mask [n, l] bool (True = token); rel [R, H] the relative embedding rows
        the distances reach and index [l, l] (query i, key j) -> their row in rel, for distance i - j.
        Returns the context [n, heads, l, d]."""
        d = q.shape[-1]
        scale = (d * self.scale_factor) ** 0.5
        n, heads, length = q.shape[:3]
        masked = ~key_mask[:, None, None, :]
        if not self.terms:  # a key-padding bias alone, [n, 1, 1, l]
            bias = q.new_zeros(masked.shape).masked_fill(masked, torch.finfo(q.dtype).min)
        else:
            pos_key, pos_query = self.position_projections(rel)
            bias = 0
            if pos_key is not None:  # c2p[i, j] = q_i . pos_key[index[i, j]]
                scores = torch.matmul(q, pos_key.transpose(-1, -2))  # [n, heads, l, R]
                bias = bias + scores.gather(-1, index.expand(n, heads, length, length))
            if pos_query is not None:  # p2c[i, j] = k_j . pos_query[index[i, j]]: gathered per key, transposed
                scores = torch.matmul(k, pos_query.transpose(-1, -2))  # [n, heads, l (key), R]
                bias = bias + scores.gather(-1, index.t().expand(n, heads, length, length)).transpose(-1, -2)
            # padded keys get the most negative score, as HF's masked_fill (not added: no overflow to -inf)
            bias = (bias / scale).masked_fill(masked, torch.finfo(q.dtype).min)
        dropout_p = self.attn_dropout if self.training else 0.0
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout_p, scale=1.0 / scale)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor, rel: torch.Tensor | None,
                index: torch.Tensor | None, packing: Packing | None = None) -> torch.Tensor:
        """x: [B, L, H] (key_mask [B, L] bool; index [L, L]), or the packed [T, H] with `packing` (index: the
        [L, L] of the batch's longest row, cut per group)."""
        h = x.shape[-1]
        d = h // self.heads
        qkv = self.qkv(x)
        if packing is None:
            b, length = x.shape[:2]
            q, k, v = qkv.view(b, length, 3, self.heads, d).permute(2, 0, 3, 1, 4)
            ctx = self.attention(q, k, v, key_mask, rel, index).transpose(1, 2).reshape(b, length, h)
        else:  # each group of similar lengths padded to its own longest row (see packing.attention_groups)
            groups = packing.attention_groups()
            outs = []
            for part, bias in zip(groups.split(qkv), groups.biases, strict=True):
                n, width = part.shape[:2]
                q, k, v = (t.transpose(1, 2) for t in part.view(n, width, 3, self.heads, d).unbind(2))
                group_index = None if index is None else index[:width, :width]
                ctx = self.attention(q, k, v, bias.view(n, width) == 0, rel, group_index)
                outs.append(ctx.transpose(1, 2).reshape(n, width, h))
            ctx = groups.merge(outs)
        x = self.attn_norm(x + F.dropout(self.attn_out(ctx), self.hidden_dropout, self.training))
        f = self.ffn_out(self.act(self.ffn_in(x)))
        return self.ffn_norm(x + F.dropout(f, self.hidden_dropout, self.training))


class DeBERTaV2(Backbone):
    """DeBERTa v2 / v3 backbone, from HF `config.json` files as they are (`microsoft/deberta-v3-base`, ...).

    Args: HF `DebertaV2Config`'s names and defaults (see `DEFAULTS`); `pos_att_type` as a list or "p2c|c2p".
    A convolution after layer 0 (`conv_kernel_size` > 0, deberta-v2-xlarge) is supported.

    Inputs (a batch dict): token_ids [B, L] int64, input_mask [B, L] (1 = token); segment_ids [B, L] when
    `type_vocab_size` > 0. Absolute positions (when used) are 0..L-1, as HF's default.
    Outputs (dict): word_embedding [B, L, H] (embeddings after LayerNorm, zero at padding), embedding_table
    [V, E], encoder_outputs [B, L, H], sentence_embedding / sentence_pair_embedding [B, H] (ContextPooler:
    act(dense(first token))); with `is_pairwise`, the same for the `*_neg` inputs when in the batch.
    """

    pack_tokens = True

    def __init__(self, hidden_size: int, num_hidden_layers: int, num_attention_heads: int, vocab_size: int,
                 intermediate_size: int | None = None, hidden_act: str = "gelu", hidden_dropout_prob: float = 0.1,
                 attention_probs_dropout_prob: float = 0.1, max_position_embeddings: int = 512,
                 type_vocab_size: int = 0, initializer_range: float = 0.02, layer_norm_eps: float = 1e-7,
                 relative_attention: bool = False, max_relative_positions: int = -1, position_buckets: int = -1,
                 pos_att_type=None, position_biased_input: bool = True, share_att_key: bool = False,
                 norm_rel_ebd: str = "none", embedding_size: int | None = None, pad_token_id: int = 0,
                 pooler_hidden_size: int | None = None, pooler_hidden_act: str = "gelu",
                 pooler_dropout: float = 0.0, conv_kernel_size: int = 0, conv_groups: int = 1,
                 conv_act: str = "tanh", attention_head_size: int | None = None, is_pairwise: bool = False,
                 phase: str = "train"):
        super().__init__()
        source = f"{type(self).__name__} arguments"
        for key, value in (("hidden_act", hidden_act), ("pooler_hidden_act", pooler_hidden_act),
                           ("conv_act", conv_act)):
            if value not in ACTIVATIONS:
                raise ValueError(f"{source}: {key} {value!r} is not supported; choose one of {sorted(ACTIVATIONS)}")
        if phase not in ("train", "predict"):
            raise ValueError(f"phase must be 'train' or 'predict', got {phase!r}")
        check_config(dict(hidden_size=hidden_size, num_hidden_layers=num_hidden_layers,
                          num_attention_heads=num_attention_heads, vocab_size=vocab_size,
                          max_position_embeddings=max_position_embeddings, intermediate_size=intermediate_size,
                          hidden_dropout_prob=hidden_dropout_prob,
                          attention_probs_dropout_prob=attention_probs_dropout_prob,
                          initializer_range=initializer_range, layer_norm_eps=layer_norm_eps), source)
        terms = parse_pos_att_type(pos_att_type)
        unknown = [t for t in terms if t not in RELATIVE_TERMS]
        if unknown:
            raise ValueError(f"{source}: pos_att_type {unknown[0]!r} is not a relative attention term; DeBERTa "
                             f"has {list(RELATIVE_TERMS)}")
        if attention_head_size is not None and attention_head_size * num_attention_heads != hidden_size:
            raise ValueError(f"{source}: attention_head_size {attention_head_size} x num_attention_heads "
                             f"{num_attention_heads} != hidden_size {hidden_size} is not supported")
        if pooler_hidden_size is not None and pooler_hidden_size != hidden_size:
            raise ValueError(f"{source}: pooler_hidden_size {pooler_hidden_size} != hidden_size {hidden_size} is "
                             f"not supported (the pooler reads the hidden states)")
        span = max_relative_positions if max_relative_positions >= 1 else max_position_embeddings
        self.config_source = source
        self.config = {
            "model_type": "deberta-v2", "hidden_size": hidden_size, "num_hidden_layers": num_hidden_layers,
            "num_attention_heads": num_attention_heads, "vocab_size": vocab_size,
            "intermediate_size": intermediate_size or 4 * hidden_size, "hidden_act": hidden_act,
            "hidden_dropout_prob": hidden_dropout_prob, "attention_probs_dropout_prob": attention_probs_dropout_prob,
            "max_position_embeddings": max_position_embeddings, "type_vocab_size": type_vocab_size,
            "initializer_range": initializer_range, "layer_norm_eps": layer_norm_eps,
            "relative_attention": relative_attention, "max_relative_positions": max_relative_positions,
            "position_buckets": position_buckets, "pos_att_type": list(terms),
            "position_biased_input": position_biased_input, "share_att_key": share_att_key,
            "norm_rel_ebd": norm_rel_ebd, "embedding_size": embedding_size or hidden_size,
            "pad_token_id": pad_token_id, "pooler_hidden_size": hidden_size, "pooler_hidden_act": pooler_hidden_act,
            "pooler_dropout": pooler_dropout, "conv_kernel_size": conv_kernel_size, "conv_groups": conv_groups,
            "conv_act": conv_act,
        }
        self.is_pairwise, self.phase = is_pairwise, phase
        self.max_relative_positions = span
        self.position_buckets = position_buckets
        # the relative embedding table has 2 * span rows: span = the buckets when bucketed, else the max distance
        self.att_span = position_buckets if position_buckets > 0 else span
        embedding = self.config["embedding_size"]
        self.word_embeddings = nn.Embedding(vocab_size, embedding, padding_idx=pad_token_id)
        self.position_embeddings = nn.Embedding(max_position_embeddings, embedding) if position_biased_input else None
        self.token_type_embeddings = nn.Embedding(type_vocab_size, embedding) if type_vocab_size > 0 else None
        self.embed_proj = nn.Linear(embedding, hidden_size, bias=False) if embedding != hidden_size else None
        self.embed_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.hidden_dropout = hidden_dropout_prob
        self.relative_attention = relative_attention
        self.rel_embeddings = nn.Embedding(2 * self.att_span, hidden_size) if relative_attention else None
        norms = [x.strip() for x in str(norm_rel_ebd).lower().split("|")]
        self.rel_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps) if "layer_norm" in norms else None
        self.layers = nn.ModuleList(
            DisentangledLayer(hidden_size, num_attention_heads, self.config["intermediate_size"], hidden_act,
                              hidden_dropout_prob, attention_probs_dropout_prob, layer_norm_eps, terms,
                              share_att_key, relative_attention)
            for _ in range(num_hidden_layers))
        if conv_kernel_size > 0:
            self.conv = nn.Conv1d(hidden_size, hidden_size, conv_kernel_size, padding=(conv_kernel_size - 1) // 2,
                                  groups=conv_groups)
            self.conv_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        else:
            self.conv = self.conv_norm = None
        self.pooler = nn.Linear(hidden_size, hidden_size)
        self.reset_parameters()
        self.train(phase == "train")

    # ------------------------------------------------------------------ building
    @classmethod
    def from_config(cls, config: dict | str | os.PathLike, phase: str = "train") -> DeBERTaV2:
        """Builds the backbone from an HF DeBERTa-v2/v3 `config.json` (or its parsed dict). Keys that would
        change the model but that this backbone does not know are refused, naming the file."""
        source, config = config_source(config), load_config(config)
        refuse_unknown_keys(config, DEFAULTS, source, "DeBERTaV2")
        declared = config.get("model_type")
        if declared is not None and declared != "deberta-v2":
            raise ValueError(f"{source}: model_type {declared!r} is not DeBERTa-v2/v3 ('deberta-v2')")
        missing = [k for k, v in DEFAULTS.items() if v is None and k not in config
                   and k not in ("intermediate_size", "embedding_size", "pooler_hidden_size", "attention_head_size")]
        if missing:
            raise KeyError(f"{source} lacks {missing[0]!r}; present keys: {sorted(config)}")
        kwargs = {k: config.get(k, default) for k, default in DEFAULTS.items()}
        kwargs = {k: (DEFAULTS[k] if v is None and DEFAULTS[k] is not None else v) for k, v in kwargs.items()}
        check_config({k: v for k, v in kwargs.items() if k != "type_vocab_size"}, source)  # 0 is allowed here
        try:
            backbone = cls(**kwargs, phase=phase)
        except ValueError as e:
            raise ValueError(str(e).replace(f"{cls.__name__} arguments", source)) from None
        backbone.config_source = source
        return backbone

    def reset_parameters(self) -> None:
        """HF's initialisation: normal(initializer_range) weights, zero biases, the padding row zero, unit
        LayerNorms (the checkpoint replaces all of it)."""
        std = self.config["initializer_range"]
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding, nn.Conv1d)):
                nn.init.normal_(module.weight, std=std)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
                if isinstance(module, nn.Embedding) and module.padding_idx is not None:
                    with torch.no_grad():
                        module.weight[module.padding_idx].zero_()
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def check_reader(self, reader) -> None:
        """Refuses what `refuse_oversized_reader` refuses (the position table only when the model has one)."""
        positions = self.config["max_position_embeddings"] if self.position_embeddings is not None else None
        self.refuse_oversized_reader(reader, self.config["vocab_size"], positions)

    @property
    def inputs_attr(self) -> dict:
        attrs = {k: v for k, v in INPUTS.items() if k != "segment_ids" or self.token_type_embeddings is not None}
        if self.is_pairwise and self.phase == "train":
            attrs.update({f"{k}_neg": v for k, v in list(attrs.items())})
        return attrs

    @property
    def outputs_attr(self) -> dict:
        attrs = dict(BACKBONE_OUTPUTS)
        if self.is_pairwise and self.phase == "train":
            attrs.update({f"{k}_neg": v for k, v in BACKBONE_OUTPUTS.items() if k != "embedding_table"})
        return attrs

    # ------------------------------------------------------------------ forward
    def relative_index(self, length: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """For a batch of length L: the relative embedding rows the distances -(L-1)..L-1 reach, as (first row,
        last row + 1) in a [2] tensor, and index [L, L]: (query i, key j) -> that row minus the first (HF's
        `clamp(bucket(i - j) + span, 0, 2 span - 1)`)."""
        q = torch.arange(length, device=device)
        relative = q[:, None] - q[None, :]
        if self.position_buckets > 0:
            relative = log_bucket(relative, self.position_buckets, self.max_relative_positions)
        rows = torch.clamp(relative + self.att_span, 0, 2 * self.att_span - 1)
        # rows grow with i - j: the corners hold the first and last rows any pair reaches
        return rows, torch.stack([rows[0, -1], rows[-1, 0] + 1])

    def embed(self, batch: dict[str, torch.Tensor], suffix: str) -> torch.Tensor:
        """Embeddings [*, H] of `batch`'s ids (padded [B, L] or packed [T]) before LayerNorm."""
        ids = batch["token_ids" + suffix]
        e = self.word_embeddings(ids)
        if self.position_embeddings is not None:
            e = e + self.position_embeddings(batch["positions" + suffix])
        if self.token_type_embeddings is not None:
            e = e + self.token_type_embeddings(batch["segment_ids" + suffix])
        return self.embed_proj(e) if self.embed_proj is not None else e

    def encode(self, batch: dict[str, torch.Tensor], suffix: str = "") -> dict[str, torch.Tensor]:
        """Runs one branch (the plain inputs, or the `_neg` ones) through the encoder."""
        ids = batch["token_ids" + suffix]
        mask = batch.get("input_mask" + suffix)
        mask = torch.ones_like(ids) if mask is None else mask
        b, length = ids.shape
        traced = torch.compiler.is_compiling()
        # the convolution after layer 0 reads neighbouring rows, padding included: padded layout only
        packing = (Packing.from_mask(mask) if self.pack_tokens and not traced and self.conv is None else None)
        inputs = {"token_ids" + suffix: ids}
        if self.position_embeddings is not None:
            inputs["positions" + suffix] = torch.arange(length, device=ids.device).expand(b, length)
        if self.token_type_embeddings is not None:
            inputs["segment_ids" + suffix] = batch["segment_ids" + suffix]
        if packing is not None:  # the id inputs as [T] vectors: everything up to attention sees real tokens only
            inputs = {k: packing.pack(v) for k, v in inputs.items()}
        # 1. embeddings -> LayerNorm -> zero at padding -> dropout
        emb = self.embed_norm(self.embed(inputs, suffix))
        if packing is None:
            emb = emb * mask.unsqueeze(-1).to(emb.dtype)
        emb = F.dropout(emb, self.hidden_dropout, self.training)
        # 2. the relative embedding rows this length reaches (LayerNorm-ed once for all layers), and their index
        rel = index = None
        if self.relative_attention:
            index, bounds = self.relative_index(length, ids.device)
            if traced:  # a traced graph (ONNX, torch.compile) cannot slice by data: the whole table
                rel = self.rel_embeddings.weight
            else:
                first, end = bounds.tolist()
                rel, index = self.rel_embeddings.weight[first:end], index - first
            rel = self.rel_norm(rel) if self.rel_norm is not None else rel
        # 3. post-LN disentangled-attention layers (the convolution after the first, when configured)
        key_mask = mask != 0
        x = emb
        for i, layer in enumerate(self.layers):
            x = layer(x, key_mask, rel, index, packing)
            if i == 0 and self.conv is not None:
                x = self.convolve(emb, x, mask)
        if packing is not None:
            emb, x = packing.unpack(emb), packing.unpack(x)
        # 4. ContextPooler: act(dense(dropout(first token)))
        pooled = F.dropout(x[:, 0], self.config["pooler_dropout"], self.training)
        pooled = ACTIVATIONS[self.config["pooler_hidden_act"]](self.pooler(pooled))
        return {"word_embedding": emb, "encoder_outputs": x, "sentence_embedding": pooled,
                "sentence_pair_embedding": pooled}

    def convolve(self, emb: torch.Tensor, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """DeBERTa-v2's ConvLayer: LN(x + act(Drop(conv(emb) zeroed at padding))), zeroed at padding."""
        out = self.conv(emb.transpose(1, 2)).transpose(1, 2)
        out = out.masked_fill(mask.unsqueeze(-1) == 0, 0)
        out = ACTIVATIONS[self.config["conv_act"]](F.dropout(out, self.hidden_dropout, self.training))
        return self.conv_norm(x + out) * mask.unsqueeze(-1).to(x.dtype)

    def forward(self, batch: dict[str, torch.Tensor], outputs=None) -> dict[str, torch.Tensor]:
        """The features of `outputs_attr` (`outputs`, the names a head reads, is accepted and not needed)."""
        out = self.encode(batch)
        out["embedding_table"] = self.word_embeddings.weight
        if self.is_pairwise and "token_ids_neg" in batch:
            out.update({f"{k}_neg": v for k, v in self.encode(batch, "_neg").items()})
        return out

