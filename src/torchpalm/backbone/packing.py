"""Packed (unpadded) batches: the one place that moves tensors between the padded [B, L, ...] form and the packed
[T, ...] form that holds only the T real tokens (row by row, in order).

The backbone runs its dense layers (embeddings, QKV, attention output, FFN, LayerNorms) on the packed form, so a
batch padded to its longest sentence costs what its real tokens cost. Attention needs to know where each sequence
starts: on CUDA with half precision it runs on the packed form through `torch.nn.attention.varlen.varlen_attn`
(`cu_seqlens`); elsewhere the sequences are sorted by length and cut into a few groups, each padded only to its
own longest sequence for one SDPA call (`attention_groups`), and the context is gathered back. Attention costs
the square of the padded length, so padding a batch of short sentences to its one long sentence made attention
(and its dropout masks) the largest cost after the dense layers on CPU; the groups keep it near the real
tokens' cost with at most `MAX_GROUPS` calls per layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

try:  # torch >= 2.10; the signature used below is torch 2.13's (pyproject pins torch)
    from torch.nn.attention.varlen import varlen_attn
except ImportError:  # pragma: no cover - older torch
    varlen_attn = None

MAX_GROUPS = 4  # SDPA calls per layer at most: fewer calls vs less padding (4 leaves ~10% padding on SST-2)


@dataclass
class Packing:
    """Where the real tokens of a padded batch are.

    index: [T] flat positions (into B*L) of the real tokens; batch, length: B and L; cu_seqlens: [B+1] int32
    offsets of each sequence in the packed form; max_seqlen: the longest sequence; prefix: every row's real
    tokens come first (what varlen attention needs). Built by `Packing.from_mask`.
    """

    index: torch.Tensor
    batch: int
    length: int
    cu_seqlens: torch.Tensor
    max_seqlen: int
    prefix: bool
    lengths: list[int] = field(default_factory=list)
    _groups: list | None = field(default=None, repr=False)
    _window_biases: dict = field(default_factory=dict, repr=False)

    @staticmethod
    def from_mask(mask: torch.Tensor) -> Packing | None:
        """The packing of a [B, L] input mask (nonzero = token), or None when packing would not help or could
        change results: nothing padded, or a row with no token at all (kept on the padded path, which gives
        such rows the values it always gave). Reads a few numbers back from the device (one sync)."""
        real = mask.reshape(mask.shape[0], -1) != 0
        b, length = real.shape
        if b == 0:
            return None
        lengths = real.sum(1)
        prefix = (torch.arange(length, device=real.device) < lengths[:, None]).eq(real).all()
        # one read-back for every host-side fact
        facts = torch.cat([torch.stack([lengths.sum(), lengths.min(), lengths.max(), prefix.long()]),
                           lengths]).tolist()
        total, shortest, longest, prefix = facts[:4]
        if total == b * length or shortest == 0:
            return None
        cu = F.pad(lengths.cumsum(0), (1, 0)).to(torch.int32)
        index = real.reshape(-1).nonzero().squeeze(1)
        return Packing(index, b, length, cu, int(longest), bool(prefix), [int(n) for n in facts[4:]])

    def attention_groups(self) -> tuple[list[tuple[int, int, torch.Tensor, torch.Tensor, torch.Tensor]], torch.Tensor]:
        """The sequences cut into at most `MAX_GROUPS` groups of similar length, built once per batch (every
        layer reuses them): for each group (rows n, padded length l, gather [n*l] indices into the packed tokens
        with T (one past the end) at padded places, key-padding bias [n, 1, 1, l], the positions of the real
        tokens among the n*l), and the permutation that puts the groups' real tokens back in packed order.
        The cut minimises the padded attention cost sum(n * l^2) over the sorted lengths (a small dynamic
        programme on the host)."""
        if self._groups is None:
            self._groups = self._build_groups()
        return self._groups

    def _build_groups(self):
        order = sorted(range(self.batch), key=lambda r: -self.lengths[r])
        sizes = [self.lengths[r] for r in order]
        b, k = len(sizes), min(MAX_GROUPS, len(sizes))
        # best[j][g]: least cost of the first j sorted rows in g groups; a group [i, j) costs (j - i) * sizes[i]^2
        inf = float("inf")
        best = [[inf] * (k + 1) for _ in range(b + 1)]
        cut = [[0] * (k + 1) for _ in range(b + 1)]
        best[0][0] = 0.0
        for j in range(1, b + 1):
            for g in range(1, k + 1):
                for i in range(g - 1, j):
                    cost = best[i][g - 1] + (j - i) * sizes[i] ** 2
                    if cost < best[j][g]:
                        best[j][g], cut[j][g] = cost, i
        g = min(range(1, k + 1), key=lambda n: best[b][n])
        bounds, j = [], b
        while g:
            i = cut[j][g]
            bounds.append((i, j))
            j, g = i, g - 1
        starts = [0]  # cu_seqlens on the host (the lengths were read back already: no device read here)
        for n in self.lengths:
            starts.append(starts[-1] + n)
        total = starts[-1]
        device = self.index.device
        groups, places = [], []
        for i, j in reversed(bounds):
            rows, width = order[i:j], sizes[i]
            gather = [starts[r] + c if c < self.lengths[r] else total for r in rows for c in range(width)]
            real = [p for p, token in enumerate(gather) if token < total]
            places += [gather[p] for p in real]
            keep = torch.tensor([[c < self.lengths[r] for c in range(width)] for r in rows], device=device)
            bias = torch.zeros(keep.shape, device=device).masked_fill(~keep, torch.finfo(torch.float32).min)
            groups.append((len(rows), width, torch.tensor(gather, device=device), bias.view(len(rows), 1, 1, width),
                           torch.tensor(real, device=device)))
        back = [0] * len(places)
        for position, token in enumerate(places):
            back[token] = position
        return groups, torch.tensor(back, device=device)

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """[B, L, ...] -> [T, ...]: the real tokens' rows."""
        return x.reshape(self.batch * self.length, *x.shape[2:]).index_select(0, self.index)

    def unpack(self, x: torch.Tensor) -> torch.Tensor:
        """[T, ...] -> [B, L, ...], zeros at the padded positions (differentiable)."""
        out = x.new_zeros(self.batch * self.length, *x.shape[1:])
        return out.index_copy(0, self.index, x).reshape(self.batch, self.length, *x.shape[1:])


def window_allowed(length: int, window: int, device: torch.device) -> torch.Tensor:
    """[L, L] bool: query i may attend to key j when |i - j| <= window (a bidirectional sliding window)."""
    positions = torch.arange(length, device=device)
    return (positions[:, None] - positions[None, :]).abs() <= window


def _windowed_bias(bias: torch.Tensor, window: int) -> torch.Tensor:
    """A [n, 1, 1, l] key-padding bias narrowed to a sliding window: [n, 1, l, l]. Disallowed places get the
    finite minimum (not -inf plus -inf): a padded query row with no key in reach then averages harmlessly instead of
    giving NaN, which the backward pass would spread into the real keys' gradients."""
    n, width = bias.shape[0], bias.shape[-1]
    allowed = (bias == 0) & window_allowed(width, window, bias.device)  # [n, 1, l, l]
    return torch.zeros(n, 1, width, width, device=bias.device).masked_fill(~allowed, torch.finfo(torch.float32).min)


def packed_attention(qkv: torch.Tensor, packing: Packing, heads: int, attn_bias: torch.Tensor,
                     dropout_p: float, window: int | None = None) -> torch.Tensor:
    """Self-attention of packed sequences: qkv [T, 3H] -> context [T, H], each token attending only to the real
    tokens of its own sequence. `attn_bias` is the padded path's [B, 1, 1, L] key-padding bias. `window`: each
    token attends only to the tokens at most `window` places from it within its own sequence (ModernBERT's local
    layers); None is global attention. The window never reaches across a packed boundary, as each sequence is
    attended on its own."""
    t, h3 = qkv.shape
    d = h3 // 3 // heads
    if (varlen_attn is not None and qkv.is_cuda and dropout_p == 0.0 and packing.prefix
            and qkv.dtype in (torch.float16, torch.bfloat16)):
        q, k, v = qkv.view(t, 3, heads, d).unbind(1)
        reach = (-1, -1) if window is None else (window, window)
        ctx = varlen_attn(q, k, v, packing.cu_seqlens, packing.cu_seqlens, packing.max_seqlen, packing.max_seqlen,
                          window_size=reach)
        return ctx.reshape(t, heads * d)
    # grouped SDPA: each group of similar lengths gathered into [n, l, 3H] (a zero row at the padded places),
    # attended with its own key-padding bias; the real tokens' contexts go back to their packed rows
    padded = F.pad(qkv, (0, 0, 0, 1))  # row T: zeros for the padded places
    groups, back = packing.attention_groups()
    if window is not None and window not in packing._window_biases:  # once per batch, shared by the local layers
        packing._window_biases[window] = [_windowed_bias(bias, window) if width > window + 1 else bias
                                          for _, width, _, bias, _ in groups]
    outs = []
    for g, (n, width, gather, bias, real) in enumerate(groups):
        if window is not None:
            bias = packing._window_biases[window][g]
        q, k, v = padded.index_select(0, gather).view(n, width, 3, heads, d).permute(2, 0, 3, 1, 4)
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), dropout_p=dropout_p)
        outs.append(ctx.transpose(1, 2).reshape(n * width, heads * d).index_select(0, real))
    return torch.cat(outs).index_select(0, back)
