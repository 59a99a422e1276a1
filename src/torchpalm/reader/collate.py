"""The backbone inputs every batch carries, padded into tensors.

Batch layout (PALM names, PyTorch shapes):
    token_ids     [B, L] int64   padded with the [PAD] id
    position_ids  [B, L] int64   0..len-1, padded with the [PAD] id
    segment_ids   [B, L] int64   0 for the first text, 1 for the second
    input_mask    [B, L] int64   1 for real tokens, 0 for padding (PALM used float [B, L, 1])
    task_ids      [B, L] int64   zeros (ERNIE task embedding)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

# name -> (shape, dtype), with -1 for variable dimensions, as PALM's `outputs_attr` declares them.
COMMON_OUTPUTS = {
    "token_ids": ([-1, -1], "int64"),
    "position_ids": ([-1, -1], "int64"),
    "segment_ids": ([-1, -1], "int64"),
    "input_mask": ([-1, -1], "int64"),
    "task_ids": ([-1, -1], "int64"),
}


def pad_2d(seqs: Sequence[np.ndarray], pad_value: int, length: int | None = None) -> torch.Tensor:
    """Stacks 1-D int arrays into a `[B, L]` int64 tensor, right-padded to the longest (or `length`)."""
    max_len = length if length is not None else max(len(s) for s in seqs)
    out = np.full((len(seqs), max_len), pad_value, dtype=np.int64)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = s
    return torch.from_numpy(out)


def collate_common(token_seqs: Sequence[np.ndarray], segment_seqs: Sequence[np.ndarray], pad_id: int) -> dict:
    """The common backbone inputs of one batch (PALM §5.1): padded ids, positions, segments, mask, task ids."""
    token_ids = pad_2d(token_seqs, pad_id)
    lengths = torch.tensor([len(s) for s in token_seqs])
    input_mask = (torch.arange(token_ids.shape[1])[None, :] < lengths[:, None]).long()
    # PALM pads all three id tensors with the [PAD] id; padding positions are masked out anyway.
    position_ids = torch.where(input_mask.bool(), torch.arange(token_ids.shape[1])[None, :], pad_id)
    return {
        "token_ids": token_ids,
        "position_ids": position_ids,
        "segment_ids": pad_2d(segment_seqs, pad_id),
        "input_mask": input_mask,
        "task_ids": torch.zeros_like(token_ids),
    }
