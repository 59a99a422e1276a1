"""Packed (unpadded) batches: the one place that moves tensors between the padded [B, L, ...] form and the packed
[T, ...] form that holds only the T real tokens (row by row, in order).

The backbone runs its dense layers (embeddings, QKV, attention output, FFN, LayerNorms) on the packed form, so a
batch padded to its longest sentence costs what its real tokens cost. Attention needs to know where each sequence
starts: on CUDA with half precision it runs on the packed form through `torch.nn.attention.varlen.varlen_attn`
(`cu_seqlens`); elsewhere the packed q/k/v are scattered into the padded form for one SDPA call and the context
gathered back (what measured fastest on CPU; see BENCHMARKS.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

try:  # torch >= 2.10; the signature used below is torch 2.13's (pyproject pins torch)
    from torch.nn.attention.varlen import varlen_attn
except ImportError:  # pragma: no cover - older torch
    varlen_attn = None


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
        total, shortest, longest, prefix = torch.stack([lengths.sum(), lengths.min(), lengths.max(),
                                                        prefix.long()]).tolist()
        if total == b * length or shortest == 0:
            return None
        cu = F.pad(lengths.cumsum(0), (1, 0)).to(torch.int32)
        index = real.reshape(-1).nonzero().squeeze(1)
        return Packing(index, b, length, cu, int(longest), bool(prefix))

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """[B, L, ...] -> [T, ...]: the real tokens' rows."""
        return x.reshape(self.batch * self.length, *x.shape[2:]).index_select(0, self.index)

    def unpack(self, x: torch.Tensor) -> torch.Tensor:
        """[T, ...] -> [B, L, ...], zeros at the padded positions (differentiable)."""
        out = x.new_zeros(self.batch * self.length, *x.shape[1:])
        return out.index_copy(0, self.index, x).reshape(self.batch, self.length, *x.shape[1:])


def packed_attention(qkv: torch.Tensor, packing: Packing, heads: int, attn_bias: torch.Tensor,
                     dropout_p: float) -> torch.Tensor:
    """Self-attention of packed sequences: qkv [T, 3H] -> context [T, H], each token attending only to the real
    tokens of its own sequence. `attn_bias` is the padded path's [B, 1, 1, L] key-padding bias."""
    t, h3 = qkv.shape
    d = h3 // 3 // heads
    if (varlen_attn is not None and qkv.is_cuda and dropout_p == 0.0 and packing.prefix
            and qkv.dtype in (torch.float16, torch.bfloat16)):
        q, k, v = qkv.view(t, 3, heads, d).unbind(1)
        ctx = varlen_attn(q, k, v, packing.cu_seqlens, packing.cu_seqlens, packing.max_seqlen, packing.max_seqlen)
        return ctx.reshape(t, heads * d)
    # padded SDPA: scatter q/k/v into [B, L, 3H] once, attend with the key-padding bias, gather the context back
    q, k, v = packing.unpack(qkv).view(packing.batch, packing.length, 3, heads, d).permute(2, 0, 3, 1, 4)
    ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias, dropout_p=dropout_p)
    return packing.pack(ctx.transpose(1, 2).reshape(packing.batch, packing.length, heads * d))
