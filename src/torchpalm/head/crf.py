"""Linear-chain conditional random field (the CRF layer of PALM's sequence labelling head).

Shapes: B = batch, L = padded sequence length, C = number of tags.

The score of a tag path y_0..y_{n-1} for a sequence of n real tokens is

    start[y_0] + sum_t emissions[t, y_t] + sum_{t>0} transitions[y_{t-1}, y_t] + end[y_{n-1}]

and the loss is the negative log-likelihood  log Z - score(gold).  Every sequence's mask must be a
contiguous prefix of length >= 1 (True = real token).  Half-precision emissions are upcast to float32;
float32/float64 emissions are used as they are, so the layer also works (and gradchecks) in float64.
"""

from __future__ import annotations

import torch
from torch import nn

IGNORE_INDEX = -100
_REDUCTIONS = ("none", "sum", "mean", "token_mean")


class LinearChainCRF(nn.Module):
    """Linear-chain CRF with start/end scores; transitions[i, j] scores moving from tag i to tag j."""

    def __init__(self, num_tags: int):
        super().__init__()
        if num_tags <= 0:
            raise ValueError(f"num_tags must be positive, got {num_tags}")
        self.num_tags = num_tags
        self.start_transitions = nn.Parameter(torch.empty(num_tags))
        self.end_transitions = nn.Parameter(torch.empty(num_tags))
        self.transitions = nn.Parameter(torch.empty(num_tags, num_tags))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # same initialisation as pytorch-crf
        for p in (self.start_transitions, self.end_transitions, self.transitions):
            nn.init.uniform_(p, -0.1, 0.1)

    def extra_repr(self) -> str:
        return f"num_tags={self.num_tags}"

    # ------------------------------------------------------------------ input handling

    def _prepare(self, emissions: torch.Tensor, mask: torch.Tensor | None):
        """Validate shapes/mask, pick the compute dtype, return (emissions, mask, start, end, trans)."""
        if emissions.dim() != 3 or emissions.size(-1) != self.num_tags:
            raise ValueError(f"emissions must be [B, L, {self.num_tags}], got {tuple(emissions.shape)}")
        B, L, _ = emissions.shape
        if L == 0:
            raise ValueError("emissions must have at least one time step")
        if mask is None:
            mask = torch.ones(B, L, dtype=torch.bool, device=emissions.device)
        if mask.shape != (B, L):
            raise ValueError(f"mask must be [B, L] = {(B, L)}, got {tuple(mask.shape)}")
        mask = mask.to(torch.bool)
        if not bool(mask[:, 0].all()):
            raise ValueError("mask[:, 0] must be True for every sequence (each sequence needs >= 1 token)")
        if bool((mask[:, 1:] & ~mask[:, :-1]).any()):
            raise ValueError("mask must be a contiguous prefix (no True after a False) in every sequence")

        # compute in float32 at least: half-precision emissions are upcast, float64 (emissions or module) is kept
        dtype = emissions.dtype
        if dtype in (torch.float16, torch.bfloat16):
            dtype = torch.float32
        # promoting with the parameters' dtype stays >= float32, even for a bf16 module
        dtype = torch.promote_types(dtype, self.transitions.dtype)
        # zero the padded positions so garbage (even NaN/inf) there cannot leak into values or gradients
        emissions = emissions.to(dtype).masked_fill(~mask.unsqueeze(-1), 0.0)
        start = self.start_transitions.to(dtype)
        end = self.end_transitions.to(dtype)
        trans = self.transitions.to(dtype)
        return emissions, mask, start, end, trans

    def _check_tags(self, tags: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Validate gold tags inside the mask; return a copy with padded positions set to 0 (safe to index)."""
        if tags.shape != mask.shape:
            raise ValueError(f"tags must be [B, L] = {tuple(mask.shape)}, got {tuple(tags.shape)}")
        tags = tags.long()
        real = tags[mask]
        if bool((real == IGNORE_INDEX).any()):
            raise ValueError(
                f"tags contain the ignore index {IGNORE_INDEX} at masked-in positions; the CRF needs a real "
                "tag for every token inside the mask (set mask=False there or pass real tags)"
            )
        if real.numel() and (int(real.min()) < 0 or int(real.max()) >= self.num_tags):
            raise ValueError(
                f"tags inside the mask must be in [0, {self.num_tags}), got {real.min()}..{real.max()}"
            )
        return tags.masked_fill(~mask, 0)

    # ------------------------------------------------------------------ scores

    def score(
        self, emissions: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Unnormalised score of the gold path of each sequence, [B]."""
        emissions, mask, start, end, trans = self._prepare(emissions, mask)
        return self._score(emissions, self._check_tags(tags, mask), mask, start, end, trans)

    def _score(self, emissions, tags, mask, start, end, trans) -> torch.Tensor:
        B = emissions.size(0)
        batch_idx = torch.arange(B, device=emissions.device)
        lengths = mask.sum(1)

        # emission score of each gold tag, padded positions contribute nothing
        em = emissions.gather(2, tags.unsqueeze(-1)).squeeze(-1).masked_fill(~mask, 0.0)
        # transition score between consecutive gold tags, only where the later token is real
        tr = trans[tags[:, :-1], tags[:, 1:]].masked_fill(~mask[:, 1:], 0.0)
        # start score of the first tag, end score of the last real tag
        last_tags = tags[batch_idx, lengths - 1]
        return start[tags[:, 0]] + em.sum(1) + tr.sum(1) + end[last_tags]

    def log_partition(self, emissions: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """log Z of each sequence by the forward algorithm, [B]."""
        return self._log_partition(*self._prepare(emissions, mask))

    def _log_partition(self, emissions, mask, start, end, trans) -> torch.Tensor:
        # alpha[b, j] = log-sum of all paths over the first t+1 tokens that end in tag j
        alpha = start + emissions[:, 0]
        for t in range(1, emissions.size(1)):
            # [B, C_prev, 1] + [C_prev, C_next] + [B, 1, C_next] -> logsumexp over the previous tag
            nxt = torch.logsumexp(alpha.unsqueeze(2) + trans + emissions[:, t].unsqueeze(1), dim=1)
            # sequences that already ended keep their alpha
            alpha = torch.where(mask[:, t].unsqueeze(1), nxt, alpha)
        return torch.logsumexp(alpha + end, dim=1)

    def forward(
        self,
        emissions: torch.Tensor,
        tags: torch.Tensor,
        mask: torch.Tensor | None = None,
        reduction: str = "mean",
    ) -> torch.Tensor:
        """Negative log-likelihood of the gold tags.

        reduction: 'none' -> [B]; 'sum'; 'mean' (over sequences, PALM's convention); 'token_mean'
        (sum divided by the number of real tokens).
        """
        if reduction not in _REDUCTIONS:
            raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
        emissions, mask, start, end, trans = self._prepare(emissions, mask)
        tags = self._check_tags(tags, mask)
        nll = self._log_partition(emissions, mask, start, end, trans) - self._score(
            emissions, tags, mask, start, end, trans
        )
        if reduction == "none":
            return nll
        if reduction == "sum":
            return nll.sum()
        if reduction == "mean":
            return nll.mean()
        return nll.sum() / mask.sum()

    # ------------------------------------------------------------------ decoding

    @torch.no_grad()
    def decode_tensor(
        self, emissions: torch.Tensor, mask: torch.Tensor | None = None, pad_value: int = -1
    ) -> torch.Tensor:
        """Viterbi best path per sequence as a LongTensor [B, L], padded with pad_value past each length."""
        emissions, mask, start, end, trans = self._prepare(emissions, mask)
        B, L, _ = emissions.shape
        lengths = mask.sum(1)

        # forward pass: best score ending in each tag, plus backpointers to the best previous tag
        score = start + emissions[:, 0]
        backpointers = []  # backpointers[t-1][b, j] = best tag at t-1 given tag j at t
        for t in range(1, L):
            best, idx = (score.unsqueeze(2) + trans).max(dim=1)  # max over the previous tag
            backpointers.append(idx)
            score = torch.where(mask[:, t].unsqueeze(1), best + emissions[:, t], score)
        best_last = (score + end).argmax(dim=1)

        # backtrack: each sequence starts from its best last tag at t = length - 1
        out = torch.full((B, L), pad_value, dtype=torch.long, device=emissions.device)
        cur = best_last
        for t in range(L - 1, -1, -1):
            cur = torch.where(lengths - 1 == t, best_last, cur)
            out[:, t] = torch.where(t < lengths, cur, out[:, t])
            if t > 0:
                cur = backpointers[t - 1].gather(1, cur.unsqueeze(1)).squeeze(1)
        return out

    def decode(self, emissions: torch.Tensor, mask: torch.Tensor | None = None) -> list[list[int]]:
        """Viterbi best path per sequence as Python lists (each of length mask.sum())."""
        paths = self.decode_tensor(emissions, mask)
        if mask is None:
            return paths.tolist()
        lengths = mask.to(torch.bool).sum(1).tolist()
        return [row[:n] for row, n in zip(paths.tolist(), lengths, strict=True)]
