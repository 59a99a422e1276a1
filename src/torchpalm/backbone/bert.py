"""BERT encoder (spec §7): embeddings -> post-LN transformer layers -> pooled [CLS].

The whole forward pass is in this file. Config keys are the ones PALM's `bert_config.json` and HF's
`config.json` use, so both load as they are. Query/key/value are one fused linear layer (one matmul instead
of three); `torchpalm.convert` maps HF's separate q/k/v weights onto it.
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from .base import Backbone
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


# the outputs that need the last layer at every token (the others read the embeddings or [CLS] only)
TOKEN_OUTPUTS = ("encoder_outputs",)


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
            config = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{e.lineno}: invalid JSON in backbone config: {e.msg}") from None
        except RecursionError:
            raise ValueError(f"{path}: backbone config nested too deeply to parse (a config is one flat "
                             f"object)") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: expected a JSON object {{key: value}}, got {type(config).__name__}")
    return config


def config_source(config: dict | str | os.PathLike) -> str:
    """How error messages name a config: its file path, or 'the config dict'."""
    if isinstance(config, dict):
        return "the config dict"
    path = os.fspath(config)
    return os.path.join(path, "config.json") if os.path.isdir(path) else path


# Keys any HF config may hold that do not change an encoder (labels, token ids, dtypes, the task models' classifier
# dropout, ...): the backbones that refuse keys they do not understand (`refuse_unknown_keys`) accept these.
NEUTRAL_KEYS = {
    "model_type", "architectures", "transformers_version", "torch_dtype", "dtype", "id2label", "label2id",
    "num_labels", "problem_type", "finetuning_task", "bos_token_id", "eos_token_id", "sep_token_id",
    "cls_token_id", "unk_token_id", "mask_token_id", "output_hidden_states", "output_attentions", "return_dict",
    "use_return_dict", "torchscript", "use_bfloat16", "pruned_heads", "tie_word_embeddings", "is_decoder",
    "is_encoder_decoder", "add_cross_attention", "chunk_size_feed_forward", "tokenizer_class", "prefix",
    "task_specific_params", "gradient_checkpointing", "output_past", "xla_device", "tf_legacy_loss", "legacy",
    "cls_dropout", "classifier_dropout", "vocab_type", "use_cache", "is_pairwise",
}


def refuse_unknown_keys(config: dict, known: Iterable[str], source: str, backbone: str) -> None:
    """Refuses (ValueError naming `source`) a config key that is neither `known` (what the backbone reads) nor
    in NEUTRAL_KEYS: a typo or a feature of another model would otherwise be silently ignored, and the backbone
    would give other outputs than the checkpoint's own model. Keys starting with '_' are transformers' own."""
    known = set(known)
    unknown = sorted(k for k in config if k not in known and k not in NEUTRAL_KEYS and not k.startswith("_"))
    if unknown:
        close = difflib.get_close_matches(unknown[0], sorted(known), n=1)
        raise ValueError(f"{source}: {backbone} does not understand the config key {unknown[0]!r}"
                         f"{f' (did you mean {close[0]!r}?)' if close else ''}"
                         f"{f'; {len(unknown) - 1} more: {unknown[1:]}' if len(unknown) > 1 else ''}")


# Sizes that must be whole numbers of at least 1, and the floats with their allowed range.
POSITIVE_INT_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size",
                     "max_position_embeddings", "type_vocab_size", "sent_type_vocab_size", "task_type_vocab_size",
                     "intermediate_size")
PROBABILITY_KEYS = ("hidden_dropout_prob", "attention_probs_dropout_prob")
POSITIVE_FLOAT_KEYS = ("initializer_range", "layer_norm_eps")
# Building a model is one Python object per layer: 10^6 layers hangs for minutes before failing. The deepest
# published encoders have hundreds of layers (DeepNet: 1,000 across encoder and decoder).
MAX_LAYERS = 4096
MAX_PARAMETERS_WITHOUT_MEMORY_INFO = 10**11


def estimate_parameters(hidden: int, layers: int, vocab: int, positions: int, types: int,
                        intermediate: int | None) -> int:
    """The parameter count of a BERT with these sizes (embeddings, layers, pooler), without building it."""
    inter = intermediate or 4 * hidden
    embeddings = (vocab + positions + types) * hidden + 2 * hidden
    per_layer = 4 * hidden * hidden + 2 * hidden * inter + 9 * hidden + inter  # qkv, out, FFN, 2 LayerNorms
    return embeddings + layers * per_layer + hidden * hidden + hidden


def _physical_memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def check_config(values: dict, source: str) -> None:
    """Refuses backbone sizes that cannot work, before anything is built, naming `source` and the key.

    Catches what would otherwise fail deep inside torch or hang: a string or float where a size belongs, sizes
    below 1, heads that do not divide hidden_size, dropout outside [0, 1), and models whose fp32 weights alone
    would not fit in this machine's memory (or have more than `MAX_LAYERS` layers).
    """
    def bad(key, expected):
        return f"{source}: '{key}' must be {expected}, got {values[key]!r}"

    for key in POSITIVE_INT_KEYS:
        if values.get(key) is None:
            continue
        value = values[key]
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(bad(key, "an integer"))
        if value < 1:
            raise ValueError(bad(key, "at least 1"))
    for key in PROBABILITY_KEYS:
        if key in values and (isinstance(values[key], bool) or not isinstance(values[key], int | float)):
            raise TypeError(bad(key, "a number in [0, 1)"))
        if key in values and not 0 <= values[key] < 1:
            raise ValueError(bad(key, "a number in [0, 1)"))
    for key in POSITIVE_FLOAT_KEYS:
        if key in values and (isinstance(values[key], bool) or not isinstance(values[key], int | float)):
            raise TypeError(bad(key, "a positive number"))
        if key in values and not values[key] > 0:
            raise ValueError(bad(key, "a positive number"))
    hidden, heads = values.get("hidden_size"), values.get("num_attention_heads")
    if hidden and heads and hidden % heads:
        raise ValueError(f"{source}: 'hidden_size' {hidden} is not divisible by 'num_attention_heads' {heads}")
    layers = values.get("num_hidden_layers")
    if layers and layers > MAX_LAYERS:
        raise ValueError(f"{source}: 'num_hidden_layers' {layers} is beyond any trainable encoder (at most "
                         f"{MAX_LAYERS}); is the config right?")
    sizes = ("hidden_size", "num_hidden_layers", "vocab_size", "max_position_embeddings")
    if all(values.get(k) for k in sizes):
        types = values.get("type_vocab_size") or values.get("sent_type_vocab_size") or 0
        n = estimate_parameters(values["hidden_size"], layers, values["vocab_size"],
                                values["max_position_embeddings"], types, values.get("intermediate_size"))
        memory = _physical_memory_bytes()
        if memory is not None and 4 * n > memory:
            raise ValueError(f"{source}: these sizes make {n:,} parameters, {4 * n / 2**30:,.1f} GiB of fp32 "
                             f"weights alone, more than this machine's {memory / 2**30:,.1f} GiB of memory "
                             f"('hidden_size' {values['hidden_size']}, 'num_hidden_layers' {layers}, "
                             f"'vocab_size' {values['vocab_size']}); is the config right?")
        if memory is None and n > MAX_PARAMETERS_WITHOUT_MEMORY_INFO:
            raise ValueError(f"{source}: these sizes make {n:,} parameters, more than "
                             f"{MAX_PARAMETERS_WITHOUT_MEMORY_INFO:,}; is the config right?")


def _require(config: dict, key: str, alternatives: tuple[str, ...] = (), source: str = "backbone config"):
    for k in (key, *alternatives):
        if k in config:
            return config[k]
    names = " or ".join(repr(k) for k in (key, *alternatives))
    raise KeyError(f"{source} lacks {names}; present keys: {sorted(config)}")


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
                packing: Packing | None = None, cls_only: bool = False) -> torch.Tensor:
        """x: [B, L, H], or the packed [T, H] with `packing` (see `torchpalm.backbone.packing`).

        `cls_only`: return only the first token's output of each sequence, [B, H] ([CLS]): keys and values come
        from every token, but the query, attention output and feed-forward run on the B first tokens alone (the
        same values as the full layer's first row, for a fraction of its cost)."""
        dropout_p = self.attn_dropout if self.training else 0.0
        if cls_only:
            return self._first_token_forward(x, attn_bias, packing, dropout_p)
        if packing is not None:
            ctx = packed_attention(self.qkv(x), packing, self.heads, attn_bias, dropout_p)
        else:
            b, length, h = x.shape
            # [B, L, 3H] -> 3 x [B, heads, L, d]
            q, k, v = self.qkv(x).view(b, length, 3, self.heads, h // self.heads).permute(2, 0, 3, 1, 4)
            ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias, dropout_p=dropout_p)
            ctx = ctx.transpose(1, 2).reshape(b, length, h)
        return self._after_attention(x, ctx)

    def _after_attention(self, x: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        x = self.attn_norm(x + F.dropout(self.attn_out(ctx), self.hidden_dropout, self.training))
        f = self.ffn_out(self.act(self.ffn_in(x)))
        return self.ffn_norm(x + F.dropout(f, self.hidden_dropout, self.training))

    def _first_token_forward(self, x: torch.Tensor, attn_bias: torch.Tensor | None, packing: Packing | None,
                             dropout_p: float) -> torch.Tensor:
        h = x.shape[-1]
        d = h // self.heads
        w_q, w_kv = self.qkv.weight[:h], self.qkv.weight[h:]
        b_q, b_kv = self.qkv.bias[:h], self.qkv.bias[h:]
        if packing is not None:  # the first real token of row r is packed row cu_seqlens[r]
            first = x.index_select(0, packing.cu_seqlens[:-1].long())
            kv = packing.unpack(F.linear(x, w_kv, b_kv))  # [B, L, 2H], zeros at padding (masked by attn_bias)
        else:
            first = x[:, 0]
            kv = F.linear(x, w_kv, b_kv)
        b, length = kv.shape[:2]
        k, v = kv.view(b, length, 2, self.heads, d).permute(2, 0, 3, 1, 4)  # 2 x [B, heads, L, d]
        q = F.linear(first, w_q, b_q).view(b, self.heads, 1, d)
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias, dropout_p=dropout_p).reshape(b, h)
        return self._after_attention(first, ctx)


class BERT(Backbone):
    """BERT backbone.

    Args follow PALM's constructor (spec §7.1); `intermediate_size` (default 4H) and `layer_norm_eps`
    (default 1e-6, PALM's; HF configs say 1e-12) are read from HF configs when present.

    Inputs (a batch dict): token_ids, position_ids, segment_ids [B, L] int64; input_mask [B, L] (1 = token).
    Outputs (dict): word_embedding [B, L, H] (post-LN embedding sum), embedding_table [V, H],
    encoder_outputs [B, L, H], sentence_embedding [B, H] (tanh-pooled [CLS]), sentence_pair_embedding (same);
    with `is_pairwise`, the same four for the `*_neg` inputs when they are in the batch.

    Told that the caller reads only sentence-level features (`forward(batch, outputs=[...])`, as the trainers do
    for Classify and Match heads), the last layer computes the [CLS] rows alone and `encoder_outputs` is left out.

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
        check_config(dict(hidden_size=hidden_size, num_hidden_layers=num_hidden_layers,
                          num_attention_heads=num_attention_heads, vocab_size=vocab_size,
                          max_position_embeddings=max_position_embeddings, type_vocab_size=type_vocab_size,
                          hidden_dropout_prob=hidden_dropout_prob,
                          attention_probs_dropout_prob=attention_probs_dropout_prob,
                          initializer_range=initializer_range, intermediate_size=intermediate_size,
                          layer_norm_eps=layer_norm_eps), f"{type(self).__name__} arguments")
        self.config_source = f"{type(self).__name__} arguments"  # what error messages call the config
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
        source, config = config_source(config), load_config(config)

        def need(key, alternatives=()):
            return _require(config, key, alternatives, source)

        return {
            "hidden_size": need("hidden_size"),
            "num_hidden_layers": need("num_hidden_layers"),
            "num_attention_heads": need("num_attention_heads"),
            "vocab_size": need("vocab_size"),
            "max_position_embeddings": need("max_position_embeddings"),
            "type_vocab_size": need("sent_type_vocab_size", ("type_vocab_size",)),
            "hidden_act": need("hidden_act"),
            "hidden_dropout_prob": need("hidden_dropout_prob"),
            "attention_probs_dropout_prob": need("attention_probs_dropout_prob"),
            "initializer_range": config.get("initializer_range", 0.02),
            "is_pairwise": config.get("is_pairwise", False),
            "intermediate_size": config.get("intermediate_size"),
            "layer_norm_eps": config.get("layer_norm_eps", 1e-6),
            "pad_token_id": config.get("pad_token_id", 0),
        }

    @classmethod
    def from_config(cls, config: dict | str | os.PathLike, phase: str = "train") -> BERT:
        """Builds the backbone from a parsed `bert_config.json` / HF `config.json` (or its path)."""
        return cls._build(cls._kwargs_from_config(config), config_source(config), phase)

    @classmethod
    def _build(cls, kwargs: dict, source: str, phase: str) -> BERT:
        """The backbone of checked `kwargs`; errors and later fit checks name `source` (the config file)."""
        check_config(kwargs, source)
        backbone = cls(**kwargs, phase=phase)
        backbone.config_source = source
        return backbone

    def check_reader(self, reader) -> None:
        """Refuses what `refuse_oversized_reader` refuses (positions and vocabulary of config.json)."""
        self.refuse_oversized_reader(reader, self.config["vocab_size"], self.config["max_position_embeddings"])

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

    def encode(self, batch: dict[str, torch.Tensor], suffix: str = "",
               sentence_only: bool = False) -> dict[str, torch.Tensor]:
        """Runs one branch (the plain inputs, or the `_neg` ones) through the encoder. `sentence_only`: the
        caller reads only the pooled [CLS] features, so the last layer computes the [CLS] rows alone and
        `encoder_outputs` is left out (see `forward`)."""
        mask = batch.get("input_mask" + suffix)
        # A traced graph (torch.compile, torch.export, ONNX) cannot branch on the data: no packing (its size is
        # the number of real tokens) and the bias always built (all zeros when nothing is padded).
        traced = torch.compiler.is_compiling()
        packing = Packing.from_mask(mask) if mask is not None and self.pack_tokens and not traced else None
        # key-padding mask as an additive bias [B, 1, 1, L]; None when nothing is padded (faster kernels; on CPU
        # the check's read-back costs nothing, on CUDA it would stall the launch queue, so the bias is built)
        attn_bias = None
        if mask is not None and (traced or packing is not None or mask.is_cuda or not bool(mask.all())):
            attn_bias = torch.zeros(mask.shape, dtype=self.embed_norm.weight.dtype, device=mask.device)
            attn_bias = attn_bias.masked_fill(mask == 0, torch.finfo(attn_bias.dtype).min)
            attn_bias = attn_bias.reshape(mask.shape[0], 1, 1, -1)
        if packing is not None:  # the id inputs as [T] vectors: everything up to attention sees real tokens only
            batch = {k + suffix: packing.pack(batch[k + suffix]) for k in self.embedding_inputs}
        # 1. embeddings: word + position + segment (+ task, ERNIE), then LayerNorm and dropout
        emb = F.dropout(self.embed_norm(self.embed(batch, suffix)), self.hidden_dropout, self.training)
        # 2. post-LN transformer layers
        x = emb
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x, attn_bias, packing, cls_only=sentence_only and i == last)
        if packing is not None:
            emb = packing.unpack(emb)
            x = x if sentence_only else packing.unpack(x)
        # 3. pooled [CLS]
        pooled = torch.tanh(self.pooler(x if sentence_only else x[:, 0]))
        out = {"word_embedding": emb, "sentence_embedding": pooled, "sentence_pair_embedding": pooled}
        if not sentence_only:
            out["encoder_outputs"] = x
        return out

    def forward(self, batch: dict[str, torch.Tensor], outputs=None) -> dict[str, torch.Tensor]:
        """The features of `outputs_attr`. `outputs`: the names the caller will read (a head's
        `inputs_attrs["backbone"]`), or None for all. When they are sentence-level only (`sentence_embedding`,
        `sentence_pair_embedding`, `embedding_table`: Classify, Match), the last layer runs its query,
        attention output and feed-forward on the [CLS] tokens alone, about 1/7 of a 6-layer encoder's work
        saved, and `encoder_outputs` is not returned."""
        sentence_only = outputs is not None and not any(
            name.removesuffix("_neg") in TOKEN_OUTPUTS for name in outputs)
        # a subclass may have swapped in layers of its own, which take no `cls_only`
        sentence_only = sentence_only and len(self.layers) > 0 and isinstance(self.layers[-1], EncoderLayer)
        out = self.encode(batch, sentence_only=sentence_only)
        out["embedding_table"] = self.word_embeddings.weight
        if self.is_pairwise and "token_ids_neg" in batch:
            out.update({f"{k}_neg": v for k, v in self.encode(batch, "_neg", sentence_only).items()})
        return out


