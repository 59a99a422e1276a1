"""ModernBERT encoder (HF `ModernBertModel`; also Ettin and mmBERT, `model_type: modernbert`).

embeddings (tokens only) -> LayerNorm -> pre-norm layers [x += Attn(LN(x)); x += GeGLU(LN(x))] -> final LayerNorm.
Positions are rotary (RoPE) inside attention, with one theta for the global layers and another for the local ones;
local layers attend to the tokens at most `local_attention // 2` places away. `layer_types` (or older configs'
`global_attn_every_n_layers`) says which layer is which. The whole forward pass is in this file.

Packed batches: the dense layers run on the real tokens only (`torchpalm.backbone.packing`); each token's rotary
position is its place within its own sequence, and attention (global or windowed) stays inside each sequence.

What the heads read: ModernBERT's task models all put its "prediction head" (dense -> act -> LayerNorm) between
the encoder and their classifier, and its masked-LM decoder (tied to the token embeddings) reads the same. This
backbone owns that head (`head.*`, loaded from the checkpoint like BERT's pooler) and returns its outputs:
`sentence_embedding` = head(pool(last)) with the configured `classifier_pooling` ('cls' or 'mean'), as
`ModernBertForSequenceClassification`; `encoder_outputs` = head(last) at every token, as
`ModernBertForTokenClassification` / `...ForQuestionAnswering` / `...ForMaskedLM` read. `last_hidden_state` is
the encoder's own output (`ModernBertModel`'s). A MaskLM head on this backbone takes `transform=False`: the
transform it would add is this prediction head.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from .base import Backbone
from .bert import ACTIVATIONS, check_config, config_source, load_config, refuse_unknown_keys
from .packing import Packing, packed_attention, window_allowed

INPUTS = {"token_ids": ([-1, -1], "int64"), "input_mask": ([-1, -1], "int64")}
OUTPUTS = {
    "word_embedding": ([-1, -1, -1], "float32"),
    "embedding_table": ([-1, -1], "float32"),
    "last_hidden_state": ([-1, -1, -1], "float32"),
    "encoder_outputs": ([-1, -1, -1], "float32"),
    "sentence_embedding": ([-1, -1], "float32"),
    "sentence_pair_embedding": ([-1, -1], "float32"),
}
# the outputs that need the prediction head at every token
TOKEN_OUTPUTS = ("encoder_outputs",)
GLOBAL, LOCAL = "full_attention", "sliding_attention"
# What `from_config` reads from a config.json, and the keys of HF's ModernBertConfig that change nothing here
# (the masked-LM decoder's bias flag, flash-attention and compile switches, sparse MLM prediction); a key in
# neither, nor in bert.NEUTRAL_KEYS, is refused naming the file.
KNOWN_KEYS = {
    "hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size", "intermediate_size",
    "hidden_activation", "max_position_embeddings", "norm_eps", "norm_bias", "attention_bias", "mlp_bias",
    "classifier_bias", "classifier_activation", "classifier_pooling", "local_attention", "embedding_dropout",
    "attention_dropout", "mlp_dropout", "initializer_range", "initializer_cutoff_factor", "pad_token_id",
    "layer_types", "global_attn_every_n_layers", "global_rope_theta", "local_rope_theta", "rope_parameters",
    "rope_scaling", "head_dim",
    "decoder_bias", "deterministic_flash_attn", "sparse_prediction", "sparse_pred_ignore_index",
    "reference_compile", "repad_logits_with_grad",
}
POOLINGS = ("cls", "mean")


def rotary_tables(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [..., 1, 1, head_dim] of integer `positions` [...], shaped for a fused [..., 3, heads, head_dim]
    q/k/v (fp32; HF's default RoPE: the frequency pairs are the two halves of the head dimension). sin's first
    half is negated, so that `rotate` swaps the halves instead of building HF's rotate_half = [-x2, x1]."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=positions.device)
                                / head_dim))
    freqs = positions[..., None].float() * inv_freq
    cos, sin = freqs.cos(), freqs.sin()
    cos, sin = torch.cat((cos, cos), dim=-1), torch.cat((-sin, sin), dim=-1)
    return cos[..., None, None, :], sin[..., None, None, :]


def rotate(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """The fused qkv [..., 3, heads, d] with q and k turned by the angles of `rotary_tables` (computed in fp32,
    returned in qkv's dtype): HF's q * cos + rotate_half(q) * sin, with rotate_half(q) = [-q2, q1] written as the
    swapped halves [q2, q1] times the signs in sin. q and k turn together and v joins them in one concatenation
    (no separate q, k, v tensors to stack back for the packed attention)."""
    qk, v = qkv.split([2, 1], dim=-3)
    qk32, half = qk.float(), qk.shape[-1] // 2
    swapped = torch.cat((qk32[..., half:], qk32[..., :half]), dim=-1)
    return torch.cat(((qk32 * cos + swapped * sin).to(qkv.dtype), v), dim=-3)


class ModernBertLayer(nn.Module):
    """One pre-norm layer: x = x + Drop(Attn(LN(x))) with rotary q/k; x = x + GeGLU(LN(x)).

    The first layer has no attention LayerNorm (the embeddings were just normalised), as in the original."""

    def __init__(self, hidden: int, heads: int, intermediate: int, act: str, eps: float, norm_bias: bool,
                 attention_bias: bool, mlp_bias: bool, attention_dropout: float, mlp_dropout: float,
                 window: int | None, theta: float, first: bool):
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden_size {hidden} is not divisible by num_attention_heads {heads}")
        self.heads, self.head_dim, self.window, self.theta = heads, hidden // heads, window, theta
        self.attn_norm = None if first else nn.LayerNorm(hidden, eps=eps, bias=norm_bias)
        self.qkv = nn.Linear(hidden, 3 * hidden, bias=attention_bias)
        self.attn_out = nn.Linear(hidden, hidden, bias=attention_bias)
        self.mlp_norm = nn.LayerNorm(hidden, eps=eps, bias=norm_bias)
        self.mlp_in = nn.Linear(hidden, 2 * intermediate, bias=mlp_bias)  # input half, then gate half
        self.mlp_out = nn.Linear(intermediate, hidden, bias=mlp_bias)
        self.act = ACTIVATIONS[act]
        self.attention_dropout, self.mlp_dropout = attention_dropout, mlp_dropout

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], bias: torch.Tensor | None,
                packing: Packing | None) -> torch.Tensor:
        """x: [B, L, H] (`bias`: this layer's additive attention bias [B, 1, 1 or L, L] or None), or the packed
        [T, H] with `packing` (`bias`: the key-padding bias [B, 1, 1, L]); rope: `rotary_tables`' cos, sin
        [B, L, 1, 1, d] or [T, 1, 1, d]."""
        dropout_p = self.attention_dropout if self.training else 0.0
        h = x.shape[-1]
        normed = x if self.attn_norm is None else self.attn_norm(x)
        qkv = rotate(self.qkv(normed).view(*x.shape[:-1], 3, self.heads, self.head_dim), *rope)
        if packing is not None:
            ctx = packed_attention(qkv.view(-1, 3 * h), packing, self.heads, bias, dropout_p, self.window)
        else:
            b, length = x.shape[:2]
            q, k, v = (t.transpose(1, 2) for t in qkv.unbind(-3))  # [B, heads, L, d]
            ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout_p)
            ctx = ctx.transpose(1, 2).reshape(b, length, h)
        x = x + F.dropout(self.attn_out(ctx), self.attention_dropout, self.training)
        value, gate = self.mlp_in(self.mlp_norm(x)).chunk(2, dim=-1)
        return x + self.mlp_out(F.dropout(self.act(value) * gate, self.mlp_dropout, self.training))


class PredictionHead(nn.Module):
    """ModernBERT's head between the encoder and every task classifier: LayerNorm(act(dense(x)))."""

    def __init__(self, hidden: int, act: str, eps: float, bias: bool, norm_bias: bool):
        super().__init__()
        self.dense = nn.Linear(hidden, hidden, bias=bias)
        self.act = ACTIVATIONS[act]
        self.norm = nn.LayerNorm(hidden, eps=eps, bias=norm_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.act(self.dense(x)))


def layer_types_of(config: dict, layers: int, source: str) -> list[str]:
    """The per-layer attention kinds: `layer_types` as given, else every `global_attn_every_n_layers`-th layer
    (from the first) global and the others local (default 3, as the original)."""
    types = config.get("layer_types")
    if types is None:
        every = config.get("global_attn_every_n_layers")
        every = 3 if every is None else every
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"{source}: 'global_attn_every_n_layers' must be an integer >= 1, got {every!r}")
        return [GLOBAL if i % every == 0 else LOCAL for i in range(layers)]
    if not isinstance(types, list) or len(types) != layers or any(t not in (GLOBAL, LOCAL) for t in types):
        raise ValueError(f"{source}: 'layer_types' must list {layers} entries ('num_hidden_layers'), each "
                         f"{GLOBAL!r} or {LOCAL!r}; got {types!r}")
    return list(types)


def rope_thetas(config: dict, source: str) -> tuple[float, float]:
    """(global theta, local theta): from `rope_parameters` (transformers >= 5) or the older `global_rope_theta` /
    `local_rope_theta` keys; defaults 160000 and 10000. Only plain RoPE (`rope_type` 'default') is supported."""
    params = config.get("rope_parameters") or {}
    scaling = config.get("rope_scaling")
    thetas = []
    for kind, old_key, default in ((GLOBAL, "global_rope_theta", 160_000.0), (LOCAL, "local_rope_theta", 10_000.0)):
        entry = params.get(kind) or {}
        rope_type = entry.get("rope_type", "default")
        if rope_type != "default" or scaling:
            raise ValueError(f"{source}: only plain rotary embeddings are supported (rope_type 'default'); got "
                             f"{rope_type if rope_type != 'default' else scaling!r} for {kind}")
        theta = entry.get("rope_theta") or config.get(old_key) or default
        if isinstance(theta, bool) or not isinstance(theta, int | float) or theta <= 0:
            raise ValueError(f"{source}: the {kind} rope theta must be a positive number, got {theta!r}")
        thetas.append(float(theta))
    return thetas[0], thetas[1]


class ModernBERT(Backbone):
    """ModernBERT backbone (HF `ModernBertModel` plus its prediction head).

    Args use the names of HF's `config.json`; `from_config` reads one (old and new layouts).

    Inputs (a batch dict): token_ids [B, L] int64, input_mask [B, L] (1 = token). Positions are each token's
    place in its row (the reader's position/segment ids are not used).
    Outputs (dict): word_embedding [B, L, H] (normalised embeddings), embedding_table [V, H] (the token
    embeddings: MaskLM's tied decoder), last_hidden_state [B, L, H] (the encoder's final-norm output),
    encoder_outputs [B, L, H] (prediction head at each token), sentence_embedding and sentence_pair_embedding
    [B, H] (prediction head on the pooled 'cls' or 'mean' state).

    Told that the caller reads only sentence-level features (`forward(batch, outputs=[...])`), the prediction
    head runs on the pooled rows only. Padded batches run packed (`pack_tokens`, as BERT's); set it False for the
    padded computation.
    """

    pack_tokens = True

    def __init__(self, hidden_size: int, num_hidden_layers: int, num_attention_heads: int, vocab_size: int,
                 intermediate_size: int = 1152, hidden_activation: str = "gelu",
                 max_position_embeddings: int = 8192, norm_eps: float = 1e-5, norm_bias: bool = False,
                 attention_bias: bool = False, mlp_bias: bool = False, classifier_bias: bool = False,
                 classifier_activation: str = "gelu", classifier_pooling: str = "cls",
                 layer_types: list[str] | None = None, local_attention: int = 128,
                 global_rope_theta: float = 160_000.0, local_rope_theta: float = 10_000.0,
                 embedding_dropout: float = 0.0, attention_dropout: float = 0.0, mlp_dropout: float = 0.0,
                 initializer_range: float = 0.02, initializer_cutoff_factor: float = 2.0,
                 pad_token_id: int | None = 50283, phase: str = "train"):
        super().__init__()
        source = f"{type(self).__name__} arguments"
        for key, act in (("hidden_activation", hidden_activation), ("classifier_activation", classifier_activation)):
            if act not in ACTIVATIONS:
                raise ValueError(f"{source}: {key} {act!r} is not supported; choose one of {sorted(ACTIVATIONS)}")
        if classifier_pooling not in POOLINGS:
            raise ValueError(f"{source}: classifier_pooling must be one of {POOLINGS}, got {classifier_pooling!r}")
        if phase not in ("train", "predict"):
            raise ValueError(f"phase must be 'train' or 'predict', got {phase!r}")
        if isinstance(local_attention, bool) or not isinstance(local_attention, int) or local_attention < 2:
            raise ValueError(f"{source}: local_attention must be an integer >= 2, got {local_attention!r}")
        layer_types = layer_types_of({"layer_types": layer_types}, num_hidden_layers, source)
        if hidden_size % num_attention_heads == 0 and (hidden_size // num_attention_heads) % 2:
            raise ValueError(f"{source}: the head size 'hidden_size' / 'num_attention_heads' = "
                             f"{hidden_size // num_attention_heads} must be even (rotary embeddings turn pairs)")
        check_config(dict(hidden_size=hidden_size, num_hidden_layers=num_hidden_layers,
                          num_attention_heads=num_attention_heads, vocab_size=vocab_size,
                          max_position_embeddings=max_position_embeddings, intermediate_size=intermediate_size,
                          hidden_dropout_prob=embedding_dropout, attention_probs_dropout_prob=attention_dropout,
                          initializer_range=initializer_range, layer_norm_eps=norm_eps), source)
        if not 0 <= mlp_dropout < 1:
            raise ValueError(f"{source}: mlp_dropout must be in [0, 1), got {mlp_dropout!r}")
        self.config_source = source
        self.config = {
            "hidden_size": hidden_size, "num_hidden_layers": num_hidden_layers,
            "num_attention_heads": num_attention_heads, "vocab_size": vocab_size,
            "intermediate_size": intermediate_size, "hidden_activation": hidden_activation,
            "max_position_embeddings": max_position_embeddings, "norm_eps": norm_eps, "norm_bias": norm_bias,
            "attention_bias": attention_bias, "mlp_bias": mlp_bias, "classifier_bias": classifier_bias,
            "classifier_activation": classifier_activation, "classifier_pooling": classifier_pooling,
            "layer_types": layer_types, "local_attention": local_attention,
            "global_rope_theta": float(global_rope_theta), "local_rope_theta": float(local_rope_theta),
            "embedding_dropout": embedding_dropout, "attention_dropout": attention_dropout,
            "mlp_dropout": mlp_dropout, "initializer_range": initializer_range,
            "initializer_cutoff_factor": initializer_cutoff_factor, "pad_token_id": pad_token_id,
        }
        self.phase = phase
        self.embedding_dropout = embedding_dropout
        self.head_dim = hidden_size // num_attention_heads
        # as HF: the padding row gets no gradient
        pad = pad_token_id if pad_token_id is not None and 0 <= pad_token_id < vocab_size else None
        self.tok_embeddings = nn.Embedding(vocab_size, hidden_size, padding_idx=pad)
        self.embed_norm = nn.LayerNorm(hidden_size, eps=norm_eps, bias=norm_bias)
        # HF's window: |i - j| <= local_attention // 2
        self.layers = nn.ModuleList(
            ModernBertLayer(hidden_size, num_attention_heads, intermediate_size, hidden_activation, norm_eps,
                            norm_bias, attention_bias, mlp_bias, attention_dropout, mlp_dropout,
                            local_attention // 2 if kind == LOCAL else None,
                            local_rope_theta if kind == LOCAL else global_rope_theta, first=i == 0)
            for i, kind in enumerate(layer_types))
        self.final_norm = nn.LayerNorm(hidden_size, eps=norm_eps, bias=norm_bias)
        self.head = PredictionHead(hidden_size, classifier_activation, norm_eps, classifier_bias, norm_bias)
        self.reset_parameters()
        self.train(phase == "train")

    @classmethod
    def from_config(cls, config: dict | str | os.PathLike, phase: str = "train") -> ModernBERT:
        """Builds the backbone from an HF ModernBERT `config.json` (or its path, or the parsed dict); HF's
        defaults fill the keys it lacks."""
        source, config = config_source(config), load_config(config)
        refuse_unknown_keys(config, KNOWN_KEYS, source, "ModernBERT")
        missing = [k for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
                   if k not in config]
        if missing:
            raise KeyError(f"{source} lacks {missing[0]!r}; present keys: {sorted(config)}")
        declared = config.get("model_type")
        if declared not in (None, "modernbert"):
            raise ValueError(f"{source}: model_type {declared!r} is not a ModernBERT ('modernbert')")
        head_dim = config.get("head_dim")
        if head_dim is not None and head_dim * config["num_attention_heads"] != config["hidden_size"]:
            raise ValueError(f"{source}: 'head_dim' {head_dim} times 'num_attention_heads' is not 'hidden_size'")
        global_theta, local_theta = rope_thetas(config, source)
        defaults = {"intermediate_size": 1152, "hidden_activation": "gelu", "max_position_embeddings": 8192,
                    "norm_eps": 1e-5, "norm_bias": False, "attention_bias": False, "mlp_bias": False,
                    "classifier_bias": False, "classifier_activation": "gelu", "classifier_pooling": "cls",
                    "local_attention": 128, "embedding_dropout": 0.0, "attention_dropout": 0.0,
                    "mlp_dropout": 0.0, "initializer_range": 0.02, "initializer_cutoff_factor": 2.0,
                    "pad_token_id": 50283}
        kwargs = {k: config[k] if config.get(k) is not None else v for k, v in defaults.items()}
        kwargs["pad_token_id"] = config.get("pad_token_id", 50283)
        try:
            backbone = cls(config["hidden_size"], config["num_hidden_layers"], config["num_attention_heads"],
                           config["vocab_size"], **kwargs, global_rope_theta=global_theta,
                           local_rope_theta=local_theta,
                           layer_types=layer_types_of(config, config["num_hidden_layers"], source), phase=phase)
        except (TypeError, ValueError) as e:
            message = str(e.args[0] if e.args else e).replace(f"{cls.__name__} arguments", source)
            raise type(e)(message if message.startswith(source) else f"{source}: {message}") from None
        backbone.config_source = source
        return backbone

    def check_reader(self, reader) -> None:
        """Refuses what `refuse_oversized_reader` refuses (positions and vocabulary of config.json)."""
        self.refuse_oversized_reader(reader, self.config["vocab_size"], self.config["max_position_embeddings"])

    def reset_parameters(self) -> None:
        """HF's initialisation: truncated normal (cut at `initializer_cutoff_factor` std) with std
        `initializer_range` for embeddings and input projections, that over sqrt(2 * layers) for the output
        projections and the prediction head's dense; zero biases, unit LayerNorms."""
        cfg = self.config
        cut = cfg["initializer_cutoff_factor"] or 3.0
        std_in = cfg["initializer_range"]
        std_out = std_in / (2.0 * cfg["num_hidden_layers"]) ** 0.5

        def init(module: nn.Module, std: float) -> None:
            nn.init.trunc_normal_(module.weight, std=std, a=-cut * std, b=cut * std)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)

        init(self.tok_embeddings, std_in)
        for layer in self.layers:
            init(layer.qkv, std_in)
            init(layer.mlp_in, std_in)
            init(layer.attn_out, std_out)
            init(layer.mlp_out, std_out)
        init(self.head.dense, std_out)
        for module in self.modules():
            if isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    @property
    def inputs_attr(self) -> dict:
        return dict(INPUTS)

    @property
    def outputs_attr(self) -> dict:
        return dict(OUTPUTS)

    def _biases(self, mask: torch.Tensor | None, length: int, packing: Packing | None,
                traced: bool) -> dict[int | None, torch.Tensor | None]:
        """The additive attention bias of each window size used ({window or None: bias}): the key-padding bias
        [B, 1, 1, L] (what the packed path takes for every layer), and on the padded path that bias narrowed to
        each local window, [B, 1, L, L]."""
        windows = {layer.window for layer in self.layers}
        keys = None
        if mask is not None and (traced or packing is not None or mask.is_cuda or not bool(mask.all())):
            keys = mask.reshape(mask.shape[0], 1, 1, -1) != 0
        dtype = self.embed_norm.weight.dtype
        minimum = torch.finfo(dtype).min
        padding = None if keys is None else torch.zeros(keys.shape, dtype=dtype, device=keys.device).masked_fill(
            ~keys, minimum)
        if packing is not None:
            return dict.fromkeys(windows, padding)
        biases = {}
        for window in windows:
            if window is None or (length <= window + 1 and not traced):
                biases[window] = padding
                continue
            device = self.embed_norm.weight.device if mask is None else mask.device
            allowed = window_allowed(length, window, device)[None, None]
            if keys is not None:
                allowed = allowed & keys
            biases[window] = torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(~allowed, minimum)
        return biases

    def forward(self, batch: dict[str, torch.Tensor], outputs=None) -> dict[str, torch.Tensor]:
        """The features of `outputs_attr`. `outputs`: the names the caller will read (a head's
        `inputs_attrs["backbone"]`), or None for all; without `encoder_outputs` among them the prediction head
        runs on the pooled rows alone."""
        ids = batch["token_ids"]
        mask = batch.get("input_mask")
        b, length = ids.shape
        # a traced graph (torch.compile, ONNX) cannot branch on the data: no packing, biases always built
        traced = torch.compiler.is_compiling() or torch.jit.is_tracing()
        packing = Packing.from_mask(mask) if mask is not None and self.pack_tokens and not traced else None
        if packing is not None and not packing.prefix:  # holes inside a row: positions count padded columns
            packing = None
        biases = self._biases(mask, length, packing, traced)
        positions = torch.arange(length, device=ids.device).expand(b, length)
        if packing is not None:
            ids, positions = packing.pack(ids), packing.pack(positions)
        # 1. token embeddings, LayerNorm, dropout (no position or segment embeddings: positions are rotary)
        emb = F.dropout(self.embed_norm(self.tok_embeddings(ids)), self.embedding_dropout, self.training)
        # 2. pre-norm layers; the rotary tables once per theta
        ropes: dict[float, tuple[torch.Tensor, torch.Tensor]] = {}
        x = emb
        for layer in self.layers:
            if layer.theta not in ropes:
                ropes[layer.theta] = rotary_tables(positions, self.head_dim, layer.theta)
            x = layer(x, ropes[layer.theta], biases[layer.window], packing)
        x = self.final_norm(x)
        tokens = outputs is None or any(name in TOKEN_OUTPUTS for name in outputs)
        encoded = self.head(x) if tokens else None  # on the real tokens only, when packed
        # 3. pooled rows ('cls': each sequence's first token; 'mean': over its real tokens), prediction head
        if self.config["classifier_pooling"] == "cls":
            pooled = x.index_select(0, packing.cu_seqlens[:-1].long()) if packing is not None else x[:, 0]
        if packing is not None:
            emb, x = packing.unpack(emb), packing.unpack(x)
            encoded = None if encoded is None else packing.unpack(encoded)
        if self.config["classifier_pooling"] == "mean":
            weights = (torch.ones(b, length, device=x.device) if mask is None else (mask != 0)).to(x.dtype)
            pooled = (x * weights.unsqueeze(-1)).sum(1) / weights.sum(1, keepdim=True)
        sentence = self.head(pooled)
        out = {"word_embedding": emb, "embedding_table": self.tok_embeddings.weight, "last_hidden_state": x,
               "sentence_embedding": sentence, "sentence_pair_embedding": sentence}
        if encoded is not None:
            out["encoder_outputs"] = encoded
        return out

