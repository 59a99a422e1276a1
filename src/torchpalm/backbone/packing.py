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
class AttentionGroups:
    """The packed sequences laid out for attention in a few groups of similar length, group after group, each
    [n, l] (n sequences padded to the group's longest, l): one gather in (`split`), one gather out (`merge`).

    shapes: (n, l) of each group; biases: each group's key-padding bias [n, 1, 1, l] (0 = token, the float32
    minimum at padded places); gather: [N] (N = sum n * l) the packed row of each place of the layout (a padded
    place repeats its sequence's first token); select: [T] the layout place of each packed token.
    """

    shapes: list[tuple[int, int]]
    biases: list[torch.Tensor]
    gather: torch.Tensor
    select: torch.Tensor
    _window_biases: dict = field(default_factory=dict, repr=False)

    def split(self, x: torch.Tensor) -> list[torch.Tensor]:
        """[T, C] -> the groups' [n, l, C] (one gather; views of it)."""
        laid_out = x.index_select(0, self.gather)
        return [part.view(n, width, -1) for part, (n, width) in
                zip(laid_out.split([n * width for n, width in self.shapes]), self.shapes, strict=True)]

    def merge(self, groups: list[torch.Tensor]) -> torch.Tensor:
        """The groups' [n, l, C] -> [T, C]: the real tokens in packed order (padded places dropped)."""
        return torch.cat([g.reshape(-1, g.shape[-1]) for g in groups]).index_select(0, self.select)

    def window_biases(self, window: int) -> list[torch.Tensor]:
        """Each group's bias narrowed to a sliding window of `window` places ([n, 1, l, l]; the key-padding bias
        as it is where the group is too short for the window to matter), built once per batch."""
        if window not in self._window_biases:
            self._window_biases[window] = [_windowed_bias(bias, window) if width > window + 1 else bias
                                           for (_, width), bias in zip(self.shapes, self.biases, strict=True)]
        return self._window_biases[window]


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
    _groups: AttentionGroups | None = field(default=None, repr=False)

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

    def attention_groups(self) -> AttentionGroups:
        """The sequences cut into at most `MAX_GROUPS` groups of similar length, each padded to its own longest
        sequence (`AttentionGroups`), built once per batch: every layer reuses them. The cut minimises the padded
        attention cost sum(n * l^2) over the sorted lengths (a small dynamic programme on the host)."""
        if self._groups is None:
            self._groups = self._build_groups()
        return self._groups

    def _build_groups(self) -> AttentionGroups:
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
        device = self.index.device
        shapes, biases, gather, select = [], [], [], [0] * starts[-1]
        for i, j in reversed(bounds):
            rows, width = order[i:j], sizes[i]
            for r in rows:
                for c in range(width):
                    if c < self.lengths[r]:
                        select[starts[r] + c] = len(gather)
                    # a padded place repeats its row's first token: masked out as a key, its output never read,
                    # and a non-finite value stays inside its own sequence as on the padded path
                    gather.append(starts[r] + c if c < self.lengths[r] else starts[r])
            keep = torch.tensor([[c < self.lengths[r] for c in range(width)] for r in rows], device=device)
            bias = torch.zeros(keep.shape, device=device).masked_fill(~keep, torch.finfo(torch.float32).min)
            shapes.append((len(rows), width))
            biases.append(bias.view(len(rows), 1, 1, width))
        return AttentionGroups(shapes, biases, torch.tensor(gather, device=device),
                               torch.tensor(select, device=device))

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
    # grouped SDPA: one gather lays the groups out ([n, l, 3H] each, padded places masked by the key-padding
    # bias), one gather takes the real tokens' contexts back to packed order
    groups = packing.attention_groups()
    biases = groups.biases if window is None else groups.window_biases(window)
    outs = []
    for part, bias in zip(groups.split(qkv), biases, strict=True):
        n, width = part.shape[:2]
        # (unbound before the transpose: their gradients then stack into [n, l, 3H] without a copy)
        q, k, v = (t.transpose(1, 2) for t in part.view(n, width, 3, heads, d).unbind(2))
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), dropout_p=dropout_p)
        outs.append(ctx.transpose(1, 2).reshape(n, width, heads * d))
    return groups.merge(outs)
