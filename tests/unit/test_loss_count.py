"""Every built-in head's `loss_count` is what its loss is a mean over, so that data-parallel training (which weights
each process's mean by its share of the summed counts, `distributed.loss_share`) follows the global batch's mean.

The check needs no processes: a batch cut into two uneven parts must give back the whole batch's loss as the
count-weighted mean of the parts' losses, and the parts' counts must add up to the whole's. The parts differ in
words per sentence, masked tokens per sentence and real tokens per row, so a count of the wrong thing (words
for a CRF, whose loss is a mean over sentences; sentences for MaskLM or a softmax tagger, whose losses are means
over masked tokens and labelled words) breaks the equality.
"""

from __future__ import annotations

import pytest
import torch

import torchpalm as palm

H, L, C, V = 8, 7, 4, 11
SEQ_LENS = torch.tensor([1, 2, 5, 6, 6])  # words per sentence: the first part short, the second long
CUT = 2  # rows [0, 2) and [2, 5)


def rows(batch: dict, start: int, stop: int) -> dict:
    """Rows [start, stop) of every per-example tensor (the embedding table is the model's, not the batch's)."""
    return {k: v if k == "embedding_table" else v[start:stop] for k, v in batch.items()}


def sentence_case(use_crf: bool):
    torch.manual_seed(0)
    head = palm.head.SequenceLabel(C, H, use_crf=use_crf)
    labels = torch.randint(0, C, (5, L))
    labels[torch.arange(L)[None, :] >= SEQ_LENS[:, None]] = -100
    batch = {"word_starts": torch.arange(L).repeat(5, 1), "seq_lens": SEQ_LENS, "label_ids": labels}
    return head, {"encoder_outputs": torch.randn(5, L, H)}, batch


def classify_case():
    torch.manual_seed(0)
    return palm.head.Classify(C, H), {"sentence_embedding": torch.randn(5, H)}, {"label_ids": torch.randint(0, C, (5,))}


def match_case(strategy: str):
    torch.manual_seed(0)
    head = palm.head.Match(2, H, learning_strategy=strategy)
    features = {"sentence_pair_embedding": torch.randn(5, H)}
    if strategy == "pairwise":
        features["sentence_pair_embedding_neg"] = torch.randn(5, H)
        return head, features, {}
    return head, features, {"label_ids": torch.randint(0, 2, (5,))}


def mrc_case():
    torch.manual_seed(0)
    mask = (torch.arange(L)[None, :] < SEQ_LENS[:, None]).long()  # real tokens per row differ too
    batch = {"input_mask": mask, "start_positions": torch.tensor([0, 1, 2, 3, 4]),
             "end_positions": torch.tensor([0, 1, 4, 5, 5])}
    return palm.head.MRC(4, H), {"encoder_outputs": torch.randn(5, L, H)}, batch


def mask_lm_case():
    torch.manual_seed(0)
    # flat positions into the [5, L] batch: one masked token in the first part's 2 rows, six in the other 3
    per_row = [[], [3], [0, 2], [1, 4], [5, 6]]
    pos = torch.tensor([r * L + p for r, ps in enumerate(per_row) for p in ps])
    batch = {"mask_pos": pos, "mask_label": torch.randint(0, V, (len(pos),))}
    features = {"encoder_outputs": torch.randn(5, L, H), "embedding_table": torch.randn(V, H)}
    return palm.head.MaskLM(H, V, "gelu"), features, batch


def mask_lm_rows(batch: dict, start: int, stop: int) -> dict:
    """MaskLM's positions are flat indices into the padded batch: keep the part's and shift them."""
    keep = (batch["mask_pos"] >= start * L) & (batch["mask_pos"] < stop * L)
    return {"mask_pos": batch["mask_pos"][keep] - start * L, "mask_label": batch["mask_label"][keep]}


CASES = {
    "classify": classify_case,
    "match_pointwise": lambda: match_case("pointwise"),
    "match_pairwise": lambda: match_case("pairwise"),
    "sequence_label_crf": lambda: sentence_case(use_crf=True),
    "sequence_label_softmax": lambda: sentence_case(use_crf=False),
    "mrc": mrc_case,
    "mask_lm": mask_lm_case,
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_loss_count_makes_the_parts_add_up_to_the_whole(name):
    head, features, batch = CASES[name]()
    head.train()  # dropout is 0: train mode computes the loss as training does, deterministically
    cut_batch = mask_lm_rows if name == "mask_lm" else rows
    with torch.no_grad():
        whole = head(features, batch)
        parts = [head(rows(features, a, b), cut_batch(batch, a, b)) for a, b in [(0, CUT), (CUT, 5)]]
    counts = [float(p["loss_count"]) for p in parts]
    assert counts[0] != counts[1]  # uneven parts, or the weighting would not matter
    assert float(whole["loss_count"]) == sum(counts)
    weighted = sum(float(p["loss"]) * c for p, c in zip(parts, counts)) / sum(counts)
    assert weighted == pytest.approx(float(whole["loss"]), rel=1e-6, abs=1e-7)
